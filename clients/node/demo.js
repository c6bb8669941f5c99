#!/usr/bin/env node
'use strict';
// musicgw Node.js demo and end-to-end check: a Soundpiece sample and a Loudly track, each
// watched (with a dropped and resumed stream) and downloaded (with an interrupted and resumed
// download), then a request the gateway rejects, with its BadRequest decoded.
//
//   MUSICGW_TARGET=127.0.0.1:50051 MUSICGW_API_KEY=... node demo.js --out-dir /tmp/musicgw-node
//
// Exits non-zero on any failure.

const fs = require('node:fs');
const path = require('node:path');
const { Client, errorDetails, fileSha256, grpc, verify } = require('./client');

function printEvent(label) {
  return (event) => {
    if (event.kind === 'KIND_HEARTBEAT') {
      console.log(`  [${label}] heartbeat seq=${event.sequence}`);
    } else {
      console.log(`  [${label}] ${event.kind} seq=${event.sequence} state=${event.operation.state}`);
    }
  };
}

// Reads the first event of a watch, then drops the stream as a broken connection would.
async function firstEventThenDrop(client, name) {
  const stream = client.watchOnce(name);
  stream.on('error', () => {}); // the CANCELLED status that follows is expected
  for await (const event of stream) {
    stream.cancel();
    return event;
  }
  throw new Error(`watch of ${name} ended without an event`);
}

// The same request_id and request: the same operation. A different request: REQUEST_ID_REUSED.
async function checkIdempotency(client, request, op) {
  const again = await client.generate(request);
  if (again.name !== op.name) {
    throw new Error(`retry with the same request_id gave ${again.name}, not ${op.name}`);
  }
  const changed = { ...request, sample: { ...request.sample, prompt: `${request.sample.prompt} (changed)` } };
  try {
    await client.generate(changed);
  } catch (err) {
    const reasons = errorDetails(err).filter((d) => d.type === 'ErrorInfo').map((d) => d.reason);
    if (err.code !== grpc.status.ALREADY_EXISTS || reasons.join() !== 'REQUEST_ID_REUSED') throw err;
    console.log(`  retry -> same operation; same request_id, other request -> ALREADY_EXISTS ${reasons[0]}`);
    return;
  }
  throw new Error('a reused request_id with a different request was accepted');
}

async function runJob(client, label, request, outDir) {
  let op = await client.generate(request);
  console.log(`[${label}] Generate request_id=${request.requestId} -> ${op.name} ${op.state}`);
  if (request.sample) await checkIdempotency(client, request, op);

  const first = await firstEventThenDrop(client, op.name);
  printEvent(label)(first);
  console.log(`  [${label}] watch dropped after seq=${first.sequence}; resuming`);
  op = first.operation.done ? first.operation
    : await client.watch(op.name, { afterSequence: first.sequence, onEvent: printEvent(label) });
  if (op.state !== 'OPERATION_STATE_SUCCEEDED') {
    throw new Error(`[${label}] ended ${op.state}: ${op.error ? op.error.message : ''}`);
  }
  if (!op.outputs.length) throw new Error(`[${label}] succeeded without outputs`);

  const asset = op.outputs[0];
  const file = path.join(outDir, `${label}-${asset.name.replace(/\//g, '_')}`);
  fs.rmSync(file, { force: true });
  await client.download(asset.name, file, { stopAfterChunks: 1 });
  console.log(`  [${label}] download interrupted after the first chunk at ` +
    `${fs.statSync(file).size} bytes; resuming`);
  const info = await client.download(asset.name, file);
  let sha256 = info.sha256;
  if (!sha256) {
    // The gateway learns an asset's digest from a download that streams every byte in one
    // pass, which an interrupted one is not. Take one clean pass, then the digest is known.
    const full = `${file}.full`;
    fs.rmSync(full, { force: true });
    await client.download(asset.name, full);
    sha256 = (await client.getOperation(op.name)).outputs[0].sha256 || fileSha256(full);
    verify(file, { sha256 });
  }
  console.log(`  [${label}] saved ${file}: ${fs.statSync(file).size} bytes, ${info.contentType}, ` +
    `sha256 verified ${sha256}`);
}

