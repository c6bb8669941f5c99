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
#include "common/time_util.h"
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

// Options for a store on a new database of `cluster` (an empty DSN, with a failure, if it cannot
// be created).
PostgresOptions OptionsOnNewDatabase(PgCluster& cluster, const std::string& database) {
  auto dsn = cluster.CreateDatabase(database);
  EXPECT_TRUE(dsn.ok()) << dsn.status();
  PostgresOptions options;
  options.dsn = dsn.value_or("");
  return options;
}

// A store on a new database of `cluster`, its pool `pool_size` connections, each given up
// after 1 s while the server is away; null (with a failure) if it cannot be opened.
std::unique_ptr<OperationStore> OpenOnCluster(PgCluster& cluster, const std::string& database,
                                              int pool_size) {
  PostgresOptions options = OptionsOnNewDatabase(cluster, database);
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
  const PostgresOptions options = OptionsOnNewDatabase(*cluster, "newer");
  ASSERT_TRUE(OpenPostgresOperationStore(options).ok());
  EXPECT_EQ(
      CountRows(options.dsn, "INSERT INTO schema_migrations VALUES (99, 0) RETURNING version"), 99);
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
  const PostgresOptions options = OptionsOnNewDatabase(*cluster, "credits");
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
  EXPECT_EQ(CountRows(options.dsn,
                      "DROP TABLE charged_counts; DROP FUNCTION charged_counts_count CASCADE; "
                      "DROP TABLE budget_counts; DROP FUNCTION budget_counts_count CASCADE; "
                      "WITH gone AS (DELETE FROM schema_migrations WHERE version >= 8 "
                      "RETURNING version) SELECT COUNT(*) FROM gone"),
            3);
  auto store = OpenPostgresOperationStore(options);
  ASSERT_TRUE(store.ok()) << store.status();
  auto counts = (*store)->CountCharged(v1::PROVIDER_SOUNDPIECE, "sp-main", absl::InfinitePast());
  ASSERT_TRUE(counts.ok()) << counts.status();
  EXPECT_EQ(*counts, (std::map<v1::TaskKind, int64_t>{{v1::TASK_KIND_SONG, 15}}));
  EXPECT_GT(CountRows(options.dsn, "SELECT COUNT(*) FROM charged_counts"), 1);
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
  PostgresOptions options = OptionsOnNewDatabase(*cluster, "claims");
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
  EXPECT_EQ(CountRows(options.dsn, "SELECT COUNT(*) FROM operations WHERE owner = 'dead'"), 0);
}

// Operation ids whose counters share one slot (hashtext(id) & 7 = 0), so that every write below
// contends for the same counter rows.
std::vector<std::string> IdsInOneCounterSlot(const std::string& dsn, int count) {
  std::vector<std::string> ids;
  PGconn* conn = PQconnectdb(dsn.c_str());
  while (static_cast<int>(ids.size()) < count && PQstatus(conn) == CONNECTION_OK) {
    std::string candidates;
    for (int i = 0; i < 64; ++i) {
      absl::StrAppend(&candidates, i == 0 ? "" : ",", NewOperationId(absl::Now()));
    }
    const std::string sql = absl::StrCat("SELECT id FROM unnest(string_to_array('", candidates,
                                         "', ',')) AS id WHERE hashtext(id) & 7 = 0");
    PGresult* result = PQexec(conn, sql.c_str());
    for (int row = 0; row < PQntuples(result) && static_cast<int>(ids.size()) < count; ++row) {
      ids.emplace_back(PQgetvalue(result, row, 0));
    }
    PQclear(result);
  }
  PQfinish(conn);
  return ids;
}

