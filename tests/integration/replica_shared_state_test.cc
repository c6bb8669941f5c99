// Three musicgw processes on one PostgreSQL ledger (a private cluster this test starts) share
// what must not be done once per replica: the Loudly web account's OAuth token, whose refresh
// token rotates on every use, and the provider quota reads.
#include <stdlib.h>

#include <atomic>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "emulators/loudly/loudly_emulator.h"
#include "emulators/soundpiece/soundpiece_emulator.h"
#include "gtest/gtest.h"
#include "tests/integration/harness.h"
#include "tests/pg/pg_cluster.h"
#include "tests/scratch_dir.h"

namespace musicgw::testing {
namespace {

using musicgw::v1::Operation;

constexpr int kReplicas = 3;
constexpr char kInitialRefreshToken[] = "ha-initial-refresh-token";

class ReplicaSharedStateTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SetTestSecrets();
    dir_ = NewTestScratchDir("pg-replicas");
    // The DSN reaches the gateway as a secret reference, like every other secret.
    auto cluster = StartLedgerCluster();
    ASSERT_TRUE(cluster.ok()) << cluster.status();
    cluster_ = std::move(*cluster);
    setenv("MUSICGW_TEST_LOUDLY_REFRESH", kInitialRefreshToken, 1);

    auto soundpiece = emulators::soundpiece::Emulator::Start({});
    ASSERT_TRUE(soundpiece.ok()) << soundpiece.status();
    soundpiece_ = std::move(*soundpiece);
    emulators::loudly::Options ld;
    ld.client_id = "1_replicas";
    ld.refresh_token = kInitialRefreshToken;
    // Short-lived tokens: every replica needs a new one every few seconds.
    ld.access_token_ttl = absl::Seconds(4);
    ld.bundle_song_delay = absl::Milliseconds(300);
    auto loudly = emulators::loudly::Emulator::Start(ld);
    ASSERT_TRUE(loudly.ok()) << loudly.status();
    loudly_ = std::move(*loudly);

    for (int i = 0; i < kReplicas; ++i) {
      nlohmann::json config =
          TestConfig({loudly_->base_url(), soundpiece_->base_url()}, dir_ + "/unused.db");
      config["providers"][0] = {
          {"name", "loudly-web"},      {"type", "loudly"},
          {"dialect", "web"},          {"base_url", loudly_->base_url()},
          {"client_id", "1_replicas"}, {"refresh_token", {{"env", "MUSICGW_TEST_LOUDLY_REFRESH"}}}};
      config["operations"]["quota_refresh_seconds"] = 3600;
      config["ledger"] = PostgresLedgerConfig(absl::StrCat("gw-", i));
      const std::string work_dir = absl::StrCat(dir_, "/gw-", i);
      std::filesystem::create_directories(work_dir);
      auto process = GatewayProcess::Start(config, work_dir);
      ASSERT_TRUE(process.ok()) << process.status();
      stubs_.push_back(Stub((*process)->grpc_port()));
      gateways_.push_back(std::move(*process));
    }
  }

  // The Loudly figures replica `i` reports, with their read time (0: none yet).
  int64_t LoudlyQuotaReadTime(int i) {
    musicgw::v1::GetQuotaRequest request;
    request.set_provider(musicgw::v1::PROVIDER_LOUDLY);
    musicgw::v1::QuotaReport report;
    if (!stubs_[i]->GetQuota(Context(kAcmeKey).get(), request, &report).ok()) return 0;
    for (const auto& quota : report.provider_quotas()) {
      if (quota.account() == "loudly-web" && quota.limit() > 0) return quota.read_time().seconds();
    }
    return 0;
  }

  static musicgw::v1::GenerateRequest LoudlySong() {
    musicgw::v1::GenerateRequest request;
    request.set_request_id(NewRequestId());
    request.set_provider(musicgw::v1::PROVIDER_LOUDLY);
    request.mutable_text_to_music()->set_prompt("calm piano, rain");
    request.mutable_text_to_music()->set_duration_seconds(30);
    return request;
  }

  std::string dir_;
  std::unique_ptr<PgCluster> cluster_;
  std::unique_ptr<emulators::soundpiece::Emulator> soundpiece_;
  std::unique_ptr<emulators::loudly::Emulator> loudly_;
  std::vector<std::unique_ptr<GatewayProcess>> gateways_;
  std::vector<std::unique_ptr<musicgw::v1::MusicGateway::Stub>> stubs_;
};

// Every replica calls Loudly (submissions and polls) across several token lifetimes: the
// emulator sees one refresh per expiry between them (none while a good token existed) and no
// spent refresh token (invalid_grant) ever, and every generation succeeds.
TEST_F(ReplicaSharedStateTest, LoudlyTokenIsRefreshedOncePerExpiryAcrossReplicas) {
  std::atomic<bool> stop{false};
  std::atomic<int> succeeded{0};
  std::atomic<int> failed{0};
  std::vector<std::thread> clients;
  clients.reserve(kReplicas);
  for (int i = 0; i < kReplicas; ++i) {
    clients.emplace_back([&, i] {
      while (!stop.load()) {
        const Operation created = GenerateOk(*stubs_[i], LoudlySong());
        if (created.name().empty()) {
          ++failed;
          return;
        }
        const Operation done = WaitDone(*stubs_[i], created.name());
        if (done.state() == musicgw::v1::OPERATION_STATE_SUCCEEDED) {
          ++succeeded;
        } else {
          ADD_FAILURE() << "replica " << i << ": " << done.error().message();
          ++failed;
        }
      }
    });
  }
  // Four grants: the first one and three renewals, each after a token came close to expiry.
  const bool renewed =
      Eventually([&] { return loudly_->stats().token_refreshes >= 4 || failed.load() > 0; },
                 absl::Seconds(60), absl::Milliseconds(50));
  stop = true;
  for (auto& client : clients) client.join();
  ASSERT_TRUE(renewed) << loudly_->StatsJson();
  EXPECT_EQ(failed.load(), 0);
  EXPECT_GE(succeeded.load(), kReplicas);

  const auto stats = loudly_->stats();
  EXPECT_EQ(stats.token_refreshes_rejected, 0) << "a replica spent a rotated refresh token";
  EXPECT_EQ(stats.token_refreshes_early, 0) << "more than one refresh for one expiry";
  EXPECT_EQ(stats.unauthorized, 0) << "a replica used an expired token";
  // No replica logs a token.
  for (const auto& gateway : gateways_) {
    const std::string logs = gateway->Logs();
    EXPECT_EQ(logs.find(kInitialRefreshToken), std::string::npos);
    EXPECT_EQ(logs.find(loudly_->current_refresh_token()), std::string::npos);
  }
}

// One elected replica reads the provider's limits; the others report the figures it shared.
TEST_F(ReplicaSharedStateTest, OneReplicaReadsQuotaAndEveryReplicaReportsIt) {
  ASSERT_TRUE(Eventually(
      [&] {
        for (int i = 0; i < kReplicas; ++i) {
          if (LoudlyQuotaReadTime(i) == 0) return false;
        }
        return true;
      },
      absl::Seconds(30), absl::Milliseconds(50)));
  // One read for three replicas (the interval is an hour: no periodic read happened since).
  EXPECT_EQ(loudly_->stats().limits_requests, 1) << loudly_->StatsJson();
  // The same read everywhere.
  const int64_t read_time = LoudlyQuotaReadTime(0);
  for (int i = 1; i < kReplicas; ++i) EXPECT_EQ(LoudlyQuotaReadTime(i), read_time);
}

}  // namespace
}  // namespace musicgw::testing
