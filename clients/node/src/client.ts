// The musicgw client for Node.js: one HTTP/2 connection speaking the gRPC protocol, with the
// tenant API key on every call.
import { createHash, randomUUID } from "node:crypto";
import { createReadStream, existsSync, promises as fs, statSync } from "node:fs";
import { clone, create, type MessageInitShape } from "@bufbuild/protobuf";
import { DurationSchema, timestampDate } from "@bufbuild/protobuf/wkt";
import { createClient, type Client as ConnectClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import {
  ChecksumMismatchError,
  Code,
  DeadlineExceededError,
  UnavailableError,
  retryable,
  toMusicgwError,
  type MusicgwError,
} from "./errors.js";
import {
  GenerateRequestSchema,
  ListOperationsRequestSchema,
  MusicGateway,
  OperationEvent_Kind,
  Provider,
  type AssetInfo,
  type CutDownTaskSchema,
  type GenerateRequest,
  type InstrumentalTaskSchema,
  type ListProvidersResponse,
  type Operation,
  type OperationEvent,
  type OperationState,
  type ParametricMusicTaskSchema,
  type QuotaReport,
  type RemixInstrumentalTaskSchema,
  type RemixSongTaskSchema,
  type SampleTaskSchema,
  type SeparateStemsTaskSchema,
  type SongTaskSchema,
  type SoundEffectTaskSchema,
  type TaskKind,
  type TextToMusicTaskSchema,
} from "./gen/musicgw/v1/musicgw_pb.js";

/** What to generate: exactly one task kind, e.g. `{ sample: { prompt, durationSeconds: 8 } }`. */
export type Task =
  | { parametricMusic: MessageInitShape<typeof ParametricMusicTaskSchema> }
  | { textToMusic: MessageInitShape<typeof TextToMusicTaskSchema> }
  | { song: MessageInitShape<typeof SongTaskSchema> }
  | { instrumental: MessageInitShape<typeof InstrumentalTaskSchema> }
  | { sample: MessageInitShape<typeof SampleTaskSchema> }
  | { soundEffect: MessageInitShape<typeof SoundEffectTaskSchema> }
  | { remixSong: MessageInitShape<typeof RemixSongTaskSchema> }
  | { remixInstrumental: MessageInitShape<typeof RemixInstrumentalTaskSchema> }
  | { separateStems: MessageInitShape<typeof SeparateStemsTaskSchema> }
  | { cutDown: MessageInitShape<typeof CutDownTaskSchema> };

export type ProviderName = "loudly" | "soundpiece" | Provider;

export interface ClientOptions {
  /** TLS on or off; default: TLS unless the target is loopback. */
  tls?: boolean;
  /** PEM roots to trust instead of the system's (a Buffer, or the PEM text). */
  ca?: string | Buffer;
  /** The name to check the server certificate against, when it differs from the host. */
  serverName?: string;
  /** Per unary call, in milliseconds (default 30 000). */
  timeoutMs?: number;
}

export interface GenerateOptions {
  provider?: ProviderName;
  allowFallback?: boolean;
  validateOnly?: boolean;
  /** Idempotency key; a UUID is made when absent. */
  requestId?: string;
  signal?: AbortSignal;
}

export interface WatchOptions {
  /** Resume after a sequence already seen. */
  afterSequence?: bigint;
  /** Yield heartbeat events too. */
  heartbeats?: boolean;
  /** How many drops in a row to resume before giving up (default 8). */
  reconnects?: number;
  /** Called before each automatic reconnection with the error and the last sequence seen. */
  onReconnect?: (err: MusicgwError, lastSequence: bigint) => void;
  signal?: AbortSignal;
}

/** One item of a download stream. */
export type DownloadPart =
  | { kind: "info"; info: AssetInfo }
  | { kind: "data"; offset: bigint; data: Uint8Array };

export interface DownloadStreamOptions {
  /** Byte offset to start at. */
  offset?: bigint;
  /** How many drops to resume before giving up (default 8). */
  attempts?: number;
  /** Called before each resumption with the error and the offset it resumes at. */
  onResume?: (err: MusicgwError, offset: bigint) => void;
  signal?: AbortSignal;
}

export interface DownloadOptions extends Omit<DownloadStreamOptions, "offset"> {
  /** Discard bytes already in the file instead of resuming after them. */
  restart?: boolean;
  /** Skip the SHA-256 check. */
  verify?: boolean;
  /** Called after each chunk with the bytes on disk and the total (0n: unknown). */
  onProgress?: (done: bigint, total: bigint) => void;
  /** Stop after this many data chunks and resolve undefined (an interruption on purpose). */
  chunkLimit?: number;
}

export interface DownloadResult {
  path: string;
  size: bigint;
  sha256: string;
  contentType: string;
  /** The offset this call began at (non-zero when it resumed a partial file). */
  startedAt: bigint;
  /** How many dropped streams were resumed. */
  resumptions: number;
  /** The file matched an independent SHA-256. */
  verified: boolean;
  /** "gateway" (AssetInfo or the operation's asset) or "restream" (hashed from a second pass). */
  digestSource: "gateway" | "restream" | "";
}

const PROVIDERS: Record<string, Provider> = {
  loudly: Provider.LOUDLY,
  soundpiece: Provider.SOUNDPIECE,
};

function providerValue(p: ProviderName | undefined): Provider {
  if (p === undefined) return Provider.UNSPECIFIED;
  if (typeof p === "number") return p;
  const value = PROVIDERS[p.toLowerCase()];
  if (value === undefined) throw new TypeError(`unknown provider ${p}: loudly or soundpiece`);
  return value;
}

function isLoopback(target: string): boolean {
  const host = target.replace(/:\d+$/, "").replace(/^\[|\]$/g, "");
  return host === "localhost" || host === "::1" || host.startsWith("127.");
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/** RetryInfo's delay when the gateway gave one, else exponential backoff from 200 ms. */
function backoffMs(err: MusicgwError, attempt: number): number {
  return err.retryDelayMs ?? Math.min(200 * 2 ** attempt, 5000);
}

/** An AbortController that also aborts when `outer` does. */
function linked(outer?: AbortSignal): AbortController {
  const ac = new AbortController();
  if (outer) {
    if (outer.aborted) ac.abort(outer.reason);
    else outer.addEventListener("abort", () => ac.abort(outer.reason), { once: true });
  }
  return ac;
}

export class Client {
  /** The generated Connect client, for calls the SDK does not wrap. */
  readonly stub: ConnectClient<typeof MusicGateway>;
  private readonly timeoutMs: number;

  /** target: "host:port"; apiKey: the tenant key, sent as `authorization: Bearer <key>`. */
  constructor(target: string, apiKey: string, options: ClientOptions = {}) {
    if (!apiKey) throw new TypeError("an API key is required");
    const tls = options.tls ?? !isLoopback(target);
    const auth: Interceptor = (next) => async (req) => {
      req.header.set("authorization", `Bearer ${apiKey}`);
      return next(req);
    };
    const transport = createGrpcTransport({
      baseUrl: `${tls ? "https" : "http"}://${target}`,
      interceptors: [auth],
      // The server answers pings at most every 10 s (keepalive_min_ping_interval) and sends
      // GOAWAY "too_many_pings" after 2 strikes; pinging every 30 s keeps a long Watch alive
      // through NATs and load balancers, well inside that.
      pingIntervalMs: 30000,
      pingTimeoutMs: 10000,
      pingIdleConnection: true,
      nodeOptions: tls ? { ca: options.ca, servername: options.serverName } : undefined,
    });
    this.stub = createClient(MusicGateway, transport);
    this.timeoutMs = options.timeoutMs ?? 30000;
  }

  private async unary<T>(call: (opts: { timeoutMs: number; signal?: AbortSignal }) => Promise<T>,
                         signal?: AbortSignal, attempts = 3): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      try {
        return await call({ timeoutMs: this.timeoutMs, signal });
      } catch (e) {
        const err = toMusicgwError(e);
        if (!retryable(err, signal) || attempt + 1 >= attempts) throw err;
        await sleep(backoffMs(err, attempt), signal);
      }
    }
  }

  /**
   * Starts a generation and resolves to its Operation at once (state QUEUED). A request id is
   * made when none is given; it makes the automatic retries after a dropped connection safe:
   * the gateway returns the same operation and never charges twice.
   */
  async generate(task: Task | GenerateRequest, options: GenerateOptions = {}): Promise<Operation> {
    let request: GenerateRequest;
    if ("$typeName" in task) {
      request = clone(GenerateRequestSchema, task);
    } else {
      const [key, value] = Object.entries(task)[0] as [string, unknown];
      request = create(GenerateRequestSchema, {
        provider: providerValue(options.provider),
        allowFallback: options.allowFallback ?? false,
        validateOnly: options.validateOnly ?? false,
        task: { case: key, value } as MessageInitShape<typeof GenerateRequestSchema>["task"],
      });
    }
    if (options.requestId) request.requestId = options.requestId;
    if (!request.requestId) request.requestId = randomUUID();
    return this.unary((o) => this.stub.generate(request, o), options.signal);
  }

  /** The latest snapshot of an operation. */
  get(name: string, signal?: AbortSignal): Promise<Operation> {
    return this.unary((o) => this.stub.getOperation({ name }, o), signal);
  }

  /** The caller's operations, newest first, fetching pages as the iteration goes. */
  async *list(filter: { states?: OperationState[]; provider?: ProviderName; task?: TaskKind;
                        limit?: number; pageSize?: number } = {}): AsyncGenerator<Operation> {
    const request = create(ListOperationsRequestSchema, {
      states: filter.states ?? [], provider: providerValue(filter.provider),
      task: filter.task, pageSize: filter.pageSize ?? 50,
    });
    let seen = 0;
    for (;;) {
      const page = await this.unary((o) => this.stub.listOperations(request, o));
      for (const op of page.operations) {
        if (filter.limit !== undefined && seen >= filter.limit) return;
        seen++;
        yield op;
      }
      if (!page.nextPageToken) return;
      request.pageToken = page.nextPageToken;
    }
  }

  /** Cancels an operation (best effort); FailedPreconditionError when it is already done. */
  cancel(name: string, reason = "", signal?: AbortSignal): Promise<Operation> {
    return this.unary((o) => this.stub.cancelOperation({ name, reason }, o), signal);
  }

  /** Resolves when the operation is done; DeadlineExceededError after timeoutMs (default 10 min). */
  async wait(name: string, { timeoutMs = 600000, signal }: { timeoutMs?: number; signal?: AbortSignal } = {}): Promise<Operation> {
    const deadline = Date.now() + timeoutMs;
    let failures = 0;
    for (;;) {
      const step = Math.min(60000, deadline - Date.now());
      if (step <= 0) throw new DeadlineExceededError(`${name} not done after ${timeoutMs} ms`, Code.DeadlineExceeded);
      try {
        const op = await this.stub.waitOperation(
          { name, timeout: create(DurationSchema, { seconds: BigInt(Math.ceil(step / 1000)) }) },
          { timeoutMs: step + 10000, signal });
        failures = 0;
        if (op.done) return op;
      } catch (e) {
        const err = toMusicgwError(e);
        if (!retryable(err, signal) || ++failures > 8) throw err;
        await sleep(backoffMs(err, failures - 1), signal);
      }
    }
  }

  /**
   * The operation's events until it is done: a snapshot, then each change. A dropped stream is
   * reopened with afterSequence = the last sequence seen, so nothing is missed or repeated.
   */
  async *watch(name: string, options: WatchOptions = {}): AsyncGenerator<OperationEvent> {
    let last = options.afterSequence ?? 0n;
    let failures = 0;
    for (;;) {
      const ac = linked(options.signal);
      let err: MusicgwError;
      try {
        for await (const event of this.stub.watchOperation({ name, afterSequence: last }, { signal: ac.signal })) {
          failures = 0;
          if (event.kind === OperationEvent_Kind.HEARTBEAT) {
            if (options.heartbeats) yield event;
            continue;
          }
          last = event.sequence;
          yield event;
          if (event.operation?.done) return;
        }
        // The stream ends OK only after the done event; earlier means a proxy or a draining
        // server closed it.
        err = new UnavailableError("the watch stream ended early", Code.Unavailable);
      } catch (e) {
        err = toMusicgwError(e);
        if (!retryable(err, options.signal)) throw err;
      } finally {
        ac.abort();
      }
      if (++failures > (options.reconnects ?? 8)) throw err;
      options.onReconnect?.(err, last);
      await sleep(backoffMs(err, failures - 1), options.signal);
    }
  }

  /**
   * An asset's bytes as an async iterator: first its AssetInfo, then data parts. A dropped
   * stream is resumed at the next byte, up to `attempts` times.
   */
  async *downloadStream(asset: string, options: DownloadStreamOptions = {}): AsyncGenerator<DownloadPart> {
    let position = options.offset ?? 0n;
    let resumptions = 0;
    let sentInfo = false;
    for (;;) {
      const ac = linked(options.signal);
      try {
        for await (const chunk of this.stub.download({ asset, offset: position }, { signal: ac.signal })) {
          if (chunk.payload.case === "info") {
            const info = chunk.payload.value;
            if (info.offset !== position) {
              throw new ChecksumMismatchError(`asked for offset ${position}, the gateway sent ${info.offset}`);
            }
            if (!sentInfo) {
              sentInfo = true;
              yield { kind: "info", info };
            }
          } else if (chunk.payload.case === "data") {
            if (chunk.offset !== position) {
              throw new ChecksumMismatchError(`chunk at ${chunk.offset}, expected ${position}`);
            }
            position += BigInt(chunk.payload.value.length);
            yield { kind: "data", offset: chunk.offset, data: chunk.payload.value };
          }
        }
        return;
      } catch (e) {
        const err = toMusicgwError(e);
        if (!retryable(err, options.signal) || ++resumptions >= (options.attempts ?? 8)) throw err;
        options.onResume?.(err, position);
        await sleep(backoffMs(err, resumptions - 1), options.signal);
      } finally {
        ac.abort();
      }
    }
  }

  /**
   * Downloads an asset to path: continues after the bytes already there, resumes dropped
   * streams, and checks the finished file against the SHA-256 the gateway reports. The gateway
   * learns a digest from one uninterrupted pass; when it does not know it yet, the asset is
   * streamed once more and hashed, so a resumed file is never taken on trust.
   * ChecksumMismatchError when they differ.
   */
  async download(asset: string, path: string, options: DownloadOptions = {}): Promise<DownloadResult | undefined> {
    if (options.restart) await fs.rm(path, { force: true });
    const startedAt = existsSync(path) ? BigInt(statSync(path).size) : 0n;
    let info: AssetInfo | undefined;
    let resumptions = 0;
    let chunks = 0;
    const file = await fs.open(path, "a");
    try {
      for await (const part of this.downloadStream(asset, {
        ...options, offset: startedAt,
        onResume: (err, at) => { resumptions++; options.onResume?.(err, at); },
      })) {
        if (part.kind === "info") {
          info = part.info;
          continue;
        }
        await file.write(part.data);
        options.onProgress?.(part.offset + BigInt(part.data.length), info?.sizeBytes ?? 0n);
        if (options.chunkLimit !== undefined && ++chunks >= options.chunkLimit) return undefined;
      }
    } finally {
      await file.close();
    }
    if (!info) throw new ChecksumMismatchError(`${asset}: the gateway sent no asset info`);
    const size = BigInt(statSync(path).size);
    if (info.sizeBytes > 0n && size !== info.sizeBytes) {
      throw new ChecksumMismatchError(`${path}: ${size} bytes, expected ${info.sizeBytes}`);
    }
    const digest = await fileSha256(path);
    const result: DownloadResult = {
      path, size, sha256: digest, contentType: info.contentType, startedAt, resumptions,
      verified: false, digestSource: "",
    };
    if (options.verify === false) return result;
    let expected = info.sha256;
    let source: DownloadResult["digestSource"] = "gateway";
    if (!expected) {
      const op = await this.get(asset.split("/assets/")[0]);
      expected = op.outputs.find((a) => a.name === asset)?.sha256 ?? "";
    }
    if (!expected) {
      const hash = createHash("sha256");
      for await (const part of this.downloadStream(asset, { signal: options.signal })) {
        if (part.kind === "data") hash.update(part.data);
      }
      expected = hash.digest("hex");
      source = "restream";
    }
    if (digest !== expected) {
      throw new ChecksumMismatchError(`${path}: sha256 ${digest}, expected ${expected} (${source})`);
    }
    return { ...result, verified: true, digestSource: source };
  }

  /** Provider quota per account and resource, and the caller's own budgets. */
  quota(provider?: ProviderName, signal?: AbortSignal): Promise<QuotaReport> {
    return this.unary((o) => this.stub.getQuota({ provider: providerValue(provider) }, o), signal);
  }

  /** The configured providers with their tasks, parameter ranges and health. */
  providers(signal?: AbortSignal): Promise<ListProvidersResponse> {
    return this.unary((o) => this.stub.listProviders({}, o), signal);
  }
}

/**
 * When the gateway estimates a live operation will be done (Operation.estimatedDoneTime), or
 * undefined: done, or no history for its provider account and task. The gateway derives it from
 * recent successful runs; an estimate, not a promise.
 */
export function estimatedDoneTime(op: Operation): Date | undefined {
  if (op.done || op.estimatedDoneTime === undefined) return undefined;
  return timestampDate(op.estimatedDoneTime);
}

/** Whole seconds left by the gateway's estimate (never negative), or undefined without one. */
export function etaSeconds(op: Operation, now: number = Date.now()): number | undefined {
  const eta = estimatedDoneTime(op);
  return eta === undefined ? undefined : Math.max(0, Math.round((eta.getTime() - now) / 1000));
}

/** Lower-case hex SHA-256 of a file. */
export function fileSha256(path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const hash = createHash("sha256");
    createReadStream(path)
      .on("data", (b) => hash.update(b))
      .on("end", () => resolve(hash.digest("hex")))
      .on("error", reject);
  });
}
