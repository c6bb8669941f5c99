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
  // Generation POSTs. Not idempotent upstream (no idempotency key), so a retry could spend
  // credits twice: re-sent only when the request provably never reached processing (the
  // connection could not be made, or a 429). Never after it may have been processed (a reset, a
  // timeout, any 5xx).
  kGenerate,
};

http::Classifier LoudlyClassifier(CallKind kind);

// OK with the response for 2xx; otherwise MapHttpError / MapTransportError. For kGenerate, a
// failure after the request may have been processed (a transport failure other than a
// connection never made, a timeout, a 5xx other than the quota 500) becomes
// GenerationOutcomeUnknown: the song may exist and be charged, so the caller must neither
// retry it nor report it as rejected.
absl::StatusOr<http::Response> CheckResponse(absl::StatusOr<http::Response> result,
                                             const ErrorContext& context,
                                             CallKind kind = CallKind::kRead);

// An outcome-unknown Submit error (adapters/submit_outcome.h) in Loudly's domain: `what` went
// wrong with the answer to a generation request; `http_status` when there was one.
absl::Status GenerationOutcomeUnknown(absl::string_view what, const ErrorContext& context,
                                      int http_status = 0);

}  // namespace musicgw::adapters::loudly
