#include "adapters/loudly/loudly_call.h"

#include <map>
#include <string>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/errors.h"

namespace musicgw::adapters::loudly {

http::Classifier LoudlyClassifier(CallKind kind) {
  return [kind](const absl::StatusOr<http::Response>& result) -> http::RetryDecision {
    if (!result.ok()) {
      switch (result.status().code()) {
        case absl::StatusCode::kUnavailable:
          if (kind == CallKind::kRead || FailedBeforeSending(result.status())) {
            return {true, "unavailable", std::nullopt};
          }
          return {};
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

bool FailedBeforeSending(const absl::Status& status) {
  if (status.code() != absl::StatusCode::kUnavailable) return false;
  // libcurl's texts for CURLE_COULDNT_RESOLVE_HOST/PROXY, CURLE_COULDNT_CONNECT and
  // CURLE_SSL_CONNECT_ERROR (error buffer or curl_easy_strerror).
  const std::string message = absl::AsciiStrToLower(status.message());
  for (absl::string_view phrase : {"could not resolve", "couldn't resolve", "failed to connect",
                                   "couldn't connect", "ssl connect error"}) {
    if (absl::StrContains(message, phrase)) return true;
  }
  return false;
}

absl::StatusOr<http::Response> CheckResponse(absl::StatusOr<http::Response> result,
                                             const ErrorContext& context, CallKind kind) {
  if (!result.ok()) {
    if (kind == CallKind::kGenerate && result.status().code() == absl::StatusCode::kUnavailable &&
        !FailedBeforeSending(result.status())) {
      absl::Status mapped = MapTransportError(result.status(), context);
      google::rpc::ErrorInfo info;
      GetErrorInfo(mapped, &info);
      std::map<std::string, std::string> metadata(info.metadata().begin(), info.metadata().end());
      return WithErrorInfo(
          absl::DeadlineExceededError(absl::StrCat(
              "the connection to Loudly broke after the generation request was sent; it may "
              "have started (and been charged): ",
              Redact(result.status().message(), context.secrets))),
          "PROVIDER_OUTCOME_UNKNOWN", kDomain, metadata);
    }
    return MapTransportError(result.status(), context);
  }
  if (result->status >= 200 && result->status < 300) return result;
  std::optional<absl::Duration> retry_after;
  if (auto header = result->Header("Retry-After")) retry_after = http::ParseRetryAfter(*header);
  return MapHttpError(result->status, result->body, retry_after, context);
}

}  // namespace musicgw::adapters::loudly
