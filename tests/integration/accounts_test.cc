// Two accounts of one provider through the real gateway: two Soundpiece keys on the emulator,
// each with its own credits and webhook secret. When one account's credits are used up (402),
// Generates go to the other, and ListProviders, GetQuota, the metrics and the webhook counters
// report each account on its own.

#include <httplib.h>

#include <functional>
#include <map>
#include <memory>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/config.h"
#include "emulators/soundpiece/soundpiece_emulator.h"
#include "gtest/gtest.h"
#include "services/gateway/server.h"
#include "tests/integration/harness.h"
#include "tests/scratch_dir.h"

namespace musicgw::testing {
namespace {

namespace v1 = musicgw::v1;

constexpr char kSecretA[] = "whsec_YWNjb3VudC1hLXdlYmhvb2stc2VjcmV0LTAwMDE=";
constexpr char kSecretB[] = "whsec_YWNjb3VudC1iLXdlYmhvb2stc2VjcmV0LTAwMDI=";

class TwoAccountsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    SetTestSecrets();
    setenv("MUSICGW_TEST_SP_KEY_A", "spk_key_account_a", 1);
    setenv("MUSICGW_TEST_SP_KEY_B", "spk_key_account_b", 1);
    setenv("MUSICGW_TEST_SP_WEBHOOK_A", kSecretA, 1);
    setenv("MUSICGW_TEST_SP_WEBHOOK_B", kSecretB, 1);
    const std::string dir = NewTestScratchDir("accounts");

    emulators::soundpiece::Options sp;
    sp.api_keys = {{"spk_key_account_a", "acct-a"}, {"spk_key_account_b", "acct-b"}};
    sp.webhook_secrets = {{"acct-a", kSecretA}, {"acct-b", kSecretB}};
    sp.processing_time = absl::Milliseconds(200);
    sp.long_poll = absl::Seconds(5);
    auto soundpiece = emulators::soundpiece::Emulator::Start(sp);
    ASSERT_TRUE(soundpiece.ok()) << soundpiece.status();
    soundpiece_ = std::move(*soundpiece);
    soundpiece_->SetCredits("acct-a", 0);  // the first account's credits are used up

    nlohmann::json doc =
        TestConfig({"http://127.0.0.1:1", soundpiece_->base_url()}, dir + "/ledger.db");
    const int webhook_port = FreePort();
    doc["server"]["webhook_listen"] = absl::StrCat("127.0.0.1:", webhook_port);
    auto account = [&](const std::string& name, const std::string& suffix) {
      return nlohmann::json{{"name", name},
                            {"type", "soundpiece"},
                            {"base_url", soundpiece_->base_url()},
                            {"api_key", {{"env", "MUSICGW_TEST_SP_KEY_" + suffix}}},
                            {"webhook_secrets", {{"env", "MUSICGW_TEST_SP_WEBHOOK_" + suffix}}},
                            {"callback_url", absl::StrCat("http://127.0.0.1:", webhook_port,
                                                          "/webhooks/soundpiece/", name)},
                            {"credits", {{"balance", 50}}}};
    };
    doc["providers"] = nlohmann::json::array({account("sp-a", "A"), account("sp-b", "B")});
    auto config = config::ParseConfig(doc.dump(), config::ProcessEnv());
    ASSERT_TRUE(config.ok()) << config.status();
    auto server = gateway::GatewayServer::Start(std::move(*config));
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
  }

  static void TearDownTestSuite() {
    server_.reset();
    soundpiece_.reset();
  }

  static v1::GenerateRequest Sample(bool allow_fallback) {
    v1::GenerateRequest request;
    request.set_request_id(NewRequestId());
    request.set_provider(v1::PROVIDER_SOUNDPIECE);
    request.set_allow_fallback(allow_fallback);
    request.mutable_sample()->set_prompt("warm pads");
    request.mutable_sample()->set_duration_seconds(5);
    return request;
  }

  static v1::Operation Generate(const v1::GenerateRequest& request) {
    v1::Operation operation;
    const grpc::Status status =
        Stub(server_->grpc_port())->Generate(Context(kAcmeKey).get(), request, &operation);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return operation;
  }

  static v1::Operation Wait(const v1::Operation& operation) {
    v1::WaitOperationRequest wait;
    wait.set_name(operation.name());
    wait.mutable_timeout()->set_seconds(30);
    v1::Operation done;
    const grpc::Status status =
        Stub(server_->grpc_port())
            ->WaitOperation(Context(kAcmeKey, absl::Seconds(40)).get(), wait, &done);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return done;
  }

