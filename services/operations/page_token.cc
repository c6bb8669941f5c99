#include "services/operations/page_token.h"

#include <algorithm>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/crypto.h"
#include "common/errors.h"
#include "services/operations/ids.h"

namespace musicgw::operations {

namespace v1 = musicgw::v1;

namespace {

constexpr absl::string_view kVersion = "v1";

// Identifies the tenant and filters (not secret: a token only moves a cursor within a listing
// the caller may see anyway).
std::string ScopeKey(const PageScope& scope) {
  std::vector<int> states(scope.states.begin(), scope.states.end());
  return Sha256Hex(absl::StrCat(scope.tenant, "|", absl::StrJoin(states, ","), "|",
                                static_cast<int>(scope.provider), "|",
                                static_cast<int>(scope.task)))
      .substr(0, 16);
}

std::string Check(absl::string_view key, absl::string_view id) {
  return Sha256Hex(absl::StrCat("musicgw-page|", key, "|", id)).substr(0, 12);
}

absl::Status BadToken(absl::string_view why) {
  return WithErrorInfo(InvalidFieldError("page_token", why), "INVALID_PAGE_TOKEN", kGatewayDomain);
}

}  // namespace

absl::StatusOr<int> ResolvePageSize(int requested) {
  if (requested == 0) return kDefaultPageSize;
  if (requested < 0 || requested > kMaxPageSize) {
    return InvalidFieldError("page_size", absl::StrCat("must be between 0 and ", kMaxPageSize,
                                                       " (0: ", kDefaultPageSize, ")"));
  }
  return requested;
}

PageScope::PageScope(absl::string_view tenant_in, const v1::ListOperationsRequest& request)
    : tenant(tenant_in), provider(request.provider()), task(request.task()) {
  for (int state : request.states()) states.push_back(static_cast<v1::OperationState>(state));
  std::sort(states.begin(), states.end());
  states.erase(std::unique(states.begin(), states.end()), states.end());
}

std::string EncodePageToken(const PageScope& scope, absl::string_view last_id) {
  const std::string key = ScopeKey(scope);
  return absl::WebSafeBase64Escape(
      absl::StrCat(kVersion, ":", key, ":", last_id, ":", Check(key, last_id)));
}

absl::StatusOr<std::string> DecodePageToken(const PageScope& scope, absl::string_view token) {
  std::string decoded;
  std::vector<std::string> parts;
  if (absl::WebSafeBase64Unescape(token, &decoded)) parts = absl::StrSplit(decoded, ':');
  if (parts.size() != 4 || parts[0] != kVersion || !IsOperationId(parts[2]) ||
      parts[3] != Check(parts[1], parts[2])) {
    return BadToken("is not a token this server issued (use next_page_token as returned)");
  }
  if (parts[1] != ScopeKey(scope)) {
    return BadToken(
        "was issued for a different listing: repeat the filters of the request that returned "
        "it");
  }
  return parts[2];
}

}  // namespace musicgw::operations
