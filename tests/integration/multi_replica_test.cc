// Three musicgw processes sharing one PostgreSQL ledger (a private cluster this test starts),
// with the real emulators: a watch works on any replica, a killed replica's operations are
// taken over without a second upstream submission, budgets stay exact across replicas, and a
// PostgreSQL restart is survived without restarting the gateways.
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>

#include <atomic>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "common/errors.h"
#include "emulators/loudly/loudly_emulator.h"
#include "emulators/soundpiece/soundpiece_emulator.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "gtest/gtest.h"
#include "tests/integration/harness.h"
#include "tests/pg/pg_cluster.h"
#include "tests/scratch_dir.h"

namespace musicgw::testing {
namespace {

using musicgw::v1::GenerateRequest;
using musicgw::v1::Operation;
using musicgw::v1::OperationEvent;

constexpr int kReplicas = 3;
// Short, so a killed replica's operations are taken over within seconds.
constexpr int kLeaseSeconds = 3;
constexpr char kWebhookSecret[] = "whsec_bXVsdGktcmVwbGljYS13ZWJob29rLXNlY3JldA==";

// What one watch stream saw: the (sequence, state) of each change, in order.
struct Seen {
  std::vector<std::pair<int64_t, int>> changes;
  bool terminal = false;
  grpc::Status status;
};

class MultiReplicaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SetTestSecrets();
    dir_ = NewTestScratchDir("replicas");
    // The DSN reaches the gateway as a secret reference, like every other secret.
    auto cluster = StartLedgerCluster();
    ASSERT_TRUE(cluster.ok()) << cluster.status();
    cluster_ = std::move(*cluster);
  }

  // The emulators; `processing` is how long Soundpiece takes per operation.
  void StartEmulators(absl::Duration processing) {
    emulators::soundpiece::Options sp;
    sp.processing_time = processing;
    sp.long_poll = absl::Seconds(1);
    sp.webhook_secrets = {{"acct", kWebhookSecret}};
    auto soundpiece = emulators::soundpiece::Emulator::Start(sp);
    ASSERT_TRUE(soundpiece.ok()) << soundpiece.status();
    soundpiece_ = std::move(*soundpiece);
    auto loudly = emulators::loudly::Emulator::Start({});
    ASSERT_TRUE(loudly.ok()) << loudly.status();
    loudly_ = std::move(*loudly);
  }

  // Soundpiece's webhooks are all sent to the last replica, whichever tracks the operation.
  void StartReplicas(int count = kReplicas) {
    setenv("MUSICGW_TEST_WEBHOOK_SECRETS", kWebhookSecret, 1);
    const int webhook_port = FreePort();
    for (int i = 0; i < count; ++i) {
      nlohmann::json config =
          TestConfig({loudly_->base_url(), soundpiece_->base_url()}, dir_ + "/unused.db");
      config["providers"][1]["webhook_secrets"] = {{"env", "MUSICGW_TEST_WEBHOOK_SECRETS"}};
      config["providers"][1]["callback_url"] =
          absl::StrCat("http://127.0.0.1:", webhook_port, "/webhooks/soundpiece");
      if (i == count - 1) {
        config["server"]["webhook_listen"] = absl::StrCat("127.0.0.1:", webhook_port);
      }
      config["ledger"] = PostgresLedgerConfig(absl::StrCat("gw-", i));
      config["ledger"]["lease_seconds"] = kLeaseSeconds;
      const std::string work = absl::StrCat(dir_, "/gw-", i);
      std::filesystem::create_directories(work);
      auto process = GatewayProcess::Start(config, work);
      ASSERT_TRUE(process.ok()) << process.status();
      stubs_.push_back(Stub((*process)->grpc_port()));
      ports_.push_back((*process)->grpc_port());
      gateways_.push_back(std::move(*process));
    }
  }

  static GenerateRequest Sample() {
    GenerateRequest request;
    request.set_request_id(NewRequestId());
    request.set_provider(musicgw::v1::PROVIDER_SOUNDPIECE);
    request.mutable_sample()->set_prompt("many replicas");
    request.mutable_sample()->set_duration_seconds(3);
    return request;
  }

