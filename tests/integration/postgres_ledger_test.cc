// The musicgw binary on the shared PostgreSQL ledger (a private cluster this test starts):
// every operation completes, and a kill -9 loses nothing and submits nothing twice.
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>

#include <memory>
#include <string>
#include <vector>

#include "emulators/loudly/loudly_emulator.h"
#include "emulators/soundpiece/soundpiece_emulator.h"
#include "gtest/gtest.h"
#include "tests/integration/harness.h"
#include "tests/pg/pg_cluster.h"
#include "tests/scratch_dir.h"

namespace musicgw::testing {
namespace {

using musicgw::v1::Operation;

class PostgresLedgerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SetTestSecrets();
    dir_ = NewTestScratchDir("pg-ledger");
    // The DSN reaches the gateway as a secret reference, like every other secret.
    auto cluster = StartLedgerCluster();
    ASSERT_TRUE(cluster.ok()) << cluster.status();
    cluster_ = std::move(*cluster);
    emulators::soundpiece::Options sp;
    sp.processing_time = absl::Milliseconds(800);
    sp.long_poll = absl::Seconds(2);
    auto soundpiece = emulators::soundpiece::Emulator::Start(sp);
    ASSERT_TRUE(soundpiece.ok()) << soundpiece.status();
    soundpiece_ = std::move(*soundpiece);
    auto loudly = emulators::loudly::Emulator::Start({});
    ASSERT_TRUE(loudly.ok()) << loudly.status();
    loudly_ = std::move(*loudly);
    config_ = TestConfig({loudly_->base_url(), soundpiece_->base_url()}, dir_ + "/unused.db");
    config_["ledger"] = PostgresLedgerConfig("gw-a");
    StartGateway();
  }

  void StartGateway() {
    auto process = GatewayProcess::Start(config_, dir_);
    ASSERT_TRUE(process.ok()) << process.status();
    gateway_ = std::move(*process);
    stub_ = Stub(gateway_->grpc_port());
  }

  Operation Generate(const musicgw::v1::GenerateRequest& request) {
    return GenerateOk(*stub_, request);
  }
  Operation WaitDone(const std::string& name) { return musicgw::testing::WaitDone(*stub_, name); }

  static musicgw::v1::GenerateRequest Sample() {
    musicgw::v1::GenerateRequest request;
    request.set_request_id(NewRequestId());
    request.set_provider(musicgw::v1::PROVIDER_SOUNDPIECE);
    request.mutable_sample()->set_prompt("ledger on postgres");
    request.mutable_sample()->set_duration_seconds(3);
    return request;
  }

  std::string dir_;
  std::unique_ptr<PgCluster> cluster_;
  std::unique_ptr<emulators::soundpiece::Emulator> soundpiece_;
  std::unique_ptr<emulators::loudly::Emulator> loudly_;
  nlohmann::json config_;
  std::unique_ptr<GatewayProcess> gateway_;
  std::unique_ptr<musicgw::v1::MusicGateway::Stub> stub_;
};

TEST_F(PostgresLedgerTest, OperationsCompleteAndSurviveAKill) {
  std::vector<Operation> operations;
  operations.reserve(5);
  for (int i = 0; i < 4; ++i) operations.push_back(Generate(Sample()));
  // A retry with the same request_id is the same operation (the ledger's unique key).
  musicgw::v1::GenerateRequest retry = Sample();
  const Operation first = Generate(retry);
  EXPECT_EQ(Generate(retry).name(), first.name());
  operations.push_back(first);

  auto killed = gateway_->Signal(SIGKILL, absl::Seconds(5));
  ASSERT_TRUE(killed.ok());
  ASSERT_TRUE(WIFSIGNALED(*killed));
  gateway_.reset();
  StartGateway();  // same replica name: it resumes what it owned

  for (const auto& operation : operations) {
    const Operation done = WaitDone(operation.name());
    EXPECT_EQ(done.state(), musicgw::v1::OPERATION_STATE_SUCCEEDED)
        << operation.name() << ": " << done.error().message();
    EXPECT_EQ(done.outputs_size(), 1);
  }
  EXPECT_EQ(soundpiece_->stats().operations_by_account_route.at("acct create.new_sample"), 5)
      << soundpiece_->StatsJson();

  musicgw::v1::ListOperationsRequest list;
  musicgw::v1::ListOperationsResponse page;
  ASSERT_TRUE(stub_->ListOperations(Context(kAcmeKey).get(), list, &page).ok());
  EXPECT_EQ(page.operations_size(), 5);
}

// The gateway refuses to start on a PostgreSQL it cannot reach, and says so without the DSN.
TEST_F(PostgresLedgerTest, AnUnreachableLedgerFailsStartupWithoutLeakingTheDsn) {
  gateway_.reset();
  setenv(kLedgerDsnEnv, "host=127.0.0.1 port=1 user=gw password=hunter2 connect_timeout=1", 1);
  auto process = GatewayProcess::Start(config_, dir_);
  ASSERT_FALSE(process.ok());
  EXPECT_EQ(process.status().message().find("hunter2"), absl::string_view::npos)
      << process.status();
}

}  // namespace
}  // namespace musicgw::testing
