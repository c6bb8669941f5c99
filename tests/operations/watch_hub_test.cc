// WatchHub tests on a fake clock: replay after a sequence, coalescing for a slow reader, the
// single heartbeat timer, the end of a done operation, and shutdown.
#include "services/operations/watch_hub.h"

#include <memory>
#include <string>
#include <vector>

#include "common/clock.h"
#include "common/errors.h"
#include "gtest/gtest.h"
#include "services/operations/ids.h"
#include "services/operations/sqlite_store.h"
#include "tests/operations/test_util.h"

namespace musicgw::operations {
namespace {

namespace v1 = musicgw::v1;
using testing::StreamReader;
using testing::TempLedgerPath;

constexpr absl::Duration kHeartbeat = absl::Seconds(10);

class WatchHubTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SqliteOptions sqlite;
    sqlite.synchronous_full = false;
    sqlite.clock = &clock_;
    auto store = OpenSqliteOperationStore(TempLedgerPath(), sqlite);
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::shared_ptr<OperationStore>(std::move(*store));
    executor_ = std::make_shared<Executor>(1, clock_);
  }
  void TearDown() override { executor_->Stop(); }

  std::shared_ptr<WatchHub> NewHub(int buffer = 16) {
    return std::make_shared<WatchHub>(WatchHubOptions{kHeartbeat, buffer}, clock_, executor_,
                                      store_);
  }

  // An operation in the ledger at sequence 1.
  v1::Operation Create() {
    OperationRecord record;
    record.tenant = "t";
    record.request_id = RandomUuid();
    record.request_hash = "h";
    record.operation.set_name(OperationName(NewOperationId(clock_.Now())));
    record.operation.set_state(v1::OPERATION_STATE_QUEUED);
    record.operation.set_sequence(1);
    auto created = store_->Create(record, {});
    EXPECT_TRUE(created.ok()) << created.status();
    return record.operation;
  }

  // Commits the next change of `op` and returns it.
  v1::Operation Advance(const v1::Operation& op, bool done = false) {
    v1::Operation next = op;
    next.set_sequence(op.sequence() + 1);
    next.set_state(done ? v1::OPERATION_STATE_SUCCEEDED : v1::OPERATION_STATE_RUNNING);
    next.set_done(done);
    OperationUpdate update;
    update.operation = next;
    update.expected_sequence = op.sequence();
    EXPECT_TRUE(store_->Update(update).ok());
    return next;
  }

  static Change ChangeOf(const v1::Operation& op) {
    OperationRecord record;
    record.operation = op;
    return Change{record.id(), op.sequence(), std::make_shared<const v1::Operation>(op)};
  }

  static std::string IdOf(const v1::Operation& op) {
    OperationRecord record;
    record.operation = op;
    return record.id();
  }

  std::unique_ptr<EventStream<v1::OperationEvent>> Open(WatchHub& hub, const v1::Operation& op,
                                                        int64_t after = 0) {
    auto stream = hub.Open(IdOf(op), after, [&]() -> absl::StatusOr<v1::Operation> { return op; });
    EXPECT_TRUE(stream.ok()) << stream.status();
    return stream.ok() ? *std::move(stream) : nullptr;
  }

  FakeClock clock_;
  std::shared_ptr<OperationStore> store_;
  std::shared_ptr<Executor> executor_;
};

TEST_F(WatchHubTest, ResumingAfterASequenceReplaysTheMissedChangesThenFollows) {
  auto hub = NewHub();
  v1::Operation op = Create();
  const v1::Operation s2 = Advance(op);
  const v1::Operation s3 = Advance(s2);
  const v1::Operation s4 = Advance(s3);

  StreamReader<v1::OperationEvent> reader(Open(*hub, s4, /*after=*/2));
  ASSERT_TRUE(reader.WaitForMessages(2));
  auto events = reader.messages();
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].kind(), v1::OperationEvent::KIND_CHANGE);
  EXPECT_EQ(events[0].sequence(), 3);
  EXPECT_EQ(events[1].sequence(), 4);

  const v1::Operation s5 = Advance(s4, /*done=*/true);
  hub->OnChange(ChangeOf(s5));
  ASSERT_TRUE(reader.WaitFinished());
  events = reader.messages();
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(events[2].sequence(), 5);
  EXPECT_TRUE(events[2].operation().done());
  EXPECT_TRUE(reader.status().ok());

  // Ahead of the operation: a clear error on the field.
  auto ahead = hub->Open(IdOf(s5), 9, [&]() -> absl::StatusOr<v1::Operation> { return s5; });
  ASSERT_EQ(ahead.status().code(), absl::StatusCode::kInvalidArgument);
  google::rpc::BadRequest bad;
  ASSERT_TRUE(GetBadRequest(ahead.status(), &bad));
  EXPECT_EQ(bad.field_violations(0).field(), "after_sequence");
}