  absl::StatusOr<Operation> Get(int replica, const std::string& name) {
    musicgw::v1::GetOperationRequest request;
    request.set_name(name);
    Operation operation;
    grpc::Status status =
        stubs_[replica]->GetOperation(Context(kAcmeKey).get(), request, &operation);
    if (!status.ok()) return FromGrpcStatus(status);
    return operation;
  }

  // Watches `name` on `replicas` in turn, resuming after the last sequence seen whenever a
  // stream breaks, until the terminal event (or `attempts` streams failed).
  // `first_event` (optional) is notified when the first event arrives.
  static Seen Watch(const std::vector<musicgw::v1::MusicGateway::Stub*>& replicas,
                    const std::string& name, int64_t after_sequence, int attempts = 20,
                    absl::Notification* first_event = nullptr) {
    Seen seen;
    int64_t last = after_sequence;
    for (int attempt = 0; attempt < attempts && !seen.terminal; ++attempt) {
      musicgw::v1::WatchOperationRequest request;
      request.set_name(name);
      request.set_after_sequence(last);
      auto context = Context(kAcmeKey, absl::Seconds(60));
      auto reader = replicas[attempt % replicas.size()]->WatchOperation(context.get(), request);
      OperationEvent event;
      while (reader->Read(&event)) {
        if (first_event != nullptr && !first_event->HasBeenNotified()) first_event->Notify();
        if (event.kind() == OperationEvent::KIND_HEARTBEAT) continue;
        seen.changes.emplace_back(event.sequence(), event.operation().state());
        last = event.sequence();
        if (event.operation().done()) seen.terminal = true;
      }
      seen.status = reader->Finish();
      // A client's backoff before it reconnects.
      if (!seen.terminal) absl::SleepFor(absl::Milliseconds(100));
    }
    return seen;
  }

  grpc::health::v1::HealthCheckResponse::ServingStatus Health(int replica) {
    auto channel = grpc::CreateChannel(absl::StrCat("127.0.0.1:", ports_[replica]),
                                       grpc::InsecureChannelCredentials());
    auto health = grpc::health::v1::Health::NewStub(channel);
    grpc::health::v1::HealthCheckRequest request;
    grpc::health::v1::HealthCheckResponse response;
    if (!health->Check(Context("", absl::Seconds(2)).get(), request, &response).ok()) {
      return grpc::health::v1::HealthCheckResponse::UNKNOWN;
    }
    return response.status();
  }

  std::string dir_;
  std::unique_ptr<PgCluster> cluster_;
  std::unique_ptr<emulators::soundpiece::Emulator> soundpiece_;
  std::unique_ptr<emulators::loudly::Emulator> loudly_;
  std::vector<std::unique_ptr<GatewayProcess>> gateways_;
  std::vector<std::unique_ptr<musicgw::v1::MusicGateway::Stub>> stubs_;
  std::vector<int> ports_;
};

TEST_F(MultiReplicaTest, AWatchOnAnyReplicaSeesEveryChangeInOrder) {
  StartEmulators(absl::Milliseconds(1500));
  StartReplicas();
  const Operation created = GenerateOk(*stubs_[0], Sample());
  ASSERT_EQ(created.sequence(), 1);
  // Watched from after the creation on every replica: each sees the same changes.
  Seen seen[kReplicas];
  std::vector<std::thread> watchers;
  watchers.reserve(kReplicas);
  for (int i = 0; i < kReplicas; ++i) {
    watchers.emplace_back([&, i] { seen[i] = Watch({stubs_[i].get()}, created.name(), 1, 1); });
  }
  // WaitOperation on a replica that does not track it waits for the end too.
  Operation waited;
  std::thread waiter([&] { waited = WaitDone(*stubs_[2], created.name()); });
  for (auto& watcher : watchers) watcher.join();
  waiter.join();
  EXPECT_EQ(waited.state(), musicgw::v1::OPERATION_STATE_SUCCEEDED);
  for (int i = 0; i < kReplicas; ++i) {
    EXPECT_TRUE(seen[i].status.ok()) << "replica " << i << ": " << seen[i].status.error_message();
    std::string changes;
    for (const auto& [sequence, state] : seen[i].changes) {
      absl::StrAppend(&changes, sequence, "/", state, " ");
    }
    ASSERT_TRUE(seen[i].terminal) << "replica " << i << " saw " << changes << "and logged:\n"
                                  << gateways_[i]->Logs();
    EXPECT_EQ(seen[i].changes.back().second, musicgw::v1::OPERATION_STATE_SUCCEEDED);
    EXPECT_EQ(seen[i].changes.front().first, 2) << "replica " << i;
    for (size_t k = 1; k < seen[i].changes.size(); ++k) {
      EXPECT_EQ(seen[i].changes[k].first, seen[i].changes[k - 1].first + 1) << "replica " << i;
    }
  }
  EXPECT_EQ(seen[1].changes, seen[0].changes);
  EXPECT_EQ(seen[2].changes, seen[0].changes);
  // The operation's webhook went to replica 2, which does not track it, and was accepted.
  EXPECT_TRUE(Eventually([&] { return soundpiece_->stats().webhook_successes >= 1; }))
      << soundpiece_->StatsJson();
  EXPECT_EQ(gateways_[2]->Logs().find("could not pass a webhook"), std::string::npos);
}

