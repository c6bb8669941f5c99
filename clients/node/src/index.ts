// musicgw: the TypeScript SDK of the musicgw music generation gateway.
export * from "./client.js";
export * from "./errors.js";
export * from "./gen/musicgw/v1/musicgw_pb.js";
export type { BadRequest, ErrorInfo, QuotaFailure, RetryInfo } from "./gen/google/rpc/error_details_pb.js";
