// SQLite ledger: schema, compare-and-set updates, events, leases, pruning, budgets.
#include <sqlite3.h>

#include <atomic>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/errors.h"
#include "gtest/gtest.h"
#include "services/operations/ids.h"
#include "services/operations/sqlite_store.h"
#include "tests/operations/test_util.h"

namespace musicgw::operations {
namespace {

namespace v1 = musicgw::v1;

std::unique_ptr<OperationStore> Open(const std::string& path) {
  auto store = OpenSqliteOperationStore(path);
  EXPECT_TRUE(store.ok()) << store.status();
  return store.ok() ? std::move(*store) : nullptr;
}

OperationRecord QueuedRecord(const std::string& tenant, const std::string& request_id) {
  OperationRecord record;
  record.tenant = tenant;
  record.request_id = request_id;
  record.request_hash = "hash-" + request_id;
  record.operation.set_name(OperationName(NewOperationId(absl::Now())));
  record.operation.set_state(v1::OPERATION_STATE_QUEUED);
  record.operation.set_sequence(1);
  return record;
}

// The update that moves `operation` on to `state`, compare-and-set on its sequence.
OperationUpdate Advance(const v1::Operation& operation, v1::OperationState state,
                        bool wait_durable = true) {
  OperationUpdate update;
  update.operation = operation;
  update.operation.set_state(state);
  update.operation.set_sequence(operation.sequence() + 1);
  update.expected_sequence = operation.sequence();
  update.wait_durable = wait_durable;
  return update;
}

// A fresh ledger that counts its durable writes and syncs, for what shares an fsync.
class SqliteStoreTest : public ::testing::Test {
 protected:
  // `options` may hold a before_sync hook; the counts go to stats_.
  void OpenCounting(SqliteOptions options = {}) {
    options.sync_stats = &stats_;
    auto opened = OpenSqliteOperationStore(testing::TempLedgerPath(), options);
    ASSERT_TRUE(opened.ok()) << opened.status();
    store_ = std::move(*opened);
  }

  // Opens the ledger and creates one queued operation in it: one durable write, one sync.
  void OpenCountingWithOneOperation(OperationRecord* created) {
    ASSERT_NO_FATAL_FAILURE(OpenCounting());
    auto result = store_->Create(QueuedRecord("t", "r"), {});
    ASSERT_TRUE(result.ok()) << result.status();
    ASSERT_EQ(stats_.syncs.load(), 1);
    *created = result->record;
  }