TEST_F(MultiReplicaTest, AKilledReplicasOperationsAreTakenOverAndWatchersResume) {
  constexpr int kOperations = 50;
  // Long enough that every operation is still running when its replica dies.
  StartEmulators(absl::Seconds(9));
  StartReplicas();
  // Every operation is accepted by replica 0, which therefore owns and tracks it.
  std::vector<Operation> operations(kOperations);
  {
    std::vector<std::thread> clients;
    clients.reserve(5);
    for (int t = 0; t < 5; ++t) {
      clients.emplace_back([&, t] {
        for (int i = t; i < kOperations; i += 5) operations[i] = GenerateOk(*stubs_[0], Sample());
      });
    }
    for (auto& client : clients) client.join();
  }
  for (const auto& operation : operations) ASSERT_FALSE(operation.name().empty());
  // The provider accepted each one (the kill must not land mid-submission).
  ASSERT_TRUE(Eventually(
      [&] {
        for (const auto& operation : operations) {
          auto latest = Get(1, operation.name());
          if (!latest.ok() || latest->submission() != musicgw::v1::SUBMISSION_STATE_ACCEPTED) {
            return false;
          }
        }
        return true;
      },
      absl::Seconds(20), absl::Milliseconds(100)));

  // Two watchers per operation, spread over all three replicas; each falls over to the next
  // replica (resuming after the last sequence it saw) when its stream breaks.
  std::vector<Seen> seen(2 * kOperations);
  std::vector<std::thread> watchers;
  std::atomic<int> opened{0};
  watchers.reserve(2 * kOperations);
  for (int w = 0; w < 2 * kOperations; ++w) {
    watchers.emplace_back([&, w] {
      const int first = w % kReplicas;
      std::vector<musicgw::v1::MusicGateway::Stub*> order;
      order.reserve(kReplicas);
      for (int k = 0; k < kReplicas; ++k) order.push_back(stubs_[(first + k) % kReplicas].get());
      opened.fetch_add(1);
      seen[w] = Watch(order, operations[w / 2].name(), 1);
    });
  }
  ASSERT_TRUE(Eventually([&] { return opened.load() == 2 * kOperations; }));
  auto killed = gateways_[0]->Signal(SIGKILL, absl::Seconds(5));
  ASSERT_TRUE(killed.ok());
  ASSERT_TRUE(WIFSIGNALED(*killed));
  for (auto& watcher : watchers) watcher.join();

  for (int w = 0; w < 2 * kOperations; ++w) {
    ASSERT_TRUE(seen[w].terminal) << "watcher " << w << ": " << seen[w].status.error_message();
    EXPECT_EQ(seen[w].changes.back().second, musicgw::v1::OPERATION_STATE_SUCCEEDED)
        << "watcher " << w;
    // Resumed streams never repeat a change.
    for (size_t k = 1; k < seen[w].changes.size(); ++k) {
      EXPECT_GT(seen[w].changes[k].first, seen[w].changes[k - 1].first) << "watcher " << w;
    }
  }
  for (int i = 0; i < kOperations; ++i) {
    const Operation& operation = operations[i];
    auto done = Get(1 + i % 2, operation.name());
    ASSERT_TRUE(done.ok()) << done.status();
    EXPECT_EQ(done->state(), musicgw::v1::OPERATION_STATE_SUCCEEDED) << done->error().message();
  }
  // Exactly one upstream job per operation: the survivors polled, never re-submitted.
  EXPECT_EQ(soundpiece_->stats().operations_by_account_route.at("acct create.new_sample"),
            kOperations)
      << soundpiece_->StatsJson();
}

