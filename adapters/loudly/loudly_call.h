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
  // only when the provider most likely did not start the work (the connection could not be
  // made, 429, 500 other than quota, 502, 503). Never after the request may have been sent
  // (a reset or a truncated answer), a timeout or a 504: it may still be working.
  kGenerate,
};

http::Classifier LoudlyClassifier(CallKind kind);

// True when a transport failure happened before the request could reach the provider (name
// resolution, connection refused, TLS handshake), read from the client's error text.
bool FailedBeforeSending(const absl::Status& status);

// OK with the response for 2xx; otherwise MapHttpError / MapTransportError. For kGenerate, a
// transport failure after the request may have been sent becomes DEADLINE_EXCEEDED with reason
// PROVIDER_OUTCOME_UNKNOWN: the generation may have started (and been charged), so the caller
// must neither retry it nor report it as rejected (abseil: DEADLINE_EXCEEDED "may be returned
// even if the operation completed successfully").
absl::StatusOr<http::Response> CheckResponse(absl::StatusOr<http::Response> result,
                                             const ErrorContext& context,
                                             CallKind kind = CallKind::kRead);

}  // namespace musicgw::adapters::loudly
