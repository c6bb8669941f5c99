// File: loudly_call.h
// HTTP plumbing shared by the Loudly token source and adapter: which failures are retried, and
// how a finished exchange becomes either a 2xx response or a mapped error.
#pragma once

#include "absl/status/statusor.h"
#include "adapters/http/http_client.h"
#include "adapters/http/retry.h"
#include "adapters/loudly/loudly_wire.h"

namespace musicgw::adapters::loudly {

enum class CallKind {
  // Reads (poll, limits, catalog) and the token refresh: retried on transport errors, 429
  // (Retry-After honoured), 500 (unless it is the quota message), 502, 503 and 504.
  kRead,
  // Generation POSTs. Not idempotent upstream, so a retry could spend credits twice: retried
  // only when the provider most likely did not start the work (connection failures, 429, 500
  // other than quota, 502, 503). Never after a timeout or a 504, when it may still be working.
  kGenerate,
};

http::Classifier LoudlyClassifier(CallKind kind);

// OK with the response for 2xx; otherwise MapHttpError / MapTransportError.
absl::StatusOr<http::Response> CheckResponse(absl::StatusOr<http::Response> result,
                                             const ErrorContext& context);

}  // namespace musicgw::adapters::loudly