TEST_F(MultiReplicaTest, BudgetsAdmitExactlyTheLimitAcrossReplicas) {
  StartEmulators(absl::Seconds(1));
  StartReplicas();
  // TestConfig gives acme 10 SOUND_EFFECT per day.
  constexpr int kAttempts = 50;
  std::atomic<int> admitted{0};
  std::atomic<int> exhausted{0};
  std::vector<std::thread> clients;
  clients.reserve(kAttempts);
  for (int i = 0; i < kAttempts; ++i) {
    clients.emplace_back([&, i] {
      GenerateRequest request;
      request.set_request_id(NewRequestId());
      request.mutable_sound_effect()->set_prompt("impact");
      request.mutable_sound_effect()->set_duration_seconds(1);
      Operation response;
      grpc::Status status =
          stubs_[i % kReplicas]->Generate(Context(kAcmeKey).get(), request, &response);
      if (status.ok()) {
        admitted.fetch_add(1);
      } else if (status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) {
        exhausted.fetch_add(1);
      } else {
        ADD_FAILURE() << status.error_message();
      }
    });
  }
  for (auto& client : clients) client.join();
  EXPECT_EQ(admitted.load(), 10);
  EXPECT_EQ(exhausted.load(), kAttempts - 10);
}

TEST_F(MultiReplicaTest, APostgresRestartIsSurvivedWithoutAGatewayRestart) {
  StartEmulators(absl::Milliseconds(1500));
  StartReplicas(2);
  // Operations in flight when the ledger goes away.
  std::vector<Operation> before;
  before.reserve(4);
  for (int i = 0; i < 4; ++i) before.push_back(GenerateOk(*stubs_[i % 2], Sample()));
  // A watch on the replica that does not track the first operation rides the restart out.
  Seen watched;
  absl::Notification watching;
  std::thread watcher(
      [&] { watched = Watch({stubs_[1].get()}, before[0].name(), 0, 1, &watching); });
  watching.WaitForNotification();

  ASSERT_TRUE(cluster_->Stop().ok());
  Operation ignored;
  grpc::Status refused = stubs_[0]->Generate(Context(kAcmeKey).get(), Sample(), &ignored);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::UNAVAILABLE) << refused.error_message();
  google::rpc::RetryInfo retry;
  EXPECT_TRUE(GetRetryInfo(FromGrpcStatus(refused), &retry)) << refused.error_message();
  for (int i = 0; i < 2; ++i) {
    EXPECT_TRUE(Eventually([&] {
      return Health(i) == grpc::health::v1::HealthCheckResponse::NOT_SERVING;
    })) << "replica "
        << i;
  }

  ASSERT_TRUE(cluster_->Restart().ok());
  for (int i = 0; i < 2; ++i) {
    EXPECT_TRUE(Eventually([&] {
      return Health(i) == grpc::health::v1::HealthCheckResponse::SERVING;
    })) << "replica "
        << i;
  }
  std::vector<Operation> after;
  after.reserve(2);
  for (int i = 0; i < 2; ++i) after.push_back(GenerateOk(*stubs_[i], Sample()));
  for (const auto* list : {&before, &after}) {
    for (const auto& operation : *list) {
      ASSERT_TRUE(Eventually(
          [&] {
            auto latest = Get(0, operation.name());
            return latest.ok() && latest->done();
          },
          absl::Seconds(30), absl::Milliseconds(100)))
          << operation.name();
      auto done = Get(1, operation.name());
      ASSERT_TRUE(done.ok());
      EXPECT_EQ(done->state(), musicgw::v1::OPERATION_STATE_SUCCEEDED) << done->error().message();
    }
  }
  watcher.join();
  EXPECT_TRUE(watched.terminal) << watched.status.error_message();
  for (size_t k = 1; k < watched.changes.size(); ++k) {
    EXPECT_GT(watched.changes[k].first, watched.changes[k - 1].first);
  }
  EXPECT_EQ(soundpiece_->stats().operations_by_account_route.at("acct create.new_sample"), 6)
      << soundpiece_->StatsJson();
}

}  // namespace
}  // namespace musicgw::testing
