#include "adapters/loudly/loudly_call.h"

#include <map>
#include <string>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "adapters/submit_outcome.h"
#include "common/errors.h"

namespace musicgw::adapters::loudly {

http::Classifier LoudlyClassifier(CallKind kind) {
  return [kind](const absl::StatusOr<http::Response>& result) -> http::RetryDecision {
    const bool read = kind == CallKind::kRead;
    if (!result.ok()) {
      switch (result.status().code()) {
        case absl::StatusCode::kUnavailable:
          if (read || http::FailedBeforeSending(result.status())) {
            return {true, "unavailable", std::nullopt};
          }
          return {};
        case absl::StatusCode::kDeadlineExceeded:
          if (read) return {true, "timeout", std::nullopt};
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
        // Refused before processing: safe to send again even when it creates paid work.
        return {true, "http_429", server_delay};
      case 500:
        // The quota 500 is final until its timer runs out: the caller gets RetryInfo instead.
        if (FindQuotaMessage(result->body).has_value()) return {};
        // A generation POST that got a 5xx reached the provider, which may have created (and
        // charged for) the song: Loudly takes no idempotency key, so it is never re-sent.
        if (!read) return {};
        return {true, "http_5xx", server_delay};
      case 502:
      case 503:
      case 504:
        if (!read) return {};
        return {true, "http_5xx", server_delay};
      default:
        return {};
    }
  };
}

absl::StatusOr<http::Response> CheckResponse(absl::StatusOr<http::Response> result,
                                             const ErrorContext& context, CallKind kind) {
  const bool generate = kind == CallKind::kGenerate;
  if (!result.ok()) {
    const absl::StatusCode code = result.status().code();
    if (generate && !http::FailedBeforeSending(result.status()) &&
        code != absl::StatusCode::kInvalidArgument) {
      return GenerationOutcomeUnknown(
          absl::StrCat(code == absl::StatusCode::kDeadlineExceeded
                           ? "Loudly did not answer the generation request in time"
                           : "the connection to Loudly broke after the generation request was sent",
                       " (", Redact(result.status().message(), context.secrets), ")"),
          context);
    }
    return MapTransportError(result.status(), context);
  }
  if (result->status >= 200 && result->status < 300) return result;
  std::optional<absl::Duration> retry_after;
  if (auto header = result->Header("Retry-After")) retry_after = http::ParseRetryAfter(*header);
  absl::Status mapped = MapHttpError(result->status, result->body, retry_after, context);
  if (generate && result->status >= 500 && !FindQuotaMessage(result->body).has_value()) {
    return GenerationOutcomeUnknown(
        absl::StrCat("Loudly answered the generation request with HTTP ", result->status, " (",
                     mapped.message(), ")"),
        context, result->status);
  }
  return mapped;
}

absl::Status GenerationOutcomeUnknown(absl::string_view what, const ErrorContext& context,
                                      int http_status) {
  std::map<std::string, std::string> metadata = {{"account", context.account}};
  if (http_status > 0) metadata["http_status"] = absl::StrCat(http_status);
  return OutcomeUnknownError(
      absl::StrCat(what,
                   "; the song may exist and be charged, and Loudly takes no idempotency "
                   "key, so it is not sent again"),
      kDomain, metadata);
}

}  // namespace musicgw::adapters::loudly
