// SQLite ledger: schema, compare-and-set updates, events, leases, pruning, budgets.
#include <sqlite3.h>

#include <memory>
#include <string>

#include "absl/time/clock.h"
#include "common/errors.h"
#include "gtest/gtest.h"
#include "services/operations/ids.h"
#include "services/operations/sqlite_store.h"
#include "tests/operations/test_util.h"

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

std::unique_ptr<OperationStore> Open(const std::string& path) {
  auto store = OpenSqliteOperationStore(path);
  EXPECT_TRUE(store.ok()) << store.status();
  return store.ok() ? std::move(*store) : nullptr;
}

TEST(SqliteStoreTest, MigratesOnceAndRecordsTheSchemaVersion) {
  const std::string path = testing::TempLedgerPath();
  { auto store = Open(path); }
  { auto store = Open(path); }  // reopening applies nothing twice
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  sqlite3_stmt* stmt = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(db, "SELECT COUNT(*), MAX(version) FROM schema_migrations", -1,
                               &stmt, nullptr),
            SQLITE_OK);
  ASSERT_EQ(sqlite3_step(stmt), SQLITE_ROW);
  EXPECT_EQ(sqlite3_column_int(stmt, 0), 3);
  EXPECT_EQ(sqlite3_column_int(stmt, 1), 3);
  sqlite3_finalize(stmt);
  // Budget counts run on every Generate: they must be answered from the index alone.
  ASSERT_EQ(sqlite3_prepare_v2(db,
                               "EXPLAIN QUERY PLAN SELECT COUNT(*) FROM operations WHERE tenant = "
                               "'t' AND task = 1 AND create_time_us >= 0 AND (state NOT IN (4, 5) "
                               "OR charged = 1)",
                               -1, &stmt, nullptr),
            SQLITE_OK);
  std::string plan;
  while (sqlite3_step(stmt) == SQLITE_ROW) {
    plan += reinterpret_cast<const char*>(sqlite3_column_text(stmt, 3));
  }
  sqlite3_finalize(stmt);
  EXPECT_NE(plan.find("COVERING INDEX operations_for_budgets"), std::string::npos) << plan;
  char* error = nullptr;
  ASSERT_EQ(sqlite3_exec(db, "PRAGMA journal_mode", nullptr, nullptr, &error), SQLITE_OK);
  // A ledger from a newer binary is refused rather than misread.
  ASSERT_EQ(
      sqlite3_exec(db, "INSERT INTO schema_migrations VALUES (99, 0)", nullptr, nullptr, &error),
      SQLITE_OK);
  sqlite3_close(db);
  auto newer = OpenSqliteOperationStore(path);
  EXPECT_EQ(newer.status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(SqliteStoreTest, CountsChargedOperationsPerProviderAccountAndTask) {
  auto store = Open(testing::TempLedgerPath());
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

TEST(SqliteStoreTest, CreateIsIdempotentPerTenantAndRequestId) {
  auto store = Open(testing::TempLedgerPath());
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

TEST(SqliteStoreTest, UpdateIsCompareAndSetAndAppendsEvents) {
  auto store = Open(testing::TempLedgerPath());
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

TEST(SqliteStoreTest, ClaimLiveTakesUnownedAndExpiredButNotOthersLeases) {
  auto store = Open(testing::TempLedgerPath());
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

TEST(SqliteStoreTest, AssetFactsAreMergedAndEventsPruned) {
  auto store = Open(testing::TempLedgerPath());
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

TEST(SqliteStoreTest, BudgetAdmissionCountsInTheSameTransaction) {
  auto store = Open(testing::TempLedgerPath());
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

TEST(IdsTest, OperationIdsAreSortableAndWellFormed) {
  const absl::Time now = absl::Now();
  std::string previous;
  for (int i = 0; i < 1000; ++i) {
    const std::string id = NewOperationId(now);
    EXPECT_TRUE(IsOperationId(id)) << id;
    EXPECT_GT(id, previous);
    previous = id;
  }
  EXPECT_LT(previous.substr(0, 10), NewOperationId(now + absl::Hours(1)).substr(0, 10));
  auto asset = ParseAssetName(OperationName(previous) + "/assets/3");
  ASSERT_TRUE(asset.ok());
  EXPECT_EQ(asset->operation_id, previous);
  EXPECT_EQ(asset->index, 3);
  EXPECT_FALSE(ParseAssetName(OperationName(previous) + "/assets/03").ok());
  EXPECT_FALSE(ParseOperationName("operations/ABC").ok());
}

TEST(IdsTest, IdempotencyKeyIsAStableNameBasedUuid) {
  const std::string key = ProviderIdempotencyKey("tenant", "req");
  EXPECT_TRUE(IsUuid(key));
  EXPECT_EQ(key[14], '5');
  EXPECT_EQ(key, ProviderIdempotencyKey("tenant", "req"));
  EXPECT_NE(key, ProviderIdempotencyKey("tenant2", "req"));
}

TEST(IdsTest, FingerprintIgnoresValidateOnly) {
  v1::GenerateRequest a;
  a.set_request_id("r");
  a.mutable_text_to_music()->set_prompt("p");
  v1::GenerateRequest b = a;
  b.set_validate_only(true);
  EXPECT_EQ(RequestFingerprint(a), RequestFingerprint(b));
  b.mutable_text_to_music()->set_prompt("q");
  EXPECT_NE(RequestFingerprint(a), RequestFingerprint(b));
}

}  // namespace
}  // namespace musicgw::operations