// Replicas creating and finishing one tenant's operations of one account at once: every write
// updates the same budget and credit counter rows. None may fail: a failed Update reads as
// "owned by another replica" to its tracker, which then leaves the operation alone until the
// replica's next lease renewal adopts it again. (Counter rows locked in different orders by
// different writes deadlocked here.)
TEST(PostgresStoreTest, ConcurrentWritesOnSharedCountersNeverFail) {
  auto cluster = StartCluster();
  ASSERT_NE(cluster, nullptr);
  PostgresOptions options = OptionsOnNewDatabase(*cluster, "counters");
  options.pool_size = 8;
  options.conflict_attempts = 1;  // a deadlock shows as a failure, not as a retry
  auto replica_a = OpenPostgresOperationStore(options);
  auto replica_b = OpenPostgresOperationStore(options);
  ASSERT_TRUE(replica_a.ok() && replica_b.ok());

  constexpr int kWriters = 8;
  constexpr int kOpsPerWriter = 40;
  const std::vector<std::string> ids = IdsInOneCounterSlot(options.dsn, kWriters * kOpsPerWriter);
  ASSERT_EQ(ids.size(), static_cast<size_t>(kWriters * kOpsPerWriter));
  const absl::Time created = absl::Now();
  std::vector<std::vector<absl::Status>> failures(kWriters);
  std::vector<std::thread> writers;
  writers.reserve(kWriters);
  for (int w = 0; w < kWriters; ++w) {
    writers.emplace_back([&, w] {
      OperationStore& store = w % 2 == 0 ? **replica_a : **replica_b;
      for (int i = 0; i < kOpsPerWriter; ++i) {
        OperationRecord record = MakeRecord(absl::StrCat("w", w, "-", i));
        record.operation.set_name(OperationName(ids[w * kOpsPerWriter + i]));
        record.operation.set_task(v1::TASK_KIND_SAMPLE);
        record.operation.set_provider(v1::PROVIDER_SOUNDPIECE);
        record.operation.set_provider_account("sp");
        *record.operation.mutable_create_time() = ToProtoTimestamp(created);
        if (absl::Status made = store.Create(record, {}).status(); !made.ok()) {
          failures[w].push_back(made);
          continue;
        }
        OperationUpdate update;  // submitted and charged
        update.operation = record.operation;
        update.operation.set_state(v1::OPERATION_STATE_RUNNING);
        update.operation.set_sequence(2);
        update.expected_sequence = 1;
        update.charged = true;
        if (absl::Status moved = store.Update(update); !moved.ok()) {
          failures[w].push_back(moved);
          continue;
        }
        update.operation.set_state(v1::OPERATION_STATE_SUCCEEDED);  // done
        update.operation.set_done(true);
        update.operation.set_sequence(3);
        update.expected_sequence = 2;
        if (absl::Status done = store.Update(update); !done.ok()) failures[w].push_back(done);
      }
    });
  }
  for (auto& writer : writers) writer.join();
  for (int w = 0; w < kWriters; ++w) {
    for (const absl::Status& failure : failures[w]) ADD_FAILURE() << failure;
  }
  auto charged =
      (*replica_a)->CountCharged(v1::PROVIDER_SOUNDPIECE, "sp", created - absl::Hours(1));
  ASSERT_TRUE(charged.ok()) << charged.status();
  EXPECT_EQ((*charged)[v1::TASK_KIND_SAMPLE], kWriters * kOpsPerWriter);
  auto budget = (*replica_a)->ReadBudget("t", v1::TASK_KIND_SAMPLE, created - absl::Hours(1));
  ASSERT_TRUE(budget.ok()) << budget.status();
  EXPECT_EQ(budget->used, kWriters * kOpsPerWriter);
  EXPECT_EQ(budget->reserved, 0);
}

