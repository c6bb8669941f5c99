// /metrics of the whole gateway (GatewayServer, in-process) during real generations over gRPC
// against the emulators: the values move, and the quota gauges equal what GetQuota reports.
// Skips while the server does not serve /metrics (metrics_port() == 0).
#include <unistd.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/config.h"
#include "common/errors.h"
#include "emulators/loudly/loudly_emulator.h"
#include "emulators/soundpiece/soundpiece_emulator.h"
#include "gtest/gtest.h"
#include "services/gateway/server.h"
#include "tests/integration/harness.h"
#include "tests/metrics/emulator_util.h"
#include "tests/metrics/metrics_test_util.h"
#include "tests/scratch_dir.h"

namespace musicgw::metrics {
namespace {

namespace v1 = ::musicgw::v1;
using musicgw::testing::Context;
using musicgw::testing::kAcmeKey;

class MetricsServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    musicgw::testing::SetTestSecrets();
    const absl::Status started = emulators_.Start(LoudlyLimits());
    ASSERT_TRUE(started.ok()) << started;

    const std::string ledger = NewTestScratchDir("metrics-server") + "/ledger.db";
    nlohmann::json doc = musicgw::testing::TestConfig(
        {emulators_.loudly->base_url(), emulators_.soundpiece->base_url()}, ledger);
    doc["operations"]["quota_refresh_seconds"] = 600;  // only reads after generations move it
    doc["providers"][1]["credits"] = {{"balance", 50}};
    auto config = config::ParseConfig(doc.dump(), config::ProcessEnv());
    ASSERT_TRUE(config.ok()) << config.status();
    auto server = gateway::GatewayServer::Start(std::move(*config));
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    stub_ = musicgw::testing::Stub(server_->grpc_port());
  }

  virtual std::map<std::string, int64_t> LoudlyLimits() const { return {}; }

  void TearDown() override {
    if (server_ != nullptr) server_->Drain(absl::Seconds(1));
  }

  // GetQuota's figure for Loudly `resource`, once `used` differs from `not_used`.
  std::optional<v1::ProviderQuota> LoudlyQuota(const std::string& resource, int64_t not_used) {
    return Quota(v1::PROVIDER_LOUDLY, resource, not_used);
  }
  std::optional<v1::ProviderQuota> Quota(v1::Provider provider, const std::string& resource,
                                         int64_t not_used) {
    const absl::Time deadline = absl::Now() + absl::Seconds(20);
    while (absl::Now() < deadline) {
      v1::QuotaReport report;
      if (stub_->GetQuota(Context(kAcmeKey).get(), {}, &report).ok()) {
        for (const auto& quota : report.provider_quotas()) {
          if (quota.provider() == provider && (resource.empty() || quota.resource() == resource) &&
              quota.used() != not_used) {
            return quota;
          }
        }
      }
      absl::SleepFor(absl::Milliseconds(50));  // quota reads are asynchronous; nothing to wait on
    }
    return std::nullopt;
  }

  testing::Emulators emulators_;
  std::unique_ptr<gateway::GatewayServer> server_;
  std::unique_ptr<v1::MusicGateway::Stub> stub_;
};

