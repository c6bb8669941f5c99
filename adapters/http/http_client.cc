#include "adapters/http/http_client.h"

#include "absl/strings/match.h"

namespace musicgw::http {

std::optional<std::string> FindHeader(const Headers& headers, absl::string_view name) {
  for (const auto& [key, value] : headers) {
    if (absl::EqualsIgnoreCase(key, name)) return value;
  }
  return std::nullopt;
}

}  // namespace musicgw::http
