// Crash safety: the musicgw binary is killed with SIGKILL at the moments that matter, restarted
// on the same ledger, and every accepted operation must complete with exactly one upstream
// operation per request_id; watchers resume by sequence.
#include <signal.h>
#include <sys/wait.h>

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "emulators/loudly/loudly_emulator.h"
#include "emulators/soundpiece/soundpiece_emulator.h"
#include "gtest/gtest.h"
#include "tests/integration/harness.h"
#include "tests/scratch_dir.h"

namespace musicgw::testing {
namespace {

using musicgw::v1::Operation;

class RestartTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SetTestSecrets();
    dir_ = NewTestScratchDir("restart");
    emulators::soundpiece::Options sp;
    sp.processing_time = absl::Milliseconds(1500);
    sp.long_poll = absl::Seconds(2);
    auto soundpiece = emulators::soundpiece::Emulator::Start(sp);
    ASSERT_TRUE(soundpiece.ok()) << soundpiece.status();
    soundpiece_ = std::move(*soundpiece);
    emulators::loudly::Options ld;
    ld.sync_latency = absl::Seconds(3);
    auto loudly = emulators::loudly::Emulator::Start(ld);
    ASSERT_TRUE(loudly.ok()) << loudly.status();
    loudly_ = std::move(*loudly);
    config_ = TestConfig({loudly_->base_url(), soundpiece_->base_url()}, dir_ + "/ledger.db");
    StartGateway();
  }

  void StartGateway() {
    auto process = GatewayProcess::Start(config_, dir_);
    ASSERT_TRUE(process.ok()) << process.status();
    gateway_ = std::move(*process);
    stub_ = Stub(gateway_->grpc_port());
  }

  void KillAndRestart() {
    auto status = gateway_->Signal(SIGKILL, absl::Seconds(5));
    ASSERT_TRUE(status.ok());
    ASSERT_TRUE(WIFSIGNALED(*status));
    gateway_.reset();
    StartGateway();
  }

  Operation Generate(const musicgw::v1::GenerateRequest& request) {
    return GenerateOk(*stub_, request);
  }
  Operation WaitDone(const std::string& name) { return musicgw::testing::WaitDone(*stub_, name); }

  static musicgw::v1::GenerateRequest Sample(int seconds) {
    musicgw::v1::GenerateRequest request;
    request.set_request_id(NewRequestId());
    request.set_provider(musicgw::v1::PROVIDER_SOUNDPIECE);
    request.mutable_sample()->set_prompt("crash test");
    request.mutable_sample()->set_duration_seconds(seconds);
    return request;
  }

  std::string dir_;
  std::unique_ptr<emulators::soundpiece::Emulator> soundpiece_;
  std::unique_ptr<emulators::loudly::Emulator> loudly_;
  nlohmann::json config_;
  std::unique_ptr<GatewayProcess> gateway_;
  std::unique_ptr<musicgw::v1::MusicGateway::Stub> stub_;
};

// Kills the gateway right after Generate returned (the ledger holds the operation; the provider
// may or may not have been called yet) and while PUTs are in flight at the provider (accepted
// upstream, answer not yet received).
TEST_F(RestartTest, KilledAroundSubmissionEveryOperationCompletesOnceUpstream) {
  // Every PUT is held 1.5 s before the emulator answers, so the kill lands mid-request.
  ASSERT_TRUE(soundpiece_
                  ->SetFaultPlan(R"({"rules":[{"match":"PUT /v1/create.new_sample",
                                   "action":"latency","delay_ms":1500}]})")
                  .ok());
  std::vector<Operation> operations;
  operations.reserve(6);
  for (int i = 0; i < 3; ++i) operations.push_back(Generate(Sample(2 + i)));
  KillAndRestart();  // immediately: between ledger write and (some) provider calls
  const int64_t arrived = soundpiece_->stats().faults_injected;
  for (int i = 0; i < 3; ++i) operations.push_back(Generate(Sample(5 + i)));
  // The delay rule fires when a PUT arrives, before its 1.5 s hold: three more arrivals mean
  // PUTs are being held at the provider right now.
  ASSERT_TRUE(Eventually([&] { return soundpiece_->stats().faults_injected >= arrived + 3; },
                         absl::Seconds(20)))
      << soundpiece_->StatsJson();
  KillAndRestart();  // PUTs in flight at the provider

  for (const auto& operation : operations) {
    const Operation done = WaitDone(operation.name());
    EXPECT_EQ(done.state(), musicgw::v1::OPERATION_STATE_SUCCEEDED)
        << operation.name() << ": " << done.error().message();
    EXPECT_EQ(done.outputs_size(), 1);
  }
  const auto stats = soundpiece_->stats();
  EXPECT_EQ(stats.operations_by_account_route.at("acct create.new_sample"), 6)
      << soundpiece_->StatsJson();
}