async function checkInvalidArgument(client) {
  const request = {
    provider: 'PROVIDER_SOUNDPIECE',
    sample: { prompt: 'too long a sample', durationSeconds: 999 },
  };
  try {
    await client.generate(request);
  } catch (err) {
    if (err.code !== grpc.status.INVALID_ARGUMENT) throw err;
    console.log(`[invalid] INVALID_ARGUMENT: ${err.details}`);
    const fields = [];
    for (const detail of errorDetails(err)) {
      if (detail.type === 'BadRequest') {
        for (const v of detail.fieldViolations) {
          console.log(`  BadRequest ${v.field}: ${v.description}`);
          fields.push(v.field);
        }
      } else if (detail.type === 'ErrorInfo') {
        console.log(`  ErrorInfo reason=${detail.reason} domain=${detail.domain}`);
      }
    }
    if (!fields.includes('sample.duration_seconds')) {
      throw new Error(`expected a violation of sample.duration_seconds, got ${fields}`);
    }
    return;
  }
  throw new Error('sample.duration_seconds = 999 was accepted');
}

// Generate, Watch and Download through a path that drops connections mid-stream: the client
// retries Generate with the same request_id, reopens the Watch after the last sequence and
// resumes the Download from the file's size, on its own.
async function runThroughFlakyNetwork(direct, flaky, outDir) {
  let op = await flaky.generate({
    provider: 'PROVIDER_LOUDLY', parametricMusic: { genre: 'House', durationSeconds: 30 },
  });
  console.log(`[flaky] Generate -> ${op.name}`);
  const seen = [];
  const retries = [];
  const onRetry = (what) => (err, position) => {
    retries.push(what);
    console.log(`  [flaky] ${what} lost (${grpc.status[err.code]}); resuming after ${position}`);
  };
  op = await flaky.watch(op.name, {
    onEvent: (event) => {
      if (event.kind !== 'KIND_HEARTBEAT') {
        if (seen.length && event.sequence <= seen[seen.length - 1]) {
          throw new Error(`sequence went back from ${seen[seen.length - 1]} to ${event.sequence}`);
        }
        seen.push(event.sequence);
      }
      printEvent('flaky')(event);
    },
    onRetry: onRetry('watch'),
  });
  if (op.state !== 'OPERATION_STATE_SUCCEEDED') throw new Error(`[flaky] ended ${op.state}`);
  const file = path.join(outDir, 'flaky-download');
  const reference = `${file}.direct`;
  fs.rmSync(file, { force: true });
  fs.rmSync(reference, { force: true });
  await flaky.download(op.outputs[0].name, file, { onRetry: onRetry('download') });
  await direct.download(op.outputs[0].name, reference);
  if (fileSha256(file) !== fileSha256(reference)) {
    throw new Error('the download resumed through drops differs from a direct one');
  }
  if (!retries.length) throw new Error('no stream was cut: the resumption went untested');
  console.log(`  [flaky] downloaded ${fs.statSync(file).size} bytes through ${retries.length} ` +
    'drops; identical to a direct download');
}

async function main() {
  const args = process.argv.slice(2);
  const flag = (name, fallback) => {
    const i = args.indexOf(name);
    return i >= 0 && i + 1 < args.length ? args[i + 1] : fallback;
  };
  const target = flag('--target', process.env.MUSICGW_TARGET || '127.0.0.1:50051');
  const outDir = flag('--out-dir', '.');
  const apiKey = process.env.MUSICGW_API_KEY;
  if (!apiKey) {
    console.error('set MUSICGW_API_KEY to your musicgw API key');
    return 2;
  }
  fs.mkdirSync(outDir, { recursive: true });
  const client = new Client(target, apiKey, args.includes('--tls') ? { tls: true } : {});
  try {
    await runJob(client, 'soundpiece', {
      provider: 'PROVIDER_SOUNDPIECE',
      sample: { prompt: 'dusty vinyl drum loop, 90 bpm', durationSeconds: 8, loopable: true },
    }, outDir);
    await runJob(client, 'loudly', {
      provider: 'PROVIDER_LOUDLY',
      parametricMusic: { genre: 'House', durationSeconds: 30, energy: 'ENERGY_HIGH' },
    }, outDir);
    await checkInvalidArgument(client);
    const flakyTarget = flag('--flaky-target', null);
    if (flakyTarget) {
      const flaky = new Client(flakyTarget, apiKey, { tls: false });
      try {
        await runThroughFlakyNetwork(client, flaky, outDir);
      } finally {
        flaky.close();
      }
    }
  } catch (err) {
    console.error(`FAILED: ${err.code !== undefined ? `${grpc.status[err.code]}: ${err.details}` : err.message}`);
    for (const detail of errorDetails(err)) console.error(`  ${JSON.stringify(detail)}`);
    return 1;
  } finally {
    client.close();
  }
  console.log('node client: all checks passed');
  return 0;
}

main().then((code) => { process.exitCode = code; });
