'use strict';
// A small musicgw client for Node.js: API key auth, idempotent Generate, resumable Watch and
// Download, and the rich error details the gateway attaches to failures. Types come from
// proto/ at run time through @grpc/proto-loader (no generated code is committed).

const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');

const PROTO_DIR = process.env.MUSICGW_PROTO_DIR || path.join(__dirname, '..', '..', 'proto');

const definition = protoLoader.loadSync('musicgw/v1/musicgw.proto', {
  includeDirs: [PROTO_DIR],
  longs: Number, // int64 sequences, sizes and offsets fit in a double
  enums: String,
  defaults: true,
  oneofs: true,
});
const musicgw = grpc.loadPackageDefinition(definition).musicgw.v1;

// google.rpc.Status and its details, to decode the grpc-status-details-bin trailer.
const rpcRoot = new protobuf.Root();
rpcRoot.resolvePath = (_origin, target) => {
  const local = path.join(PROTO_DIR, target);
  return fs.existsSync(local) ? local : target; // google/protobuf/*: protobufjs built-ins
};
rpcRoot.loadSync(['google/rpc/status.proto', 'google/rpc/error_details.proto']);
const RpcStatus = rpcRoot.lookupType('google.rpc.Status');
const DETAIL_TYPES = ['ErrorInfo', 'RetryInfo', 'QuotaFailure', 'BadRequest'];

// The server answers pings at most every 10 s (keepalive_min_ping_interval) and sends GOAWAY
// "too_many_pings" after 2 strikes; pinging every 30 s keeps a long Watch alive through NATs
// and load balancers, well inside that.
const CHANNEL_OPTIONS = {
  'grpc.keepalive_time_ms': 30000,
  'grpc.keepalive_timeout_ms': 10000,
  'grpc.keepalive_permit_without_calls': 1,
};

const RETRYABLE = new Set([grpc.status.UNAVAILABLE, grpc.status.RESOURCE_EXHAUSTED]);