// Loudly has no idempotency key: a crash while its synchronous POST is in flight must never
// lead to a second POST; the operation says honestly that it may have been submitted.
TEST_F(RestartTest, LoudlySubmissionInFlightIsNeverResubmitted) {
  musicgw::v1::GenerateRequest request;
  request.set_request_id(NewRequestId());
  request.set_provider(musicgw::v1::PROVIDER_LOUDLY);
  request.mutable_parametric_music()->set_genre("House");
  request.mutable_parametric_music()->set_duration_seconds(30);
  const Operation accepted = Generate(request);
  // Wait until the POST reached the emulator (it answers 3 s later).
  using emulators::loudly::Stats;
  ASSERT_TRUE(loudly_->AwaitStats([](const Stats& s) { return s.b2b_song_requests >= 1; },
                                  absl::Seconds(10)))
      << loudly_->StatsJson();
  musicgw::v1::GetOperationRequest get;
  get.set_name(accepted.name());
  Operation current;
  ASSERT_TRUE(stub_->GetOperation(Context(kAcmeKey).get(), get, &current).ok());
  ASSERT_EQ(current.submission(), musicgw::v1::SUBMISSION_STATE_SUBMITTING);
  KillAndRestart();
  const Operation done = WaitDone(accepted.name());
  EXPECT_EQ(done.submission(), musicgw::v1::SUBMISSION_STATE_POSSIBLY_SUBMITTED);
  EXPECT_EQ(done.state(), musicgw::v1::OPERATION_STATE_FAILED);
  // The killed POST finishes at the emulator 3 s after it arrived. The restarted gateway decided
  // the operation's fate at start, before that, so a re-sent POST would be counted by then.
  ASSERT_TRUE(
      loudly_->AwaitStats([](const Stats& s) { return s.b2b_songs >= 1; }, absl::Seconds(10)))
      << loudly_->StatsJson();
  const auto stats = loudly_->stats();
  EXPECT_EQ(stats.b2b_song_requests, 1) << loudly_->StatsJson();
  EXPECT_EQ(stats.b2b_songs, 1) << loudly_->StatsJson();
  // The same request_id returns the same (failed) operation, not a new submission.
  EXPECT_EQ(Generate(request).name(), accepted.name());
}

// 100 watchers are attached when the gateway dies; each reconnects with the last sequence it saw
// and gets what it missed, never an older state, ending with the terminal event.
TEST_F(RestartTest, HundredWatchersResumeBySequenceAfterACrash) {
  const Operation operation = Generate(Sample(3));
  constexpr int kWatchers = 100;
  std::vector<int64_t> last_seen(kWatchers, 0);
  std::vector<char> saw_done(kWatchers, 0);
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  std::vector<std::unique_ptr<grpc::ClientReader<musicgw::v1::OperationEvent>>> readers;
  for (int i = 0; i < kWatchers; ++i) {
    contexts.push_back(Context(kAcmeKey, absl::Seconds(60)));
    musicgw::v1::WatchOperationRequest watch;
    watch.set_name(operation.name());
    readers.push_back(stub_->WatchOperation(contexts.back().get(), watch));
    musicgw::v1::OperationEvent event;
    ASSERT_TRUE(readers.back()->Read(&event));
    last_seen[i] = event.operation().sequence();
  }
  KillAndRestart();
  for (int i = 0; i < kWatchers; ++i) {
    musicgw::v1::OperationEvent event;
    while (readers[i]->Read(&event)) {
      if (event.kind() != musicgw::v1::OperationEvent::KIND_HEARTBEAT) {
        last_seen[i] = event.operation().sequence();
        saw_done[i] = event.operation().done();
      }
    }
    readers[i]->Finish();
  }
  std::atomic<int> finished{0};
  std::vector<std::thread> threads;
  threads.reserve(kWatchers);
  for (int i = 0; i < kWatchers; ++i) {
    threads.emplace_back([&, i] {
      if (saw_done[i]) {
        ++finished;
        return;
      }
      auto context = Context(kAcmeKey, absl::Seconds(60));
      musicgw::v1::WatchOperationRequest watch;
      watch.set_name(operation.name());
      watch.set_after_sequence(last_seen[i]);
      auto reader = stub_->WatchOperation(context.get(), watch);
      musicgw::v1::OperationEvent event;
      bool done = false;
      while (reader->Read(&event)) {
        if (event.kind() == musicgw::v1::OperationEvent::KIND_HEARTBEAT) continue;
        EXPECT_GT(event.operation().sequence(), last_seen[i]) << "older state after resume";
        last_seen[i] = event.operation().sequence();
        done = event.operation().done();
      }
      EXPECT_TRUE(reader->Finish().ok());
      if (done) ++finished;
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(finished.load(), kWatchers);
  EXPECT_EQ(soundpiece_->stats().operations_created, 1);
}

}  // namespace
}  // namespace musicgw::testing
