// The OperationStore contract, run against every store: the embedded SQLite ledger and the
// shared PostgreSQL one (a private cluster this test process starts).
#include <atomic>
#include <map>
#include <memory>
#include <ostream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/errors.h"
#include "common/time_util.h"
#include "gtest/gtest.h"
#include "services/operations/ids.h"
#include "services/operations/operation_store.h"
#include "services/operations/postgres_store.h"
#include "services/operations/sqlite_store.h"
#include "tests/operations/test_util.h"
#include "tests/pg/pg_cluster.h"

namespace musicgw::operations {
namespace {

namespace v1 = musicgw::v1;

OperationRecord MakeRecord(const std::string& tenant, const std::string& request_id,
                           absl::Time now = absl::Now()) {
  OperationRecord record;
  record.tenant = tenant;
  record.request_id = request_id;
  record.request_hash = "hash-" + request_id;
  const std::string id = NewOperationId(now);
  record.operation.set_name(OperationName(id));
  record.operation.set_state(v1::OPERATION_STATE_QUEUED);
  record.operation.set_task(v1::TASK_KIND_SAMPLE);
  record.operation.set_provider(v1::PROVIDER_SOUNDPIECE);
  record.operation.set_sequence(1);
  record.operation.mutable_create_time()->set_seconds(absl::ToUnixSeconds(now));
  record.owner = "replica-1";
  return record;
}

// One cluster per test process, started on first use and stopped, its directory removed, at exit.
::musicgw::testing::PgCluster& Cluster() {
  static const std::unique_ptr<::musicgw::testing::PgCluster> cluster = [] {
    auto started = ::musicgw::testing::PgCluster::Start();
    if (!started.ok()) {
      ADD_FAILURE() << started.status();
      std::abort();
    }
    return std::move(*started);
  }();
  return *cluster;
}

enum class Kind { kSqlite, kPostgres };
void PrintTo(Kind kind, std::ostream* os) {
  *os << (kind == Kind::kSqlite ? "sqlite" : "postgres");
}

class StoreConformanceTest : public ::testing::TestWithParam<Kind> {
 protected:
  void SetUp() override {
    if (GetParam() == Kind::kSqlite) {
      location_ = testing::TempLedgerPath();
    } else {
      static std::atomic<int> counter{0};
      auto dsn = Cluster().CreateDatabase(absl::StrCat("conformance_", counter++));
      ASSERT_TRUE(dsn.ok()) << dsn.status();
      location_ = *dsn;
    }
  }

  // Another handle on the same ledger: another replica, for PostgreSQL.
  std::unique_ptr<OperationStore> OpenStore() {
    absl::StatusOr<std::unique_ptr<OperationStore>> store;
    if (GetParam() == Kind::kSqlite) {
      store = OpenSqliteOperationStore(location_);
    } else {
      PostgresOptions options;
      options.dsn = location_;
      options.pool_size = 4;
      store = OpenPostgresOperationStore(options);
    }
    EXPECT_TRUE(store.ok()) << store.status();
    return store.ok() ? std::move(*store) : nullptr;
  }