function isLoopback(target) {
  const host = target.replace(/:\d+$/, '').replace(/^\[|\]$/g, '');
  return host === 'localhost' || host === '::1' || host.startsWith('127.');
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function deadlineIn(seconds) {
  return new Date(Date.now() + seconds * 1000);
}

// Decodes the google.rpc.Status in a failed call's trailer into [{type, ...fields}].
function errorDetails(err) {
  const values = err && err.metadata ? err.metadata.get('grpc-status-details-bin') : [];
  if (!values.length) return [];
  const status = RpcStatus.decode(values[0]);
  const details = [];
  for (const any of status.details) {
    const url = any.typeUrl ?? any.type_url; // protobufjs' built-in Any keeps the snake_case name
    const name = url.slice(url.lastIndexOf('/') + 1);
    const short = name.replace(/^google\.rpc\./, '');
    if (!DETAIL_TYPES.includes(short)) continue;
    const type = rpcRoot.lookupType(name);
    details.push({ type: short, ...type.toObject(type.decode(any.value), { longs: Number }) });
  }
  return details;
}

// RetryInfo's delay when the server gave one, else exponential backoff from 200 ms.
function retryDelayMs(err, attempt) {
  const retry = errorDetails(err).find((d) => d.type === 'RetryInfo');
  if (retry && retry.retryDelay) {
    return (retry.retryDelay.seconds || 0) * 1000 + (retry.retryDelay.nanos || 0) / 1e6;
  }
  return Math.min(200 * 2 ** attempt, 5000);
}

class Client {
  constructor(target, apiKey, { tls = !isLoopback(target), rootCerts = null } = {}) {
    if (tls) {
      // Call credentials: grpc-js adds `authorization: Bearer <key>` to every call and refuses
      // to combine them with plaintext.
      const callCreds = grpc.credentials.createFromMetadataGenerator((_params, callback) => {
        const md = new grpc.Metadata();
        md.set('authorization', `Bearer ${apiKey}`);
        callback(null, md);
      });
      const creds = grpc.credentials.combineChannelCredentials(
        grpc.credentials.createSsl(rootCerts), callCreds);
      this.stub = new musicgw.MusicGateway(target, creds, CHANNEL_OPTIONS);
      this.apiKey = null;
    } else {
      // Plaintext (loopback sandbox, or a mesh doing TLS): the key as per-call metadata.
      this.stub = new musicgw.MusicGateway(
        target, grpc.credentials.createInsecure(), CHANNEL_OPTIONS);
      this.apiKey = apiKey;
    }
  }

  metadata() {
    const md = new grpc.Metadata();
    if (this.apiKey) md.set('authorization', `Bearer ${this.apiKey}`);
    return md;
  }

  close() {
    this.stub.close();
  }

  unary(method, request, timeoutSeconds) {
    return new Promise((resolve, reject) => {
      this.stub[method](request, this.metadata(), { deadline: deadlineIn(timeoutSeconds) },
        (err, response) => (err ? reject(err) : resolve(response)));
    });
  }

  getOperation(name, timeoutSeconds = 10) {
    return this.unary('GetOperation', { name }, timeoutSeconds);
  }

  // Starts a generation. The request_id makes retries safe: the gateway returns the same
  // operation and never charges twice.
  async generate(request, { timeoutSeconds = 30, attempts = 3 } = {}) {
    request.requestId = request.requestId || crypto.randomUUID();
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.unary('Generate', request, timeoutSeconds);
      } catch (err) {
        if (!RETRYABLE.has(err.code) || attempt + 1 >= attempts) throw err;
        await sleep(retryDelayMs(err, attempt));
      }
    }
  }

  // One WatchOperation stream (async-iterable; cancel() it to drop it).
  watchOnce(name, afterSequence = 0, timeoutSeconds = 120) {
    return this.stub.WatchOperation({ name, afterSequence }, this.metadata(),
      { deadline: deadlineIn(timeoutSeconds) });
  }

  // Follows an operation until it is done and returns its last snapshot. A dropped stream is
  // reopened with afterSequence = the last sequence seen, so no change is missed or repeated.
  // onRetry(err, lastSequence) is called before each reconnection.
  async watch(name, { afterSequence = 0, timeoutSeconds = 120, onEvent = null, reconnects = 5,
    onRetry = null } = {}) {
    const deadline = Date.now() + timeoutSeconds * 1000;
    let last = afterSequence;
    let failures = 0;
    for (;;) {
      const remaining = (deadline - Date.now()) / 1000;
      if (remaining <= 0) throw new Error(`${name} not done after ${timeoutSeconds} s`);
      try {
        for await (const event of this.watchOnce(name, last, remaining)) {
          failures = 0;
          if (onEvent) onEvent(event);
          if (event.kind === 'KIND_HEARTBEAT') continue;
          last = event.sequence;
          if (event.operation.done) return event.operation;
        }
        // Ended before the done event (a proxy or a draining server closed it): resume.
      } catch (err) {
        failures++;
        if (!RETRYABLE.has(err.code) || failures > reconnects) throw err;
        if (onRetry) onRetry(err, last);
        await sleep(retryDelayMs(err, failures - 1));
      }
    }
  }

  // Downloads an asset to file, resuming from the bytes already there, and returns the last
  // AssetInfo. With stopAfterChunks, cancels the stream after that many data chunks (to show
  // an interruption) and returns null. onRetry(err, bytesOnDisk) is called before each resumption.
  async download(asset, file, { timeoutSeconds = 120, stopAfterChunks = null, attempts = 5,
    onRetry = null } = {}) {
    let info = null;
    for (let attempt = 0; attempt < attempts; attempt++) {
      const offset = fs.existsSync(file) ? fs.statSync(file).size : 0;
      if (info && info.sizeBytes > 0 && info.sizeBytes === offset) break; // complete
      const call = this.stub.Download({ asset, offset }, this.metadata(),
        { deadline: deadlineIn(timeoutSeconds) });
      const fd = fs.openSync(file, 'a');
      let position = offset;
      let chunks = 0;
      try {
        for await (const chunk of call) {
          if (chunk.payload === 'info') {
            info = chunk.info;
            if (info.offset !== offset) throw new Error(`asked for offset ${offset}, got ${info.offset}`);
            continue;
          }
          if (chunk.offset !== position) throw new Error(`chunk at ${chunk.offset}, file at ${position}`);
          fs.writeSync(fd, chunk.data);
          position += chunk.data.length;
          if (stopAfterChunks !== null && ++chunks >= stopAfterChunks) {
            call.on('error', () => {}); // the CANCELLED status that follows is expected
            call.cancel();
            return null;
          }
        }
        break;
      } catch (err) {
        if (!RETRYABLE.has(err.code) || attempt + 1 >= attempts) throw err;
        if (onRetry) onRetry(err, position);
        await sleep(retryDelayMs(err, attempt));
      } finally {
        fs.closeSync(fd);
      }
    }
    verify(file, info);
    return info;
  }
}

// Checks a finished download against its AssetInfo: size when known, SHA-256 when known.
function verify(file, info) {
  const size = fs.statSync(file).size;
  if (size <= 0) throw new Error(`${file} is empty`);
  if (info && info.sizeBytes && size !== info.sizeBytes) {
    throw new Error(`${file}: ${size} bytes, expected ${info.sizeBytes}`);
  }
  if (info && info.sha256) {
    const digest = fileSha256(file);
    if (digest !== info.sha256) throw new Error(`${file}: sha256 ${digest}, expected ${info.sha256}`);
  }
}

function fileSha256(file) {
  return crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

module.exports = { Client, errorDetails, fileSha256, grpc, verify };
