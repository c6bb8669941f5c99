// Engine tests against the scripted FakeAdapter and a real SQLite ledger file.
#include "services/operations/engine.h"

#include <atomic>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/synchronization/notification.h"
#include "common/clock.h"
#include "common/errors.h"
#include "gtest/gtest.h"
#include "services/operations/ids.h"
#include "services/operations/sqlite_store.h"
#include "tests/operations/fake_adapter.h"
#include "tests/operations/test_util.h"

namespace musicgw::operations {
namespace {

namespace v1 = musicgw::v1;
using testing::FakeAdapter;
using testing::StreamReader;
using testing::TempLedgerPath;
using testing::TextRequest;

constexpr char kTenant[] = "tenant-a";
constexpr char kOther[] = "tenant-b";

std::string Reason(const absl::Status& status) {
  google::rpc::ErrorInfo info;
  return GetErrorInfo(status, &info) ? info.reason() : "";
}

std::string Reason(const google::rpc::Status& status) { return Reason(FromRpcStatus(status)); }

class EngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = TempLedgerPath();
    options_.min_poll_interval = absl::Milliseconds(1);
    options_.max_poll_interval = absl::Milliseconds(50);
    options_.watch_heartbeat = absl::Hours(1);
    options_.operation_deadline = absl::Minutes(1);
  }

  std::unique_ptr<OperationsEngine> Open(const std::vector<adapters::ProviderAdapter*>& adapters,
                                         bool start = true) {
    SqliteOptions sqlite;
    sqlite.synchronous_full = false;  // tests simulate process death, not power loss
    sqlite.clock = options_.clock;    // leases run out on the engine's clock
    auto store = OpenSqliteOperationStore(path_, sqlite);
    if (!store.ok()) {
      ADD_FAILURE() << store.status();
      return nullptr;
    }
    auto engine = CreateOperationsEngine(options_, std::move(*store), adapters, nullptr);
    if (!engine.ok()) {
      ADD_FAILURE() << engine.status();
      return nullptr;
    }
    if (start) {
      absl::Status started = (*engine)->Start();
      if (!started.ok()) ADD_FAILURE() << started;
    }
    return std::move(*engine);
  }

  // Waits (through the engine's own Wait) until done or `timeout`.
  static absl::StatusOr<v1::Operation> WaitDone(OperationsEngine& engine, const std::string& name,
                                                absl::Duration timeout = absl::Seconds(10),
                                                const std::string& tenant = kTenant) {
    absl::Notification done;
    absl::StatusOr<v1::Operation> result;
    engine.Wait(tenant, name, timeout, [&](absl::StatusOr<v1::Operation> op) {
      result = std::move(op);
      done.Notify();
    });
    done.WaitForNotification();
    return result;
  }

  std::string path_;
  EngineOptions options_;
};

TEST_F(EngineTest, GenerateStoresQueuedOperationThenCompletes) {
  FakeAdapter adapter;
  auto engine = Open({&adapter});
  auto op = engine->Generate(kTenant, TextRequest("calm piano"));
  ASSERT_TRUE(op.ok()) << op.status();
  EXPECT_EQ(op->state(), v1::OPERATION_STATE_QUEUED);
  EXPECT_EQ(op->sequence(), 1);
  EXPECT_EQ(op->submission(), v1::SUBMISSION_STATE_NOT_SUBMITTED);
  EXPECT_EQ(op->task(), v1::TASK_KIND_TEXT_TO_MUSIC);
  EXPECT_EQ(op->provider(), v1::PROVIDER_SOUNDPIECE);
  ASSERT_TRUE(absl::StartsWith(op->name(), "operations/"));
  EXPECT_TRUE(IsOperationId(op->name().substr(11)));
  EXPECT_TRUE(op->has_deadline());

  auto done = WaitDone(*engine, op->name());
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(done->state(), v1::OPERATION_STATE_SUCCEEDED);
  EXPECT_TRUE(done->done());
  EXPECT_EQ(done->submission(), v1::SUBMISSION_STATE_ACCEPTED);
  EXPECT_FALSE(done->upstream_id().empty());
  ASSERT_EQ(done->outputs_size(), 1);
  EXPECT_EQ(done->outputs(0).name(), op->name() + "/assets/0");
  ASSERT_EQ(done->attempts_size(), 1);
  EXPECT_EQ(done->attempts(0).outcome(), "accepted");
  EXPECT_EQ(done->attempts(0).upstream_id(), done->upstream_id());
  EXPECT_EQ(adapter.submit_calls(), 1);
  // The provider got the derived, stable idempotency key.
  ASSERT_EQ(adapter.idempotency_keys().size(), 1u);
  EXPECT_EQ(adapter.idempotency_keys()[0],
            ProviderIdempotencyKey(kTenant, op->request().request_id()));
  EXPECT_EQ(engine->Stats().live_operations, 0);
}

// The webhook deliverer is woken for the changes that wrote outbox messages, not for every
// state change.
TEST_F(EngineTest, OutboxWritesAreAnnouncedAndOtherChangesAreNot) {
  class Counting final : public EngineObserver {
   public:
    void OnStateChange(v1::Provider, v1::TaskKind, v1::OperationState,
                       v1::OperationState) override {
      ++state_changes;
    }
    void OnOutboxWritten() override { ++outbox_writes; }
    std::atomic<int> state_changes{0};
    std::atomic<int> outbox_writes{0};
  } observer;
  options_.observer = &observer;
  options_.outbox = [](const std::string& tenant, const v1::Operation&, const v1::Operation& to) {
    std::vector<OutboxMessage> messages;
    if (to.done()) {  // only the terminal event is subscribed to
      OutboxMessage message;
      message.delivery_id = absl::StrCat("d-", to.name());
      message.event_id = absl::StrCat("e-", to.name());
      message.tenant = tenant;
      message.endpoint = "ops";
      message.url = "http://127.0.0.1:9/hook";
      message.event_type = "operation.succeeded";
      message.body = "{}";
      message.create_time = absl::Now();
      messages.push_back(std::move(message));
    }
    return messages;
  };
  FakeAdapter adapter;
  auto engine = Open({&adapter});
  auto op = engine->Generate(kTenant, TextRequest("calm piano"));
  ASSERT_TRUE(op.ok()) << op.status();
  auto done = WaitDone(*engine, op->name());
  ASSERT_TRUE(done.ok()) << done.status();
  ASSERT_EQ(done->state(), v1::OPERATION_STATE_SUCCEEDED);
  EXPECT_GE(observer.state_changes.load(), 2);  // created, ..., succeeded
  EXPECT_EQ(observer.outbox_writes.load(), 1);
  engine->Shutdown();
}