  LedgerSyncStats stats_;  // first: outlives the store that counts into it
  std::unique_ptr<OperationStore> store_;
};

TEST_F(SqliteStoreTest, MigratesOnceAndRecordsTheSchemaVersion) {
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
  EXPECT_EQ(sqlite3_column_int(stmt, 0), 10);
  EXPECT_EQ(sqlite3_column_int(stmt, 1), 10);
  sqlite3_finalize(stmt);
  const auto plan_of = [db](const char* query) {
    sqlite3_stmt* explain = nullptr;
    std::string plan;
    if (sqlite3_prepare_v2(db, absl::StrCat("EXPLAIN QUERY PLAN ", query).c_str(), -1, &explain,
                           nullptr) != SQLITE_OK) {
      return std::string("does not prepare");
    }
    while (sqlite3_step(explain) == SQLITE_ROW) {
      plan += reinterpret_cast<const char*>(sqlite3_column_text(explain, 3));
    }
    sqlite3_finalize(explain);
    return plan;
  };
  // Budget counts run on every Generate: ranges of counters, and rows from the index alone.
  const std::string budget_plan = plan_of(
      "SELECT COALESCE(SUM(r), 0), COALESCE(SUM(u), 0) FROM (SELECT reserved AS r, used AS u "
      "FROM budget_counts WHERE tenant = 't' AND task = 1 AND hours = 24 AND bucket >= 5 UNION "
      "ALL SELECT reserved, used FROM budget_counts WHERE tenant = 't' AND task = 1 AND hours = "
      "1 AND bucket >= 100 AND bucket < 120 UNION ALL SELECT done = 0, done = 1 FROM operations "
      "WHERE tenant = 't' AND task = 1 AND create_time_us >= 1 AND create_time_us < 2 AND "
      "(state NOT IN (4, 5) OR charged = 1))");
  EXPECT_NE(budget_plan.find("budget_counts USING PRIMARY KEY (tenant=? AND task=? AND hours=? "
                             "AND bucket>?)"),
            std::string::npos)
      << budget_plan;
  EXPECT_NE(budget_plan.find("budget_counts USING PRIMARY KEY (tenant=? AND task=? AND hours=? "
                             "AND bucket>? AND bucket<?)"),
            std::string::npos)
      << budget_plan;
  EXPECT_NE(budget_plan.find("COVERING INDEX operations_for_budgets"), std::string::npos)
      << budget_plan;
  // So does the live count, from the live operations alone (not all the tenant's).
  const std::string live_plan =
      plan_of("SELECT COUNT(*) FROM operations WHERE tenant = 't' AND done = 0");
  EXPECT_NE(live_plan.find("INDEX operations_live_by_tenant"), std::string::npos) << live_plan;
  // The credit estimate (each quota read) sums counters, and the rows of one hour.
  const std::string credit_plan = plan_of(
      "SELECT task, SUM(n) FROM (SELECT task, charged AS n FROM charged_counts WHERE provider = 2 "
      "AND provider_account = 'a' AND hours = 24 AND bucket >= 5 UNION ALL SELECT task, charged "
      "FROM charged_counts WHERE provider = 2 AND provider_account = 'a' AND hours = 1 AND "
      "bucket >= 100 AND bucket < 120 UNION ALL SELECT task, 1 FROM operations WHERE "
      "provider = 2 AND provider_account = 'a' AND create_time_us >= 1 AND create_time_us < 2 "
      "AND charged = 1) GROUP BY task HAVING SUM(n) != 0");
  // Both counter reads are ranges of buckets (not every bucket of the account).
  EXPECT_NE(credit_plan.find("charged_counts USING PRIMARY KEY (provider=? AND "
                             "provider_account=? AND hours=? AND bucket>?)"),
            std::string::npos)
      << credit_plan;
  EXPECT_NE(credit_plan.find("charged_counts USING PRIMARY KEY (provider=? AND "
                             "provider_account=? AND hours=? AND bucket>? AND bucket<?)"),
            std::string::npos)
      << credit_plan;
  EXPECT_NE(credit_plan.find("COVERING INDEX operations_for_credits"), std::string::npos)
      << credit_plan;
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

// A ledger written before the credit and budget counters (schema 8) gets them filled from its
// operations when it is opened by this binary.
TEST_F(SqliteStoreTest, CountersAreFilledFromAnOlderLedger) {
  const std::string path = testing::TempLedgerPath();
  {
    auto store = Open(path);
    for (int i = 0; i < 3; ++i) {
      OperationRecord record = QueuedRecord("t", absl::StrCat("r", i));
      record.operation.set_provider(v1::PROVIDER_SOUNDPIECE);
      record.operation.set_provider_account("sp-main");
      record.operation.set_task(v1::TASK_KIND_SONG);
      record.charged = i < 2;
      ASSERT_TRUE(store->Create(record, {}).ok());
    }
  }
  // Back to schema 8: what the migrations add is removed, the operations stay.
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  char* error = nullptr;
  ASSERT_EQ(sqlite3_exec(db,
                         "DROP TRIGGER charged_counts_insert; DROP TRIGGER "
                         "charged_counts_update_from; DROP TRIGGER charged_counts_update_to; "
                         "DROP TRIGGER charged_counts_delete; DROP TABLE charged_counts; "
                         "DROP TRIGGER budget_counts_insert; DROP TRIGGER "
                         "budget_counts_update_from; DROP TRIGGER budget_counts_update_to; "
                         "DROP TRIGGER budget_counts_delete; DROP TABLE budget_counts; "
                         "DELETE FROM schema_migrations WHERE version >= 9",
                         nullptr, nullptr, &error),
            SQLITE_OK)
      << error;
  sqlite3_close(db);
  auto store = Open(path);
  auto counts = store->CountCharged(v1::PROVIDER_SOUNDPIECE, "sp-main", absl::InfinitePast());
  ASSERT_TRUE(counts.ok()) << counts.status();
  EXPECT_EQ(*counts, (std::map<v1::TaskKind, int64_t>{{v1::TASK_KIND_SONG, 2}}));
  auto usage = store->ReadBudget("t", v1::TASK_KIND_SONG, absl::InfinitePast());
  ASSERT_TRUE(usage.ok()) << usage.status();
  EXPECT_EQ(usage->reserved, 3);
  EXPECT_EQ(usage->used, 0);
}

// Writers that commit while one fsync runs share the next: eight concurrent Creates, the first
// sync held until the other seven are waiting, are on disk after two fsyncs, not eight.
TEST_F(SqliteStoreTest, ConcurrentWritesShareOneFsync) {
  constexpr int kWriters = 8;
  std::atomic<bool> held{false};
  SqliteOptions options;
  options.before_sync = [&] {
    if (held.exchange(true)) return;
    EXPECT_TRUE(testing::WaitUntil([&] { return stats_.durable_writes.load() == kWriters; }));
  };
  ASSERT_NO_FATAL_FAILURE(OpenCounting(std::move(options)));
  OperationStore& store = *store_;
  std::vector<std::string> names(kWriters);
  {
    std::vector<std::thread> writers;
    writers.reserve(kWriters);
    for (int i = 0; i < kWriters; ++i) {
      writers.emplace_back([&store, &names, i] {
        OperationRecord record = QueuedRecord("t", absl::StrCat("r", i));
        auto created = store.Create(record, {});
        ASSERT_TRUE(created.ok()) << created.status();
        EXPECT_TRUE(created->created);
        names[i] = record.operation.name();
      });
    }
    for (auto& writer : writers) writer.join();
  }
  EXPECT_EQ(stats_.durable_writes.load(), kWriters);
  EXPECT_EQ(stats_.syncs.load(), 2);
  for (const std::string& name : names) {
    auto record = store.Get(name.substr(name.find('/') + 1));
    ASSERT_TRUE(record.ok()) << record.status();
    EXPECT_EQ(record->operation.name(), name);
  }
  // A lone write waits for a sync of its own: never fewer writes than syncs.
  ASSERT_TRUE(store.Create(QueuedRecord("t", "lone"), {}).ok());
  EXPECT_EQ(stats_.syncs.load(), 3);
  EXPECT_LE(stats_.syncs.load(), stats_.durable_writes.load());
}

// An update that need not wait returns without a sync of its own; the next durable write's
// sync covers it.
TEST_F(SqliteStoreTest, AnUpdateThatNeedNotWaitSharesTheNextSync) {
  OperationRecord created;
  ASSERT_NO_FATAL_FAILURE(OpenCountingWithOneOperation(&created));
  OperationStore& store = *store_;
  const OperationUpdate running =
      Advance(created.operation, v1::OPERATION_STATE_RUNNING, /*wait_durable=*/false);
  ASSERT_TRUE(store.Update(running).ok());
  EXPECT_EQ(stats_.syncs.load(), 1);
  EXPECT_EQ(stats_.durable_writes.load(), 1);
  // Visible at once, and still compare-and-set.
  auto read = store.Get(created.id());
  ASSERT_TRUE(read.ok());
  EXPECT_EQ(read->operation.sequence(), 2);
  EXPECT_EQ(store.Update(running).code(), absl::StatusCode::kAborted);
  ASSERT_TRUE(store.Update(Advance(running.operation, v1::OPERATION_STATE_SUCCEEDED)).ok());
  EXPECT_EQ(stats_.syncs.load(), 2);
  EXPECT_EQ(stats_.durable_writes.load(), 2);
}

// The provider's URLs and the custody rows on the success path wait for no sync of their own:
// the operation's durable SUCCEEDED, written after them, carries them to disk (one sync for the
// four writes).
TEST_F(SqliteStoreTest, CustodyRowsShareTheSyncOfTheSucceededThatFollows) {
  OperationRecord created;
  ASSERT_NO_FATAL_FAILURE(OpenCountingWithOneOperation(&created));
  OperationStore& store = *store_;
  const std::string id = created.id();
  const absl::Time now = absl::Now();
  ASSERT_TRUE(store.SetUpstreamOutputs(id, {UpstreamOutput{"http://cdn/a.flac", now}}).ok());
  ASSERT_TRUE(store.AddPendingCustody(id, "t", 1, now, now + absl::Minutes(1)).ok());
  ASSERT_TRUE(store.RecordCustody(id, 0, 1234, std::string(64, 'a'), now + absl::Hours(1)).ok());
  EXPECT_EQ(stats_.syncs.load(), 1);
  // Visible at once.
  auto rows = store.GetCustody(id);
  ASSERT_TRUE(rows.ok()) << rows.status();
  ASSERT_EQ(rows->size(), 1u);
  EXPECT_EQ((*rows)[0].state, CustodyState::kHeld);
  EXPECT_EQ((*rows)[0].size_bytes, 1234);
  auto record = store.Get(id);
  ASSERT_TRUE(record.ok()) << record.status();
  ASSERT_EQ(record->upstream_outputs.size(), 1u);
  EXPECT_EQ(record->upstream_outputs[0].url, "http://cdn/a.flac");
  ASSERT_TRUE(store.Update(Advance(created.operation, v1::OPERATION_STATE_SUCCEEDED)).ok());
  EXPECT_EQ(stats_.syncs.load(), 2);
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
