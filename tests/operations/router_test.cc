// Router tests: cooldown (outlier detection), quota exhaustion, fallback order and accounts of
// one provider routed by their own health and quota, all on a fake clock.
#include "services/operations/router.h"

#include <string>
#include <vector>

#include "common/clock.h"
#include "common/errors.h"
#include "gtest/gtest.h"
#include "tests/operations/fake_adapter.h"
#include "tests/operations/test_util.h"

namespace musicgw::operations {
namespace {

namespace v1 = musicgw::v1;
using testing::FakeAdapter;
using testing::TextRequest;

std::string Reason(const absl::Status& status) {
  google::rpc::ErrorInfo info;
  return GetErrorInfo(status, &info) ? info.reason() : "";
}

FakeAdapter::Options Account(v1::Provider provider, std::string account,
                             std::vector<std::string> resources = {}) {
  FakeAdapter::Options options;
  options.provider = provider;
  options.account = std::move(account);
  options.quota_resources = std::move(resources);
  return options;
}

adapters::QuotaFigure Figure(std::string resource, int64_t remaining, absl::Time reset) {
  adapters::QuotaFigure figure;
  figure.resource = std::move(resource);
  figure.limit = 10;
  figure.remaining = remaining;
  figure.used = 10 - remaining;
  figure.reset_time = reset;
  return figure;
}

class RouterTest : public ::testing::Test {
 protected:
  RouterOptions Options() const {
    RouterOptions options;
    options.failure_threshold = 2;
    options.failure_cooldown = absl::Seconds(30);
    options.default_quota_backoff = absl::Seconds(60);
    return options;
  }
  FakeClock clock_;
};

TEST_F(RouterTest, CooldownStartsAtTheThresholdAndEndsWithTheClock) {
  FakeAdapter first(Account(v1::PROVIDER_SOUNDPIECE, "a"));
  FakeAdapter second(Account(v1::PROVIDER_SOUNDPIECE, "b"));
  Router router({&first, &second}, Options(), clock_);
  const v1::GenerateRequest request = TextRequest("calm piano");
  ASSERT_EQ(*router.Route(request), 0);

  router.RecordFailure(0, absl::UnavailableError("down"));
  EXPECT_EQ(router.States()[0].health, v1::PROVIDER_HEALTH_DEGRADED);
  EXPECT_EQ(*router.Route(request), 0) << "one failure is below the threshold";

  router.RecordFailure(0, absl::UnavailableError("down"));
  EXPECT_EQ(router.States()[0].health, v1::PROVIDER_HEALTH_UNAVAILABLE);
  EXPECT_EQ(router.States()[0].cooldown_until, clock_.Now() + absl::Seconds(30));
  EXPECT_EQ(*router.Route(request), 1) << "the cooling account is skipped";

  // A request's own fault does not count against the provider.
  router.RecordFailure(1, absl::InvalidArgumentError("bad prompt"));
  EXPECT_EQ(router.States()[1].health, v1::PROVIDER_HEALTH_HEALTHY);

  clock_.Advance(absl::Seconds(29));
  EXPECT_EQ(*router.Route(request), 1);
  clock_.Advance(absl::Seconds(1));
  EXPECT_EQ(*router.Route(request), 0) << "the cooldown ended";
  EXPECT_EQ(router.States()[0].health, v1::PROVIDER_HEALTH_DEGRADED);
  router.RecordSuccess(0);
  EXPECT_EQ(router.States()[0].health, v1::PROVIDER_HEALTH_HEALTHY);
}

TEST_F(RouterTest, EveryAccountCoolingDownIsUnavailableWithRetryInfo) {
  FakeAdapter only(Account(v1::PROVIDER_SOUNDPIECE, "a"));
  Router router({&only}, Options(), clock_);
  router.RecordFailure(0, absl::InternalError("boom"));
  router.RecordFailure(0, absl::InternalError("boom"));
  clock_.Advance(absl::Seconds(10));
  auto routed = router.Route(TextRequest("x"));
  ASSERT_EQ(routed.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(Reason(routed.status()), "PROVIDER_UNAVAILABLE");
  google::rpc::RetryInfo retry;
  ASSERT_TRUE(GetRetryInfo(routed.status(), &retry));
  EXPECT_EQ(retry.retry_delay().seconds(), 20);
}

TEST_F(RouterTest, QuotaExhaustionBlocksUntilTheReset) {
  FakeAdapter only(Account(v1::PROVIDER_SOUNDPIECE, "a", {"songs"}));
  Router router({&only}, Options(), clock_);
  const absl::Time reset = clock_.Now() + absl::Hours(1);
  router.UpdateQuota(&only, {Figure("songs", 0, reset)});
  EXPECT_TRUE(router.States()[0].quota_exhausted);
  auto routed = router.Route(TextRequest("x"));
  ASSERT_EQ(routed.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(Reason(routed.status()), "PROVIDER_QUOTA_EXHAUSTED");
  google::rpc::RetryInfo retry;
  ASSERT_TRUE(GetRetryInfo(routed.status(), &retry));
  EXPECT_EQ(retry.retry_delay().seconds(), 3600);

  clock_.Advance(absl::Minutes(59));
  EXPECT_FALSE(router.Route(TextRequest("x")).ok());
  clock_.Advance(absl::Minutes(1));
  EXPECT_EQ(*router.Route(TextRequest("x")), 0) << "the quota reset";
  EXPECT_FALSE(router.States()[0].quota_exhausted);
}

TEST_F(RouterTest, QuotaRejectionWithoutRetryInfoBlocksForTheDefaultBackoff) {
  FakeAdapter only(Account(v1::PROVIDER_SOUNDPIECE, "a"));
  Router router({&only}, Options(), clock_);
  router.RecordFailure(0, absl::ResourceExhaustedError("out of credits"));
  EXPECT_TRUE(router.States()[0].quota_exhausted);
  EXPECT_EQ(router.Route(TextRequest("x")).status().code(), absl::StatusCode::kResourceExhausted);
  clock_.Advance(absl::Seconds(60));
  EXPECT_EQ(*router.Route(TextRequest("x")), 0);
}

TEST_F(RouterTest, FallbackFollowsRoutingOrderAndSkipsTriedAccounts) {
  FakeAdapter loudly(Account(v1::PROVIDER_LOUDLY, "l"));
  FakeAdapter sp_a(Account(v1::PROVIDER_SOUNDPIECE, "a"));
  FakeAdapter sp_b(Account(v1::PROVIDER_SOUNDPIECE, "b"));
  Router router({&loudly, &sp_a, &sp_b}, Options(), clock_);

  v1::GenerateRequest request = TextRequest("x");
  request.set_provider(v1::PROVIDER_SOUNDPIECE);
  EXPECT_EQ(*router.Route(request), 1) << "the requested provider's first account";

  v1::Operation op;
  *op.mutable_request() = request;
  auto* attempt = op.add_attempts();
  attempt->set_provider(v1::PROVIDER_SOUNDPIECE);
  attempt->set_account("a");
  EXPECT_EQ(router.PickFallback(op), 0) << "routing order, the tried account skipped";
  attempt = op.add_attempts();
  attempt->set_provider(v1::PROVIDER_LOUDLY);
  attempt->set_account("l");
  EXPECT_EQ(router.PickFallback(op), 2);
  attempt = op.add_attempts();
  attempt->set_provider(v1::PROVIDER_SOUNDPIECE);
  attempt->set_account("b");
  EXPECT_EQ(router.PickFallback(op), -1);
}

TEST_F(RouterTest, TwoAccountsOfOneProviderRouteByTheirOwnHealthAndQuota) {
  FakeAdapter exhausted(Account(v1::PROVIDER_SOUNDPIECE, "exhausted", {"songs"}));
  FakeAdapter unhealthy(Account(v1::PROVIDER_SOUNDPIECE, "unhealthy", {"songs"}));
  FakeAdapter healthy(Account(v1::PROVIDER_SOUNDPIECE, "healthy", {"songs"}));
  Router router({&exhausted, &unhealthy, &healthy}, Options(), clock_);
  router.UpdateQuota(&exhausted, {Figure("songs", 0, clock_.Now() + absl::Hours(2))});
  router.RecordFailure(1, absl::UnavailableError("down"));
  router.RecordFailure(1, absl::UnavailableError("down"));
  router.UpdateQuota(&healthy, {Figure("songs", 5, clock_.Now() + absl::Hours(2))});

  v1::GenerateRequest request = TextRequest("x");
  request.set_provider(v1::PROVIDER_SOUNDPIECE);
  EXPECT_EQ(*router.Route(request), 2);

  const std::vector<ProviderState> states = router.States();
  ASSERT_EQ(states.size(), 3u);
  EXPECT_EQ(states[0].account, "exhausted");
  EXPECT_TRUE(states[0].quota_exhausted);
  EXPECT_EQ(states[0].health, v1::PROVIDER_HEALTH_HEALTHY);
  EXPECT_EQ(states[1].account, "unhealthy");
  EXPECT_FALSE(states[1].quota_exhausted);
  EXPECT_EQ(states[1].health, v1::PROVIDER_HEALTH_UNAVAILABLE);
  EXPECT_EQ(states[2].account, "healthy");
  EXPECT_FALSE(states[2].quota_exhausted);
  EXPECT_EQ(states[2].health, v1::PROVIDER_HEALTH_HEALTHY);

  // The healthy account runs out as well: the first candidate's reason is reported.
  router.UpdateQuota(&healthy, {Figure("songs", 0, clock_.Now() + absl::Hours(2))});
  EXPECT_EQ(router.Route(request).status().code(), absl::StatusCode::kResourceExhausted);
  // The unhealthy account's cooldown ends first: it serves again.
  clock_.Advance(absl::Seconds(30));
  EXPECT_EQ(*router.Route(request), 1);
}

TEST_F(RouterTest, AnUnconfiguredProviderIsABadRequestOnProvider) {
  FakeAdapter only(Account(v1::PROVIDER_SOUNDPIECE, "a"));
  Router router({&only}, Options(), clock_);
  v1::GenerateRequest request = TextRequest("x");
  request.set_provider(v1::PROVIDER_LOUDLY);
  request.set_allow_fallback(true);
  auto routed = router.Route(request);
  ASSERT_EQ(routed.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Reason(routed.status()), "PROVIDER_NOT_CONFIGURED");
  google::rpc::BadRequest bad;
  ASSERT_TRUE(GetBadRequest(routed.status(), &bad));
  ASSERT_EQ(bad.field_violations_size(), 1);
  EXPECT_EQ(bad.field_violations(0).field(), "provider");
}

TEST_F(RouterTest, CandidatesFollowCapabilitiesAndConfiguration) {
  FakeAdapter loudly(Account(v1::PROVIDER_LOUDLY, "l"));
  FakeAdapter soundpiece(Account(v1::PROVIDER_SOUNDPIECE, "s"));
  Router both({&loudly, &soundpiece}, Options(), clock_);
  v1::GenerateRequest text = TextRequest("x");
  EXPECT_EQ(*both.Route(text), 0);
  // Only Loudly takes a 60-second text_to_music: Soundpiece is never a candidate, even when
  // Loudly is cooling down.
  text.mutable_text_to_music()->set_duration_seconds(60);
  both.RecordFailure(0, absl::UnavailableError("down"));
  both.RecordFailure(0, absl::UnavailableError("down"));
  EXPECT_EQ(both.Route(text).status().code(), absl::StatusCode::kUnavailable);

  // A task no configured provider does: the configured provider's reason, on the task field.
  Router loudly_only({&loudly}, Options(), clock_);
  v1::GenerateRequest sample;
  sample.set_request_id(RandomUuid());
  sample.mutable_sample()->set_prompt("a drum loop");
  auto none = loudly_only.Route(sample);
  ASSERT_EQ(none.status().code(), absl::StatusCode::kInvalidArgument);
  google::rpc::BadRequest bad;
  ASSERT_TRUE(GetBadRequest(none.status(), &bad));
  EXPECT_EQ(bad.field_violations(0).field(), "sample");
}

}  // namespace
}  // namespace musicgw::operations
