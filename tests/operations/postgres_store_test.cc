// What only the PostgreSQL ledger has: concurrent replicas migrating, the server going away and
// coming back, and a DSN that stays secret.
#include "services/operations/postgres_store.h"

#include <libpq-fe.h>

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
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
  EXPECT_EQ(CountRows(*dsn, "SELECT COUNT(*) FROM schema_migrations"), 3);
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

// While the server is gone every call answers UNAVAILABLE with LEDGER_UNAVAILABLE and a
// RetryInfo; once it is back the same store serves again, without being reopened.
TEST(PostgresStoreTest, LedgerUnavailableWhileTheServerIsDownThenRecovers) {
  auto cluster = StartCluster();
  ASSERT_NE(cluster, nullptr);
  auto dsn = cluster->CreateDatabase("restart");
  ASSERT_TRUE(dsn.ok());
  PostgresOptions options;
  options.dsn = *dsn;
  options.pool_size = 2;
  options.connect_timeout = absl::Seconds(1);
  auto store = OpenPostgresOperationStore(options);
  ASSERT_TRUE(store.ok()) << store.status();
  auto created = (*store)->Create(MakeRecord("before"), {});
  ASSERT_TRUE(created.ok()) << created.status();

  ASSERT_TRUE(cluster->Stop().ok());
  auto down = (*store)->Get(created->record.id());
  ASSERT_EQ(down.status().code(), absl::StatusCode::kUnavailable) << down.status();
  google::rpc::ErrorInfo info;
  ASSERT_TRUE(GetErrorInfo(down.status(), &info));
  EXPECT_EQ(info.reason(), "LEDGER_UNAVAILABLE");
  google::rpc::RetryInfo retry;
  EXPECT_TRUE(GetRetryInfo(down.status(), &retry));
  EXPECT_EQ((*store)->Create(MakeRecord("during"), {}).status().code(),
            absl::StatusCode::kUnavailable);

  ASSERT_TRUE(cluster->Restart().ok());
  auto back = (*store)->Get(created->record.id());
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->request_id, "before");
  EXPECT_TRUE((*store)->Create(MakeRecord("after"), {}).ok());
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

}  // namespace
}  // namespace musicgw::operations
