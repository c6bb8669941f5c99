// File: page_token.h
// ListOperations paging: the one page_size rule, and page tokens bound to the tenant and the
// filters they were issued for, so a token cannot widen or change a listing. A token carries a
// check over its content: an edited token is refused, not followed.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "musicgw/v1/musicgw.pb.h"

namespace musicgw::operations {

inline constexpr int kDefaultPageSize = 50;
inline constexpr int kMaxPageSize = 1000;

// page_size 0 means kDefaultPageSize; 1..kMaxPageSize as given; anything else is
// INVALID_ARGUMENT on `page_size`.
absl::StatusOr<int> ResolvePageSize(int requested);

// What a token is bound to: the tenant and the filters of the listing (states as a set).
struct PageScope {
  PageScope(absl::string_view tenant, const musicgw::v1::ListOperationsRequest& request);
  std::string tenant;
  std::vector<musicgw::v1::OperationState> states;  // sorted, unique
  musicgw::v1::Provider provider = musicgw::v1::PROVIDER_UNSPECIFIED;
  musicgw::v1::TaskKind task = musicgw::v1::TASK_KIND_UNSPECIFIED;
};

// The token for the page after the one ending with operation `last_id`.
std::string EncodePageToken(const PageScope& scope, absl::string_view last_id);
// The operation id a token continues after. INVALID_ARGUMENT on `page_token` (ErrorInfo
// INVALID_PAGE_TOKEN) when it is not a token this server issued, was edited, or was issued for
// another tenant or other filters.
absl::StatusOr<std::string> DecodePageToken(const PageScope& scope, absl::string_view token);

}  // namespace musicgw::operations
