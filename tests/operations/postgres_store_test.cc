// What only the PostgreSQL ledger has: concurrent replicas migrating, the server going away and
// coming back, and a DSN that stays secret.
#include "services/operations/postgres_store.h"

#include <libpq-fe.h>

#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/errors.h"
#include "gtest/gtest.h"
#include "services/operations/ids.h"
#include "tests/pg/pg_cluster.h"

namespace musicgw::operations {
namespace {

namespace v1 = musicgw::v1;
using ::musicgw::testing::PgCluster;

std::unique_ptr<PgCluster> StartCluster() {
  auto cluster = PgCluster::Start();
  EXPECT_TRUE(cluster.ok()) << cluster.status();
  return cluster.ok() ? std::move(*cluster) : nullptr;
}

OperationRecord MakeRecord(const std::string& request_id) {
  OperationRecord record;
  record.tenant = "t";
  record.request_id = request_id;
  record.request_hash = "h";
  record.operation.set_name(OperationName(NewOperationId(absl::Now())));
  record.operation.set_state(v1::OPERATION_STATE_QUEUED);
  record.operation.set_sequence(1);
  return record;
}

// A store on a new database of `cluster`, its pool `pool_size` connections, each given up
// after 1 s while the server is away; null (with a failure) if it cannot be opened.
std::unique_ptr<OperationStore> OpenOnCluster(PgCluster& cluster, const std::string& database,
                                              int pool_size) {
  auto dsn = cluster.CreateDatabase(database);
  EXPECT_TRUE(dsn.ok()) << dsn.status();
  if (!dsn.ok()) return nullptr;
  PostgresOptions options;
  options.dsn = *dsn;
  options.pool_size = pool_size;
  options.connect_timeout = absl::Seconds(1);
  auto store = OpenPostgresOperationStore(options);
  EXPECT_TRUE(store.ok()) << store.status();
  return store.ok() ? std::move(*store) : nullptr;
}

int64_t CountRows(const std::string& dsn, const char* sql) {
  PGconn* conn = PQconnectdb(dsn.c_str());
  PGresult* result = PQexec(conn, sql);
  const int64_t count = PQntuples(result) > 0 ? std::stoll(PQgetvalue(result, 0, 0)) : -1;
  PQclear(result);
  PQfinish(conn);
  return count;
}

TEST(PostgresStoreTest, ReplicasStartingTogetherMigrateOnce) {
  auto cluster = StartCluster();
  ASSERT_NE(cluster, nullptr);
  auto dsn = cluster->CreateDatabase("migrate");
  ASSERT_TRUE(dsn.ok());
  std::vector<std::thread> replicas;
  replicas.reserve(4);
  std::vector<absl::Status> results(4);
  for (int i = 0; i < 4; ++i) {
    replicas.emplace_back([&, i] {
      PostgresOptions options;
      options.dsn = *dsn;
      results[i] = OpenPostgresOperationStore(options).status();
    });
  }
  for (auto& replica : replicas) replica.join();
  for (const auto& result : results) EXPECT_TRUE(result.ok()) << result;
  // Each migration applied exactly once (one row per version, up to the latest).
  EXPECT_EQ(CountRows(*dsn, "SELECT COUNT(*) FROM schema_migrations"),
            CountRows(*dsn, "SELECT MAX(version) FROM schema_migrations"));
  EXPECT_EQ(CountRows(*dsn, "SELECT COUNT(DISTINCT version) FROM schema_migrations"),
            CountRows(*dsn, "SELECT COUNT(*) FROM schema_migrations"));
}

TEST(PostgresStoreTest, ANewerSchemaIsRefused) {
  auto cluster = StartCluster();
  ASSERT_NE(cluster, nullptr);
  auto dsn = cluster->CreateDatabase("newer");
  ASSERT_TRUE(dsn.ok());
  PostgresOptions options;
  options.dsn = *dsn;
  ASSERT_TRUE(OpenPostgresOperationStore(options).ok());
  EXPECT_EQ(CountRows(*dsn, "INSERT INTO schema_migrations VALUES (99, 0) RETURNING version"), 99);
  EXPECT_EQ(OpenPostgresOperationStore(options).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

// A pooled connection the server dropped while it sat idle (a restart nobody's call saw) is
// replaced before use: the first call after the restart succeeds.
TEST(PostgresStoreTest, AnIdleConnectionTheServerDroppedIsReplacedBeforeUse) {
  auto cluster = StartCluster();
  ASSERT_NE(cluster, nullptr);
  auto store = OpenOnCluster(*cluster, "idle_restart", /*pool_size=*/1);
  ASSERT_NE(store, nullptr);
  auto created = store->Create(MakeRecord("before"), {});
  ASSERT_TRUE(created.ok()) << created.status();
  ASSERT_TRUE(cluster->Stop().ok());
  ASSERT_TRUE(cluster->Restart().ok());
  auto back = store->Get(created->record.id());
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->request_id, "before");
}

// A ledger written before the credit and budget counters (schema 7) gets them filled from its
// operations when a replica of this binary opens it.
TEST(PostgresStoreTest, CountersAreFilledFromAnOlderLedger) {
  auto cluster = StartCluster();
  ASSERT_NE(cluster, nullptr);
  auto dsn = cluster->CreateDatabase("credits");
  ASSERT_TRUE(dsn.ok());
  PostgresOptions options;
  options.dsn = *dsn;
  {
    auto store = OpenPostgresOperationStore(options);
    ASSERT_TRUE(store.ok()) << store.status();
    for (int i = 0; i < 20; ++i) {  // ids in several of the counters' slots
      OperationRecord record = MakeRecord(absl::StrCat("r", i));
      record.operation.set_provider(v1::PROVIDER_SOUNDPIECE);
      record.operation.set_provider_account("sp-main");
      record.operation.set_task(v1::TASK_KIND_SONG);
      record.charged = i % 4 != 0;
      ASSERT_TRUE((*store)->Create(record, {}).ok());
    }
  }
  // Back to schema 7: what the migrations add is removed, the operations stay.
  EXPECT_EQ(CountRows(*dsn,
                      "DROP TABLE charged_counts; DROP FUNCTION charged_counts_count CASCADE; "
                      "DROP TABLE budget_counts; DROP FUNCTION budget_counts_count CASCADE; "
                      "WITH gone AS (DELETE FROM schema_migrations WHERE version >= 8 "
                      "RETURNING version) SELECT COUNT(*) FROM gone"),
            2);
  auto store = OpenPostgresOperationStore(options);
  ASSERT_TRUE(store.ok()) << store.status();
  auto counts = (*store)->CountCharged(v1::PROVIDER_SOUNDPIECE, "sp-main", absl::InfinitePast());
  ASSERT_TRUE(counts.ok()) << counts.status();
  EXPECT_EQ(*counts, (std::map<v1::TaskKind, int64_t>{{v1::TASK_KIND_SONG, 15}}));
  EXPECT_GT(CountRows(*dsn, "SELECT COUNT(*) FROM charged_counts"), 1);
  auto usage = (*store)->ReadBudget("t", v1::TASK_KIND_SONG, absl::InfinitePast());
  ASSERT_TRUE(usage.ok()) << usage.status();
  EXPECT_EQ(usage->reserved, 20);
  EXPECT_EQ(usage->used, 0);
}

// While the server is gone every call answers UNAVAILABLE with LEDGER_UNAVAILABLE and a
// RetryInfo; once it is back the same store serves again, without being reopened.
TEST(PostgresStoreTest, LedgerUnavailableWhileTheServerIsDownThenRecovers) {
  auto cluster = StartCluster();
  ASSERT_NE(cluster, nullptr);
  auto store = OpenOnCluster(*cluster, "restart", /*pool_size=*/2);
  ASSERT_NE(store, nullptr);
  auto created = store->Create(MakeRecord("before"), {});
  ASSERT_TRUE(created.ok()) << created.status();

  ASSERT_TRUE(cluster->Stop().ok());
  auto down = store->Get(created->record.id());
  ASSERT_EQ(down.status().code(), absl::StatusCode::kUnavailable) << down.status();
  google::rpc::ErrorInfo info;
  ASSERT_TRUE(GetErrorInfo(down.status(), &info));
  EXPECT_EQ(info.reason(), "LEDGER_UNAVAILABLE");
  google::rpc::RetryInfo retry;
  EXPECT_TRUE(GetRetryInfo(down.status(), &retry));
  EXPECT_EQ(store->Create(MakeRecord("during"), {}).status().code(),
            absl::StatusCode::kUnavailable);

  ASSERT_TRUE(cluster->Restart().ok());
  auto back = store->Get(created->record.id());
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->request_id, "before");
  EXPECT_TRUE(store->Create(MakeRecord("after"), {}).ok());
}

TEST(PostgresStoreTest, TheDsnNeverAppearsInErrors) {
  PostgresOptions options;
  options.dsn = "host=127.0.0.1 port=1 user=u password=hunter2-secret dbname=x";
  options.connect_timeout = absl::Seconds(1);
  auto store = OpenPostgresOperationStore(options);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_FALSE(absl::StrContains(store.status().ToString(), "hunter2")) << store.status();
}

// A dead replica's operations are claimed in bounded batches, so the survivors share them; two
// replicas claiming at once never take the same operation.
TEST(PostgresStoreTest, ClaimsComeInBoundedBatchesAndNeverOverlap) {
  auto cluster = StartCluster();
  ASSERT_NE(cluster, nullptr);
  auto dsn = cluster->CreateDatabase("claims");
  ASSERT_TRUE(dsn.ok()) << dsn.status();
  PostgresOptions options;
  options.dsn = *dsn;
  options.claim_batch = 4;
  auto survivor_a = OpenPostgresOperationStore(options);
  auto survivor_b = OpenPostgresOperationStore(options);
  ASSERT_TRUE(survivor_a.ok() && survivor_b.ok());
  for (int i = 0; i < 10; ++i) {
    OperationRecord record = MakeRecord(absl::StrCat("dead-", i));
    record.owner = "dead";
    record.lease_until = absl::Now() - absl::Seconds(1);
    ASSERT_TRUE((*survivor_a)->Create(record, {}).ok());
  }
  const absl::Time lease_until = absl::Now() + absl::Minutes(1);
  std::vector<OperationRecord> first_a, first_b;
  std::thread claim_a([&] {
    auto claimed = (*survivor_a)->ClaimLive("a", lease_until);
    ASSERT_TRUE(claimed.ok()) << claimed.status();
    first_a = *std::move(claimed);
  });
  std::thread claim_b([&] {
    auto claimed = (*survivor_b)->ClaimLive("b", lease_until);
    ASSERT_TRUE(claimed.ok()) << claimed.status();
    first_b = *std::move(claimed);
  });
  claim_a.join();
  claim_b.join();
  EXPECT_EQ(first_a.size(), 4u);
  EXPECT_EQ(first_b.size(), 4u);
  for (const auto& a : first_a) {
    for (const auto& b : first_b) EXPECT_NE(a.id(), b.id());
  }
  // The next claim takes the rest, and returns everything the replica owns.
  auto second = (*survivor_a)->ClaimLive("a", lease_until);
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(second->size(), 6u);
  EXPECT_EQ(CountRows(*dsn, "SELECT COUNT(*) FROM operations WHERE owner = 'dead'"), 0);
}

}  // namespace
}  // namespace musicgw::operations