  static std::map<std::string, v1::ProviderInfo> Providers() {
    v1::ListProvidersResponse response;
    const grpc::Status status =
        Stub(server_->grpc_port())
            ->ListProviders(Context(kAcmeKey).get(), v1::ListProvidersRequest(), &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    std::map<std::string, v1::ProviderInfo> by_account;
    for (const auto& info : response.providers()) by_account[info.account()] = info;
    return by_account;
  }

  static std::map<std::string, v1::ProviderQuota> Credits() {
    v1::GetQuotaRequest request;
    request.set_provider(v1::PROVIDER_SOUNDPIECE);
    v1::QuotaReport report;
    const grpc::Status status =
        Stub(server_->grpc_port())->GetQuota(Context(kAcmeKey).get(), request, &report);
    EXPECT_TRUE(status.ok()) << status.error_message();
    std::map<std::string, v1::ProviderQuota> by_account;
    for (const auto& quota : report.provider_quotas()) {
      if (quota.resource() == "credits") by_account[quota.account()] = quota;
    }
    return by_account;
  }

  static std::string Scrape() {
    httplib::Client client("127.0.0.1", server_->metrics_port());
    auto result = client.Get("/metrics");
    return result && result->status == 200 ? result->body : std::string();
  }

  static std::unique_ptr<emulators::soundpiece::Emulator> soundpiece_;
  static std::unique_ptr<gateway::GatewayServer> server_;
};

std::unique_ptr<emulators::soundpiece::Emulator> TwoAccountsTest::soundpiece_;
std::unique_ptr<gateway::GatewayServer> TwoAccountsTest::server_;

TEST_F(TwoAccountsTest, AUsedUpAccountSendsGeneratesToTheOtherAndEachReportsItsOwnState) {
  // The first Generate is routed to sp-a (first in the config), which answers 402; with
  // fallback allowed it moves to sp-b, the other account of the same provider.
  const v1::Operation first = Wait(Generate(Sample(/*allow_fallback=*/true)));
  ASSERT_EQ(first.state(), v1::OPERATION_STATE_SUCCEEDED) << first.error().message();
  EXPECT_EQ(first.provider(), v1::PROVIDER_SOUNDPIECE);
  EXPECT_EQ(first.provider_account(), "sp-b");
  ASSERT_EQ(first.attempts_size(), 2);
  EXPECT_EQ(first.attempts(0).account(), "sp-a");
  EXPECT_TRUE(absl::StrContains(first.attempts(0).outcome(), "RESOURCE_EXHAUSTED"))
      << first.attempts(0).outcome();
  EXPECT_EQ(first.attempts(1).account(), "sp-b");

  // From now on routing knows sp-a is used up: Generates go straight to sp-b, fallback or not.
  for (int i = 0; i < 2; ++i) {
    const v1::Operation queued = Generate(Sample(/*allow_fallback=*/false));
    EXPECT_EQ(queued.provider_account(), "sp-b");
    const v1::Operation done = Wait(queued);
    ASSERT_EQ(done.state(), v1::OPERATION_STATE_SUCCEEDED) << done.error().message();
    EXPECT_EQ(done.provider_account(), "sp-b");
    EXPECT_EQ(done.attempts_size(), 1);
  }

  // ListProviders: one entry per account, each with its own quota state.
  std::map<std::string, v1::ProviderInfo> providers;
  ASSERT_TRUE(Eventually([&] {
    providers = Providers();
    return providers.count("sp-a") > 0 && providers["sp-a"].quota_exhausted();
  })) << "sp-a never showed exhausted";
  ASSERT_EQ(providers.size(), 2u);
  EXPECT_EQ(providers["sp-a"].provider(), v1::PROVIDER_SOUNDPIECE);
  EXPECT_EQ(providers["sp-b"].provider(), v1::PROVIDER_SOUNDPIECE);
  EXPECT_FALSE(providers["sp-b"].quota_exhausted());

  // GetQuota: each account's credits estimate counts only its own charges (3 on sp-b, none on
  // sp-a, whose 402 keeps it at 0 left).
  std::map<std::string, v1::ProviderQuota> credits;
  ASSERT_TRUE(Eventually([&] {
    credits = Credits();
    return credits.count("sp-b") > 0 && credits["sp-b"].used() == 3;
  })) << "sp-b's credits never showed the three charged operations";
  ASSERT_EQ(credits.size(), 2u);
  EXPECT_EQ(credits["sp-b"].limit(), 50);
  EXPECT_EQ(credits["sp-b"].remaining(), 47);
  EXPECT_FALSE(credits["sp-b"].exhausted());
  EXPECT_EQ(credits["sp-a"].limit(), 50);
  EXPECT_EQ(credits["sp-a"].used(), 0);
  EXPECT_EQ(credits["sp-a"].remaining(), 0);
  EXPECT_TRUE(credits["sp-a"].exhausted());

  // Metrics: routing state and webhook deliveries per account. sp-b's three completions were
  // signed with sp-b's secret and verified on its own route; sp-a received none.
  std::string metrics;
  ASSERT_TRUE(Eventually([&] {
    metrics = Scrape();
    return absl::StrContains(
        metrics,
        R"(musicgw_webhooks_received_total{provider="soundpiece",account="sp-b",outcome="verified"} 3)");
  })) << metrics;
  for (
      const char* expected : {
          R"(musicgw_provider_quota_exhausted{provider="soundpiece",account="sp-a"} 1)",
          R"(musicgw_provider_quota_exhausted{provider="soundpiece",account="sp-b"} 0)",
          R"(musicgw_webhooks_received_total{provider="soundpiece",account="sp-a",outcome="verified"} 0)",
          R"(musicgw_webhooks_received_total{provider="soundpiece",account="sp-a",outcome="bad_signature"} 0)",
          R"(musicgw_webhooks_received_total{provider="soundpiece",account="sp-b",outcome="bad_signature"} 0)",
          R"(musicgw_provider_quota_remaining{provider="soundpiece",account="sp-a",resource="credits"} 0)",
          R"(musicgw_provider_quota_remaining{provider="soundpiece",account="sp-b",resource="credits"} 47)",
      }) {
    EXPECT_TRUE(absl::StrContains(metrics, expected)) << expected << "\n" << metrics;
  }
}

}  // namespace
}  // namespace musicgw::testing