TEST_F(MetricsServerTest, ScrapeDuringARealGenerationShowsTheValuesMove) {
  ASSERT_NE(server_->metrics_port(), 0);
  constexpr char kResource[] = "GENERATE_VEGA_SONG_WITH_PROMPT";
  const std::optional<v1::ProviderQuota> before = LoudlyQuota(kResource, -2);
  ASSERT_TRUE(before.has_value()) << "no Loudly quota figure " << kResource;
  const absl::StatusOr<std::string> scrape_before = testing::FetchMetrics(server_->metrics_port());
  ASSERT_TRUE(scrape_before.ok()) << scrape_before.status();

  v1::GenerateRequest request;
  request.set_request_id(musicgw::testing::NewRequestId());
  request.set_provider(v1::PROVIDER_LOUDLY);
  request.mutable_text_to_music()->set_prompt("warm synthwave");
  request.mutable_text_to_music()->set_duration_seconds(30);
  v1::Operation operation;
  grpc::Status status = stub_->Generate(Context(kAcmeKey).get(), request, &operation);
  ASSERT_TRUE(status.ok()) << status.error_message();
  v1::WaitOperationRequest wait;
  wait.set_name(operation.name());
  wait.mutable_timeout()->set_seconds(30);
  status = stub_->WaitOperation(Context(kAcmeKey, absl::Seconds(40)).get(), wait, &operation);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(operation.state(), v1::OPERATION_STATE_SUCCEEDED) << operation.error().message();

  const std::optional<v1::ProviderQuota> after = LoudlyQuota(kResource, before->used());
  ASSERT_TRUE(after.has_value()) << "GetQuota never showed the generation";
  const absl::StatusOr<std::string> scrape = testing::FetchMetrics(server_->metrics_port());
  ASSERT_TRUE(scrape.ok()) << scrape.status();

  EXPECT_EQ(after->used(), before->used() + 1);
  EXPECT_EQ(after->remaining(), before->remaining() - 1);
  // The gauges read the same snapshot as GetQuota.
  const std::vector<std::string> labels = {"provider=\"loudly\"", "account=\"loudly-test\"",
                                           absl::StrCat("resource=\"", kResource, "\"")};
  EXPECT_EQ(testing::Sample(*scrape_before, "musicgw_provider_quota_used", labels), before->used());
  EXPECT_EQ(testing::Sample(*scrape, "musicgw_provider_quota_used", labels), after->used());
  EXPECT_EQ(testing::Sample(*scrape, "musicgw_provider_quota_remaining", labels),
            after->remaining());
  EXPECT_EQ(testing::Sample(*scrape, "musicgw_provider_quota_limit", labels), after->limit());

  // The gateway's own pools report their queues (idle here).
  EXPECT_TRUE(testing::Sample(*scrape, "musicgw_queued_tasks", {"pool=\"accept\""}).has_value());
  EXPECT_TRUE(
      testing::Sample(*scrape, "musicgw_queued_tasks", {"pool=\"background\""}).has_value());
  EXPECT_GE(testing::Sample(*scrape, "musicgw_grpc_requests_total",
                            {"method=\"Generate\"", "grpc_code=\"OK\""})
                .value_or(0),
            1);
  EXPECT_GE(testing::Sample(*scrape, "musicgw_grpc_requests_total",
                            {"method=\"WaitOperation\"", "grpc_code=\"OK\""})
                .value_or(0),
            1);
  EXPECT_GE(
      testing::Sample(*scrape, "musicgw_grpc_requests_total", {"method=\"GetQuota\""}).value_or(0),
      2);
  EXPECT_EQ(testing::Sample(*scrape_before, "musicgw_operations_created_total",
                            {"provider=\"loudly\"", "task=\"text_to_music\""}),
            std::nullopt);
  EXPECT_EQ(testing::Sample(*scrape, "musicgw_operations_created_total",
                            {"provider=\"loudly\"", "task=\"text_to_music\""}),
            1);
  EXPECT_EQ(
      testing::Sample(*scrape, "musicgw_operations_completed_total",
                      {"provider=\"loudly\"", "task=\"text_to_music\"", "outcome=\"succeeded\""}),
      1);
  EXPECT_GE(testing::Sample(*scrape, "musicgw_upstream_requests_total",
                            {"provider=\"loudly\"", "endpoint=\"loudly:ai.prompt.songs:post\"",
                             "status_class=\"2xx\""})
                .value_or(0),
            1);
  EXPECT_EQ(testing::Sample(*scrape, "musicgw_provider_health",
                            {"provider=\"loudly\"", "health=\"healthy\""}),
            1);
  // Nothing that identifies a tenant, key or operation is in the scrape.
  for (const std::string& secret :
       {std::string("acme"), std::string(kAcmeKey), operation.name(), operation.upstream_id()}) {
    if (!secret.empty()) {
      EXPECT_FALSE(absl::StrContains(*scrape, secret)) << secret;
    }
  }
  if (access(testing::kPromtool, X_OK) == 0) {
    const auto [rc, output] = testing::PromtoolCheckMetrics(*scrape);
    EXPECT_EQ(rc, 0) << output;
  }
}

// Generate with `request` and wait until it is done.
v1::Operation GenerateAndWait(v1::MusicGateway::Stub& stub, v1::GenerateRequest request) {
  request.set_request_id(musicgw::testing::NewRequestId());
  v1::Operation operation;
  grpc::Status status = stub.Generate(Context(kAcmeKey).get(), request, &operation);
  EXPECT_TRUE(status.ok()) << status.error_message();
  v1::WaitOperationRequest wait;
  wait.set_name(operation.name());
  wait.mutable_timeout()->set_seconds(30);
  status = stub.WaitOperation(Context(kAcmeKey, absl::Seconds(40)).get(), wait, &operation);
  EXPECT_TRUE(status.ok()) << status.error_message();
  return operation;
}

v1::GenerateRequest LoudlyText(bool allow_fallback) {
  v1::GenerateRequest request;
  request.set_provider(v1::PROVIDER_LOUDLY);
  request.set_allow_fallback(allow_fallback);
  request.mutable_text_to_music()->set_prompt("warm synthwave");  // both providers take it
  return request;
}

