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
  EXPECT_EQ(sqlite3_column_int(stmt, 0), 7);
  EXPECT_EQ(sqlite3_column_int(stmt, 1), 7);
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