TEST_F(WatchHubTest, AChangeFeedWithoutSnapshotsIsServedFromTheLedger) {
  auto hub = NewHub();
  const v1::Operation op = Create();
  StreamReader<v1::OperationEvent> reader(Open(*hub, op));
  ASSERT_TRUE(reader.WaitForMessages(1));
  const v1::Operation next = Advance(op);
  hub->OnChange(Change{IdOf(op), next.sequence(), nullptr});
  ASSERT_TRUE(reader.WaitForMessages(2));
  EXPECT_EQ(reader.messages()[1].sequence(), 2);
  EXPECT_EQ(reader.messages()[1].operation().state(), v1::OPERATION_STATE_RUNNING);
}

TEST_F(WatchHubTest, ASlowReaderCoalescesToTheLatestWhileAFastOneGetsEveryChange) {
  auto hub = NewHub(/*buffer=*/2);
  v1::Operation op = Create();
  StreamReader<v1::OperationEvent> slow(Open(*hub, op), /*auto_drain=*/false);
  StreamReader<v1::OperationEvent> fast(Open(*hub, op));
  for (int i = 0; i < 6; ++i) {
    op = Advance(op);
    hub->OnChange(ChangeOf(op));
  }
  ASSERT_TRUE(fast.WaitForMessages(7));  // snapshot + 6 changes
  for (int i = 0; i < 7; ++i) EXPECT_EQ(fast.messages()[i].sequence(), i + 1);

  slow.Drain();
  const auto events = slow.messages();
  ASSERT_FALSE(events.empty());
  ASSERT_LE(events.size(), 2u) << "the backlog never exceeds the buffer";
  EXPECT_EQ(events.back().sequence(), 7) << "the latest state is never lost";
  bool coalesced = false;
  for (const auto& event : events) coalesced = coalesced || event.coalesced();
  EXPECT_TRUE(coalesced);
}

TEST_F(WatchHubTest, OneTimerSendsHeartbeatsToIdleWatchersOnTime) {
  auto hub = NewHub();
  const v1::Operation op = Create();
  const absl::Time start = clock_.Now();
  StreamReader<v1::OperationEvent> first(Open(*hub, op));
  ASSERT_TRUE(first.WaitForMessages(1));
  EXPECT_EQ(hub->next_heartbeat(), start + kHeartbeat);

  clock_.Advance(absl::Seconds(3));
  StreamReader<v1::OperationEvent> second(Open(*hub, op));
  ASSERT_TRUE(second.WaitForMessages(1));
  EXPECT_EQ(hub->next_heartbeat(), start + kHeartbeat) << "one timer serves both watches";

  clock_.Advance(absl::Seconds(7));  // first idle 10 s, second 7 s
  ASSERT_TRUE(first.WaitForMessages(2));
  EXPECT_EQ(first.messages()[1].kind(), v1::OperationEvent::KIND_HEARTBEAT);
  // The tick re-arms the one timer for the second watch's heartbeat, which is not due yet.
  ASSERT_TRUE(
      testing::WaitUntil([&] { return hub->next_heartbeat() == start + absl::Seconds(13); }));
  EXPECT_EQ(second.messages().size(), 1u);

  clock_.Advance(absl::Seconds(3));
  ASSERT_TRUE(second.WaitForMessages(2));
  EXPECT_EQ(second.messages()[1].kind(), v1::OperationEvent::KIND_HEARTBEAT);
  EXPECT_EQ(second.messages()[1].send_time().seconds(),
            absl::ToUnixSeconds(start + absl::Seconds(13)));
  ASSERT_TRUE(
      testing::WaitUntil([&] { return hub->next_heartbeat() == start + absl::Seconds(20); }));
  EXPECT_EQ(first.messages().size(), 2u);
}