TEST_F(EngineTest, ValidateOnlyStoresNothing) {
  FakeAdapter adapter;
  auto engine = Open({&adapter});
  auto request = TextRequest("x");
  request.set_validate_only(true);
  auto op = engine->Generate(kTenant, request);
  ASSERT_TRUE(op.ok()) << op.status();
  EXPECT_TRUE(op->name().empty());
  EXPECT_EQ(op->provider(), v1::PROVIDER_SOUNDPIECE);
  auto list = engine->List(kTenant, v1::ListOperationsRequest());
  ASSERT_TRUE(list.ok());
  EXPECT_EQ(list->operations_size(), 0);
  EXPECT_EQ(adapter.submit_calls(), 0);
}

TEST_F(EngineTest, SameRequestIdReturnsSameOperationAndReuseIsRejected) {
  FakeAdapter adapter;
  auto engine = Open({&adapter});
  const auto request = TextRequest("lofi beats");
  auto first = engine->Generate(kTenant, request);
  ASSERT_TRUE(first.ok());
  auto again = engine->Generate(kTenant, request);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->name(), first->name());
  auto changed = TextRequest("something else", request.request_id());
  auto reused = engine->Generate(kTenant, changed);
  ASSERT_FALSE(reused.ok());
  EXPECT_EQ(reused.status().code(), absl::StatusCode::kAlreadyExists);
  google::rpc::ErrorInfo info;
  ASSERT_TRUE(GetErrorInfo(reused.status(), &info));
  EXPECT_EQ(info.reason(), "REQUEST_ID_REUSED");
  EXPECT_EQ(info.domain(), "musicgw.dev");
  // Another tenant may use the same request_id independently.
  auto other = engine->Generate(kOther, request);
  ASSERT_TRUE(other.ok());
  EXPECT_NE(other->name(), first->name());
  ASSERT_TRUE(WaitDone(*engine, first->name()).ok());
  ASSERT_TRUE(WaitDone(*engine, other->name(), absl::Seconds(10), kOther).ok());
  EXPECT_EQ(adapter.submit_calls(), 2);  // one per tenant, none for the retry or the reuse
}

TEST_F(EngineTest, SameRequestIdSurvivesRestart) {
  FakeAdapter adapter;
  const auto request = TextRequest("restart me");
  std::string name;
  {
    auto engine = Open({&adapter});
    auto op = engine->Generate(kTenant, request);
    ASSERT_TRUE(op.ok());
    name = op->name();
    ASSERT_TRUE(WaitDone(*engine, name).ok());
  }
  auto engine = Open({&adapter});
  auto again = engine->Generate(kTenant, request);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->name(), name);
  EXPECT_TRUE(again->done());
  EXPECT_EQ(adapter.submit_calls(), 1);
}