TEST_F(MetricsServerTest, SoundpieceCreditsFallAsTheLedgerChargesThem) {
  const std::optional<v1::ProviderQuota> before = Quota(v1::PROVIDER_SOUNDPIECE, "credits", -2);
  ASSERT_TRUE(before.has_value());
  EXPECT_EQ(before->limit(), 50);  // the balance the config states
  EXPECT_EQ(before->used(), 0);
  EXPECT_EQ(before->remaining(), 50);

  v1::GenerateRequest request;
  request.mutable_sample()->set_prompt("pads");
  request.mutable_sample()->set_duration_seconds(4);
  const v1::Operation done = GenerateAndWait(*stub_, request);
  ASSERT_EQ(done.state(), v1::OPERATION_STATE_SUCCEEDED) << done.error().message();
  ASSERT_EQ(done.provider(), v1::PROVIDER_SOUNDPIECE);

  const std::optional<v1::ProviderQuota> after = Quota(v1::PROVIDER_SOUNDPIECE, "credits", 0);
  ASSERT_TRUE(after.has_value()) << "GetQuota never showed the charge";
  EXPECT_EQ(after->used(), 1);
  EXPECT_EQ(after->remaining(), 49);
  const absl::StatusOr<std::string> scrape = testing::FetchMetrics(server_->metrics_port());
  ASSERT_TRUE(scrape.ok()) << scrape.status();
  const std::vector<std::string> labels = {"provider=\"soundpiece\"", "resource=\"credits\""};
  EXPECT_EQ(testing::Sample(*scrape, "musicgw_provider_quota_remaining", labels), 49);
  EXPECT_EQ(testing::Sample(*scrape, "musicgw_provider_quota_used", labels), 1);
}

// Loudly's prompt songs are limited to one a month.
class ExhaustedQuotaTest : public MetricsServerTest {
 protected:
  std::map<std::string, int64_t> LoudlyLimits() const override {
    return {{"GENERATE_VEGA_SONG_WITH_PROMPT", 1}};
  }
};

TEST_F(ExhaustedQuotaTest, KnownExhaustedQuotaIsNotCalledAndFallbackRoutesToTheOtherProvider) {
  constexpr char kResource[] = "GENERATE_VEGA_SONG_WITH_PROMPT";
  const v1::Operation first = GenerateAndWait(*stub_, LoudlyText(/*allow_fallback=*/false));
  ASSERT_EQ(first.state(), v1::OPERATION_STATE_SUCCEEDED) << first.error().message();
  const std::optional<v1::ProviderQuota> used_up = LoudlyQuota(kResource, 0);
  ASSERT_TRUE(used_up.has_value()) << "GetQuota never showed the generation";
  ASSERT_EQ(used_up->remaining(), 0);

  // Pinned to Loudly without fallback: refused by the gateway, the provider never asked.
  v1::GenerateRequest pinned = LoudlyText(/*allow_fallback=*/false);
  pinned.set_request_id(musicgw::testing::NewRequestId());
  v1::Operation refused;
  const grpc::Status status = stub_->Generate(Context(kAcmeKey).get(), pinned, &refused);
  ASSERT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << status.error_message();
  const absl::Status detailed = FromGrpcStatus(status);
  google::rpc::ErrorInfo info;
  ASSERT_TRUE(GetErrorInfo(detailed, &info));
  EXPECT_EQ(info.reason(), "PROVIDER_QUOTA_EXHAUSTED");
  EXPECT_EQ(info.metadata().at("resource"), kResource);
  google::rpc::QuotaFailure quota;
  ASSERT_TRUE(GetQuotaFailure(detailed, &quota));
  ASSERT_EQ(quota.violations_size(), 1);
  EXPECT_EQ(quota.violations(0).subject(),
            absl::StrCat("provider:loudly/account:loudly-test/resource:", kResource));
  EXPECT_EQ(emulators_.loudly->stats().quota_rejections, 0);

  // Allowed to fall back: Soundpiece makes it.
  const v1::Operation moved = GenerateAndWait(*stub_, LoudlyText(/*allow_fallback=*/true));
  EXPECT_EQ(moved.state(), v1::OPERATION_STATE_SUCCEEDED) << moved.error().message();
  EXPECT_EQ(moved.provider(), v1::PROVIDER_SOUNDPIECE);
  EXPECT_EQ(emulators_.loudly->stats().quota_rejections, 0);
}

}  // namespace
}  // namespace musicgw::metrics
