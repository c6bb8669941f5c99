#include "adapters/http/http_client.h"

#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"

namespace musicgw::http {

std::optional<std::string> FindHeader(const Headers& headers, absl::string_view name) {
  for (const auto& [key, value] : headers) {
    if (absl::EqualsIgnoreCase(key, name)) return value;
  }
  return std::nullopt;
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

}  // namespace musicgw::http