TEST_F(EngineTest, ConcurrentIdenticalGeneratesMakeOneOperation) {
  FakeAdapter adapter;
  auto engine = Open({&adapter});
  const auto request = TextRequest("race");
  std::vector<std::thread> threads;
  threads.reserve(50);
  std::vector<std::string> names(50);
  for (int i = 0; i < 50; ++i) {
    threads.emplace_back([&, i] {
      auto op = engine->Generate(kTenant, request);
      names[i] = op.ok() ? op->name() : op.status().ToString();
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(std::set<std::string>(names.begin(), names.end()).size(), 1u) << names[0];
  ASSERT_TRUE(WaitDone(*engine, names[0]).ok());
  EXPECT_EQ(adapter.submit_calls(), 1);
  EXPECT_EQ(adapter.upstream_jobs(), 1);
}

TEST_F(EngineTest, CrashBeforeSubmitReachesProviderResubmitsOnce) {
  // The ledger says SUBMITTING, but the process died before the request left.
  FakeAdapter provider;
  provider.SetSubmitMode(FakeAdapter::SubmitMode::kDropBefore);
  std::string name;
  {
    auto engine = Open({&provider});
    auto op = engine->Generate(kTenant, TextRequest("crash"));
    ASSERT_TRUE(op.ok());
    name = op->name();
    ASSERT_TRUE(provider.WaitForSubmitCalls(1, absl::Seconds(10)));
    auto stored = engine->Get(kTenant, name);
    ASSERT_TRUE(stored.ok());
    EXPECT_EQ(stored->submission(), v1::SUBMISSION_STATE_SUBMITTING);  // written before the call
  }  // "kill": the engine goes away with the submission unanswered
  EXPECT_EQ(provider.upstream_jobs(), 0);
  provider.SetSubmitMode(FakeAdapter::SubmitMode::kAnswer);
  auto engine = Open({&provider});
  auto done = WaitDone(*engine, name);
  ASSERT_TRUE(done.ok());
  EXPECT_EQ(done->state(), v1::OPERATION_STATE_SUCCEEDED);
  EXPECT_EQ(provider.upstream_jobs(), 1);
  EXPECT_EQ(provider.submit_calls(), 2);
}

TEST_F(EngineTest, CrashAfterSubmitReachedIdempotentProviderMakesOneUpstreamJob) {
  FakeAdapter provider;  // idempotent: dedupes on the idempotency key
  provider.SetSubmitMode(FakeAdapter::SubmitMode::kHang);
  std::string name;
  {
    auto engine = Open({&provider});
    auto op = engine->Generate(kTenant, TextRequest("crash after send"));
    ASSERT_TRUE(op.ok());
    name = op->name();
    ASSERT_TRUE(provider.WaitForSubmitCalls(1, absl::Seconds(10)));
  }
  EXPECT_EQ(provider.upstream_jobs(), 1);
  provider.SetSubmitMode(FakeAdapter::SubmitMode::kAnswer);
  auto engine = Open({&provider});
  auto done = WaitDone(*engine, name);
  ASSERT_TRUE(done.ok());
  EXPECT_EQ(done->state(), v1::OPERATION_STATE_SUCCEEDED);
  EXPECT_EQ(provider.upstream_jobs(), 1);  // the re-submission found the same job
  const auto keys = provider.idempotency_keys();
  ASSERT_EQ(keys.size(), 2u);
  EXPECT_EQ(keys[0], keys[1]);
}

TEST_F(EngineTest, CrashWhileSubmittingToNonIdempotentProviderFailsHonestly) {
  FakeAdapter::Options options;
  options.idempotent = false;
  FakeAdapter provider(options);
  provider.SetSubmitMode(FakeAdapter::SubmitMode::kHang);
  std::string name;
  {
    auto engine = Open({&provider});
    auto op = engine->Generate(kTenant, TextRequest("maybe charged"));
    ASSERT_TRUE(op.ok());
    name = op->name();
    ASSERT_TRUE(provider.WaitForSubmitCalls(1, absl::Seconds(10)));
  }
  provider.SetSubmitMode(FakeAdapter::SubmitMode::kAnswer);
  auto engine = Open({&provider});
  auto done = WaitDone(*engine, name);
  ASSERT_TRUE(done.ok());
  EXPECT_EQ(done->state(), v1::OPERATION_STATE_FAILED);
  EXPECT_EQ(done->submission(), v1::SUBMISSION_STATE_POSSIBLY_SUBMITTED);
  EXPECT_EQ(done->error().code(), static_cast<int>(absl::StatusCode::kFailedPrecondition));
  EXPECT_EQ(Reason(done->error()), "SUBMISSION_OUTCOME_UNKNOWN");
  EXPECT_EQ(provider.submit_calls(), 1);  // never re-submitted blindly
}

TEST_F(EngineTest, RestartResumesPolling) {
  FakeAdapter provider;
  provider.SetPollsToFinish(0);  // never finishes while the first engine runs
  std::string name;
  {
    auto engine = Open({&provider});
    auto op = engine->Generate(kTenant, TextRequest("long one"));
    ASSERT_TRUE(op.ok());
    name = op->name();
    ASSERT_TRUE(provider.WaitForPollCalls(2, absl::Seconds(10)));
    auto running = engine->Get(kTenant, name);
    ASSERT_TRUE(running.ok());
    EXPECT_EQ(running->state(), v1::OPERATION_STATE_RUNNING);
  }
  provider.SetPollsToFinish(1);
  auto engine = Open({&provider});
  auto done = WaitDone(*engine, name);
  ASSERT_TRUE(done.ok());
  EXPECT_EQ(done->state(), v1::OPERATION_STATE_SUCCEEDED);
  EXPECT_EQ(provider.submit_calls(), 1);
  EXPECT_EQ(provider.upstream_jobs(), 1);
}

TEST_F(EngineTest, OneTrackerWhateverTheNumberOfWatchers) {
  FakeAdapter provider;
  provider.SetPollsToFinish(5);
  provider.SetNextPollAfter(absl::Milliseconds(20));
  auto engine = Open({&provider});
  auto op = engine->Generate(kTenant, TextRequest("popular"));
  ASSERT_TRUE(op.ok());
  std::vector<std::unique_ptr<StreamReader<v1::OperationEvent>>> readers;
  for (int i = 0; i < 100; ++i) {
    auto stream = engine->Watch(kTenant, op->name(), 0);
    ASSERT_TRUE(stream.ok()) << stream.status();
    readers.push_back(std::make_unique<StreamReader<v1::OperationEvent>>(*std::move(stream)));
  }
  EXPECT_EQ(engine->Stats().open_watchers, 100);
  for (auto& reader : readers) {
    ASSERT_TRUE(reader->WaitFinished());
    EXPECT_TRUE(reader->status().ok()) << reader->status();
    const auto events = reader->messages();
    ASSERT_FALSE(events.empty());
    EXPECT_TRUE(events.back().operation().done());
  }
  EXPECT_EQ(provider.poll_calls(), 5);  // as for a single watcher: O(operations), not O(watchers)
  EXPECT_EQ(provider.submit_calls(), 1);
  readers.clear();
  EXPECT_EQ(engine->Stats().open_watchers, 0);
}

TEST_F(EngineTest, WatchDeliversSnapshotThenChangesInOrderAndResumes) {
  FakeAdapter provider;
  provider.SetPollsToFinish(3);
  auto engine = Open({&provider});
  auto op = engine->Generate(kTenant, TextRequest("ordered"));
  ASSERT_TRUE(op.ok());
  auto stream = engine->Watch(kTenant, op->name(), 0);
  ASSERT_TRUE(stream.ok());
  StreamReader<v1::OperationEvent> reader(*std::move(stream));
  ASSERT_TRUE(reader.WaitFinished());
  EXPECT_TRUE(reader.status().ok());
  const auto events = reader.messages();
  ASSERT_GE(events.size(), 2u);
  EXPECT_EQ(events[0].kind(), v1::OperationEvent::KIND_SNAPSHOT);
  for (size_t i = 1; i < events.size(); ++i) {
    EXPECT_EQ(events[i].kind(), v1::OperationEvent::KIND_CHANGE);
    EXPECT_GT(events[i].sequence(), events[i - 1].sequence());
    EXPECT_EQ(events[i].sequence(), events[i].operation().sequence());
  }
  const v1::Operation last = events.back().operation();
  EXPECT_EQ(last.state(), v1::OPERATION_STATE_SUCCEEDED);
  // QUEUED(1) -> SUBMITTING(2) -> RUNNING(3) -> SUCCEEDED(4)
  EXPECT_EQ(last.sequence(), 4);

  // A reconnecting client gets exactly what it missed, from the ledger, then the end.
  auto resumed = engine->Watch(kTenant, op->name(), 2);
  ASSERT_TRUE(resumed.ok());
  StreamReader<v1::OperationEvent> again(*std::move(resumed));
  ASSERT_TRUE(again.WaitFinished());
  EXPECT_TRUE(again.status().ok());
  const auto missed = again.messages();
  ASSERT_EQ(missed.size(), 2u);
  EXPECT_EQ(missed[0].sequence(), 3);
  EXPECT_EQ(missed[0].operation().state(), v1::OPERATION_STATE_RUNNING);
  EXPECT_EQ(missed[1].sequence(), 4);
  EXPECT_FALSE(missed[0].coalesced());

  // Up to date: nothing to send, the stream just ends.
  auto current = engine->Watch(kTenant, op->name(), 4);
  ASSERT_TRUE(current.ok());
  StreamReader<v1::OperationEvent> none(*std::move(current));
  ASSERT_TRUE(none.WaitFinished());
  EXPECT_TRUE(none.messages().empty());

  auto ahead = engine->Watch(kTenant, op->name(), 9);
  EXPECT_EQ(ahead.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(EngineTest, SlowWatcherCoalescesAndDoesNotBlockOthers) {
  options_.watch_buffer = 1;
  FakeAdapter provider;
  provider.SetPollsToFinish(3);
  auto engine = Open({&provider});
  auto op = engine->Generate(kTenant, TextRequest("busy"));
  ASSERT_TRUE(op.ok());
  auto slow_stream = engine->Watch(kTenant, op->name(), 0);
  auto fast_stream = engine->Watch(kTenant, op->name(), 0);
  ASSERT_TRUE(slow_stream.ok() && fast_stream.ok());
  StreamReader<v1::OperationEvent> slow(*std::move(slow_stream), /*auto_drain=*/false);
  StreamReader<v1::OperationEvent> fast(*std::move(fast_stream));
  ASSERT_TRUE(fast.WaitFinished());
  EXPECT_TRUE(fast.messages().back().operation().done());
  ASSERT_TRUE(WaitDone(*engine, op->name()).ok());
  slow.Drain();
  ASSERT_TRUE(slow.finished());
  const auto events = slow.messages();
  ASSERT_FALSE(events.empty());
  EXPECT_LT(events.size(), fast.messages().size());
  EXPECT_TRUE(events.back().coalesced());
  EXPECT_TRUE(events.back().operation().done());
  EXPECT_EQ(events.back().sequence(), fast.messages().back().sequence());
}

TEST_F(EngineTest, IdleWatchGetsHeartbeats) {
  options_.watch_heartbeat = absl::Milliseconds(30);
  FakeAdapter provider;
  provider.SetPollsToFinish(0);
  provider.SetNextPollAfter(absl::Milliseconds(50));
  auto engine = Open({&provider});
  auto op = engine->Generate(kTenant, TextRequest("idle"));
  ASSERT_TRUE(op.ok());
  auto stream = engine->Watch(kTenant, op->name(), 0);
  ASSERT_TRUE(stream.ok());
  StreamReader<v1::OperationEvent> reader(*std::move(stream));
  ASSERT_TRUE(reader.WaitFor([](const std::vector<v1::OperationEvent>& events) {
    int heartbeats = 0;
    for (const auto& e : events) heartbeats += e.kind() == v1::OperationEvent::KIND_HEARTBEAT;
    return heartbeats >= 2;
  }));
  for (const auto& event : reader.messages()) {
    if (event.kind() != v1::OperationEvent::KIND_HEARTBEAT) continue;
    EXPECT_FALSE(event.has_operation());
    EXPECT_GT(event.sequence(), 0);
  }
}

TEST_F(EngineTest, WaitTimesOutWithSnapshotOrReturnsWhenDone) {
  FakeAdapter provider;
  provider.SetPollsToFinish(0);
  auto engine = Open({&provider});
  auto op = engine->Generate(kTenant, TextRequest("slow"));
  ASSERT_TRUE(op.ok());
  auto waited = WaitDone(*engine, op->name(), absl::Milliseconds(100));
  ASSERT_TRUE(waited.ok());
  EXPECT_FALSE(waited->done());

  provider.SetPollsToFinish(1);
  auto second = engine->Generate(kTenant, TextRequest("fast"));
  ASSERT_TRUE(second.ok());
  auto done = WaitDone(*engine, second->name(), absl::Seconds(30));
  ASSERT_TRUE(done.ok());
  EXPECT_TRUE(done->done());
  // Already done: answered at once.
  auto again = WaitDone(*engine, second->name(), absl::Seconds(30));
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->sequence(), done->sequence());
}

TEST_F(EngineTest, CancelStopsTrackingAndRecordsReason) {
  FakeAdapter provider;
  provider.SetPollsToFinish(0);
  provider.SetCancelAnswer(true);
  auto engine = Open({&provider});
  auto op = engine->Generate(kTenant, TextRequest("unwanted"));
  ASSERT_TRUE(op.ok());
  ASSERT_TRUE(provider.WaitForPollCalls(1, absl::Seconds(10)));
  auto stream = engine->Watch(kTenant, op->name(), 0);
  ASSERT_TRUE(stream.ok());
  StreamReader<v1::OperationEvent> reader(*std::move(stream));
  absl::Notification waited;
  absl::StatusOr<v1::Operation> wait_result;
  engine->Wait(kTenant, op->name(), absl::Minutes(1), [&](absl::StatusOr<v1::Operation> result) {
    wait_result = std::move(result);
    waited.Notify();
  });

  auto cancelled = engine->CancelAndWait(kTenant, op->name(), "changed my mind");
  ASSERT_TRUE(cancelled.ok()) << cancelled.status();
  EXPECT_EQ(cancelled->state(), v1::OPERATION_STATE_CANCELLED);
  EXPECT_TRUE(cancelled->done());
  EXPECT_EQ(cancelled->cancellation().reason(), "changed my mind");
  EXPECT_TRUE(cancelled->cancellation().provider_notified());
  EXPECT_EQ(cancelled->error().code(), static_cast<int>(absl::StatusCode::kCancelled));
  EXPECT_EQ(provider.cancel_calls(), 1);
  ASSERT_TRUE(waited.WaitForNotificationWithTimeout(absl::Seconds(10)));
  ASSERT_TRUE(wait_result.ok());
  EXPECT_EQ(wait_result->state(), v1::OPERATION_STATE_CANCELLED);
  ASSERT_TRUE(reader.WaitFinished());
  EXPECT_EQ(reader.messages().back().operation().state(), v1::OPERATION_STATE_CANCELLED);
  EXPECT_EQ(engine->Stats().live_operations, 0);

  auto twice = engine->CancelAndWait(kTenant, op->name(), "again");
  EXPECT_EQ(twice.status().code(), absl::StatusCode::kFailedPrecondition);
}

// A cancel while the submission is in flight is recorded at once; the submission's answer is
// still recorded when it comes (upstream id, ACCEPTED), and the job the provider runs on is
// followed until its outputs can be attached to the cancelled operation.
TEST_F(EngineTest, CancelDuringSubmissionRecordsTheLateAnswerAndAttachesOutputs) {
  FakeAdapter provider;
  provider.SetSubmitMode(FakeAdapter::SubmitMode::kHold);
  provider.SetPollsToFinish(1);
  auto engine = Open({&provider});
  auto op = engine->Generate(kTenant, TextRequest("cancelled in flight"));
  ASSERT_TRUE(op.ok());
  ASSERT_TRUE(provider.WaitForSubmitCalls(1, absl::Seconds(10)));

  auto cancelled = engine->CancelAndWait(kTenant, op->name(), "changed my mind");
  ASSERT_TRUE(cancelled.ok()) << cancelled.status();
  EXPECT_EQ(cancelled->state(), v1::OPERATION_STATE_CANCELLED);
  EXPECT_EQ(cancelled->submission(), v1::SUBMISSION_STATE_SUBMITTING);
  EXPECT_EQ(cancelled->cancellation().reason(), "changed my mind");

  provider.ReleaseHeld();
  // Observed on the ledger: the late answer, then the outputs the provider finished anyway.
  ASSERT_TRUE(testing::WaitUntil([&] {
    auto now = engine->Get(kTenant, op->name());
    return now.ok() && now->outputs_size() > 0;
  }));
  auto done = engine->Get(kTenant, op->name());
  ASSERT_TRUE(done.ok());
  EXPECT_EQ(done->state(), v1::OPERATION_STATE_CANCELLED);
  EXPECT_EQ(done->submission(), v1::SUBMISSION_STATE_ACCEPTED);
  EXPECT_EQ(done->upstream_id(), "up-fake-1");
  EXPECT_EQ(done->attempts(0).upstream_id(), "up-fake-1");
  EXPECT_EQ(done->outputs_size(), 1);
  EXPECT_EQ(provider.upstream_jobs(), 1);
  EXPECT_EQ(provider.submit_calls(), 1);
  EXPECT_EQ(provider.cancel_calls(), 1);  // told to stop once the id was known
  EXPECT_EQ(engine->Stats().live_operations, 0);
}

TEST_F(EngineTest, CancelNeverWaitsOnTheCallerForAProviderThatDoesNotAnswer) {
  FakeAdapter provider;
  provider.SetPollsToFinish(0);
  provider.SetCancelHangs();
  options_.cancel_notify_timeout = absl::Seconds(2);
  auto engine = Open({&provider});
  auto op = engine->Generate(kTenant, TextRequest("unwanted"));
  ASSERT_TRUE(op.ok());
  ASSERT_TRUE(provider.WaitForPollCalls(1, absl::Seconds(10)));

  absl::Notification recorded;
  absl::StatusOr<v1::Operation> cancelled;
  engine->Cancel(kTenant, op->name(), "too slow", [&](absl::StatusOr<v1::Operation> result) {
    cancelled = std::move(result);
    recorded.Notify();
  });
  // Returned at once: the provider has not answered and the notify timeout has not passed.
  EXPECT_FALSE(recorded.HasBeenNotified());
  ASSERT_TRUE(recorded.WaitForNotificationWithTimeout(absl::Seconds(10)));
  ASSERT_TRUE(cancelled.ok()) << cancelled.status();
  EXPECT_EQ(cancelled->state(), v1::OPERATION_STATE_CANCELLED);
  EXPECT_FALSE(cancelled->cancellation().provider_notified());
  EXPECT_EQ(provider.cancel_calls(), 1);
}

TEST_F(EngineTest, ListPagesNewestFirstWithFilters) {
  FakeAdapter soundpiece;
  auto engine = Open({&soundpiece});
  std::vector<std::string> names;
  for (int i = 0; i < 7; ++i) {
    auto op = engine->Generate(kTenant, TextRequest(absl::StrCat("track ", i)));
    ASSERT_TRUE(op.ok());
    names.push_back(op->name());
  }
  for (const auto& name : names) ASSERT_TRUE(WaitDone(*engine, name).ok());
  auto sample = TextRequest("");
  sample.mutable_sample()->set_prompt("kick");
  sample.mutable_sample()->set_duration_seconds(2);
  auto sample_op = engine->Generate(kTenant, sample);
  ASSERT_TRUE(sample_op.ok()) << sample_op.status();
  ASSERT_TRUE(WaitDone(*engine, sample_op->name()).ok());

  v1::ListOperationsRequest request;
  request.set_page_size(3);
  request.set_task(v1::TASK_KIND_TEXT_TO_MUSIC);
  std::vector<std::string> seen;
  for (int page = 0; page < 5; ++page) {
    auto response = engine->List(kTenant, request);
    ASSERT_TRUE(response.ok()) << response.status();
    for (const auto& op : response->operations()) seen.push_back(op.name());
    if (response->next_page_token().empty()) break;
    request.set_page_token(response->next_page_token());
  }
  std::vector<std::string> expected(names.rbegin(), names.rend());
  EXPECT_EQ(seen, expected);

  // A token is bound to its filters.
  v1::ListOperationsRequest first;
  first.set_page_size(3);
  auto page = engine->List(kTenant, first);
  ASSERT_TRUE(page.ok());
  ASSERT_FALSE(page->next_page_token().empty());
  EXPECT_EQ(page->operations(0).name(), sample_op->name());
  v1::ListOperationsRequest changed;
  changed.set_page_token(page->next_page_token());
  changed.set_task(v1::TASK_KIND_SAMPLE);
  EXPECT_EQ(engine->List(kTenant, changed).status().code(), absl::StatusCode::kInvalidArgument);
  v1::ListOperationsRequest garbage;
  garbage.set_page_token("not-a-token");
  EXPECT_EQ(engine->List(kTenant, garbage).status().code(), absl::StatusCode::kInvalidArgument);

  v1::ListOperationsRequest by_state;
  by_state.add_states(v1::OPERATION_STATE_FAILED);
  auto failed = engine->List(kTenant, by_state);
  ASSERT_TRUE(failed.ok());
  EXPECT_EQ(failed->operations_size(), 0);
  v1::ListOperationsRequest by_provider;
  by_provider.set_provider(v1::PROVIDER_LOUDLY);
  auto loudly = engine->List(kTenant, by_provider);
  ASSERT_TRUE(loudly.ok());
  EXPECT_EQ(loudly->operations_size(), 0);

  // Another tenant sees none of them, and a default page is 50.
  auto other = engine->List(kOther, v1::ListOperationsRequest());
  ASSERT_TRUE(other.ok());
  EXPECT_EQ(other->operations_size(), 0);
}

TEST_F(EngineTest, OtherTenantsGetNotFoundEverywhere) {
  FakeAdapter provider;
  auto engine = Open({&provider});
  auto op = engine->Generate(kTenant, TextRequest("mine"));
  ASSERT_TRUE(op.ok());
  ASSERT_TRUE(WaitDone(*engine, op->name()).ok());
  EXPECT_EQ(engine->Get(kOther, op->name()).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(engine->CancelAndWait(kOther, op->name(), "").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(engine->Watch(kOther, op->name(), 0).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(engine->Download(kOther, op->name() + "/assets/0", 0).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(WaitDone(*engine, op->name(), absl::Seconds(1), kOther).status().code(),
            absl::StatusCode::kNotFound);
  // Unknown ids and malformed names.
  const std::string unknown = OperationName(NewOperationId(absl::Now()));
  EXPECT_EQ(engine->Get(kTenant, unknown).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(engine->Get(kTenant, "operations/nope").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(EngineTest, DeadlineFailsTheOperation) {
  options_.operation_deadline = absl::Milliseconds(200);
  FakeAdapter provider;
  provider.SetPollsToFinish(0);
  auto engine = Open({&provider});
  auto op = engine->Generate(kTenant, TextRequest("too slow"));
  ASSERT_TRUE(op.ok());
  auto done = WaitDone(*engine, op->name());
  ASSERT_TRUE(done.ok());
  EXPECT_EQ(done->state(), v1::OPERATION_STATE_FAILED);
  EXPECT_EQ(done->error().code(), static_cast<int>(absl::StatusCode::kDeadlineExceeded));
  EXPECT_EQ(Reason(done->error()), "OPERATION_DEADLINE_EXCEEDED");
}

TEST_F(EngineTest, SubmissionErrorFailsWithRichStatus) {
  FakeAdapter provider;
  absl::Status rejected =
      WithFieldViolation(WithErrorInfo(absl::InvalidArgumentError("prompt refused"),
                                       "PROMPT_REJECTED", "soundpiece.co"),
                         "text_to_music.prompt", "refused");
  provider.PushSubmitResult(rejected);
  auto engine = Open({&provider});
  auto op = engine->Generate(kTenant, TextRequest("bad words"));
  ASSERT_TRUE(op.ok());
  auto done = WaitDone(*engine, op->name());
  ASSERT_TRUE(done.ok());
  EXPECT_EQ(done->state(), v1::OPERATION_STATE_FAILED);
  EXPECT_EQ(done->submission(), v1::SUBMISSION_STATE_REJECTED);
  EXPECT_EQ(done->error().code(), static_cast<int>(absl::StatusCode::kInvalidArgument));
  EXPECT_EQ(Reason(done->error()), "PROMPT_REJECTED");
  google::rpc::BadRequest bad;
  EXPECT_TRUE(GetBadRequest(FromRpcStatus(done->error()), &bad));
  EXPECT_EQ(done->attempts(0).outcome(), "rejected: INVALID_ARGUMENT");
}

TEST_F(EngineTest, FallbackMovesToTheOtherProviderAndRecordsAttempts) {
  FakeAdapter::Options first_options;
  first_options.provider = v1::PROVIDER_LOUDLY;
  first_options.account = "loudly-main";
  FakeAdapter loudly(first_options);
  FakeAdapter soundpiece;
  loudly.PushSubmitResult(WithRetryInfo(absl::ResourceExhaustedError("limit"), absl::Minutes(5)));
  auto engine = Open({&loudly, &soundpiece});
  auto request = TextRequest("fall back");
  request.set_allow_fallback(true);
  auto op = engine->Generate(kTenant, request);
  ASSERT_TRUE(op.ok());
  EXPECT_EQ(op->provider(), v1::PROVIDER_LOUDLY);  // first in routing order
  auto done = WaitDone(*engine, op->name());
  ASSERT_TRUE(done.ok());
  EXPECT_EQ(done->state(), v1::OPERATION_STATE_SUCCEEDED);
  EXPECT_EQ(done->provider(), v1::PROVIDER_SOUNDPIECE);
  ASSERT_EQ(done->attempts_size(), 2);
  EXPECT_EQ(done->attempts(0).provider(), v1::PROVIDER_LOUDLY);
  EXPECT_EQ(done->attempts(0).outcome(), "rejected: RESOURCE_EXHAUSTED");
  EXPECT_EQ(done->attempts(1).provider(), v1::PROVIDER_SOUNDPIECE);
  EXPECT_EQ(done->attempts(1).outcome(), "accepted");

  const auto states = engine->ProviderStates();
  ASSERT_EQ(states.size(), 2u);
  EXPECT_TRUE(states[0].quota_exhausted);
  EXPECT_FALSE(states[1].quota_exhausted);

  // Routing now skips the exhausted provider.
  auto next = engine->Generate(kTenant, TextRequest("routed"));
  ASSERT_TRUE(next.ok());
  EXPECT_EQ(next->provider(), v1::PROVIDER_SOUNDPIECE);
  ASSERT_TRUE(WaitDone(*engine, next->name()).ok());
  // Explicitly asking for it without fallback is short-circuited.
  auto pinned = TextRequest("pinned");
  pinned.set_provider(v1::PROVIDER_LOUDLY);
  auto refused = engine->Generate(kTenant, pinned);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  google::rpc::RetryInfo retry;
  EXPECT_TRUE(GetRetryInfo(refused.status(), &retry));
  EXPECT_EQ(loudly.submit_calls(), 1);
}

TEST_F(EngineTest, NoFallbackFailsWithTheProvidersError) {
  FakeAdapter::Options first_options;
  first_options.provider = v1::PROVIDER_LOUDLY;
  FakeAdapter loudly(first_options);
  FakeAdapter soundpiece;
  loudly.PushSubmitResult(absl::UnavailableError("provider down"));
  auto engine = Open({&loudly, &soundpiece});
  auto op = engine->Generate(kTenant, TextRequest("stay"));
  ASSERT_TRUE(op.ok());
  auto done = WaitDone(*engine, op->name());
  ASSERT_TRUE(done.ok());
  EXPECT_EQ(done->state(), v1::OPERATION_STATE_FAILED);
  EXPECT_EQ(done->error().code(), static_cast<int>(absl::StatusCode::kUnavailable));
  EXPECT_EQ(done->attempts_size(), 1);
  EXPECT_EQ(soundpiece.submit_calls(), 0);
  EXPECT_EQ(engine->ProviderStates()[0].consecutive_failures, 1);
  EXPECT_EQ(engine->ProviderStates()[0].health, v1::PROVIDER_HEALTH_DEGRADED);
}

TEST_F(EngineTest, KnownExhaustedQuotaShortCircuitsAndRoutesToTheOtherProvider) {
  FakeAdapter::Options loudly_options;
  loudly_options.provider = v1::PROVIDER_LOUDLY;
  loudly_options.account = "loudly-main";
  loudly_options.quota_resources = {"GENERATE_VEGA_SONG_WITH_PROMPT"};
  FakeAdapter loudly(loudly_options);
  FakeAdapter::Options soundpiece_options;
  soundpiece_options.quota_resources = {"credits"};
  FakeAdapter soundpiece(soundpiece_options);
  auto engine = Open({&loudly, &soundpiece});

  adapters::QuotaFigure used_up;
  used_up.resource = "GENERATE_VEGA_SONG_WITH_PROMPT";
  used_up.limit = 15;
  used_up.used = 15;
  used_up.remaining = 0;
  used_up.reset_time = absl::Now() + absl::Hours(6);
  adapters::QuotaFigure other = used_up;  // a resource this request is not charged to
  other.resource = "GENERATE_SONG_VEGA_1";
  other.remaining = 10;
  engine->UpdateQuota(&loudly, {used_up, other});

  // Pinned without fallback: refused at once, nothing sent upstream, nothing stored.
  auto pinned = TextRequest("pinned");
  pinned.set_provider(v1::PROVIDER_LOUDLY);
  auto refused = engine->Generate(kTenant, pinned);
  ASSERT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(Reason(refused.status()), "PROVIDER_QUOTA_EXHAUSTED");
  google::rpc::QuotaFailure quota;
  ASSERT_TRUE(GetQuotaFailure(refused.status(), &quota));
  ASSERT_EQ(quota.violations_size(), 1);
  EXPECT_EQ(quota.violations(0).subject(),
            "provider:loudly/account:loudly-main/resource:GENERATE_VEGA_SONG_WITH_PROMPT");
  google::rpc::RetryInfo retry;
  ASSERT_TRUE(GetRetryInfo(refused.status(), &retry));
  EXPECT_GT(retry.retry_delay().seconds(), 5 * 3600);
  EXPECT_LE(retry.retry_delay().seconds(), 6 * 3600);
  EXPECT_EQ(loudly.submit_calls(), 0);
  auto listed = engine->List(kTenant, v1::ListOperationsRequest());
  ASSERT_TRUE(listed.ok());
  EXPECT_EQ(listed->operations_size(), 0);

  // Pinned with fallback, and unspecified: Soundpiece serves it.
  pinned.set_request_id(RandomUuid());
  pinned.set_allow_fallback(true);
  auto moved = engine->Generate(kTenant, pinned);
  ASSERT_TRUE(moved.ok()) << moved.status();
  EXPECT_EQ(moved->provider(), v1::PROVIDER_SOUNDPIECE);
  auto routed = engine->Generate(kTenant, TextRequest("unspecified"));
  ASSERT_TRUE(routed.ok()) << routed.status();
  EXPECT_EQ(routed->provider(), v1::PROVIDER_SOUNDPIECE);
  ASSERT_TRUE(WaitDone(*engine, moved->name()).ok());
  ASSERT_TRUE(WaitDone(*engine, routed->name()).ok());
  EXPECT_EQ(loudly.submit_calls(), 0);

  // Both used up: the caller learns about the first choice.
  adapters::QuotaFigure credits;
  credits.resource = "credits";
  credits.remaining = 0;
  engine->UpdateQuota(&soundpiece, {credits});
  auto none = engine->Generate(kTenant, TextRequest("none left"));
  EXPECT_EQ(none.status().code(), absl::StatusCode::kResourceExhausted);
  // ListProviders: Soundpiece has nothing left at all; Loudly still has parametric songs.
  EXPECT_FALSE(engine->ProviderStates()[0].quota_exhausted);
  EXPECT_TRUE(engine->ProviderStates()[1].quota_exhausted);
  EXPECT_EQ(soundpiece.submit_calls(), 2);

  // A read showing units again, or a reset time that has passed, opens the account again.
  used_up.reset_time = absl::Now() - absl::Seconds(1);
  engine->UpdateQuota(&loudly, {used_up});
  auto after_reset = engine->Generate(kTenant, TextRequest("after reset"));
  ASSERT_TRUE(after_reset.ok()) << after_reset.status();
  EXPECT_EQ(after_reset->provider(), v1::PROVIDER_LOUDLY);
  credits.remaining = -1;  // unknown never blocks
  engine->UpdateQuota(&soundpiece, {credits});
  auto to_soundpiece = TextRequest("credits unknown");
  to_soundpiece.set_provider(v1::PROVIDER_SOUNDPIECE);
  EXPECT_TRUE(engine->Generate(kTenant, to_soundpiece).ok());
}

TEST_F(EngineTest, QuotaRejectionNamingAResourceBlocksOnlyThatResource) {
  FakeAdapter::Options options;
  options.provider = v1::PROVIDER_LOUDLY;
  options.account = "loudly-main";
  options.quota_resources_by_task = {{v1::TASK_KIND_TEXT_TO_MUSIC, {"PROMPT_SONGS"}},
                                     {v1::TASK_KIND_PARAMETRIC_MUSIC, {"PARAMETRIC_SONGS"}}};
  FakeAdapter loudly(options);
  absl::Status limit = absl::ResourceExhaustedError("External service calling limit exceeded");
  limit = WithQuotaViolation(std::move(limit),
                             "provider:loudly/account:loudly-main/resource:PROMPT_SONGS", "");
  loudly.PushSubmitResult(WithRetryInfo(std::move(limit), absl::Minutes(5)));
  auto engine = Open({&loudly});

  auto text = TextRequest("first");
  text.set_provider(v1::PROVIDER_LOUDLY);
  auto rejected = engine->Generate(kTenant, text);
  ASSERT_TRUE(rejected.ok());
  auto failed = WaitDone(*engine, rejected->name());
  ASSERT_TRUE(failed.ok());
  EXPECT_EQ(failed->state(), v1::OPERATION_STATE_FAILED);

  // Another prompt song is refused without a call; a parametric song still goes through.
  text.set_request_id(RandomUuid());
  EXPECT_EQ(engine->Generate(kTenant, text).status().code(), absl::StatusCode::kResourceExhausted);
  v1::GenerateRequest parametric;
  parametric.set_request_id(RandomUuid());
  parametric.set_provider(v1::PROVIDER_LOUDLY);
  parametric.mutable_parametric_music()->set_genre("House");
  auto served = engine->Generate(kTenant, parametric);
  ASSERT_TRUE(served.ok()) << served.status();
  auto done = WaitDone(*engine, served->name());
  ASSERT_TRUE(done.ok());
  EXPECT_EQ(done->state(), v1::OPERATION_STATE_SUCCEEDED);
  EXPECT_EQ(loudly.submit_calls(), 2);
  EXPECT_FALSE(engine->ProviderStates()[0].quota_exhausted);  // the account as a whole is not
}

TEST_F(EngineTest, LiveCountsFollowStatesAndIncludeResumedOperations) {
  FakeAdapter provider;
  provider.SetPollsToFinish(0);
  auto count = [](const EngineStats& stats, v1::OperationState state) -> int64_t {
    int64_t total = 0;
    for (const auto& entry : stats.live_by_state) {
      if (entry.provider == v1::PROVIDER_SOUNDPIECE && entry.state == state) total += entry.count;
    }
    return total;
  };
  std::string name;
  {
    auto engine = Open({&provider});
    auto op = engine->Generate(kTenant, TextRequest("counted"));
    ASSERT_TRUE(op.ok());
    name = op->name();
    ASSERT_TRUE(provider.WaitForPollCalls(1, absl::Seconds(10)));
    const EngineStats stats = engine->Stats();
    EXPECT_EQ(count(stats, v1::OPERATION_STATE_RUNNING), 1);
    EXPECT_EQ(count(stats, v1::OPERATION_STATE_QUEUED), 0);
  }
  auto engine = Open({&provider});
  // Resumed, never announced by a state change: still counted.
  EXPECT_EQ(count(engine->Stats(), v1::OPERATION_STATE_RUNNING), 1);
  provider.SetPollsToFinish(1);
  auto done = WaitDone(*engine, name);
  ASSERT_TRUE(done.ok());
  EXPECT_EQ(done->state(), v1::OPERATION_STATE_SUCCEEDED);
  EXPECT_TRUE(engine->Stats().live_by_state.empty());
}

TEST_F(EngineTest, SynchronousProviderCompletesOnSubmit) {
  FakeAdapter::Options options;
  options.provider = v1::PROVIDER_LOUDLY;
  options.synchronous = true;
  options.idempotent = false;
  FakeAdapter loudly(options);
  auto engine = Open({&loudly});
  auto op = engine->Generate(kTenant, TextRequest("blocking"));
  ASSERT_TRUE(op.ok());
  auto done = WaitDone(*engine, op->name());
  ASSERT_TRUE(done.ok());
  EXPECT_EQ(done->state(), v1::OPERATION_STATE_SUCCEEDED);
  EXPECT_EQ(loudly.poll_calls(), 0);
  EXPECT_EQ(done->outputs_size(), 1);
}

TEST_F(EngineTest, ProviderFailureIsReported) {
  FakeAdapter provider;
  provider.SetPollsToFinish(1);
  provider.SetJobError(
      WithErrorInfo(absl::InternalError("model crashed"), "GENERATION_FAILED", "soundpiece.co"));
  auto engine = Open({&provider});
  auto op = engine->Generate(kTenant, TextRequest("doomed"));
  ASSERT_TRUE(op.ok());
  auto done = WaitDone(*engine, op->name());
  ASSERT_TRUE(done.ok());
  EXPECT_EQ(done->state(), v1::OPERATION_STATE_FAILED);
  EXPECT_EQ(Reason(done->error()), "GENERATION_FAILED");
}

TEST_F(EngineTest, WebhookCompletesAtOnceAndDuplicatesAreIgnored) {
  FakeAdapter provider;
  provider.SetPollsToFinish(0);
  provider.SetNextPollAfter(absl::Hours(1));
  options_.max_poll_interval = absl::Hours(1);
  auto engine = Open({&provider});
  auto op = engine->Generate(kTenant, TextRequest("hooked"));
  ASSERT_TRUE(op.ok());
  // Wait until accepted (upstream id known).
  std::string upstream;
  auto stream = engine->Watch(kTenant, op->name(), 0);
  ASSERT_TRUE(stream.ok());
  StreamReader<v1::OperationEvent> reader(*std::move(stream));
  ASSERT_TRUE(reader.WaitFor([&](const std::vector<v1::OperationEvent>& events) {
    for (const auto& e : events) {
      if (!e.operation().upstream_id().empty()) return true;
    }
    return false;
  }));
  for (const auto& e : reader.messages()) {
    if (!e.operation().upstream_id().empty()) upstream = e.operation().upstream_id();
  }
  adapters::UpstreamStatus status;
  status.upstream_id = upstream;
  status.phase = adapters::UpstreamStatus::Phase::kSucceeded;
  adapters::ProviderOutput output;
  output.url = "http://127.0.0.1:9/x";
  status.outputs.push_back(output);
  engine->OnProviderUpdate(v1::PROVIDER_SOUNDPIECE, status);
  engine->OnProviderUpdate(v1::PROVIDER_SOUNDPIECE, status);  // duplicate delivery
  auto done = WaitDone(*engine, op->name());
  ASSERT_TRUE(done.ok());
  EXPECT_EQ(done->state(), v1::OPERATION_STATE_SUCCEEDED);
  ASSERT_TRUE(reader.WaitFinished());
  int terminal = 0;
  for (const auto& e : reader.messages()) terminal += e.operation().done();
  EXPECT_EQ(terminal, 1);
}

TEST_F(EngineTest, TenantBudgetIsEnforcedAtGenerate) {
  options_.budgets = [](const std::string& tenant, v1::TaskKind task, absl::Time now) {
    BudgetCheck check;
    check.name = "task:TEXT_TO_MUSIC/day";
    check.task = v1::TASK_KIND_TEXT_TO_MUSIC;
    check.period_start = now - absl::Hours(24);
    check.period_end = now + absl::Hours(1);
    check.limit = 2;
    return std::vector<BudgetCheck>{check};
  };
  FakeAdapter provider;
  provider.PushSubmitResult(absl::InvalidArgumentError("rejected, not charged"));
  auto engine = Open({&provider});
  auto rejected = engine->Generate(kTenant, TextRequest("one"));
  ASSERT_TRUE(rejected.ok());
  ASSERT_TRUE(WaitDone(*engine, rejected->name()).ok());  // FAILED, uncharged: does not count
  ASSERT_TRUE(engine->Generate(kTenant, TextRequest("two")).ok());
  ASSERT_TRUE(engine->Generate(kTenant, TextRequest("three")).ok());
  auto over = engine->Generate(kTenant, TextRequest("four"));
  ASSERT_FALSE(over.ok());
  EXPECT_EQ(over.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(Reason(over.status()), "TENANT_BUDGET_EXHAUSTED");
  auto usage =
      engine->ReadBudget(kTenant, v1::TASK_KIND_TEXT_TO_MUSIC, absl::Now() - absl::Hours(24));
  ASSERT_TRUE(usage.ok());
  EXPECT_EQ(usage->used + usage->reserved, 2);
}

TEST_F(EngineTest, ShutdownEndsWatchersAndWaiters) {
  FakeAdapter provider;
  provider.SetPollsToFinish(0);
  auto engine = Open({&provider});
  auto op = engine->Generate(kTenant, TextRequest("interrupted"));
  ASSERT_TRUE(op.ok());
  auto stream = engine->Watch(kTenant, op->name(), 0);
  ASSERT_TRUE(stream.ok());
  StreamReader<v1::OperationEvent> reader(*std::move(stream));
  absl::Notification waited;
  absl::Status wait_status;
  engine->Wait(kTenant, op->name(), absl::Minutes(1), [&](const absl::StatusOr<v1::Operation>& r) {
    wait_status = r.status();
    waited.Notify();
  });
  engine->Shutdown();
  ASSERT_TRUE(reader.WaitFinished());
  EXPECT_EQ(reader.status().code(), absl::StatusCode::kUnavailable);
  ASSERT_TRUE(waited.WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_EQ(wait_status.code(), absl::StatusCode::kUnavailable);
  // The operation is still live in the ledger for the next start.
  auto stored = engine->Get(kTenant, op->name());
  ASSERT_TRUE(stored.ok());
  EXPECT_FALSE(stored->done());
}

// A replica that stops renewing (dead) leaves its leases in the ledger; another replica takes
// the operations over just after the earliest of those leases runs out, not up to a renewal
// period later. On a fake clock: the survivor's renewal period (100 s) is far longer than what
// is left of the dead replica's lease (30 s), so only a claim timed by that expiry takes it.
TEST_F(EngineTest, ADeadReplicasOperationIsTakenOverOnceItsLeaseRunsOut) {
  FakeClock clock;
  options_.clock = &clock;
  FakeAdapter provider;
  provider.SetPollsToFinish(1000);
  options_.replica_id = "a";
  options_.lease = absl::Seconds(30);
  auto dead = Open({&provider});
  auto op = dead->Generate(kTenant, TextRequest("orphaned"));
  ASSERT_TRUE(op.ok()) << op.status();
  // Accepted upstream (its polls wait on the fake clock).
  ASSERT_TRUE(testing::WaitUntil([&] {
    auto now = dead->Get(kTenant, op->name());
    return now.ok() && now->submission() == v1::SUBMISSION_STATE_ACCEPTED;
  }));
  dead.reset();  // stops tracking; the ledger keeps its owner and lease
  const std::string id = op->name().substr(std::string("operations/").size());
  auto ledger = OpenSqliteOperationStore(path_);
  ASSERT_TRUE(ledger.ok()) << ledger.status();
  auto before = (*ledger)->Get(id);
  ASSERT_TRUE(before.ok()) << before.status();
  ASSERT_EQ(before->owner, "a");
  auto expiry = (*ledger)->NextLeaseExpiry("b");
  ASSERT_TRUE(expiry.ok()) << expiry.status();
  ASSERT_EQ(*expiry, clock.Now() + absl::Seconds(30));

  options_.replica_id = "b";
  options_.lease = absl::Seconds(300);
  auto survivor = Open({&provider});
  ASSERT_NE(survivor, nullptr);
  const int polls = provider.poll_calls();
  // Just past the expiry: the survivor claims the operation and polls it (no new submission).
  clock.SetTime(*expiry + absl::Milliseconds(20));
  ASSERT_TRUE(provider.WaitForPollCalls(polls + 1, absl::Seconds(10)));
  auto after = (*ledger)->Get(id);
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->owner, "b");
  // Claimed once the dead replica's lease had run out, never before.
  auto renewed = (*ledger)->NextLeaseExpiry("a");
  ASSERT_TRUE(renewed.ok()) << renewed.status();
  EXPECT_GT(*renewed - absl::Seconds(300), *expiry);
  EXPECT_EQ(provider.submit_calls(), 1);
}

}  // namespace
}  // namespace musicgw::operations