  std::string location_;
};

INSTANTIATE_TEST_SUITE_P(Stores, StoreConformanceTest,
                         ::testing::Values(Kind::kSqlite, Kind::kPostgres),
                         [](const ::testing::TestParamInfo<Kind>& info) {
                           return info.param == Kind::kSqlite ? "Sqlite" : "Postgres";
                         });

TEST_P(StoreConformanceTest, CountsChargedOperationsPerProviderAccountAndTask) {
  auto store = OpenStore();
  const absl::Time now = absl::Now();
  auto add = [&](const std::string& request_id, const std::string& account, v1::TaskKind task,
                 bool charged, absl::Time created) {
    OperationRecord record = MakeRecord("t", request_id, created);
    record.operation.set_provider_account(account);
    record.operation.set_task(task);
    record.charged = charged;
    ASSERT_TRUE(store->Create(record, {}).ok());
  };
  add("a", "sp-main", v1::TASK_KIND_SONG, true, now);
  add("b", "sp-main", v1::TASK_KIND_SONG, true, now);
  add("c", "sp-main", v1::TASK_KIND_SAMPLE, true, now);
  add("d", "sp-main", v1::TASK_KIND_SAMPLE, false, now);                 // not charged
  add("e", "sp-other", v1::TASK_KIND_SONG, true, now);                   // other account
  add("f", "sp-main", v1::TASK_KIND_SONG, true, now - absl::Hours(48));  // before `since`
  auto counts = store->CountCharged(v1::PROVIDER_SOUNDPIECE, "sp-main", now - absl::Hours(1));
  ASSERT_TRUE(counts.ok()) << counts.status();
  EXPECT_EQ(counts->size(), 2u);
  EXPECT_EQ((*counts)[v1::TASK_KIND_SONG], 2);
  EXPECT_EQ((*counts)[v1::TASK_KIND_SAMPLE], 1);

  // An update that moves the operation to another account (a fallback) moves its charge too.
  auto moved = store->FindByRequestId("t", "d");
  ASSERT_TRUE(moved.ok());
  OperationUpdate update;
  update.operation = moved->operation;
  update.operation.set_provider_account("sp-other");
  update.operation.set_sequence(2);
  update.expected_sequence = 1;
  update.charged = true;
  ASSERT_TRUE(store->Update(update).ok());
  counts = store->CountCharged(v1::PROVIDER_SOUNDPIECE, "sp-other", now - absl::Hours(1));
  ASSERT_TRUE(counts.ok());
  EXPECT_EQ((*counts)[v1::TASK_KIND_SONG], 1);
  EXPECT_EQ((*counts)[v1::TASK_KIND_SAMPLE], 1);
}

// The counts are kept per day and per hour of creation: a `since` inside an hour counts the
// rest of that hour row by row, and every later change of a counted row (uncharged, moved to
// another account) moves its count.
TEST_P(StoreConformanceTest, CountsChargedFromAnyInstantAcrossDaysAndHours) {
  auto store = OpenStore();
  const absl::Time day = absl::FromUnixSeconds(1'800'000'000 / 86'400 * 86'400);  // 00:00 UTC
  int next = 0;
  auto add = [&](absl::Duration after_day, v1::TaskKind task, bool charged) {
    std::string request_id = absl::StrCat("r", next++);
    OperationRecord record = MakeRecord("t", request_id, day + after_day);
    record.operation.set_provider_account("sp-main");
    record.operation.set_task(task);
    record.charged = charged;
    EXPECT_TRUE(store->Create(record, {}).ok());
    return request_id;
  };
  add(-absl::Hours(36), v1::TASK_KIND_SONG, true);  // the day before
  add(absl::Hours(1), v1::TASK_KIND_SONG, true);
  add(absl::Hours(12), v1::TASK_KIND_SONG, true);
  add(absl::Hours(12) + absl::Minutes(10), v1::TASK_KIND_SONG, true);
  add(absl::Hours(12) + absl::Minutes(50), v1::TASK_KIND_SONG, true);
  add(absl::Hours(13), v1::TASK_KIND_SONG, false);  // not charged
  const std::string later = add(absl::Hours(30), v1::TASK_KIND_SONG, true);
  add(absl::Hours(50), v1::TASK_KIND_SAMPLE, true);
  auto count = [&](absl::Time since) {
    auto counts = store->CountCharged(v1::PROVIDER_SOUNDPIECE, "sp-main", since);
    EXPECT_TRUE(counts.ok()) << counts.status();
    return counts.ok() ? *counts : std::map<v1::TaskKind, int64_t>{};
  };
  using Counts = std::map<v1::TaskKind, int64_t>;
  const Counts one_sample = {{v1::TASK_KIND_SAMPLE, 1}};
  auto songs = [&](int64_t n) {
    Counts counts = one_sample;
    counts[v1::TASK_KIND_SONG] = n;
    return counts;
  };
  EXPECT_EQ(count(absl::InfinitePast()), songs(6));
  EXPECT_EQ(count(day), songs(5));
  EXPECT_EQ(count(day + absl::Hours(12)), songs(4));  // `since` itself counts
  EXPECT_EQ(count(day + absl::Hours(12) + absl::Microseconds(1)), songs(3));
  EXPECT_EQ(count(day + absl::Hours(12) + absl::Minutes(30)), songs(2));
  EXPECT_EQ(count(day + absl::Hours(72)), Counts{});
  EXPECT_EQ(count(absl::InfiniteFuture()), Counts{});

  // Uncharged (written as not charged), then charged again on another account.
  auto found = store->FindByRequestId("t", later);
  ASSERT_TRUE(found.ok());
  OperationUpdate update;
  update.operation = found->operation;
  update.operation.set_sequence(2);
  update.expected_sequence = 1;
  update.charged = false;
  ASSERT_TRUE(store->Update(update).ok());
  EXPECT_EQ(count(day), songs(4));
  update.operation.set_provider_account("sp-other");
  update.operation.set_sequence(3);
  update.expected_sequence = 2;
  update.charged = true;
  ASSERT_TRUE(store->Update(update).ok());
  EXPECT_EQ(count(day), songs(4));
  auto other = store->CountCharged(v1::PROVIDER_SOUNDPIECE, "sp-other", day);
  ASSERT_TRUE(other.ok());
  EXPECT_EQ(*other, (Counts{{v1::TASK_KIND_SONG, 1}}));
  // Rewritten unchanged: counted once, not twice.
  update.operation.set_sequence(4);
  update.expected_sequence = 3;
  ASSERT_TRUE(store->Update(update).ok());
  other = store->CountCharged(v1::PROVIDER_SOUNDPIECE, "sp-other", day);
  ASSERT_TRUE(other.ok());
  EXPECT_EQ(*other, (Counts{{v1::TASK_KIND_SONG, 1}}));
}

TEST_P(StoreConformanceTest, RecentDurationsAreSuccessesOfOneAccountAndTaskNewestFirst) {
  auto store = OpenStore();
  const absl::Time start = absl::FromUnixSeconds(1'800'000'000);
  // Finishes operation `request_id` created at `created` after `took`, in `state`.
  auto add = [&](const std::string& request_id, const std::string& account, v1::TaskKind task,
                 absl::Time created, absl::Duration took, v1::OperationState state) {
    OperationRecord record = MakeRecord("t", request_id, created);
    record.operation.set_provider_account(account);
    record.operation.set_task(task);
    auto made = store->Create(record, {});
    ASSERT_TRUE(made.ok()) << made.status();
    OperationUpdate update;
    update.operation = made->record.operation;
    update.operation.set_state(state);
    update.operation.set_done(true);
    *update.operation.mutable_done_time() = ToProtoTimestamp(created + took);
    update.operation.set_sequence(2);
    update.expected_sequence = 1;
    ASSERT_TRUE(store->Update(update).ok());
  };
  add("a", "sp-main", v1::TASK_KIND_SONG, start, absl::Seconds(40), v1::OPERATION_STATE_SUCCEEDED);
  add("b", "sp-main", v1::TASK_KIND_SONG, start + absl::Seconds(1), absl::Seconds(50),
      v1::OPERATION_STATE_SUCCEEDED);
  add("c", "sp-main", v1::TASK_KIND_SONG, start + absl::Seconds(2), absl::Seconds(60),
      v1::OPERATION_STATE_SUCCEEDED);
  add("d", "sp-main", v1::TASK_KIND_SONG, start, absl::Seconds(5), v1::OPERATION_STATE_FAILED);
  add("e", "sp-other", v1::TASK_KIND_SONG, start, absl::Seconds(7), v1::OPERATION_STATE_SUCCEEDED);
  add("f", "sp-main", v1::TASK_KIND_SAMPLE, start, absl::Seconds(9), v1::OPERATION_STATE_SUCCEEDED);
  // Live operations have no duration yet.
  ASSERT_TRUE(store->Create(MakeRecord("t", "live", start), {}).ok());

  auto durations =
      store->RecentDurations(v1::PROVIDER_SOUNDPIECE, "sp-main", v1::TASK_KIND_SONG, 10);
  ASSERT_TRUE(durations.ok()) << durations.status();
  EXPECT_EQ(*durations,
            (std::vector<absl::Duration>{absl::Seconds(60), absl::Seconds(50), absl::Seconds(40)}));
  durations = store->RecentDurations(v1::PROVIDER_SOUNDPIECE, "sp-main", v1::TASK_KIND_SONG, 2);
  ASSERT_TRUE(durations.ok());
  EXPECT_EQ(*durations, (std::vector<absl::Duration>{absl::Seconds(60), absl::Seconds(50)}));
  durations = store->RecentDurations(v1::PROVIDER_LOUDLY, "sp-main", v1::TASK_KIND_SONG, 10);
  ASSERT_TRUE(durations.ok());
  EXPECT_TRUE(durations->empty());
}

TEST_P(StoreConformanceTest, OutboxIsWrittenWithTheStateChangeAndClaimedOnce) {
  auto store = OpenStore();
  const absl::Time now = absl::FromUnixSeconds(1'800'000'000);
  auto created = store->Create(MakeRecord("t", "r", now), {});
  ASSERT_TRUE(created.ok());
  const std::string id = created->record.id();
  auto message = [&](const std::string& endpoint) {
    OutboxMessage m;
    m.delivery_id = absl::StrCat("whd_", id, "_2_", endpoint);
    m.event_id = absl::StrCat("msg_", id, "_2");
    m.tenant = "t";
    m.endpoint = endpoint;
    m.url = "http://127.0.0.1:9/" + endpoint;
    m.operation_id = id;
    m.event_type = "operation.running";
    m.body = R"({"type":"operation.running"})";
    m.create_time = now;
    return m;
  };
  OperationUpdate update;
  update.operation = created->record.operation;
  update.operation.set_state(v1::OPERATION_STATE_RUNNING);
  update.operation.set_sequence(2);
  update.expected_sequence = 1;
  update.outbox = {message("a"), message("b")};
  ASSERT_TRUE(store->Update(update).ok());
  // A losing compare-and-set writes no messages either.
  update.outbox = {message("c")};
  EXPECT_EQ(store->Update(update).code(), absl::StatusCode::kAborted);

  DeliveryQuery query;
  query.tenant = "t";
  query.operation_id = id;
  auto listed = store->ListDeliveries(query);
  ASSERT_TRUE(listed.ok()) << listed.status();
  ASSERT_EQ(listed->size(), 2u);
  EXPECT_EQ((*listed)[0].message.event_id, absl::StrCat("msg_", id, "_2"));
  EXPECT_EQ((*listed)[0].message.body, R"({"type":"operation.running"})");
  EXPECT_EQ((*listed)[0].status, DeliveryStatus::kPending);
  query.operation_id.clear();
  query.endpoint = "b";
  listed = store->ListDeliveries(query);
  ASSERT_TRUE(listed.ok());
  ASSERT_EQ(listed->size(), 1u);
  query.tenant = "other";
  listed = store->ListDeliveries(query);
  ASSERT_TRUE(listed.ok());
  EXPECT_TRUE(listed->empty());

  // Claimed once; again only after the claim lapses.
  auto claimed = store->ClaimDueDeliveries(now, now + absl::Minutes(2), 10);
  ASSERT_TRUE(claimed.ok()) << claimed.status();
  EXPECT_EQ(claimed->size(), 2u);
  claimed = store->ClaimDueDeliveries(now + absl::Minutes(1), now + absl::Minutes(3), 10);
  ASSERT_TRUE(claimed.ok());
  EXPECT_TRUE(claimed->empty());
  claimed = store->ClaimDueDeliveries(now + absl::Minutes(2), now + absl::Minutes(4), 1);
  ASSERT_TRUE(claimed.ok());
  ASSERT_EQ(claimed->size(), 1u);

  // Attempts are recorded; a delivered one is not claimed again.
  const std::string delivery = (*claimed)[0].message.delivery_id;
  DeliveryAttempt attempt;
  attempt.delivery_id = delivery;
  attempt.attempt = 1;
  attempt.time = now + absl::Minutes(2);
  attempt.status_code = 503;
  attempt.latency = absl::Milliseconds(12);
  attempt.error = "HTTP 503";
  ASSERT_TRUE(
      store->RecordDeliveryAttempt(attempt, DeliveryStatus::kPending, now + absl::Minutes(5)).ok());
  attempt.attempt = 2;
  attempt.status_code = 204;
  attempt.error.clear();
  ASSERT_TRUE(store->RecordDeliveryAttempt(attempt, DeliveryStatus::kDelivered, now).ok());
  auto attempts = store->ListDeliveryAttempts(delivery);
  ASSERT_TRUE(attempts.ok()) << attempts.status();
  ASSERT_EQ(attempts->size(), 2u);
  EXPECT_EQ((*attempts)[0].status_code, 503);
  EXPECT_EQ((*attempts)[0].latency, absl::Milliseconds(12));
  EXPECT_EQ((*attempts)[1].status_code, 204);
  query = DeliveryQuery{"t", id, "", 100};
  listed = store->ListDeliveries(query);
  ASSERT_TRUE(listed.ok());
  for (const auto& d : *listed) {
    if (d.message.delivery_id != delivery) continue;
    EXPECT_EQ(d.status, DeliveryStatus::kDelivered);
    EXPECT_EQ(d.attempts, 2);
    EXPECT_EQ(d.last_status_code, 204);
  }
  claimed = store->ClaimDueDeliveries(now + absl::Hours(1), now + absl::Hours(10), 10);
  ASSERT_TRUE(claimed.ok());
  ASSERT_EQ(claimed->size(), 1u);
  EXPECT_NE((*claimed)[0].message.delivery_id, delivery);

  // Redelivery makes it due again with the same event id; only for its tenant.
  EXPECT_EQ(store->Redeliver("other", delivery, now).code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(store->Redeliver("t", delivery, now + absl::Hours(3)).ok());
  claimed = store->ClaimDueDeliveries(now + absl::Hours(3), now + absl::Hours(4), 10);
  ASSERT_TRUE(claimed.ok());
  ASSERT_EQ(claimed->size(), 1u);
  EXPECT_EQ((*claimed)[0].message.delivery_id, delivery);
  EXPECT_EQ((*claimed)[0].message.event_id, absl::StrCat("msg_", id, "_2"));
  EXPECT_EQ((*claimed)[0].attempts, 2);

  // A message outside any state change (a test ping).
  OutboxMessage ping = message("ping");
  ping.delivery_id = "whd_ping";
  ping.operation_id.clear();
  ASSERT_TRUE(store->EnqueueOutbox(ping).ok());
  query = DeliveryQuery{"t", "", "ping", 100};
  listed = store->ListDeliveries(query);
  ASSERT_TRUE(listed.ok());
  EXPECT_EQ(listed->size(), 1u);
  // One delivery by its id, and only for its tenant.
  query = DeliveryQuery{"t", "", "", 100, "whd_ping"};
  listed = store->ListDeliveries(query);
  ASSERT_TRUE(listed.ok());
  ASSERT_EQ(listed->size(), 1u);
  EXPECT_EQ((*listed)[0].message.delivery_id, "whd_ping");
  query.tenant = "other";
  listed = store->ListDeliveries(query);
  ASSERT_TRUE(listed.ok());
  EXPECT_TRUE(listed->empty());
}

TEST_P(StoreConformanceTest, CreateIsIdempotentPerTenantAndRequestId) {
  auto store = OpenStore();
  auto first = store->Create(MakeRecord("t", "r1"), {});
  ASSERT_TRUE(first.ok());
  EXPECT_TRUE(first->created);
  auto second = store->Create(MakeRecord("t", "r1"), {});
  ASSERT_TRUE(second.ok());
  EXPECT_FALSE(second->created);
  EXPECT_EQ(second->record.operation.name(), first->record.operation.name());
  auto other = store->Create(MakeRecord("u", "r1"), {});
  ASSERT_TRUE(other.ok());
  EXPECT_TRUE(other->created);
}

TEST_P(StoreConformanceTest, UpdateIsCompareAndSetAndAppendsEvents) {
  auto store = OpenStore();
  auto created = store->Create(MakeRecord("t", "r"), {});
  ASSERT_TRUE(created.ok());
  const std::string id = created->record.id();
  OperationUpdate update;
  update.operation = created->record.operation;
  update.operation.set_state(v1::OPERATION_STATE_RUNNING);
  update.operation.set_sequence(2);
  update.expected_sequence = 1;
  update.charged = true;
  ASSERT_TRUE(store->Update(update).ok());
  // A second writer with a stale view loses.
  EXPECT_EQ(store->Update(update).code(), absl::StatusCode::kAborted);
  auto events = store->EventsAfter(id, 0);
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->size(), 2u);
  EXPECT_EQ((*events)[1].sequence, 2);
  EXPECT_EQ((*events)[1].operation.state(), v1::OPERATION_STATE_RUNNING);
  auto read = store->Get(id);
  ASSERT_TRUE(read.ok());
  EXPECT_TRUE(read->charged);
  EXPECT_EQ(read->operation.sequence(), 2);
}

TEST_P(StoreConformanceTest, ClaimLiveTakesUnownedAndExpiredButNotOthersLeases) {
  auto store = OpenStore();
  auto mine = MakeRecord("t", "a");
  mine.owner = "r1";
  auto theirs = MakeRecord("t", "b");
  theirs.owner = "r2";
  theirs.lease_until = absl::Now() + absl::Hours(1);
  auto expired = MakeRecord("t", "c");
  expired.owner = "r3";
  expired.lease_until = absl::Now() - absl::Seconds(1);
  ASSERT_TRUE(store->Create(mine, {}).ok());
  ASSERT_TRUE(store->Create(theirs, {}).ok());
  ASSERT_TRUE(store->Create(expired, {}).ok());
  auto claimed = store->ClaimLive("r1", absl::Now() + absl::Minutes(1));
  ASSERT_TRUE(claimed.ok());
  EXPECT_EQ(claimed->size(), 2u);
  EXPECT_TRUE(store->RenewLeases("r1", absl::Now() + absl::Minutes(2)).ok());
}

// A cancel requested on a replica that does not track the operation is kept for the one that
// does (whoever owns it later too), once, and only while the operation is live.
TEST_P(StoreConformanceTest, CancelRequestsWaitForTheOwnerOfALiveOperation) {
  auto store = OpenStore();
  auto live = MakeRecord("t", "to-cancel");
  live.owner = "r1";
  live.lease_until = absl::Now() + absl::Hours(1);
  ASSERT_TRUE(store->Create(live, {}).ok());
  auto other = MakeRecord("t", "kept");
  other.owner = "r1";
  other.lease_until = absl::Now() + absl::Hours(1);
  ASSERT_TRUE(store->Create(other, {}).ok());

  ASSERT_TRUE(store->RequestCancel(live.id(), "first", absl::Now()).ok());
  ASSERT_TRUE(store->RequestCancel(live.id(), "second", absl::Now()).ok());
  EXPECT_EQ(store->RequestCancel("no-such-operation", "x", absl::Now()).code(),
            absl::StatusCode::kNotFound);
  auto pending = store->PendingCancels("r1");
  ASSERT_TRUE(pending.ok()) << pending.status();
  ASSERT_EQ(pending->size(), 1u);
  EXPECT_EQ(pending->at(live.id()), "first");
  auto elsewhere = store->PendingCancels("r2");
  ASSERT_TRUE(elsewhere.ok());
  EXPECT_TRUE(elsewhere->empty());

  // Once done, nothing is pending any more.
  OperationUpdate update;
  update.operation = live.operation;
  update.operation.set_state(v1::OPERATION_STATE_CANCELLED);
  update.operation.set_done(true);
  update.operation.mutable_done_time()->set_seconds(absl::ToUnixSeconds(absl::Now()));
  update.operation.set_sequence(2);
  update.expected_sequence = 1;
  update.owner = "r1";
  ASSERT_TRUE(store->Update(update).ok());
  pending = store->PendingCancels("r1");
  ASSERT_TRUE(pending.ok());
  EXPECT_TRUE(pending->empty());

  // Pruning a done operation takes its cancel request with its events (created, cancelled);
  // a live operation's request stays.
  ASSERT_TRUE(store->RequestCancel(other.id(), "later", absl::Now()).ok());
  auto pruned = store->PruneEvents(absl::Now() + absl::Hours(1));
  ASSERT_TRUE(pruned.ok()) << pruned.status();
  EXPECT_EQ(*pruned, 3);
  pruned = store->PruneEvents(absl::Now() + absl::Hours(1));
  ASSERT_TRUE(pruned.ok());
  EXPECT_EQ(*pruned, 0);
  pending = store->PendingCancels("r1");
  ASSERT_TRUE(pending.ok());
  ASSERT_EQ(pending->size(), 1u);
  EXPECT_EQ(pending->at(other.id()), "later");
}

// When to claim next: the earliest lease another replica holds on a live operation.
TEST_P(StoreConformanceTest, NextLeaseExpiryIsTheEarliestOfOtherReplicasLeases) {
  auto store = OpenStore();
  const absl::Time now = absl::FromUnixSeconds(absl::ToUnixSeconds(absl::Now()));
  auto none = store->NextLeaseExpiry("r1");
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_EQ(*none, absl::InfiniteFuture());
  auto mine = MakeRecord("t", "mine");
  mine.owner = "r1";
  mine.lease_until = now + absl::Seconds(5);
  auto late = MakeRecord("t", "late");
  late.owner = "r2";
  late.lease_until = now + absl::Seconds(60);
  auto soon = MakeRecord("t", "soon");
  soon.owner = "r3";
  soon.lease_until = now + absl::Seconds(30);
  for (const auto* record : {&mine, &late, &soon}) ASSERT_TRUE(store->Create(*record, {}).ok());
  auto next = store->NextLeaseExpiry("r1");
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_EQ(*next, now + absl::Seconds(30));
  next = store->NextLeaseExpiry("r3");
  ASSERT_TRUE(next.ok());
  EXPECT_EQ(*next, now + absl::Seconds(5));
}

// Fencing: once another replica claimed an operation (its lease ran out), the former owner's
// updates are refused, while the new owner's go through.
TEST_P(StoreConformanceTest, UpdatesOfAFormerOwnerAreRefused) {
  auto store = OpenStore();
  auto record = MakeRecord("t", "fenced");
  record.owner = "r1";
  record.lease_until = absl::Now() - absl::Seconds(1);
  ASSERT_TRUE(store->Create(record, {}).ok());
  auto claimed = store->ClaimLive("r2", absl::Now() + absl::Minutes(1));
  ASSERT_TRUE(claimed.ok());
  ASSERT_EQ(claimed->size(), 1u);
  EXPECT_EQ(claimed->front().owner, "r2");

  OperationUpdate update;
  update.operation = record.operation;
  update.operation.set_state(v1::OPERATION_STATE_RUNNING);
  update.operation.set_sequence(2);
  update.expected_sequence = 1;
  update.owner = "r1";
  EXPECT_EQ(store->Update(update).code(), absl::StatusCode::kAborted);
  update.owner = "r2";
  EXPECT_TRUE(store->Update(update).ok());
  auto events = store->EventsAfter(record.id(), 0);
  ASSERT_TRUE(events.ok());
  EXPECT_EQ(events->size(), 2u);
}

TEST_P(StoreConformanceTest, AssetFactsAreMergedAndEventsPruned) {
  auto store = OpenStore();
  auto record = MakeRecord("t", "r");
  auto created = store->Create(record, {});
  ASSERT_TRUE(created.ok());
  const std::string id = created->record.id();
  OperationUpdate update;
  update.operation = record.operation;
  update.operation.set_state(v1::OPERATION_STATE_SUCCEEDED);
  update.operation.set_done(true);
  update.operation.mutable_done_time()->set_seconds(absl::ToUnixSeconds(absl::Now()) - 7200);
  update.operation.add_outputs()->set_name(id + "/assets/0");
  update.operation.set_sequence(2);
  update.expected_sequence = 1;
  update.upstream_outputs = std::vector<UpstreamOutput>{{"http://x/a", absl::Now()}};
  ASSERT_TRUE(store->Update(update).ok());
  ASSERT_TRUE(store->SetAssetFacts(id, 0, 1234, "abcd").ok());
  auto read = store->Get(id);
  ASSERT_TRUE(read.ok());
  EXPECT_EQ(read->operation.outputs(0).size_bytes(), 1234);
  EXPECT_EQ(read->operation.outputs(0).sha256(), "abcd");
  ASSERT_EQ(read->upstream_outputs.size(), 1u);
  EXPECT_EQ(read->upstream_outputs[0].url, "http://x/a");
  auto pruned = store->PruneEvents(absl::Now() - absl::Hours(1));
  ASSERT_TRUE(pruned.ok());
  EXPECT_EQ(*pruned, 2);
  auto events = store->EventsAfter(id, 0);
  ASSERT_TRUE(events.ok());
  EXPECT_TRUE(events->empty());
}

// Asset custody: pending rows are durable and due by time, a held row becomes the asset's facts
// (in_custody in every snapshot read), a failed fetch is deferred, retention expiry clears
// in_custody and reports which objects lost a reference.
TEST_P(StoreConformanceTest, CustodyFollowsPendingHeldExpired) {
  auto store = OpenStore();
  const absl::Time t0 = absl::FromUnixSeconds(1'800'000'000);
  const std::string digest(64, 'a');
  std::vector<std::string> ids;
  for (const char* request : {"c1", "c2"}) {
    auto record = MakeRecord("t", request);
    auto created = store->Create(record, {});
    ASSERT_TRUE(created.ok()) << created.status();
    const std::string id = created->record.id();
    OperationUpdate update;
    update.operation = record.operation;
    update.operation.set_state(v1::OPERATION_STATE_SUCCEEDED);
    update.operation.set_done(true);
    update.operation.add_outputs()->set_name(id + "/assets/0");
    update.operation.add_outputs()->set_name(id + "/assets/1");
    update.operation.set_sequence(2);
    update.expected_sequence = 1;
    ASSERT_TRUE(store->Update(update).ok());
    ids.push_back(id);
  }
  ASSERT_TRUE(store->AddPendingCustody(ids[0], "t", 2, t0, t0 + absl::Seconds(10)).ok());
  // Adding again leaves existing rows alone (a resumed fetch keeps its history).
  ASSERT_TRUE(store->AddPendingCustody(ids[0], "t", 2, t0 + absl::Hours(1), t0).ok());
  ASSERT_TRUE(store->AddPendingCustody(ids[1], "t", 1, t0 + absl::Seconds(5), t0).ok());

  auto summary = store->ReadCustodySummary();
  ASSERT_TRUE(summary.ok()) << summary.status();
  EXPECT_EQ(summary->pending, 3);
  EXPECT_EQ(summary->held_bytes, 0);
  EXPECT_EQ(summary->oldest_pending, t0);

  auto due = store->DueCustody(t0, 10);
  ASSERT_TRUE(due.ok()) << due.status();
  ASSERT_EQ(due->size(), 1u);  // only ids[1]: ids[0] is due at t0 + 10 s
  EXPECT_EQ((*due)[0].operation_id, ids[1]);
  EXPECT_EQ((*due)[0].tenant, "t");
  EXPECT_EQ((*due)[0].state, CustodyState::kPending);
  due = store->DueCustody(t0 + absl::Seconds(10), 10);
  ASSERT_TRUE(due.ok());
  EXPECT_EQ(due->size(), 3u);
  due = store->DueCustody(t0 + absl::Seconds(10), 1);
  ASSERT_TRUE(due.ok());
  EXPECT_EQ(due->size(), 1u);

  // A failed fetch waits for its backoff.
  ASSERT_TRUE(store->DeferCustody(ids[1], 0, 1, t0 + absl::Minutes(1)).ok());
  due = store->DueCustody(t0 + absl::Seconds(30), 10);
  ASSERT_TRUE(due.ok());
  EXPECT_EQ(due->size(), 2u);
  auto rows = store->GetCustody(ids[1]);
  ASSERT_TRUE(rows.ok());
  ASSERT_EQ(rows->size(), 1u);
  EXPECT_EQ((*rows)[0].attempts, 1);
  EXPECT_EQ((*rows)[0].next_attempt, t0 + absl::Minutes(1));

  // Held: facts merged into every read, no longer due. Two assets with the same bytes.
  ASSERT_TRUE(store->RecordCustody(ids[0], 0, 1000, digest, t0 + absl::Hours(1)).ok());
  ASSERT_TRUE(store->RecordCustody(ids[1], 0, 1000, digest, t0 + absl::Hours(2)).ok());
  auto read = store->Get(ids[0]);
  ASSERT_TRUE(read.ok());
  EXPECT_TRUE(read->operation.outputs(0).in_custody());
  EXPECT_EQ(read->operation.outputs(0).size_bytes(), 1000);
  EXPECT_EQ(read->operation.outputs(0).sha256(), digest);
  EXPECT_FALSE(read->operation.outputs(1).in_custody());
  summary = store->ReadCustodySummary();
  ASSERT_TRUE(summary.ok());
  EXPECT_EQ(summary->pending, 1);
  EXPECT_EQ(summary->held_bytes, 1000);  // one object, held twice
  auto refs = store->CountHeldDigest(digest);
  ASSERT_TRUE(refs.ok());
  EXPECT_EQ(*refs, 2);

  // Retention: the first expires, the object is still referenced by the second.
  auto expired = store->ExpireCustody(t0 + absl::Minutes(90), 10);
  ASSERT_TRUE(expired.ok()) << expired.status();
  ASSERT_EQ(expired->size(), 1u);
  EXPECT_EQ((*expired)[0].operation_id, ids[0]);
  EXPECT_EQ((*expired)[0].sha256, digest);
  refs = store->CountHeldDigest(digest);
  ASSERT_TRUE(refs.ok());
  EXPECT_EQ(*refs, 1);
  read = store->Get(ids[0]);
  ASSERT_TRUE(read.ok());
  EXPECT_FALSE(read->operation.outputs(0).in_custody());
  rows = store->GetCustody(ids[0]);
  ASSERT_TRUE(rows.ok());
  ASSERT_EQ(rows->size(), 2u);
  EXPECT_EQ((*rows)[0].state, CustodyState::kExpired);
  EXPECT_EQ((*rows)[1].state, CustodyState::kPending);
  // Expiry happens once.
  expired = store->ExpireCustody(t0 + absl::Minutes(90), 10);
  ASSERT_TRUE(expired.ok());
  EXPECT_TRUE(expired->empty());
  expired = store->ExpireCustody(t0 + absl::Hours(3), 10);
  ASSERT_TRUE(expired.ok());
  EXPECT_EQ(expired->size(), 1u);
  refs = store->CountHeldDigest(digest);
  ASSERT_TRUE(refs.ok());
  EXPECT_EQ(*refs, 0);
  summary = store->ReadCustodySummary();
  ASSERT_TRUE(summary.ok());
  EXPECT_EQ(summary->held_bytes, 0);
}

TEST_P(StoreConformanceTest, BudgetAdmissionCountsInTheSameTransaction) {
  auto store = OpenStore();
  BudgetCheck budget;
  budget.name = "task:SAMPLE/day";
  budget.task = v1::TASK_KIND_SAMPLE;
  budget.period_start = absl::Now() - absl::Hours(1);
  budget.limit = 2;
  ASSERT_TRUE(store->Create(MakeRecord("t", "1"), {budget}).ok());
  ASSERT_TRUE(store->Create(MakeRecord("t", "2"), {budget}).ok());
  auto third = store->Create(MakeRecord("t", "3"), {budget});
  ASSERT_FALSE(third.ok());
  EXPECT_EQ(third.status().code(), absl::StatusCode::kResourceExhausted);
  google::rpc::QuotaFailure quota;
  EXPECT_TRUE(GetQuotaFailure(third.status(), &quota));
  // A retry of an admitted request is still answered (idempotency before admission).
  auto retry = store->Create(MakeRecord("t", "2"), {budget});
  ASSERT_TRUE(retry.ok());
  EXPECT_FALSE(retry->created);
  auto usage = store->ReadBudget("t", v1::TASK_KIND_SAMPLE, budget.period_start);
  ASSERT_TRUE(usage.ok());
  EXPECT_EQ(usage->reserved, 2);
}

// Budgets count from per-day and per-hour counters: every transition moves an operation
// between reserved (not done), used (done) and not counted (failed or cancelled, not charged).
TEST_P(StoreConformanceTest, BudgetCountsFollowEveryTransition) {
  auto store = OpenStore();
  const absl::Time day = absl::FromUnixSeconds(1'800'000'000 / 86'400 * 86'400);  // 00:00 UTC
  int next = 0;
  auto add = [&](const std::string& tenant, absl::Duration after_day, v1::TaskKind task) {
    OperationRecord record = MakeRecord(tenant, absl::StrCat("r", next++), day + after_day);
    record.operation.set_task(task);
    auto created = store->Create(record, {});
    EXPECT_TRUE(created.ok()) << created.status();
    return created.ok() ? created->record.operation : v1::Operation();
  };
  auto finish = [&](const v1::Operation& op, v1::OperationState state, bool charged) {
    OperationUpdate update;
    update.operation = op;
    update.operation.set_state(state);
    update.operation.set_done(true);
    update.operation.set_sequence(op.sequence() + 1);
    update.expected_sequence = op.sequence();
    update.charged = charged;
    EXPECT_TRUE(store->Update(update).ok());
  };
  using Usage = std::pair<int64_t, int64_t>;  // reserved, used
  auto usage = [&](absl::Time start) {
    auto read = store->ReadBudget("t", v1::TASK_KIND_SAMPLE, start);
    EXPECT_TRUE(read.ok()) << read.status();
    return read.ok() ? Usage(read->reserved, read->used) : Usage();
  };
  add("t", absl::Hours(2), v1::TASK_KIND_SAMPLE);  // live: reserved
  finish(add("t", absl::Hours(3), v1::TASK_KIND_SAMPLE), v1::OPERATION_STATE_SUCCEEDED, true);
  finish(add("t", absl::Hours(4), v1::TASK_KIND_SAMPLE), v1::OPERATION_STATE_FAILED, false);
  finish(add("t", absl::Hours(5), v1::TASK_KIND_SAMPLE), v1::OPERATION_STATE_FAILED, true);
  const v1::Operation cancelled = add("t", absl::Hours(5), v1::TASK_KIND_SAMPLE);
  add("t", -absl::Hours(1), v1::TASK_KIND_SAMPLE);  // before the period
  add("other", absl::Hours(2), v1::TASK_KIND_SAMPLE);
  add("t", absl::Hours(2), v1::TASK_KIND_SONG);
  EXPECT_EQ(usage(day), Usage(2, 2));
  finish(cancelled, v1::OPERATION_STATE_CANCELLED, false);
  EXPECT_EQ(usage(day), Usage(1, 2));
  EXPECT_EQ(usage(day + absl::Hours(3)), Usage(0, 2));  // on the hour
  EXPECT_EQ(usage(day + absl::Hours(3) + absl::Minutes(1)), Usage(0, 1));
  EXPECT_EQ(usage(day - absl::Hours(24)), Usage(2, 2));

  // Admission counts the same: reserved and used together.
  BudgetCheck budget;
  budget.name = "task:SAMPLE/day";
  budget.task = v1::TASK_KIND_SAMPLE;
  budget.period_start = day;
  budget.limit = 3;
  auto refused = store->Create(MakeRecord("t", "over", day + absl::Hours(6)), {budget});
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted) << refused.status();
  budget.limit = 4;
  EXPECT_TRUE(store->Create(MakeRecord("t", "under", day + absl::Hours(6)), {budget}).ok());
}

TEST_P(StoreConformanceTest, MissingOperationsAreNotFound) {
  auto store = OpenStore();
  EXPECT_EQ(store->Get("01JXXXXXXXXXXXXXXXXXXXXXXX").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store->FindByRequestId("t", "nope").status().code(), absl::StatusCode::kNotFound);
  OperationUpdate update;
  update.operation = MakeRecord("t", "ghost").operation;
  update.operation.set_sequence(2);
  update.expected_sequence = 1;
  EXPECT_EQ(store->Update(update).code(), absl::StatusCode::kNotFound);
  update.operation.set_sequence(5);
  EXPECT_EQ(store->Update(update).code(), absl::StatusCode::kInvalidArgument);
}

TEST_P(StoreConformanceTest, ListFiltersPagesNewestFirstAndKeepsTenantsApart) {
  auto store = OpenStore();
  const absl::Time now = absl::Now();
  std::vector<std::string> ids;
  for (int i = 0; i < 5; ++i) {
    OperationRecord record = MakeRecord("t", absl::StrCat("r", i), now + absl::Milliseconds(i));
    if (i % 2 == 1) record.operation.set_provider(v1::PROVIDER_LOUDLY);
    if (i == 4) record.operation.set_state(v1::OPERATION_STATE_RUNNING);
    auto created = store->Create(record, {});
    ASSERT_TRUE(created.ok()) << created.status();
    ids.push_back(created->record.id());
  }
  ASSERT_TRUE(store->Create(MakeRecord("other", "r0"), {}).ok());
  ListQuery query;
  query.tenant = "t";
  query.limit = 3;
  auto page = store->List(query);
  ASSERT_TRUE(page.ok()) << page.status();
  ASSERT_EQ(page->size(), 3u);
  EXPECT_EQ((*page)[0].id(), ids[4]);
  EXPECT_EQ((*page)[2].id(), ids[2]);
  query.before_id = (*page)[2].id();
  page = store->List(query);
  ASSERT_TRUE(page.ok());
  ASSERT_EQ(page->size(), 2u);
  EXPECT_EQ((*page)[1].id(), ids[0]);
  ListQuery loudly;
  loudly.tenant = "t";
  loudly.provider = v1::PROVIDER_LOUDLY;
  page = store->List(loudly);
  ASSERT_TRUE(page.ok());
  EXPECT_EQ(page->size(), 2u);
  ListQuery running;
  running.tenant = "t";
  running.states = {v1::OPERATION_STATE_RUNNING, v1::OPERATION_STATE_SUCCEEDED};
  page = store->List(running);
  ASSERT_TRUE(page.ok());
  ASSERT_EQ(page->size(), 1u);
  EXPECT_EQ((*page)[0].id(), ids[4]);
}

// The concurrent live operations limit counts what is not done yet, of any task, and frees a
// place when one finishes.
TEST_P(StoreConformanceTest, LiveOperationsLimitCountsWhatIsNotDone) {
  auto store = OpenStore();
  BudgetCheck live;
  live.name = "max_live_operations";
  live.live_only = true;
  live.limit = 2;
  auto first = store->Create(MakeRecord("t", "1"), {live});
  ASSERT_TRUE(first.ok()) << first.status();
  OperationRecord song = MakeRecord("t", "2");
  song.operation.set_task(v1::TASK_KIND_SONG);
  ASSERT_TRUE(store->Create(song, {live}).ok());
  auto third = store->Create(MakeRecord("t", "3"), {live});
  ASSERT_EQ(third.status().code(), absl::StatusCode::kResourceExhausted);
  google::rpc::ErrorInfo info;
  ASSERT_TRUE(GetErrorInfo(third.status(), &info));
  EXPECT_EQ(info.reason(), "TENANT_RATE_LIMITED");
  google::rpc::RetryInfo retry;
  EXPECT_TRUE(GetRetryInfo(third.status(), &retry));
  EXPECT_TRUE(store->Create(MakeRecord("other", "3"), {live}).ok());  // per tenant

  OperationUpdate done;
  done.operation = first->record.operation;
  done.operation.set_state(v1::OPERATION_STATE_SUCCEEDED);
  done.operation.set_done(true);
  done.operation.set_sequence(2);
  done.expected_sequence = 1;
  ASSERT_TRUE(store->Update(done).ok());
  EXPECT_TRUE(store->Create(MakeRecord("t", "3"), {live}).ok());
}

// Two handles on one ledger (for PostgreSQL: two replicas) admit exactly the budget between
// them, however the concurrent Creates interleave.
TEST_P(StoreConformanceTest, ConcurrentBudgetAdmissionAcrossHandlesIsExact) {
  auto a = OpenStore();
  auto b = OpenStore();
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  BudgetCheck budget;
  budget.name = "task:SAMPLE/day";
  budget.task = v1::TASK_KIND_SAMPLE;
  budget.period_start = absl::Now() - absl::Hours(1);
  budget.limit = 10;
  std::atomic<int> admitted{0};
  std::atomic<int> refused{0};
  std::vector<std::thread> threads;
  threads.reserve(50);
  for (int i = 0; i < 50; ++i) {
    threads.emplace_back([&, i] {
      OperationStore* store = i % 2 == 0 ? a.get() : b.get();
      auto created = store->Create(MakeRecord("t", absl::StrCat("req-", i)), {budget});
      if (created.ok()) {
        admitted += created->created ? 1 : 0;
      } else if (created.status().code() == absl::StatusCode::kResourceExhausted) {
        ++refused;
      } else if (created.status().code() == absl::StatusCode::kUnavailable) {
        // SQLite's busy timeout under 50 writers; the retry below must still be exact.
        auto again = store->Create(MakeRecord("t", absl::StrCat("req-", i)), {budget});
        if (again.ok() && again->created) ++admitted;
        if (!again.ok() && again.status().code() == absl::StatusCode::kResourceExhausted) {
          ++refused;
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(admitted.load(), 10);
  EXPECT_EQ(refused.load(), 40);
  auto usage = a->ReadBudget("t", v1::TASK_KIND_SAMPLE, budget.period_start);
  ASSERT_TRUE(usage.ok());
  EXPECT_EQ(usage->reserved, 10);
}

}  // namespace
}  // namespace musicgw::operations