TEST_F(WatchHubTest, ShutdownEndsEveryWatchAndRefusesNewOnes) {
  auto hub = NewHub();
  const v1::Operation op = Create();
  StreamReader<v1::OperationEvent> reader(Open(*hub, op));
  ASSERT_TRUE(reader.WaitForMessages(1));
  EXPECT_EQ(hub->open_watches(), 1);

  hub->Shutdown(absl::UnavailableError("server shutting down"));
  ASSERT_TRUE(reader.WaitFinished());
  EXPECT_EQ(reader.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(hub->next_heartbeat(), absl::InfiniteFuture()) << "the timer is disarmed";
  auto later = hub->Open(IdOf(op), 0, [&]() -> absl::StatusOr<v1::Operation> { return op; });
  EXPECT_EQ(later.status().code(), absl::StatusCode::kUnavailable);
  reader.Close();
  EXPECT_EQ(hub->open_watches(), 0);
}

TEST_F(WatchHubTest, EveryWatcherOfAChangeSharesOneSnapshot) {
  auto hub = NewHub();
  v1::Operation op = Create();
  auto open = [&] {
    auto stream =
        hub->OpenShared(IdOf(op), 0, [&]() -> absl::StatusOr<v1::Operation> { return op; });
    EXPECT_TRUE(stream.ok()) << stream.status();
    return stream.ok() ? *std::move(stream) : nullptr;
  };
  StreamReader<WatchEvent> first(open());
  StreamReader<WatchEvent> second(open());
  ASSERT_TRUE(first.WaitForMessages(1));
  ASSERT_TRUE(second.WaitForMessages(1));

  op = Advance(op);
  hub->OnChange(ChangeOf(op));
  ASSERT_TRUE(first.WaitForMessages(2));
  ASSERT_TRUE(second.WaitForMessages(2));
  const WatchEvent a = first.messages()[1];
  const WatchEvent b = second.messages()[1];
  ASSERT_NE(a.snapshot, nullptr);
  EXPECT_EQ(a.snapshot.get(), b.snapshot.get()) << "one snapshot, not a copy per watcher";
  EXPECT_EQ(a.kind, v1::OperationEvent::KIND_CHANGE);
  EXPECT_EQ(a.sequence, 2);
  EXPECT_EQ(a.snapshot->operation().state(), v1::OPERATION_STATE_RUNNING);
  // The typed view of the same event carries the same operation.
  EXPECT_EQ(ToOperationEvent(a).operation().SerializeAsString(),
            a.snapshot->operation().SerializeAsString());
  EXPECT_FALSE(a.last);

  // The done change is marked as the stream's last event, so a transport can end with it.
  op = Advance(op, /*done=*/true);
  hub->OnChange(ChangeOf(op));
  ASSERT_TRUE(first.WaitFinished());
  ASSERT_EQ(first.messages().size(), 3u);
  EXPECT_TRUE(first.messages()[2].last);
  EXPECT_TRUE(first.messages()[2].snapshot->operation().done());
  EXPECT_TRUE(first.status().ok());
}

TEST_F(WatchHubTest, OneTickServesEveryWatcherDueWithinASixteenthOfTheInterval) {
  auto hub = NewHub();
  const v1::Operation op = Create();
  const absl::Time start = clock_.Now();
  StreamReader<v1::OperationEvent> first(Open(*hub, op));
  ASSERT_TRUE(first.WaitForMessages(1));
  clock_.Advance(absl::Milliseconds(500));  // less than 10 s / 16 later
  StreamReader<v1::OperationEvent> second(Open(*hub, op));
  ASSERT_TRUE(second.WaitForMessages(1));

  clock_.Advance(kHeartbeat - absl::Milliseconds(500));
  ASSERT_TRUE(first.WaitForMessages(2));
  ASSERT_TRUE(second.WaitForMessages(2));
  EXPECT_EQ(second.messages()[1].kind(), v1::OperationEvent::KIND_HEARTBEAT);
  EXPECT_EQ(second.messages()[1].send_time().seconds(), absl::ToUnixSeconds(start + kHeartbeat));
  // Both are now on the same beat: the next tick serves them together.
  ASSERT_TRUE(testing::WaitUntil([&] { return hub->next_heartbeat() == start + 2 * kHeartbeat; }));
}

}  // namespace
}  // namespace musicgw::operations
