// Typed errors: every failed call rejects with a MusicgwError subclass (by gRPC code) carrying
// the details the gateway puts in the grpc-status-details-bin trailer (AIP-193).
import { Code, ConnectError } from "@connectrpc/connect";
import {
  BadRequestSchema,
  ErrorInfoSchema,
  QuotaFailureSchema,
  RetryInfoSchema,
  type BadRequest,
  type ErrorInfo,
  type QuotaFailure,
  type RetryInfo,
} from "./gen/google/rpc/error_details_pb.js";

export { Code };

export class MusicgwError extends Error {
  /** The gRPC status code (Connect's Code enum has the same numbers). */
  readonly code: Code;
  /** The code's name, e.g. "INVALID_ARGUMENT". */
  readonly codeName: string;
  readonly errorInfo?: ErrorInfo;
  readonly retryInfo?: RetryInfo;
  readonly quotaFailure?: QuotaFailure;
  readonly badRequest?: BadRequest;

  constructor(
    message: string,
    code: Code,
    details: {
      errorInfo?: ErrorInfo;
      retryInfo?: RetryInfo;
      quotaFailure?: QuotaFailure;
      badRequest?: BadRequest;
    } = {},
    cause?: unknown,
  ) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = new.target.name;
    this.code = code;
    this.codeName = codeName(code);
    Object.assign(this, details);
  }

  /** ErrorInfo.reason, e.g. "REQUEST_ID_REUSED"; "" without ErrorInfo. */
  get reason(): string {
    return this.errorInfo?.reason ?? "";
  }

  /** BadRequest as {field: description}. */
  get fieldViolations(): Record<string, string> {
    const out: Record<string, string> = {};
    for (const v of this.badRequest?.fieldViolations ?? []) out[v.field] = v.description;
    return out;
  }

  /** RetryInfo's delay in milliseconds, when the gateway sent one. */
  get retryDelayMs(): number | undefined {
    const d = this.retryInfo?.retryDelay;
    return d ? Number(d.seconds) * 1000 + d.nanos / 1e6 : undefined;
  }

  override toString(): string {
    return `${this.name}: ${this.codeName}: ${this.message}${this.reason ? ` [${this.reason}]` : ""}`;
  }
}

export class CancelledError extends MusicgwError {}
export class InvalidArgumentError extends MusicgwError {}
export class DeadlineExceededError extends MusicgwError {}
export class NotFoundError extends MusicgwError {}
export class AlreadyExistsError extends MusicgwError {}
export class PermissionDeniedError extends MusicgwError {}
export class ResourceExhaustedError extends MusicgwError {}
export class FailedPreconditionError extends MusicgwError {}
export class OutOfRangeError extends MusicgwError {}
export class InternalError extends MusicgwError {}
export class UnavailableError extends MusicgwError {}
export class UnauthenticatedError extends MusicgwError {}
/** A downloaded file differs from the size or SHA-256 the gateway reported. */
export class ChecksumMismatchError extends MusicgwError {
  constructor(message: string) {
    super(message, Code.DataLoss);
  }
}

const BY_CODE: Partial<Record<Code, new (...args: ConstructorParameters<typeof MusicgwError>) => MusicgwError>> = {
  [Code.Canceled]: CancelledError,
  [Code.InvalidArgument]: InvalidArgumentError,
  [Code.DeadlineExceeded]: DeadlineExceededError,
  [Code.NotFound]: NotFoundError,
  [Code.AlreadyExists]: AlreadyExistsError,
  [Code.PermissionDenied]: PermissionDeniedError,
  [Code.ResourceExhausted]: ResourceExhaustedError,
  [Code.FailedPrecondition]: FailedPreconditionError,
  [Code.OutOfRange]: OutOfRangeError,
  [Code.Internal]: InternalError,
  [Code.Unavailable]: UnavailableError,
  [Code.Unauthenticated]: UnauthenticatedError,
};

function codeName(code: Code): string {
  return (Code[code] ?? "Unknown").replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase().replace("CANCELED", "CANCELLED");
}

// Node's socket, TLS handshake and HTTP/2 failures: no usable connection, which gRPC calls
// UNAVAILABLE (as grpc-core and grpc-go report them).
const NETWORK_ERROR =
  /^(ECONNRESET|ECONNREFUSED|ECONNABORTED|EPIPE|ETIMEDOUT|ENETUNREACH|EHOSTUNREACH|ERR_HTTP2_.*|ERR_TLS_.*|ERR_SSL_.*|.*_CERT.*|UNABLE_TO_.*)$/;

// The same failures when a layer kept only the message ("read ECONNRESET") and not the code.
const NETWORK_ERROR_MESSAGE = /\b(ECONNRESET|ECONNABORTED|EPIPE|ETIMEDOUT)\b/;

function isNetworkError(err: unknown): boolean {
  for (let e = err, depth = 0; e && depth < 5; e = (e as { cause?: unknown }).cause, depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === "string" && NETWORK_ERROR.test(code)) return true;
    const message = (e as { message?: unknown }).message;
    if (typeof message === "string" && NETWORK_ERROR_MESSAGE.test(message)) return true;
  }
  return false;
}

/** The typed error for anything a call threw. */
export function toMusicgwError(err: unknown): MusicgwError {
  if (err instanceof MusicgwError) return err;
  const ce = ConnectError.from(err);
  // connect-node reports a connection reset mid-stream as UNKNOWN, INTERNAL or (an HTTP/2 stream
  // reset) ABORTED, depending on where the read was.
  const transport = ce.code === Code.Unknown || ce.code === Code.Internal || ce.code === Code.Aborted;
  if (transport && (isNetworkError(err) || isNetworkError(ce.cause))) {
    // A dropped connection is UNAVAILABLE in gRPC's terms: safe to retry.
    return new UnavailableError(ce.rawMessage, Code.Unavailable, {}, err);
  }
  const cls = BY_CODE[ce.code] ?? MusicgwError;
  return new cls(
    ce.rawMessage,
    ce.code,
    {
      errorInfo: ce.findDetails(ErrorInfoSchema)[0],
      retryInfo: ce.findDetails(RetryInfoSchema)[0],
      quotaFailure: ce.findDetails(QuotaFailureSchema)[0],
      badRequest: ce.findDetails(BadRequestSchema)[0],
    },
    err,
  );
}

/**
 * Whether the same call may be repeated: the gateway is unavailable or asked to come back, or
 * the connection dropped under the call (Node's HTTP/2 reports a connection reset as a
 * cancelled stream; a cancellation the caller asked for through `signal` is never retried).
 */
export function retryable(err: MusicgwError, signal?: AbortSignal): boolean {
  if (err.code === Code.Unavailable || err.code === Code.ResourceExhausted) return true;
  return err.code === Code.Canceled && !(signal?.aborted ?? false);
}
