#include "adapters/loudly/loudly_call.h"

#include <utility>

namespace musicgw::adapters::loudly {

http::Classifier LoudlyClassifier(CallKind kind) {
  return [kind](const absl::StatusOr<http::Response>& result) -> http::RetryDecision {
    if (!result.ok()) {
      switch (result.status().code()) {
        case absl::StatusCode::kUnavailable:
          return {true, "unavailable", std::nullopt};
        case absl::StatusCode::kDeadlineExceeded:
          if (kind == CallKind::kRead) return {true, "timeout", std::nullopt};
          return {};
        default:
          return {};
      }
    }
    const int status = result->status;
    std::optional<absl::Duration> server_delay;
    if (auto header = result->Header("Retry-After")) server_delay = http::ParseRetryAfter(*header);
    switch (status) {
      case 429:
        return {true, "http_429", server_delay};
      case 500:
        // The quota 500 is final until its timer runs out: the caller gets RetryInfo instead.
        if (FindQuotaMessage(result->body).has_value()) return {};
        return {true, "http_5xx", server_delay};
      case 502:
      case 503:
        return {true, "http_5xx", server_delay};
      case 504:
        if (kind == CallKind::kRead) return {true, "http_5xx", server_delay};
        return {};
      default:
        return {};
    }
  };
}

absl::StatusOr<http::Response> CheckResponse(absl::StatusOr<http::Response> result,
                                             const ErrorContext& context) {
  if (!result.ok()) return MapTransportError(result.status(), context);
  if (result->status >= 200 && result->status < 300) return result;
  std::optional<absl::Duration> retry_after;
  if (auto header = result->Header("Retry-After")) retry_after = http::ParseRetryAfter(*header);
  return MapHttpError(result->status, result->body, retry_after, context);
}

}  // namespace musicgw::adapters::loudly
