'use strict';
// End-to-end test of the musicgw npm package, installed from its packed tarball into a fresh
// directory, against the sandbox: generate with a request id made for it and an idempotent
// retry, typed errors with their details, wait, a download interrupted on purpose and resumed,
// then watch and downloadStream through a proxy that cuts connections (both resume by
// themselves), verified by SHA-256. Exits 1 on the first failure.
//   MUSICGW_TARGET=... MUSICGW_API_KEY=... node e2e.js --flaky-target HOST:PORT --out-dir DIR
const fs = require('node:fs');
const path = require('node:path');
const musicgw = require('musicgw');

function check(ok, what) {
  if (!ok) throw new Error(`check failed: ${what}`);
  console.log(`ok: ${what}`);
}

async function expectError(promise, cls) {
  try {
    await promise;
  } catch (err) {
    if (err instanceof cls) return err;
    throw err;
  }
  throw new Error(`expected ${cls.name}`);
}

async function main() {
  const args = process.argv.slice(2);
  const flag = (name) => args[args.indexOf(name) + 1];
  const outDir = flag('--out-dir');
  fs.mkdirSync(outDir, { recursive: true });
  const key = process.env.MUSICGW_API_KEY;
  check(require.resolve('musicgw').includes('node_modules'), `musicgw from an install (${require.resolve('musicgw')})`);

  const client = new musicgw.Client(process.env.MUSICGW_TARGET, key);
  const sample = { sample: { prompt: 'dusty vinyl drum loop', durationSeconds: 6, loopable: true } };
  const op = await client.generate(sample, { provider: 'soundpiece' });
  check(op.name.startsWith('operations/') && op.request.requestId, `generate -> ${op.name} with request_id ${op.request.requestId}`);
  const again = await client.generate(sample, { provider: 'soundpiece', requestId: op.request.requestId });
  check(again.name === op.name, 'the same request_id gives the same operation');

  let err = await expectError(client.generate({ sample: { prompt: 'x', durationSeconds: 6 } },
    { provider: 'soundpiece', requestId: op.request.requestId }), musicgw.AlreadyExistsError);
  check(err.reason === 'REQUEST_ID_REUSED' && err.errorInfo.domain, `AlreadyExistsError with ErrorInfo ${err.reason}/${err.errorInfo.domain}`);
  err = await expectError(client.generate({ sample: { prompt: 'too long', durationSeconds: 999 } }), musicgw.InvalidArgumentError);
  check('sample.duration_seconds' in err.fieldViolations && err instanceof musicgw.MusicgwError && err.codeName === 'INVALID_ARGUMENT',
    `InvalidArgumentError with BadRequest ${JSON.stringify(err.fieldViolations)}`);
  err = await expectError(client.get('operations/00000000000000000000000000'), musicgw.NotFoundError);
  check(err.code === musicgw.Code.NotFound, `NotFoundError: ${err}`);

  const done = await client.wait(op.name, { timeoutMs: 60000 });
  check(done.state === musicgw.OperationState.SUCCEEDED && done.outputs.length > 0, `wait -> ${musicgw.OperationState[done.state]}`);
  // With one success of this account and task in the ledger, a new operation has an estimate.
  const next = await client.generate({ sample: { prompt: 'dusty vinyl drum loop', durationSeconds: 6 } }, { provider: 'soundpiece' });
  check(next.done || musicgw.etaSeconds(next) !== undefined, `a live operation with history shows an estimate: eta ~${musicgw.etaSeconds(next)}s`);
  let file = path.join(outDir, 'sample.flac');
  fs.rmSync(file, { force: true });
  check(await client.download(done.outputs[0].name, file, { chunkLimit: 1 }) === undefined && fs.statSync(file).size > 0,
    `download interrupted on purpose at ${fs.statSync(file).size} bytes`);
  let result = await client.download(done.outputs[0].name, file);
  check(result.startedAt > 0n && result.verified && result.size === BigInt(fs.statSync(file).size),
    `download resumed at ${result.startedAt}, ${result.size} bytes, sha256 verified (${result.digestSource})`);

  const flaky = new musicgw.Client(flag('--flaky-target'), key, { tls: false });
  const track = await flaky.generate({ parametricMusic: { genre: 'House', durationSeconds: 30 } }, { provider: 'loudly' });
  const reconnects = [];
  let last = 0n;
  let final;
  for await (const event of flaky.watch(track.name, { onReconnect: (e, seq) => reconnects.push(seq) })) {
    check(event.sequence > last, `event sequence ${event.sequence} after ${last}: ${musicgw.OperationState[event.operation.state]}`);
    last = event.sequence;
    final = event.operation;
  }
  check(final.done && final.state === musicgw.OperationState.SUCCEEDED, 'watch followed it to SUCCEEDED');
  check(reconnects.length > 0, `watch reconnected by itself ${reconnects.length} time(s)`);

  // downloadStream is the async iterator under download(): resumed at the next byte after a cut.
  const resumes = [];
  const parts = [];
  let info;
  for await (const part of flaky.downloadStream(final.outputs[0].name, { onResume: (e, at) => resumes.push(at) })) {
    if (part.kind === 'info') info = part.info;
    else parts.push(part.data);
  }
  const bytes = Buffer.concat(parts);
  file = path.join(outDir, 'track.mp3');
  fs.writeFileSync(file, bytes);
  const direct = await client.download(final.outputs[0].name, path.join(outDir, 'track-direct.mp3'), { restart: true });
  check(resumes.length > 0, `downloadStream through the proxy resumed at ${resumes.join(', ')}`);
  check(BigInt(bytes.length) === info.sizeBytes && (await musicgw.fileSha256(file)) === direct.sha256 && direct.verified,
    `downloadStream gave ${bytes.length} bytes, identical to a verified direct download`);
  // TLS with a trusted root; refused without it.
  const secure = new musicgw.Client(flag('--tls-target'), key, { tls: true, ca: fs.readFileSync(flag('--ca-cert')) });
  check((await secure.providers()).providers.length === 2, 'over TLS with the sandbox certificate trusted');
  err = await expectError(new musicgw.Client(flag('--tls-target'), key, { tls: true, timeoutMs: 5000 }).providers(),
    musicgw.MusicgwError);
  check(err instanceof musicgw.UnavailableError, `an untrusted certificate is refused: ${err.codeName}: ${err.message}`);
  console.log('node sdk: all checks passed');
}

main().then(() => process.exit(0), (err) => {
  console.error(`FAILED: ${err && err.stack ? err.stack : err}${err && err.code !== undefined ? ` (code ${err.code})` : ""}`);
  process.exit(1);
});
