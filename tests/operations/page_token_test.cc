// Page tokens: bound to the tenant and filters they were issued for, refused when edited, and
// the one page_size rule.
#include "services/operations/page_token.h"

#include <string>

#include "absl/strings/escaping.h"
#include "common/errors.h"
#include "gtest/gtest.h"
#include "services/operations/ids.h"

namespace musicgw::operations {
namespace {

namespace v1 = musicgw::v1;

std::string Reason(const absl::Status& status) {
  google::rpc::ErrorInfo info;
  return GetErrorInfo(status, &info) ? info.reason() : "";
}

std::string Field(const absl::Status& status) {
  google::rpc::BadRequest bad;
  return GetBadRequest(status, &bad) && bad.field_violations_size() > 0
             ? bad.field_violations(0).field()
             : "";
}

v1::ListOperationsRequest Filters() {
  v1::ListOperationsRequest request;
  request.add_states(v1::OPERATION_STATE_RUNNING);
  request.add_states(v1::OPERATION_STATE_QUEUED);
  request.set_provider(v1::PROVIDER_LOUDLY);
  return request;
}

const std::string kId = NewOperationId(absl::FromUnixSeconds(1'800'000'000));

TEST(PageTokenTest, RoundTripsForTheSameTenantAndFilters) {
  const std::string token = EncodePageToken(PageScope("acme", Filters()), kId);
  auto id = DecodePageToken(PageScope("acme", Filters()), token);
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(*id, kId);
  // The states are a set: their order and repetition do not matter.
  v1::ListOperationsRequest reordered;
  reordered.add_states(v1::OPERATION_STATE_QUEUED);
  reordered.add_states(v1::OPERATION_STATE_RUNNING);
  reordered.add_states(v1::OPERATION_STATE_QUEUED);
  reordered.set_provider(v1::PROVIDER_LOUDLY);
  EXPECT_TRUE(DecodePageToken(PageScope("acme", reordered), token).ok());
}

TEST(PageTokenTest, ATamperedTokenIsRefused) {
  const std::string token = EncodePageToken(PageScope("acme", Filters()), kId);
  std::string decoded;
  ASSERT_TRUE(absl::WebSafeBase64Unescape(token, &decoded));
  // Another valid id in place of the cursor, the rest left alone.
  std::string edited = decoded;
  const size_t at = edited.find(kId);
  ASSERT_NE(at, std::string::npos);
  edited[at + 25] = edited[at + 25] == 'a' ? 'b' : 'a';
  for (const std::string& bad : {absl::WebSafeBase64Escape(edited), std::string("not-a-token"),
                                 token.substr(0, token.size() - 2), std::string("")}) {
    if (bad.empty()) continue;
    auto id = DecodePageToken(PageScope("acme", Filters()), bad);
    EXPECT_EQ(id.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_EQ(Reason(id.status()), "INVALID_PAGE_TOKEN");
    EXPECT_EQ(Field(id.status()), "page_token");
  }
}

TEST(PageTokenTest, ATokenReusedWithOtherFiltersIsRefused) {
  const std::string token = EncodePageToken(PageScope("acme", Filters()), kId);
  v1::ListOperationsRequest other = Filters();
  other.set_task(v1::TASK_KIND_SAMPLE);
  auto id = DecodePageToken(PageScope("acme", other), token);
  EXPECT_EQ(id.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Reason(id.status()), "INVALID_PAGE_TOKEN");
  v1::ListOperationsRequest fewer;
  fewer.add_states(v1::OPERATION_STATE_RUNNING);
  fewer.set_provider(v1::PROVIDER_LOUDLY);
  EXPECT_FALSE(DecodePageToken(PageScope("acme", fewer), token).ok());
}

TEST(PageTokenTest, AnotherTenantsTokenIsRefused) {
  const std::string token = EncodePageToken(PageScope("acme", Filters()), kId);
  auto id = DecodePageToken(PageScope("globex", Filters()), token);
  EXPECT_EQ(id.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Field(id.status()), "page_token");
}

TEST(PageTokenTest, OnePageSizeRule) {
  EXPECT_EQ(*ResolvePageSize(0), kDefaultPageSize);
  EXPECT_EQ(*ResolvePageSize(1), 1);
  EXPECT_EQ(*ResolvePageSize(kMaxPageSize), kMaxPageSize);
  for (int bad : {-1, kMaxPageSize + 1, 5000}) {
    auto size = ResolvePageSize(bad);
    EXPECT_EQ(size.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_EQ(Field(size.status()), "page_size");
  }
}

}  // namespace
}  // namespace musicgw::operations
