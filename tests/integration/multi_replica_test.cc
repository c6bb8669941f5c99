// Three musicgw processes sharing one PostgreSQL ledger (a private cluster this test starts),
// with the real emulators: a watch works on any replica, a killed replica's operations are
// taken over without a second upstream submission, a cancel works on any replica (also when the
// owner dies before applying it), a rolling restart under load loses and doubles nothing,
// budgets stay exact across replicas, and a PostgreSQL restart is survived without restarting
// the gateways.
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>

#include <atomic>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
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
  // Each replica keeps its gRPC port across restarts (Restart), like a pod behind a Service.
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
      config["server"]["grpc_listen"] = absl::StrCat("127.0.0.1:", FreePort());
      const std::string work = absl::StrCat(dir_, "/gw-", i);
      std::filesystem::create_directories(work);
      auto process = GatewayProcess::Start(config, work);
      ASSERT_TRUE(process.ok()) << process.status();
      stubs_.push_back(Stub((*process)->grpc_port()));
      ports_.push_back((*process)->grpc_port());
      gateways_.push_back(std::move(*process));
      configs_.push_back(config);
    }
  }

  // SIGTERM (the replica drains and exits cleanly), then the same replica again, on the same
  // port and replica id; returns once it reports SERVING.
  void Restart(int replica) {
    auto exited = gateways_[replica]->Signal(SIGTERM, absl::Seconds(60));
    ASSERT_TRUE(exited.ok()) << exited.status();
    ASSERT_TRUE(WIFEXITED(*exited) && WEXITSTATUS(*exited) == 0)
        << "replica " << replica << " exit status " << *exited << "\n"
        << gateways_[replica]->Logs();
    auto process = GatewayProcess::Start(configs_[replica], absl::StrCat(dir_, "/gw-", replica));
    ASSERT_TRUE(process.ok()) << process.status();
    ASSERT_EQ((*process)->grpc_port(), ports_[replica]);
    gateways_[replica] = std::move(*process);
    ASSERT_TRUE(Eventually(
        [&] { return Health(replica) == grpc::health::v1::HealthCheckResponse::SERVING; },
        absl::Seconds(60), absl::Milliseconds(50)))
        << "replica " << replica << " never became ready";
  }

  grpc::Status Cancel(int replica, const std::string& name, const std::string& reason,
                      Operation* cancelled) {
    musicgw::v1::CancelOperationRequest request;
    request.set_name(name);
    request.set_reason(reason);
    return stubs_[replica]->CancelOperation(Context(kAcmeKey, absl::Seconds(60)).get(), request,
                                            cancelled);
  }

  // Waits until the provider accepted `name` (read on `replica`).
  bool Accepted(int replica, const std::string& name) {
    return Eventually(
        [&] {
          auto latest = Get(replica, name);
          return latest.ok() && latest->submission() == musicgw::v1::SUBMISSION_STATE_ACCEPTED;
        },
        absl::Seconds(30), absl::Milliseconds(50));
  }

  int64_t UpstreamSamples() {
    const auto stats = soundpiece_->stats();
    auto it = stats.operations_by_account_route.find("acct create.new_sample");
    return it == stats.operations_by_account_route.end() ? 0 : it->second;
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
  std::vector<nlohmann::json> configs_;
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

// CancelOperation on a replica that does not track the operation: the tracking replica applies
// it, and the caller gets the cancelled operation. Nothing is submitted again.
TEST_F(MultiReplicaTest, CancelOnAReplicaThatDoesNotTrackTheOperation) {
  // Long enough that the operation is still running when it is cancelled.
  StartEmulators(absl::Seconds(60));
  StartReplicas(2);
  const Operation created = GenerateOk(*stubs_[0], Sample());
  ASSERT_TRUE(Accepted(1, created.name()));
  // A watcher on the replica that tracks it sees the cancellation as the final change.
  Seen watched;
  absl::Notification watching;
  std::thread watcher([&] { watched = Watch({stubs_[0].get()}, created.name(), 0, 1, &watching); });
  watching.WaitForNotification();

  Operation cancelled;
  grpc::Status status = Cancel(1, created.name(), "not needed any more", &cancelled);
  ASSERT_TRUE(status.ok()) << status.error_message() << "\n" << gateways_[1]->Logs();
  EXPECT_EQ(cancelled.state(), musicgw::v1::OPERATION_STATE_CANCELLED);
  EXPECT_TRUE(cancelled.done());
  EXPECT_EQ(cancelled.cancellation().reason(), "not needed any more");
  // Neither provider can be told to stop; the submission stays what it was.
  EXPECT_FALSE(cancelled.cancellation().provider_notified());
  EXPECT_EQ(cancelled.submission(), musicgw::v1::SUBMISSION_STATE_ACCEPTED);
  auto owner_view = Get(0, created.name());
  ASSERT_TRUE(owner_view.ok()) << owner_view.status();
  EXPECT_EQ(owner_view->state(), musicgw::v1::OPERATION_STATE_CANCELLED);
  EXPECT_EQ(owner_view->cancellation().cancel_time().seconds(),
            cancelled.cancellation().cancel_time().seconds());
  watcher.join();
  ASSERT_TRUE(watched.terminal) << watched.status.error_message();
  EXPECT_EQ(watched.changes.back().second, musicgw::v1::OPERATION_STATE_CANCELLED);

  // Applied once: a second cancel, on either replica, finds it done.
  for (int replica = 0; replica < 2; ++replica) {
    Operation again;
    grpc::Status twice = Cancel(replica, created.name(), "again", &again);
    EXPECT_EQ(twice.error_code(), grpc::StatusCode::FAILED_PRECONDITION)
        << "replica " << replica << ": " << twice.error_message();
  }
  // One upstream job, never re-submitted.
  EXPECT_EQ(UpstreamSamples(), 1) << soundpiece_->StatsJson();
  EXPECT_EQ(soundpiece_->stats().idempotent_replays, 0) << soundpiece_->StatsJson();
}

// A cancel asked for while the replica tracking the operation is dead waits in the ledger; the
// replica that takes the operation over (after its lease ran out) applies it instead of
// tracking the operation on, and the caller, still waiting, gets the cancelled operation.
TEST_F(MultiReplicaTest, ACancelPendingWhenItsOwnerDiesIsAppliedByTheReplicaThatTakesOver) {
  StartEmulators(absl::Seconds(60));
  StartReplicas();
  const Operation created = GenerateOk(*stubs_[0], Sample());
  ASSERT_TRUE(Accepted(1, created.name()));
  auto killed = gateways_[0]->Signal(SIGKILL, absl::Seconds(5));
  ASSERT_TRUE(killed.ok());
  ASSERT_TRUE(WIFSIGNALED(*killed));

  Operation cancelled;
  grpc::Status status = Cancel(1, created.name(), "owner gone", &cancelled);
  ASSERT_TRUE(status.ok()) << status.error_message() << "\n" << gateways_[1]->Logs();
  EXPECT_EQ(cancelled.state(), musicgw::v1::OPERATION_STATE_CANCELLED);
  EXPECT_EQ(cancelled.cancellation().reason(), "owner gone");
  EXPECT_EQ(cancelled.submission(), musicgw::v1::SUBMISSION_STATE_ACCEPTED);
  auto seen = Get(2, created.name());
  ASSERT_TRUE(seen.ok()) << seen.status();
  EXPECT_EQ(seen->state(), musicgw::v1::OPERATION_STATE_CANCELLED);
  // Taken over by a survivor, which applied the pending cancel.
  const std::string survivors = gateways_[1]->Logs() + gateways_[2]->Logs();
  EXPECT_NE(survivors.find("took over live operations"), std::string::npos) << survivors;
  EXPECT_EQ(UpstreamSamples(), 1) << soundpiece_->StatsJson();
  EXPECT_EQ(soundpiece_->stats().idempotent_replays, 0) << soundpiece_->StatsJson();
}

// All three replicas restarted one at a time (SIGTERM, drain, start again, ready before the
// next) under a steady Generate load from clients that retry UNAVAILABLE (and broken
// connections) with the same request_id on the next replica. Every request_id ends with exactly
// one operation, completed, and exactly one upstream job.
TEST_F(MultiReplicaTest, ARollingRestartUnderLoadLosesAndDoublesNothing) {
  constexpr int kClients = 3;
  StartEmulators(absl::Seconds(1));
  StartReplicas();

  absl::Mutex mu;
  std::map<std::string, std::string> operation_of;  // request_id -> operation name
  std::atomic<bool> stop{false};
  std::atomic<int> retries{0};
  std::atomic<int> accepted{0};
  std::vector<std::thread> clients;
  clients.reserve(kClients);
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&, c] {
      int replica = c;
      while (!stop.load()) {
        const GenerateRequest request = Sample();
        Operation operation;
        bool done = false;
        for (int attempt = 0; attempt < 200 && !done; ++attempt) {
          grpc::Status status = stubs_[replica % kReplicas]->Generate(
              Context(kAcmeKey, absl::Seconds(10)).get(), request, &operation);
          if (status.ok()) {
            done = true;
            break;
          }
          const grpc::StatusCode code = status.error_code();
          if (code != grpc::StatusCode::UNAVAILABLE && code != grpc::StatusCode::CANCELLED &&
              code != grpc::StatusCode::DEADLINE_EXCEEDED) {
            ADD_FAILURE() << "Generate: " << status.error_code() << " " << status.error_message();
            return;
          }
          // The same request_id on the next replica (a client's reconnect to the Service).
          retries.fetch_add(1);
          ++replica;
          absl::SleepFor(absl::Milliseconds(20));  // a client's backoff
        }
        if (!done) {
          ADD_FAILURE() << "request " << request.request_id() << " never accepted";
          return;
        }
        {
          absl::MutexLock lock(&mu);
          operation_of[request.request_id()] = operation.name();
        }
        accepted.fetch_add(1);
        ++replica;
        absl::SleepFor(absl::Milliseconds(100));  // the load's pace, not a proof
      }
    });
  }

  // Load running before the first restart, and accepted across each one.
  ASSERT_TRUE(Eventually([&] { return accepted.load() >= 10; }, absl::Seconds(60)));
  for (int replica = 0; replica < kReplicas; ++replica) {
    const int before = accepted.load();
    Restart(replica);
    if (HasFatalFailure()) break;
    ASSERT_TRUE(Eventually([&] { return accepted.load() >= before + 10; }, absl::Seconds(60)))
        << "no progress after restarting replica " << replica;
  }
  stop.store(true);
  for (auto& client : clients) client.join();
  ASSERT_FALSE(HasFatalFailure());

  std::map<std::string, std::string> requests;
  {
    absl::MutexLock lock(&mu);
    requests = operation_of;
  }
  ASSERT_EQ(static_cast<int>(requests.size()), accepted.load());
  std::set<std::string> names;
  int index = 0;
  for (const auto& [request_id, name] : requests) {
    ASSERT_FALSE(name.empty()) << request_id;
    names.insert(name);
    // The same request_id, on any replica, is the same operation.
    GenerateRequest again = Sample();
    again.set_request_id(request_id);
    const Operation same = GenerateOk(*stubs_[index % kReplicas], again);
    EXPECT_EQ(same.name(), name) << request_id;
    const Operation done = WaitDone(*stubs_[(index + 1) % kReplicas], name);
    EXPECT_EQ(done.state(), musicgw::v1::OPERATION_STATE_SUCCEEDED)
        << name << ": " << done.error().message();
    ++index;
  }
  EXPECT_EQ(names.size(), requests.size());
  // The ledger holds exactly these operations, one per request_id.
  std::set<std::string> listed;
  std::string page_token;
  do {
    musicgw::v1::ListOperationsRequest list;
    list.set_page_size(100);
    list.set_page_token(page_token);
    musicgw::v1::ListOperationsResponse page;
    grpc::Status status = stubs_[0]->ListOperations(Context(kAcmeKey).get(), list, &page);
    ASSERT_TRUE(status.ok()) << status.error_message();
    for (const auto& operation : page.operations()) {
      EXPECT_TRUE(listed.insert(operation.request().request_id()).second)
          << "request_id " << operation.request().request_id() << " has two operations";
    }
    page_token = page.next_page_token();
  } while (!page_token.empty());
  EXPECT_EQ(listed.size(), requests.size());
  // The provider's own count: one upstream job per request_id.
  EXPECT_EQ(UpstreamSamples(), static_cast<int64_t>(requests.size())) << soundpiece_->StatsJson();
  std::cout << "rolling restart: " << requests.size() << " request_ids, " << retries.load()
            << " retried attempts, " << soundpiece_->stats().idempotent_replays
            << " idempotent re-submissions answered by the provider\n";
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
      ASSERT_TRUE(done.ok()) << done.status();
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
