// Per-tenant admission with a fake clock: token buckets per method class, open-stream slots,
// the error a client gets, and tenants that never share a bucket.
#include "services/gateway/tenant_admission.h"

#include <optional>
#include <utility>
#include <vector>

#include "common/clock.h"
#include "common/errors.h"
#include "gtest/gtest.h"

namespace musicgw::gateway {
namespace {

config::TenantConfig Tenant(const std::string& name) {
  config::TenantConfig tenant;
  tenant.name = name;
  tenant.limits.generate = {2, 3};  // 2/s, bursts of 3
  tenant.limits.max_open_streams = 2;
  tenant.limits.stream = {100, 100};
  return tenant;
}

TEST(TenantAdmissionTest, ABurstThenTheSustainedRateThenRefusalsWithRetryInfo) {
  FakeClock clock;
  TenantAdmission admission(clock, {Tenant("acme"), Tenant("globex")});
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(admission.Admit("acme", MethodClass::kGenerate).ok());
  const absl::Status refused = admission.Admit("acme", MethodClass::kGenerate);
  ASSERT_EQ(refused.code(), absl::StatusCode::kResourceExhausted);
  google::rpc::ErrorInfo info;
  ASSERT_TRUE(GetErrorInfo(refused, &info));
  EXPECT_EQ(info.reason(), "TENANT_RATE_LIMITED");
  EXPECT_EQ(info.metadata().at("limit"), "generate_rate");
  google::rpc::QuotaFailure quota;
  ASSERT_TRUE(GetQuotaFailure(refused, &quota));
  EXPECT_EQ(quota.violations(0).subject(), "tenant:acme/limit:generate_rate");
  google::rpc::RetryInfo retry;
  ASSERT_TRUE(GetRetryInfo(refused, &retry));
  EXPECT_EQ(retry.retry_delay().seconds(), 0);
  EXPECT_EQ(retry.retry_delay().nanos(), 500'000'000);  // one token at 2/s

  // Another tenant and another method class are untouched by acme's empty bucket.
  EXPECT_TRUE(admission.Admit("globex", MethodClass::kGenerate).ok());
  EXPECT_TRUE(admission.Admit("acme", MethodClass::kRead).ok());

  clock.Advance(absl::Milliseconds(499));
  EXPECT_FALSE(admission.Admit("acme", MethodClass::kGenerate).ok());
  clock.Advance(absl::Milliseconds(1));
  EXPECT_TRUE(admission.Admit("acme", MethodClass::kGenerate).ok());
  EXPECT_FALSE(admission.Admit("acme", MethodClass::kGenerate).ok());
  // Idle time refills up to the burst, never beyond it.
  clock.Advance(absl::Hours(1));
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(admission.Admit("acme", MethodClass::kGenerate).ok());
  EXPECT_FALSE(admission.Admit("acme", MethodClass::kGenerate).ok());
}

TEST(TenantAdmissionTest, OpenStreamsAreCountedUntilTheirSlotsGo) {
  FakeClock clock;
  TenantAdmission admission(clock, {Tenant("acme")});
  std::vector<StreamSlot> slots;
  for (int i = 0; i < 2; ++i) {
    auto slot = admission.OpenStream("acme");
    ASSERT_TRUE(slot.ok()) << slot.status();
    slots.push_back(std::move(*slot));
  }
  EXPECT_EQ(admission.open_streams("acme"), 2);
  auto third = admission.OpenStream("acme");
  ASSERT_EQ(third.status().code(), absl::StatusCode::kResourceExhausted);
  google::rpc::ErrorInfo info;
  ASSERT_TRUE(GetErrorInfo(third.status(), &info));
  EXPECT_EQ(info.metadata().at("limit"), "open_streams");
  EXPECT_EQ(admission.open_streams("acme"), 2);
  slots.pop_back();
  EXPECT_EQ(admission.open_streams("acme"), 1);
  EXPECT_TRUE(admission.OpenStream("acme").ok());  // its slot is dropped at once
  EXPECT_EQ(admission.open_streams("acme"), 1);
}

}  // namespace
}  // namespace musicgw::gateway