// Runs `store`'s Update of `record` (created QUEUED) to SUCCEEDED while another session makes
// it a deadlock victim, and returns what the Update answered. The other session holds the
// operation's hour counter row, so the Update's trigger waits on it holding the day's row;
// the other session then asks for the day's row, and PostgreSQL rolls the Update back (it
// detects the deadlock first: the other session's deadlock_timeout is long).
absl::Status UpdateMadeADeadlockVictim(OperationStore& store, const std::string& dsn,
                                       const OperationRecord& record) {
  PGconn* other = PQconnectdb(dsn.c_str());
  PGconn* watcher = PQconnectdb(dsn.c_str());
  auto exec = [](PGconn* conn, const char* sql) {
    PGresult* result = PQexec(conn, sql);
    const ExecStatusType status = PQresultStatus(result);
    EXPECT_TRUE(status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK)
        << sql << ": " << PQresultErrorMessage(result);
    std::string first = PQntuples(result) > 0 ? PQgetvalue(result, 0, 0) : "";
    PQclear(result);
    return first;
  };
  exec(other, "SET deadlock_timeout = '60s'");
  exec(other, "BEGIN");
  exec(other, "UPDATE budget_counts SET used = used WHERE hours = 1");
  OperationUpdate update;
  update.operation = record.operation;
  update.operation.set_state(v1::OPERATION_STATE_SUCCEEDED);
  update.operation.set_done(true);
  update.operation.set_sequence(record.operation.sequence() + 1);
  update.expected_sequence = record.operation.sequence();
  absl::Status answered;
  std::thread updater([&] { answered = store.Update(update); });
  // Until the Update waits for the other session's lock, looked up query by query.
  const absl::Time give_up = absl::Now() + absl::Seconds(30);
  while (exec(watcher, "SELECT COUNT(*) FROM pg_locks WHERE NOT granted") == "0") {
    if (absl::Now() > give_up) {
      ADD_FAILURE() << "the Update never waited for the other session's lock";
      break;
    }
  }
  exec(other, "UPDATE budget_counts SET used = used WHERE hours = 24");  // the deadlock
  exec(other, "ROLLBACK");
  updater.join();
  PQfinish(watcher);
  PQfinish(other);
  return answered;
}

TEST(PostgresStoreTest, ATransactionRolledBackForADeadlockIsRunAgain) {
  auto cluster = StartCluster();
  ASSERT_NE(cluster, nullptr);
  PostgresOptions options = OptionsOnNewDatabase(*cluster, "deadlock");
  options.conflict_attempts = 1;
  auto once = OpenPostgresOperationStore(options);
  options.conflict_attempts = 3;
  auto retrying = OpenPostgresOperationStore(options);
  ASSERT_TRUE(once.ok() && retrying.ok());

  // Not retried: UNAVAILABLE LEDGER_UNAVAILABLE, never ABORTED (which tells a tracker that
  // another replica owns the operation), and nothing of the Update is stored.
  OperationRecord first = MakeRecord("first");
  ASSERT_TRUE((*once)->Create(first, {}).ok());
  const absl::Status unretried = UpdateMadeADeadlockVictim(**once, options.dsn, first);
  EXPECT_TRUE(absl::IsUnavailable(unretried)) << unretried;
  google::rpc::ErrorInfo info;
  ASSERT_TRUE(GetErrorInfo(unretried, &info));
  EXPECT_EQ(info.reason(), "LEDGER_UNAVAILABLE");
  EXPECT_TRUE(absl::StrContains(unretried.message(), "deadlock")) << unretried;
  auto stored = (*once)->Get(first.id());
  ASSERT_TRUE(stored.ok());
  EXPECT_EQ(stored->operation.sequence(), first.operation.sequence());

  // Retried: the Update is run again once the other session lets go, and succeeds.
  OperationRecord second = MakeRecord("second");
  ASSERT_TRUE((*retrying)->Create(second, {}).ok());
  EXPECT_TRUE(UpdateMadeADeadlockVictim(**retrying, options.dsn, second).ok());
  stored = (*retrying)->Get(second.id());
  ASSERT_TRUE(stored.ok());
  EXPECT_TRUE(stored->operation.done());
  auto usage = (*retrying)->ReadBudget("t", v1::TASK_KIND_UNSPECIFIED, absl::InfinitePast());
  ASSERT_TRUE(usage.ok()) << usage.status();
  EXPECT_EQ(usage->used, 1);      // second
  EXPECT_EQ(usage->reserved, 1);  // first, still queued
}

}  // namespace
}  // namespace musicgw::operations
