// The embedded SQLite ledger. One connection guarded by a mutex: SQLite serializes writers
// anyway, and every statement here is short. The fsync that makes a write durable runs outside
// that mutex and is shared by the writers waiting for it (wal_syncer.h).
#include "services/operations/sqlite_store.h"

#include <sqlite3.h>

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "common/errors.h"
#include "common/status_macros.h"
#include "common/time_util.h"
#include "services/operations/budget_errors.h"
#include "services/operations/ledger_codec.h"
#include "services/operations/sqlite_outbox.h"
#include "services/operations/sqlite_statement.h"
#include "services/operations/wal_syncer.h"

namespace musicgw::operations {

std::string OperationRecord::id() const {
  absl::string_view name = operation.name();
  const size_t slash = name.find('/');
  return std::string(slash == absl::string_view::npos ? name : name.substr(slash + 1));
}

namespace {

namespace v1 = musicgw::v1;
using sqlite::StatementCache;
using sqlite::Stmt;

// Schema migrations, applied in order; the index + 1 is the schema version. Never edit an
// applied entry: append a new one.
const char* const kMigrations[] = {
    // 1: operations, their change events, and facts learnt about assets.
    R"sql(
CREATE TABLE operations (
  id TEXT PRIMARY KEY,
  tenant TEXT NOT NULL,
  request_id TEXT NOT NULL,
  request_hash TEXT NOT NULL,
  state INTEGER NOT NULL,
  done INTEGER NOT NULL,
  provider INTEGER NOT NULL,
  task INTEGER NOT NULL,
  create_time_us INTEGER NOT NULL,
  done_time_us INTEGER,
  sequence INTEGER NOT NULL,
  charged INTEGER NOT NULL DEFAULT 0,
  owner TEXT NOT NULL DEFAULT '',
  lease_until_us INTEGER NOT NULL DEFAULT 0,
  snapshot BLOB NOT NULL,
  upstream_outputs TEXT NOT NULL DEFAULT '[]'
);
CREATE UNIQUE INDEX operations_by_request ON operations (tenant, request_id);
CREATE INDEX operations_by_tenant ON operations (tenant, id);
CREATE INDEX operations_live ON operations (done, owner);
CREATE INDEX operations_by_budget ON operations (tenant, task, create_time_us);
CREATE TABLE operation_events (
  operation_id TEXT NOT NULL,
  sequence INTEGER NOT NULL,
  snapshot BLOB NOT NULL,
  PRIMARY KEY (operation_id, sequence)
) WITHOUT ROWID;
CREATE TABLE assets (
  operation_id TEXT NOT NULL,
  idx INTEGER NOT NULL,
  size_bytes INTEGER NOT NULL,
  sha256 TEXT NOT NULL,
  PRIMARY KEY (operation_id, idx)
) WITHOUT ROWID;
)sql",
    // 2: the provider account serving each operation, for its credit spend. Rows written before
    // keep '' (their account is only in the snapshot).
    R"sql(
ALTER TABLE operations ADD COLUMN provider_account TEXT NOT NULL DEFAULT '';
CREATE INDEX operations_by_account ON operations (provider, provider_account, create_time_us);
)sql",
    // 3: the budget and credit counts read only their index (covering), not the rows with their
    // snapshots: every Generate of a tenant with a budget runs one.
    R"sql(
CREATE INDEX operations_for_budgets ON operations (tenant, task, create_time_us, state, charged, done);
DROP INDEX operations_by_budget;
CREATE INDEX operations_for_credits ON operations (provider, provider_account, create_time_us, charged, task);
DROP INDEX operations_by_account;
)sql",
    // 4: asset custody. `asset_custody` follows each output from pending (fetch due at
    // next_attempt_us) to held (bytes in the asset store under sha256 until expire_time_us) to
    // expired; `assets.in_custody` is what snapshots show.
    R"sql(
CREATE TABLE asset_custody (
  operation_id TEXT NOT NULL,
  idx INTEGER NOT NULL,
  tenant TEXT NOT NULL,
  state INTEGER NOT NULL,
  sha256 TEXT NOT NULL DEFAULT '',
  size_bytes INTEGER NOT NULL DEFAULT 0,
  pending_since_us INTEGER NOT NULL,
  next_attempt_us INTEGER NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0,
  expire_time_us INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (operation_id, idx)
) WITHOUT ROWID;
CREATE INDEX asset_custody_due ON asset_custody (state, next_attempt_us);
CREATE INDEX asset_custody_expiry ON asset_custody (state, expire_time_us);
CREATE INDEX asset_custody_by_digest ON asset_custody (sha256, state);
ALTER TABLE assets ADD COLUMN in_custody INTEGER NOT NULL DEFAULT 0;
)sql",
    // 5: recent successful durations per provider account and task (the ETA's history).
    R"sql(
CREATE INDEX operations_for_durations ON operations (provider, provider_account, task, state, done_time_us, create_time_us);
)sql",
    // 6: the webhook outbox and its delivery attempts (sqlite_outbox.cc).
    sqlite::kOutboxMigration,
    // 7: cancel requests made on a replica that does not track the operation (the same contract
    // as the shared ledger's; a single node cancels directly).
    R"sql(
CREATE TABLE cancel_requests (
  operation_id TEXT PRIMARY KEY,
  reason TEXT NOT NULL,
  request_time_us INTEGER NOT NULL
) WITHOUT ROWID;
)sql",
    // 8: a tenant's live operations, counted by every Generate (max_live_operations), found
    // without walking every operation the tenant ever made. `done` is in the key so that the
    // planner, which has no statistics, prefers it to operations_for_budgets (tenant only).
    R"sql(
CREATE INDEX operations_live_by_tenant ON operations (tenant, done) WHERE done = 0;
)sql",
    // 9: charged operations counted per provider account and task, for each day and each hour
    // of creation (ledger_codec.h), kept by triggers in the transaction that writes the row. The
    // credit estimate (each quota read) sums a few counters instead of walking, under the
    // ledger's lock, every operation the account ever ran. An update moves a count only when
    // the row's contribution moves.
    R"sql(
CREATE TABLE charged_counts (
  provider INTEGER NOT NULL,
  provider_account TEXT NOT NULL,
  task INTEGER NOT NULL,
  hours INTEGER NOT NULL,
  bucket INTEGER NOT NULL,
  charged INTEGER NOT NULL,
  PRIMARY KEY (provider, provider_account, hours, bucket, task)
) WITHOUT ROWID;
INSERT INTO charged_counts
  SELECT provider, provider_account, task, 24, create_time_us / 86400000000, COUNT(*)
  FROM operations WHERE charged = 1 GROUP BY 1, 2, 3, 5;
INSERT INTO charged_counts
  SELECT provider, provider_account, task, 1, create_time_us / 3600000000, COUNT(*)
  FROM operations WHERE charged = 1 GROUP BY 1, 2, 3, 5;
CREATE TRIGGER charged_counts_insert AFTER INSERT ON operations WHEN NEW.charged = 1 BEGIN
  INSERT INTO charged_counts VALUES
    (NEW.provider, NEW.provider_account, NEW.task, 24, NEW.create_time_us / 86400000000, 1)
    ON CONFLICT (provider, provider_account, hours, bucket, task)
    DO UPDATE SET charged = charged + 1;
  INSERT INTO charged_counts VALUES
    (NEW.provider, NEW.provider_account, NEW.task, 1, NEW.create_time_us / 3600000000, 1)
    ON CONFLICT (provider, provider_account, hours, bucket, task)
    DO UPDATE SET charged = charged + 1;
END;
CREATE TRIGGER charged_counts_update_from AFTER UPDATE OF charged, provider, provider_account,
  task, create_time_us ON operations
  WHEN OLD.charged = 1 AND (NEW.charged != 1 OR (NEW.provider != OLD.provider OR
    NEW.provider_account != OLD.provider_account OR NEW.task != OLD.task OR
    NEW.create_time_us != OLD.create_time_us)) BEGIN
  UPDATE charged_counts SET charged = charged - 1
    WHERE provider = OLD.provider AND provider_account = OLD.provider_account AND
      task = OLD.task AND hours = 24 AND bucket = OLD.create_time_us / 86400000000;
  UPDATE charged_counts SET charged = charged - 1
    WHERE provider = OLD.provider AND provider_account = OLD.provider_account AND
      task = OLD.task AND hours = 1 AND bucket = OLD.create_time_us / 3600000000;
END;
CREATE TRIGGER charged_counts_update_to AFTER UPDATE OF charged, provider, provider_account,
  task, create_time_us ON operations
  WHEN NEW.charged = 1 AND (OLD.charged != 1 OR (NEW.provider != OLD.provider OR
    NEW.provider_account != OLD.provider_account OR NEW.task != OLD.task OR
    NEW.create_time_us != OLD.create_time_us)) BEGIN
  INSERT INTO charged_counts VALUES
    (NEW.provider, NEW.provider_account, NEW.task, 24, NEW.create_time_us / 86400000000, 1)
    ON CONFLICT (provider, provider_account, hours, bucket, task)
    DO UPDATE SET charged = charged + 1;
  INSERT INTO charged_counts VALUES
    (NEW.provider, NEW.provider_account, NEW.task, 1, NEW.create_time_us / 3600000000, 1)
    ON CONFLICT (provider, provider_account, hours, bucket, task)
    DO UPDATE SET charged = charged + 1;
END;
CREATE TRIGGER charged_counts_delete AFTER DELETE ON operations WHEN OLD.charged = 1 BEGIN
  UPDATE charged_counts SET charged = charged - 1
    WHERE provider = OLD.provider AND provider_account = OLD.provider_account AND
      task = OLD.task AND hours = 24 AND bucket = OLD.create_time_us / 86400000000;
  UPDATE charged_counts SET charged = charged - 1
    WHERE provider = OLD.provider AND provider_account = OLD.provider_account AND
      task = OLD.task AND hours = 1 AND bucket = OLD.create_time_us / 3600000000;
END;
)sql",
    // 10: the operations each budget counts (all but the failed or cancelled ones the provider
    // did not charge for: state NOT IN (4, 5) OR charged), per tenant and task, for each day
    // and each hour of creation (ledger_codec.h), split into reserved (not done) and used (done),
    // kept by triggers like charged_counts. Every Generate of a tenant with a budget reads them,
    // under the ledger's lock, instead of walking the tenant's operations of the whole period.
    R"sql(
CREATE TABLE budget_counts (
  tenant TEXT NOT NULL,
  task INTEGER NOT NULL,
  hours INTEGER NOT NULL,
  bucket INTEGER NOT NULL,
  reserved INTEGER NOT NULL,
  used INTEGER NOT NULL,
  PRIMARY KEY (tenant, task, hours, bucket)
) WITHOUT ROWID;
INSERT INTO budget_counts
  SELECT tenant, task, 24, create_time_us / 86400000000, SUM(done = 0), SUM(done = 1)
  FROM operations WHERE state NOT IN (4, 5) OR charged = 1 GROUP BY 1, 2, 4;
INSERT INTO budget_counts
  SELECT tenant, task, 1, create_time_us / 3600000000, SUM(done = 0), SUM(done = 1)
  FROM operations WHERE state NOT IN (4, 5) OR charged = 1 GROUP BY 1, 2, 4;
CREATE TRIGGER budget_counts_insert AFTER INSERT ON operations
  WHEN (NEW.state NOT IN (4, 5) OR NEW.charged = 1) BEGIN
  INSERT INTO budget_counts VALUES (NEW.tenant, NEW.task, 24, NEW.create_time_us / 86400000000,
    NEW.done = 0, NEW.done = 1)
    ON CONFLICT (tenant, task, hours, bucket)
    DO UPDATE SET reserved = reserved + excluded.reserved, used = used + excluded.used;
  INSERT INTO budget_counts VALUES (NEW.tenant, NEW.task, 1, NEW.create_time_us / 3600000000,
    NEW.done = 0, NEW.done = 1)
    ON CONFLICT (tenant, task, hours, bucket)
    DO UPDATE SET reserved = reserved + excluded.reserved, used = used + excluded.used;
END;
CREATE TRIGGER budget_counts_update_from AFTER UPDATE OF state, done, charged, tenant, task,
  create_time_us ON operations
  WHEN (OLD.state NOT IN (4, 5) OR OLD.charged = 1) AND (
    (NEW.state NOT IN (4, 5) OR NEW.charged = 1) != (OLD.state NOT IN (4, 5) OR OLD.charged = 1)
    OR NEW.done != OLD.done OR NEW.tenant != OLD.tenant OR NEW.task != OLD.task OR
    NEW.create_time_us != OLD.create_time_us) BEGIN
  UPDATE budget_counts SET reserved = reserved - (OLD.done = 0), used = used - (OLD.done = 1)
    WHERE tenant = OLD.tenant AND task = OLD.task AND hours = 24 AND
      bucket = OLD.create_time_us / 86400000000;
  UPDATE budget_counts SET reserved = reserved - (OLD.done = 0), used = used - (OLD.done = 1)
    WHERE tenant = OLD.tenant AND task = OLD.task AND hours = 1 AND
      bucket = OLD.create_time_us / 3600000000;
END;
CREATE TRIGGER budget_counts_update_to AFTER UPDATE OF state, done, charged, tenant, task,
  create_time_us ON operations
  WHEN (NEW.state NOT IN (4, 5) OR NEW.charged = 1) AND (
    (NEW.state NOT IN (4, 5) OR NEW.charged = 1) != (OLD.state NOT IN (4, 5) OR OLD.charged = 1)
    OR NEW.done != OLD.done OR NEW.tenant != OLD.tenant OR NEW.task != OLD.task OR
    NEW.create_time_us != OLD.create_time_us) BEGIN
  INSERT INTO budget_counts VALUES (NEW.tenant, NEW.task, 24, NEW.create_time_us / 86400000000,
    NEW.done = 0, NEW.done = 1)
    ON CONFLICT (tenant, task, hours, bucket)
    DO UPDATE SET reserved = reserved + excluded.reserved, used = used + excluded.used;
  INSERT INTO budget_counts VALUES (NEW.tenant, NEW.task, 1, NEW.create_time_us / 3600000000,
    NEW.done = 0, NEW.done = 1)
    ON CONFLICT (tenant, task, hours, bucket)
    DO UPDATE SET reserved = reserved + excluded.reserved, used = used + excluded.used;
END;
CREATE TRIGGER budget_counts_delete AFTER DELETE ON operations
  WHEN (OLD.state NOT IN (4, 5) OR OLD.charged = 1) BEGIN
  UPDATE budget_counts SET reserved = reserved - (OLD.done = 0), used = used - (OLD.done = 1)
    WHERE tenant = OLD.tenant AND task = OLD.task AND hours = 24 AND
      bucket = OLD.create_time_us / 86400000000;
  UPDATE budget_counts SET reserved = reserved - (OLD.done = 0), used = used - (OLD.done = 1)
    WHERE tenant = OLD.tenant AND task = OLD.task AND hours = 1 AND
      bucket = OLD.create_time_us / 3600000000;
END;
)sql",
};

// Charged operations since an instant (SplitLedgerCount): whole days' and hours' counters, and
// the rows of the partial hour.
constexpr char kCountChargedQuery[] =
    "SELECT task, SUM(n) FROM ("
    "SELECT task, charged AS n FROM charged_counts "
    "WHERE provider = ?1 AND provider_account = ?2 AND hours = 24 AND bucket >= ?3 "
    "UNION ALL SELECT task, charged FROM charged_counts "
    "WHERE provider = ?1 AND provider_account = ?2 AND hours = 1 AND bucket >= ?4 AND "
    "bucket < ?5 "
    "UNION ALL SELECT task, 1 FROM operations "
    "WHERE provider = ?1 AND provider_account = ?2 AND create_time_us >= ?6 AND "
    "create_time_us < ?7 AND charged = 1) GROUP BY task HAVING SUM(n) != 0";

// What a budget counts since its period's start (SplitLedgerCount), split into reserved (not
// done) and used (done): whole days' and hours' counters, and the rows of a partial hour (none
// for a budget period, which starts on the hour).
constexpr char kBudgetCountQuery[] =
    "SELECT COALESCE(SUM(r), 0), COALESCE(SUM(u), 0) FROM ("
    "SELECT reserved AS r, used AS u FROM budget_counts "
    "WHERE tenant = ?1 AND task = ?2 AND hours = 24 AND bucket >= ?3 "
    "UNION ALL SELECT reserved, used FROM budget_counts "
    "WHERE tenant = ?1 AND task = ?2 AND hours = 1 AND bucket >= ?4 AND bucket < ?5 "
    "UNION ALL SELECT done = 0, done = 1 FROM operations "
    "WHERE tenant = ?1 AND task = ?2 AND create_time_us >= ?6 AND create_time_us < ?7 AND "
    "(state NOT IN (4, 5) OR charged = 1))";

constexpr absl::string_view kCustodyColumns =
    "operation_id, idx, tenant, state, sha256, size_bytes, pending_since_us, next_attempt_us, "
    "attempts, expire_time_us";

constexpr absl::string_view kRecordColumns =
    "id, tenant, request_id, request_hash, charged, owner, snapshot, upstream_outputs";

class SqliteOperationStore final : public OperationStore {
 public:
  SqliteOperationStore(sqlite3* db, const Clock& clock) : clock_(clock), db_(db), statements_(db) {}
  ~SqliteOperationStore() override {
    absl::MutexLock lock(&mu_);
    statements_.Clear();
    sqlite3_close_v2(db_);
  }

  absl::Status Init(const SqliteOptions& options) {
    MUSICGW_RETURN_IF_ERROR(Migrate(options));
    // A file ledger in WAL mode commits with synchronous=NORMAL (no fsync in the commit, so the
    // connection is free for the next writer at once) and each writer then waits for a group
    // fsync of the log (wal_syncer.h). SQLite's own checkpoints sync the log before copying it
    // into the database and the database after.
    absl::MutexLock lock(&mu_);
    const char* file = sqlite3_db_filename(db_, "main");
    const bool wal = file != nullptr && file[0] != '\0' && JournalMode() == "wal";
    if (options.synchronous_full && wal) {
      MUSICGW_ASSIGN_OR_RETURN(syncer_, WalSyncer::Open(absl::StrCat(file, "-wal"),
                                                        options.sync_stats, options.before_sync));
    }
    if (syncer_ != nullptr || !options.synchronous_full) {
      MUSICGW_RETURN_IF_ERROR(Exec("PRAGMA synchronous=NORMAL"));
    }
    return absl::OkStatus();
  }

  absl::Status Migrate(const SqliteOptions& options) {
    absl::MutexLock lock(&mu_);
    sqlite3_busy_timeout(db_, static_cast<int>(absl::ToInt64Milliseconds(options.busy_timeout)));
    MUSICGW_RETURN_IF_ERROR(Exec("PRAGMA journal_mode=WAL"));
    // Migrations commit with fsync (the log may not exist before the first of them).
    MUSICGW_RETURN_IF_ERROR(
        Exec(options.synchronous_full ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL"));
    MUSICGW_RETURN_IF_ERROR(Exec("PRAGMA foreign_keys=ON"));
    MUSICGW_RETURN_IF_ERROR(
        Exec("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
             "applied_time_us INTEGER NOT NULL)"));
    int64_t current = 0;
    {
      Stmt stmt(statements_, "SELECT COALESCE(MAX(version), 0) FROM schema_migrations");
      MUSICGW_ASSIGN_OR_RETURN(bool row, stmt.Step());
      if (row) current = stmt.Int(0);
    }
    const int64_t latest = sizeof(kMigrations) / sizeof(kMigrations[0]);
    if (current > latest) {
      return absl::FailedPreconditionError(absl::StrCat("ledger schema version ", current,
                                                        " is newer than this binary (", latest,
                                                        "); refusing to open"));
    }
    for (int64_t version = current + 1; version <= latest; ++version) {
      MUSICGW_RETURN_IF_ERROR(Exec("BEGIN IMMEDIATE"));
      absl::Status status = Exec(kMigrations[version - 1]);
      if (status.ok()) {
        Stmt stmt(statements_,
                  "INSERT INTO schema_migrations (version, applied_time_us) VALUES (?, ?)");
        status = stmt.Bind(1, version).Bind(2, absl::ToUnixMicros(clock_.Now())).Run();
      }
      if (!status.ok()) {
        Exec("ROLLBACK").IgnoreError();
        return status;
      }
      MUSICGW_RETURN_IF_ERROR(Exec("COMMIT"));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<CreateResult> Create(const OperationRecord& record,
                                      const std::vector<BudgetCheck>& budgets) override {
    MUSICGW_RETURN_IF_ERROR(SyncFailure());
    absl::StatusOr<CreateResult> result;
    {
      absl::MutexLock lock(&mu_);
      MUSICGW_RETURN_IF_ERROR(RunCached("BEGIN IMMEDIATE"));
      result = CreateLocked(record, budgets);
      if (!result.ok() || !result->created) {
        RunCached("ROLLBACK").IgnoreError();
        // The existing operation was durable before its own Create returned.
        return result;
      }
      absl::Status commit = RunCached("COMMIT");
      if (!commit.ok()) {
        RunCached("ROLLBACK").IgnoreError();
        return commit;
      }
    }
    // Accepted only once on disk; concurrent Generates share the sync.
    MUSICGW_RETURN_IF_ERROR(Sync());
    return result;
  }

  absl::Status Update(const OperationUpdate& update) override {
    auto write = [&]() -> absl::Status {
      const v1::Operation& op = update.operation;
      if (op.sequence() != update.expected_sequence + 1) {
        return absl::InvalidArgumentError("ledger: sequence must advance by one");
      }
      const std::string id = IdOf(op);
      const std::string snapshot = op.SerializeAsString();
      absl::MutexLock lock(&mu_);
      MUSICGW_RETURN_IF_ERROR(RunCached("BEGIN IMMEDIATE"));
      absl::Status status = [&]() -> absl::Status {
        std::string sql =
            "UPDATE operations SET state = ?, done = ?, provider = ?, done_time_us = ?, "
            "sequence = ?, charged = ?, snapshot = ?, provider_account = ?";
        if (update.upstream_outputs.has_value()) sql += ", upstream_outputs = ?";
        sql += " WHERE id = ? AND sequence = ? AND (? = '' OR owner = ?)";
        Stmt stmt(statements_, sql);
        MUSICGW_RETURN_IF_ERROR(stmt.status());
        stmt.Bind(1, static_cast<int64_t>(op.state()));
        stmt.Bind(2, static_cast<int64_t>(op.done() ? 1 : 0));
        stmt.Bind(3, static_cast<int64_t>(op.provider()));
        if (op.has_done_time()) {
          stmt.Bind(4, LedgerMicros(FromProtoTimestamp(op.done_time())));
        } else {
          stmt.BindNull(4);
        }
        stmt.Bind(5, op.sequence());
        stmt.Bind(6, static_cast<int64_t>(update.charged ? 1 : 0));
        stmt.BindBlob(7, snapshot);
        stmt.Bind(8, op.provider_account());
        int i = 9;
        if (update.upstream_outputs.has_value()) {
          stmt.Bind(i++, UpstreamOutputsToJson(*update.upstream_outputs));
        }
        stmt.Bind(i, id);
        stmt.Bind(i + 1, update.expected_sequence);
        stmt.Bind(i + 2, update.owner);
        stmt.Bind(i + 3, update.owner);
        MUSICGW_RETURN_IF_ERROR(stmt.Run());
        if (sqlite3_changes(db_) != 1) {
          Stmt exists(statements_, "SELECT sequence, owner FROM operations WHERE id = ?");
          exists.Bind(1, id);
          MUSICGW_ASSIGN_OR_RETURN(bool row, exists.Step());
          if (!row) return absl::NotFoundError(absl::StrCat("ledger: no operation ", id));
          if (exists.Int(0) == update.expected_sequence) {
            return absl::AbortedError(
                absl::StrCat("ledger: operation ", id, " is owned by another replica"));
          }
          return absl::AbortedError(absl::StrCat("ledger: operation ", id, " is at sequence ",
                                                 exists.Int(0), ", not ",
                                                 update.expected_sequence));
        }
        MUSICGW_RETURN_IF_ERROR(InsertEvent(id, op.sequence(), snapshot));
        for (const OutboxMessage& message : update.outbox) {
          MUSICGW_RETURN_IF_ERROR(sqlite::InsertOutbox(statements_, message, message.create_time));
        }
        return absl::OkStatus();
      }();
      if (!status.ok()) {
        RunCached("ROLLBACK").IgnoreError();
        return status;
      }
      status = RunCached("COMMIT");
      if (!status.ok()) RunCached("ROLLBACK").IgnoreError();
      return status;
    };
    if (update.wait_durable) return Durably(write);
    return Logged(write);
  }

  absl::StatusOr<OperationRecord> Get(absl::string_view id) override {
    absl::MutexLock lock(&mu_);
    Stmt stmt(statements_, get_sql_);
    stmt.Bind(1, id);
    MUSICGW_ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) return absl::NotFoundError(absl::StrCat("operation ", id, " not found"));
    return ReadRecord(stmt);
  }

  absl::StatusOr<OperationRecord> FindByRequestId(absl::string_view tenant,
                                                  absl::string_view request_id) override {
    absl::StatusOr<OperationRecord> found;
    {
      absl::MutexLock lock(&mu_);
      found = FindLocked(tenant, request_id);
    }
    // A retried Generate is answered with what it finds: that must be on disk too, even while
    // the first attempt's Create still waits for its sync.
    if (found.ok()) MUSICGW_RETURN_IF_ERROR(Sync());
    return found;
  }

  absl::StatusOr<std::vector<OperationRecord>> List(const ListQuery& query) override {
    std::string sql = absl::StrCat("SELECT ", kRecordColumns, " FROM operations WHERE tenant = ?");
    if (!query.states.empty()) {
      std::vector<std::string> states;
      for (auto state : query.states) states.push_back(absl::StrCat(static_cast<int>(state)));
      absl::StrAppend(&sql, " AND state IN (", absl::StrJoin(states, ","), ")");
    }
    if (query.provider != v1::PROVIDER_UNSPECIFIED) absl::StrAppend(&sql, " AND provider = ?");
    if (query.task != v1::TASK_KIND_UNSPECIFIED) absl::StrAppend(&sql, " AND task = ?");
    if (!query.before_id.empty()) absl::StrAppend(&sql, " AND id < ?");
    absl::StrAppend(&sql, " ORDER BY id DESC LIMIT ?");
    absl::MutexLock lock(&mu_);
    Stmt stmt(statements_, sql);
    MUSICGW_RETURN_IF_ERROR(stmt.status());
    int i = 1;
    stmt.Bind(i++, query.tenant);
    if (query.provider != v1::PROVIDER_UNSPECIFIED) {
      stmt.Bind(i++, static_cast<int64_t>(query.provider));
    }
    if (query.task != v1::TASK_KIND_UNSPECIFIED) stmt.Bind(i++, static_cast<int64_t>(query.task));
    if (!query.before_id.empty()) stmt.Bind(i++, query.before_id);
    stmt.Bind(i++, static_cast<int64_t>(query.limit));
    return ReadRecords(stmt);
  }

  absl::StatusOr<std::vector<StoredEvent>> EventsAfter(absl::string_view id,
                                                       int64_t after_sequence) override {
    absl::MutexLock lock(&mu_);
    Stmt stmt(statements_,
              "SELECT sequence, snapshot FROM operation_events WHERE operation_id = ? AND "
              "sequence > ? ORDER BY sequence");
    stmt.Bind(1, id).Bind(2, after_sequence);
    std::vector<StoredEvent> events;
    while (true) {
      MUSICGW_ASSIGN_OR_RETURN(bool row, stmt.Step());
      if (!row) break;
      StoredEvent event;
      event.sequence = stmt.Int(0);
      if (!event.operation.ParseFromString(stmt.Text(1))) {
        return absl::DataLossError(absl::StrCat("ledger: corrupt event of operation ", id));
      }
      events.push_back(std::move(event));
    }
    return events;
  }

  absl::StatusOr<std::vector<OperationRecord>> ClaimLive(absl::string_view owner,
                                                         absl::Time lease_until) override {
    return Durably([&]() -> absl::StatusOr<std::vector<OperationRecord>> {
      absl::MutexLock lock(&mu_);
      MUSICGW_RETURN_IF_ERROR(RunCached("BEGIN IMMEDIATE"));
      auto result = [&]() -> absl::StatusOr<std::vector<OperationRecord>> {
        Stmt claim(statements_,
                   "UPDATE operations SET owner = ?, lease_until_us = ? WHERE done = 0 AND "
                   "(owner = '' OR owner = ? OR lease_until_us < ?)");
        claim.Bind(1, owner)
            .Bind(2, LedgerMicros(lease_until))
            .Bind(3, owner)
            .Bind(4, LedgerMicros(clock_.Now()));
        MUSICGW_RETURN_IF_ERROR(claim.Run());
        Stmt stmt(statements_,
                  absl::StrCat("SELECT ", kRecordColumns,
                               " FROM operations WHERE done = 0 AND owner = ? ORDER BY id"));
        stmt.Bind(1, owner);
        return ReadRecords(stmt);
      }();
      if (!result.ok()) {
        RunCached("ROLLBACK").IgnoreError();
        return result;
      }
      MUSICGW_RETURN_IF_ERROR(RunCached("COMMIT"));
      return result;
    });
  }

  absl::Status RenewLeases(absl::string_view owner, absl::Time lease_until) override {
    return Durably([&]() -> absl::Status {
      absl::MutexLock lock(&mu_);
      Stmt stmt(statements_,
                "UPDATE operations SET lease_until_us = ? WHERE done = 0 AND owner = ?");
      return stmt.Bind(1, LedgerMicros(lease_until)).Bind(2, owner).Run();
    });
  }

  absl::StatusOr<absl::Time> NextLeaseExpiry(absl::string_view owner) override {
    absl::MutexLock lock(&mu_);
    Stmt stmt(statements_,
              "SELECT MIN(lease_until_us) FROM operations WHERE done = 0 AND owner <> '' AND "
              "owner <> ?");
    stmt.Bind(1, owner);
    MUSICGW_ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row || stmt.IsNull(0)) return absl::InfiniteFuture();
    return FromLedgerMicros(stmt.Int(0));
  }

  absl::Status RequestCancel(absl::string_view id, absl::string_view reason,
                             absl::Time now) override {
    // Durable before the caller is told the owner will apply it.
    return Durably([&]() -> absl::Status {
      absl::MutexLock lock(&mu_);
      Stmt insert(
          statements_,
          "INSERT INTO cancel_requests (operation_id, reason, request_time_us) SELECT id, ?, "
          "? FROM operations WHERE id = ? AND done = 0 ON CONFLICT (operation_id) DO NOTHING");
      MUSICGW_RETURN_IF_ERROR(insert.Bind(1, reason).Bind(2, LedgerMicros(now)).Bind(3, id).Run());
      Stmt exists(statements_, "SELECT 1 FROM operations WHERE id = ?");
      exists.Bind(1, id);
      MUSICGW_ASSIGN_OR_RETURN(bool row, exists.Step());
      if (!row) return absl::NotFoundError(absl::StrCat("ledger: no operation ", id));
      return absl::OkStatus();
    });
  }

  absl::StatusOr<std::map<std::string, std::string>> PendingCancels(
      absl::string_view owner) override {
    absl::MutexLock lock(&mu_);
    Stmt stmt(statements_,
              "SELECT c.operation_id, c.reason FROM cancel_requests c JOIN operations o ON o.id = "
              "c.operation_id WHERE o.owner = ? AND o.done = 0 ORDER BY c.operation_id");
    stmt.Bind(1, owner);
    std::map<std::string, std::string> pending;
    while (true) {
      MUSICGW_ASSIGN_OR_RETURN(bool row, stmt.Step());
      if (!row) break;
      pending.emplace(stmt.Text(0), stmt.Text(1));
    }
    return pending;
  }

  absl::Status ProbeWrite() override {
    return Durably([&]() -> absl::Status {
      absl::MutexLock lock(&mu_);
      // Rewrites one row in place: a real page write (to the WAL), however small.
      Stmt stmt(statements_,
                "UPDATE schema_migrations SET applied_time_us = applied_time_us "
                "WHERE version = (SELECT MAX(version) FROM schema_migrations)");
      return stmt.Run();
    });
  }

  // Provider URLs wait for no sync of their own: a power loss that takes them back leaves the
  // operation live (its tracker polls again and learns them again) or its asset host refreshing
  // them again; a durable SUCCEEDED written after them brings them to disk.
  absl::Status SetUpstreamOutputs(absl::string_view id,
                                  const std::vector<UpstreamOutput>& outputs) override {
    return Logged([&]() -> absl::Status {
      absl::MutexLock lock(&mu_);
      Stmt stmt(statements_, "UPDATE operations SET upstream_outputs = ? WHERE id = ?");
      return stmt.Bind(1, UpstreamOutputsToJson(outputs)).Bind(2, id).Run();
    });
  }

  absl::Status SetAssetFacts(absl::string_view id, int index, int64_t size_bytes,
                             absl::string_view sha256) override {
    return Durably([&]() -> absl::Status {
      absl::MutexLock lock(&mu_);
      Stmt stmt(statements_,
                "INSERT INTO assets (operation_id, idx, size_bytes, sha256) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (operation_id, idx) DO UPDATE SET size_bytes = excluded.size_bytes, "
                "sha256 = excluded.sha256");
      return stmt.Bind(1, id)
          .Bind(2, static_cast<int64_t>(index))
          .Bind(3, size_bytes)
          .Bind(4, sha256)
          .Run();
    });
  }

  // Custody rows wait for no sync of their own: the first is written before the operation's
  // SUCCEEDED, the second before or after it. A power loss that takes them back leaves the
  // operation live (the tracker fetches again) or its pending row due (the background pass
  // fetches again into the same content-addressed object, whose bytes were synced before).
  // The log keeps commits in order, so a durable SUCCEEDED brings the rows before it with it.
  absl::Status AddPendingCustody(absl::string_view id, absl::string_view tenant, int count,
                                 absl::Time now, absl::Time next_attempt) override {
    return Logged([&]() -> absl::Status {
      absl::MutexLock lock(&mu_);
      MUSICGW_RETURN_IF_ERROR(RunCached("BEGIN IMMEDIATE"));
      absl::Status status;
      for (int index = 0; index < count && status.ok(); ++index) {
        Stmt stmt(statements_,
                  "INSERT INTO asset_custody (operation_id, idx, tenant, state, pending_since_us, "
                  "next_attempt_us) VALUES (?, ?, ?, 1, ?, ?) ON CONFLICT DO NOTHING");
        status = stmt.Bind(1, id)
                     .Bind(2, static_cast<int64_t>(index))
                     .Bind(3, tenant)
                     .Bind(4, LedgerMicros(now))
                     .Bind(5, LedgerMicros(next_attempt))
                     .Run();
      }
      return FinishTxn(status);
    });
  }

  absl::Status RecordCustody(absl::string_view id, int index, int64_t size_bytes,
                             absl::string_view sha256, absl::Time expire_time) override {
    return Logged([&]() -> absl::Status {
      absl::MutexLock lock(&mu_);
      MUSICGW_RETURN_IF_ERROR(RunCached("BEGIN IMMEDIATE"));
      Stmt custody(statements_,
                   "UPDATE asset_custody SET state = 2, sha256 = ?, size_bytes = ?, "
                   "expire_time_us = ? WHERE operation_id = ? AND idx = ?");
      absl::Status status = custody.Bind(1, sha256)
                                .Bind(2, size_bytes)
                                .Bind(3, LedgerMicros(expire_time))
                                .Bind(4, id)
                                .Bind(5, static_cast<int64_t>(index))
                                .Run();
      if (status.ok()) {
        Stmt facts(statements_,
                   "INSERT INTO assets (operation_id, idx, size_bytes, sha256, in_custody) VALUES "
                   "(?, ?, ?, ?, 1) ON CONFLICT (operation_id, idx) DO UPDATE SET size_bytes = "
                   "excluded.size_bytes, sha256 = excluded.sha256, in_custody = 1");
        status = facts.Bind(1, id)
                     .Bind(2, static_cast<int64_t>(index))
                     .Bind(3, size_bytes)
                     .Bind(4, sha256)
                     .Run();
      }
      return FinishTxn(status);
    });
  }

  absl::Status DeferCustody(absl::string_view id, int index, int attempts,
                            absl::Time next_attempt) override {
    return Durably([&]() -> absl::Status {
      absl::MutexLock lock(&mu_);
      Stmt stmt(statements_,
                "UPDATE asset_custody SET attempts = ?, next_attempt_us = ? WHERE operation_id = ? "
                "AND idx = ? AND state = 1");
      return stmt.Bind(1, static_cast<int64_t>(attempts))
          .Bind(2, LedgerMicros(next_attempt))
          .Bind(3, id)
          .Bind(4, static_cast<int64_t>(index))
          .Run();
    });
  }

  absl::StatusOr<std::vector<CustodyRecord>> GetCustody(absl::string_view id) override {
    absl::MutexLock lock(&mu_);
    Stmt stmt(statements_, absl::StrCat("SELECT ", kCustodyColumns,
                                        " FROM asset_custody WHERE operation_id = ? ORDER BY idx"));
    stmt.Bind(1, id);
    return ReadCustody(stmt);
  }

  absl::StatusOr<std::vector<CustodyRecord>> DueCustody(absl::Time now, int limit) override {
    absl::MutexLock lock(&mu_);
    Stmt stmt(statements_, absl::StrCat("SELECT ", kCustodyColumns,
                                        " FROM asset_custody WHERE state = 1 AND "
                                        "next_attempt_us <= ? ORDER BY next_attempt_us LIMIT ?"));
    stmt.Bind(1, LedgerMicros(now)).Bind(2, static_cast<int64_t>(limit));
    return ReadCustody(stmt);
  }

  absl::StatusOr<std::vector<CustodyRecord>> ExpireCustody(absl::Time now, int limit) override {
    // Its commit is on disk when it returns (below): no group sync after it.
    MUSICGW_RETURN_IF_ERROR(SyncFailure());
    return [&]() -> absl::StatusOr<std::vector<CustodyRecord>> {
      absl::MutexLock lock(&mu_);
      // Once a reader sees an asset expired its bytes may go: this commit syncs before it is
      // visible (synchronous=FULL, under the lock), rather than being seen while its sync runs.
      MUSICGW_RETURN_IF_ERROR(SetSynchronous(/*full=*/true));
      MUSICGW_RETURN_IF_ERROR(RunCached("BEGIN IMMEDIATE"));
      std::vector<CustodyRecord> expired;
      absl::Status status;
      {
        Stmt stmt(statements_, absl::StrCat("SELECT ", kCustodyColumns,
                                            " FROM asset_custody WHERE state = 2 AND "
                                            "expire_time_us < ? ORDER BY expire_time_us LIMIT ?"));
        stmt.Bind(1, LedgerMicros(now)).Bind(2, static_cast<int64_t>(limit));
        auto rows = ReadCustody(stmt);
        if (rows.ok()) {
          expired = *std::move(rows);
        } else {
          status = rows.status();
        }
      }
      for (auto& row : expired) {
        if (!status.ok()) break;
        Stmt custody(statements_,
                     "UPDATE asset_custody SET state = 3 WHERE operation_id = ? AND idx = ?");
        status = custody.Bind(1, row.operation_id).Bind(2, static_cast<int64_t>(row.index)).Run();
        if (!status.ok()) break;
        Stmt facts(statements_,
                   "UPDATE assets SET in_custody = 0 WHERE operation_id = ? AND idx = ?");
        status = facts.Bind(1, row.operation_id).Bind(2, static_cast<int64_t>(row.index)).Run();
        row.state = CustodyState::kExpired;
      }
      status = FinishTxn(status);
      MUSICGW_RETURN_IF_ERROR(SetSynchronous(/*full=*/false));
      MUSICGW_RETURN_IF_ERROR(status);
      return expired;
    }();
  }

  absl::StatusOr<int64_t> CountHeldDigest(absl::string_view sha256) override {
    absl::MutexLock lock(&mu_);
    Stmt stmt(statements_, "SELECT COUNT(*) FROM asset_custody WHERE sha256 = ? AND state = 2");
    stmt.Bind(1, sha256);
    MUSICGW_ASSIGN_OR_RETURN(bool row, stmt.Step());
    return row ? stmt.Int(0) : 0;
  }

  absl::StatusOr<CustodySummary> ReadCustodySummary() override {
    absl::MutexLock lock(&mu_);
    CustodySummary summary;
    {
      Stmt held(statements_,
                "SELECT COALESCE(SUM(size_bytes), 0) FROM (SELECT DISTINCT sha256, size_bytes "
                "FROM asset_custody WHERE state = 2)");
      MUSICGW_ASSIGN_OR_RETURN(bool row, held.Step());
      if (row) summary.held_bytes = held.Int(0);
    }
    Stmt pending(statements_,
                 "SELECT COUNT(*), MIN(pending_since_us) FROM asset_custody WHERE state = 1");
    MUSICGW_ASSIGN_OR_RETURN(bool row, pending.Step());
    if (row) {
      summary.pending = pending.Int(0);
      if (summary.pending > 0) summary.oldest_pending = FromLedgerMicros(pending.Int(1));
    }
    return summary;
  }

  absl::StatusOr<int64_t> PruneEvents(absl::Time done_before) override {
    return Durably([&]() -> absl::StatusOr<int64_t> {
      absl::MutexLock lock(&mu_);
      int64_t deleted = 0;
      for (const char* table : {"operation_events", "cancel_requests"}) {
        Stmt stmt(statements_,
                  absl::StrCat("DELETE FROM ", table,
                               " WHERE operation_id IN (SELECT id FROM operations WHERE done = 1 "
                               "AND done_time_us < ?)"));
        MUSICGW_RETURN_IF_ERROR(stmt.Bind(1, LedgerMicros(done_before)).Run());
        deleted += sqlite3_changes(db_);
      }
      return deleted;
    });
  }

  absl::StatusOr<BudgetUsage> ReadBudget(absl::string_view tenant, v1::TaskKind task,
                                         absl::Time period_start) override {
    absl::MutexLock lock(&mu_);
    return ReadBudgetLocked(tenant, task, period_start);
  }

  absl::StatusOr<std::map<v1::TaskKind, int64_t>> CountCharged(v1::Provider provider,
                                                               absl::string_view account,
                                                               absl::Time since) override {
    const LedgerCountSplit split = SplitLedgerCount(since);
    absl::MutexLock lock(&mu_);
    Stmt stmt(statements_, kCountChargedQuery);
    stmt.Bind(1, static_cast<int64_t>(provider))
        .Bind(2, account)
        .Bind(3, split.first_day)
        .Bind(4, split.first_hour)
        .Bind(5, split.until_hour)
        .Bind(6, split.from_us)
        .Bind(7, split.until_us);
    std::map<v1::TaskKind, int64_t> counts;
    while (true) {
      MUSICGW_ASSIGN_OR_RETURN(bool row, stmt.Step());
      if (!row) break;
      counts[static_cast<v1::TaskKind>(stmt.Int(0))] = stmt.Int(1);
    }
    return counts;
  }

  absl::StatusOr<std::vector<absl::Duration>> RecentDurations(v1::Provider provider,
                                                              absl::string_view account,
                                                              v1::TaskKind task,
                                                              int limit) override {
    absl::MutexLock lock(&mu_);
    Stmt stmt(statements_,
              "SELECT done_time_us - create_time_us FROM operations WHERE provider = ? AND "
              "provider_account = ? AND task = ? AND state = 3 AND done_time_us IS NOT NULL "
              "ORDER BY done_time_us DESC LIMIT ?");
    stmt.Bind(1, static_cast<int64_t>(provider))
        .Bind(2, account)
        .Bind(3, static_cast<int64_t>(task))
        .Bind(4, static_cast<int64_t>(limit));
    std::vector<absl::Duration> durations;
    while (true) {
      MUSICGW_ASSIGN_OR_RETURN(bool row, stmt.Step());
      if (!row) break;
      durations.push_back(absl::Microseconds(stmt.Int(0)));
    }
    return durations;
  }

  absl::Status EnqueueOutbox(const OutboxMessage& message) override {
    return Durably([&]() -> absl::Status {
      absl::MutexLock lock(&mu_);
      return sqlite::InsertOutbox(statements_, message, message.create_time);
    });
  }
  absl::StatusOr<std::vector<OutboxDelivery>> ClaimDueDeliveries(absl::Time now,
                                                                 absl::Time claim_until,
                                                                 int limit) override {
    return Durably([&]() -> absl::StatusOr<std::vector<OutboxDelivery>> {
      absl::MutexLock lock(&mu_);
      return sqlite::ClaimDueDeliveries(statements_, now, claim_until, limit);
    });
  }
  absl::Status RecordDeliveryAttempt(const DeliveryAttempt& attempt, DeliveryStatus status,
                                     absl::Time next_attempt_time) override {
    return Durably([&]() -> absl::Status {
      absl::MutexLock lock(&mu_);
      return sqlite::RecordDeliveryAttempt(statements_, attempt, status, next_attempt_time);
    });
  }
  absl::StatusOr<std::vector<OutboxDelivery>> ListDeliveries(const DeliveryQuery& query) override {
    absl::MutexLock lock(&mu_);
    return sqlite::ListDeliveries(statements_, query);
  }
  absl::StatusOr<std::vector<DeliveryAttempt>> ListDeliveryAttempts(
      absl::string_view delivery_id) override {
    absl::MutexLock lock(&mu_);
    return sqlite::ListDeliveryAttempts(statements_, delivery_id);
  }
  absl::Status Redeliver(absl::string_view tenant, absl::string_view delivery_id,
                         absl::Time now) override {
    return Durably([&]() -> absl::Status {
      absl::MutexLock lock(&mu_);
      return sqlite::Redeliver(statements_, tenant, delivery_id, now);
    });
  }

 private:
  // A write's commit is in the log; returns once it is on disk (no-op for a ledger without a
  // synced log: in memory, or synchronous_full off).
  absl::Status Sync() { return syncer_ != nullptr ? syncer_->SyncCommitted() : absl::OkStatus(); }
  absl::Status SyncFailure() const {
    return syncer_ != nullptr ? syncer_->failure() : absl::OkStatus();
  }

  // Runs `write` (which takes the connection's lock) and returns its result once on disk.
  // A write that changed no row (a claim or expiry that found nothing due) wrote nothing to
  // the log and waits for no sync.
  template <typename Write>
  auto Durably(Write write) -> decltype(write()) {
    MUSICGW_RETURN_IF_ERROR(SyncFailure());
    // Another writer's change in between only costs a sync this write did not need.
    const int64_t changes_before = TotalChanges();
    auto result = write();
    if (!result.ok()) return result;
    if (TotalChanges() == changes_before) return result;
    MUSICGW_RETURN_IF_ERROR(Sync());
    return result;
  }

  // Runs `write`: in the log and visible at once, on disk with the next sync anyone runs.
  template <typename Write>
  auto Logged(Write write) -> decltype(write()) {
    MUSICGW_RETURN_IF_ERROR(SyncFailure());
    return write();
  }

  int64_t TotalChanges() {
    absl::MutexLock lock(&mu_);
    return sqlite3_total_changes64(db_);
  }

  // Switches between the group sync (NORMAL, then WalSyncer) and a commit that syncs before it
  // is visible (FULL); a no-op without a synced log.
  absl::Status SetSynchronous(bool full) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (syncer_ == nullptr) return absl::OkStatus();
    return Exec(full ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL");
  }

  std::string JournalMode() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    Stmt stmt(statements_, "PRAGMA journal_mode");
    auto row = stmt.Step();
    return row.ok() && *row ? stmt.Text(0) : std::string();
  }

  static std::string IdOf(const v1::Operation& op) {
    OperationRecord record;
    record.operation.set_name(op.name());
    return record.id();
  }

  // Transaction control, prepared once like the statements it brackets.
  absl::Status RunCached(absl::string_view sql) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return Stmt(statements_, sql).Run();
  }

  absl::Status Exec(const char* sql) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    char* error = nullptr;
    const int rc = sqlite3_exec(db_, sql, nullptr, nullptr, &error);
    if (rc == SQLITE_OK) return absl::OkStatus();
    std::string message = error != nullptr ? error : sqlite3_errmsg(db_);
    sqlite3_free(error);
    return absl::Status(
        (rc & 0xff) == SQLITE_BUSY ? absl::StatusCode::kUnavailable : absl::StatusCode::kInternal,
        absl::StrCat("ledger: ", message));
  }

  absl::Status InsertEvent(const std::string& id, int64_t sequence, const std::string& snapshot)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    Stmt stmt(statements_,
              "INSERT INTO operation_events (operation_id, sequence, snapshot) VALUES (?, ?, ?)");
    return stmt.Bind(1, id).Bind(2, sequence).BindBlob(3, snapshot).Run();
  }

  absl::StatusOr<OperationRecord> ReadRecord(Stmt& stmt) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    OperationRecord record;
    const std::string id = stmt.Text(0);
    record.tenant = stmt.Text(1);
    record.request_id = stmt.Text(2);
    record.request_hash = stmt.Text(3);
    record.charged = stmt.Int(4) != 0;
    record.owner = stmt.Text(5);
    if (!record.operation.ParseFromString(stmt.Text(6))) {
      return absl::DataLossError(absl::StrCat("ledger: corrupt snapshot of operation ", id));
    }
    record.upstream_outputs = UpstreamOutputsFromJson(stmt.Text(7));
    if (record.operation.outputs_size() > 0) {
      Stmt assets(statements_,
                  "SELECT idx, size_bytes, sha256, in_custody FROM assets WHERE operation_id = ?");
      assets.Bind(1, id);
      while (true) {
        MUSICGW_ASSIGN_OR_RETURN(bool row, assets.Step());
        if (!row) break;
        const int64_t index = assets.Int(0);
        if (index < 0 || index >= record.operation.outputs_size()) continue;
        auto* asset = record.operation.mutable_outputs(static_cast<int>(index));
        asset->set_size_bytes(assets.Int(1));
        asset->set_sha256(assets.Text(2));
        asset->set_in_custody(assets.Int(3) != 0);
      }
    }
    return record;
  }

  // COMMIT when `status` is OK, else ROLLBACK; returns the first failure.
  absl::Status FinishTxn(absl::Status status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (status.ok()) status = RunCached("COMMIT");
    if (!status.ok()) RunCached("ROLLBACK").IgnoreError();
    return status;
  }

  absl::StatusOr<std::vector<CustodyRecord>> ReadCustody(Stmt& stmt)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    std::vector<CustodyRecord> rows;
    while (true) {
      MUSICGW_ASSIGN_OR_RETURN(bool row, stmt.Step());
      if (!row) break;
      CustodyRecord record;
      record.operation_id = stmt.Text(0);
      record.index = static_cast<int>(stmt.Int(1));
      record.tenant = stmt.Text(2);
      record.state = static_cast<CustodyState>(stmt.Int(3));
      record.sha256 = stmt.Text(4);
      record.size_bytes = stmt.Int(5);
      record.pending_since = FromLedgerMicros(stmt.Int(6));
      record.next_attempt = FromLedgerMicros(stmt.Int(7));
      record.attempts = static_cast<int>(stmt.Int(8));
      record.expire_time = FromLedgerMicros(stmt.Int(9));
      rows.push_back(std::move(record));
    }
    return rows;
  }

  absl::StatusOr<std::vector<OperationRecord>> ReadRecords(Stmt& stmt)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    std::vector<OperationRecord> records;
    while (true) {
      MUSICGW_ASSIGN_OR_RETURN(bool row, stmt.Step());
      if (!row) break;
      MUSICGW_ASSIGN_OR_RETURN(auto record, ReadRecord(stmt));
      records.push_back(std::move(record));
    }
    return records;
  }

  absl::StatusOr<OperationRecord> FindLocked(absl::string_view tenant, absl::string_view request_id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    Stmt stmt(statements_, absl::StrCat("SELECT ", kRecordColumns,
                                        " FROM operations WHERE tenant = ? AND request_id = ?"));
    stmt.Bind(1, tenant).Bind(2, request_id);
    MUSICGW_ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) return absl::NotFoundError("no operation with that request_id");
    return ReadRecord(stmt);
  }

  absl::StatusOr<BudgetUsage> ReadBudgetLocked(absl::string_view tenant, v1::TaskKind task,
                                               absl::Time period_start)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const LedgerCountSplit split = SplitLedgerCount(period_start);
    Stmt stmt(statements_, kBudgetCountQuery);
    stmt.Bind(1, tenant)
        .Bind(2, static_cast<int64_t>(task))
        .Bind(3, split.first_day)
        .Bind(4, split.first_hour)
        .Bind(5, split.until_hour)
        .Bind(6, split.from_us)
        .Bind(7, split.until_us);
    MUSICGW_ASSIGN_OR_RETURN(bool row, stmt.Step());
    BudgetUsage usage;
    if (row) {
      usage.reserved = stmt.Int(0);
      usage.used = stmt.Int(1);
    }
    return usage;
  }

  absl::StatusOr<CreateResult> CreateLocked(const OperationRecord& record,
                                            const std::vector<BudgetCheck>& budgets)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto existing = FindLocked(record.tenant, record.request_id);
    if (existing.ok()) return CreateResult{*std::move(existing), false};
    if (!absl::IsNotFound(existing.status())) return existing.status();

    const v1::Operation& op = record.operation;
    for (const BudgetCheck& budget : budgets) {
      int64_t used = 0;
      if (budget.live_only) {
        Stmt count(statements_, "SELECT COUNT(*) FROM operations WHERE tenant = ? AND done = 0");
        count.Bind(1, record.tenant);
        MUSICGW_ASSIGN_OR_RETURN(bool row, count.Step());
        used = row ? count.Int(0) : 0;
      } else {
        MUSICGW_ASSIGN_OR_RETURN(BudgetUsage usage,
                                 ReadBudgetLocked(record.tenant, budget.task, budget.period_start));
        used = usage.reserved + usage.used;
      }
      if (used >= budget.limit) return BudgetRefusal(record.tenant, budget, used, clock_.Now());
    }

    const std::string id = record.id();
    const std::string snapshot = op.SerializeAsString();
    Stmt insert(statements_,
                "INSERT INTO operations (id, tenant, request_id, request_hash, state, done, "
                "provider, task, create_time_us, done_time_us, sequence, charged, owner, "
                "lease_until_us, snapshot, upstream_outputs, provider_account) VALUES (?, ?, ?, ?, "
                "?, ?, ?, ?, ?, NULL, ?, ?, ?, ?, ?, ?, ?)");
    MUSICGW_RETURN_IF_ERROR(insert.status());
    insert.Bind(1, id)
        .Bind(2, record.tenant)
        .Bind(3, record.request_id)
        .Bind(4, record.request_hash)
        .Bind(5, static_cast<int64_t>(op.state()))
        .Bind(6, static_cast<int64_t>(op.done() ? 1 : 0))
        .Bind(7, static_cast<int64_t>(op.provider()))
        .Bind(8, static_cast<int64_t>(op.task()))
        .Bind(9, LedgerMicros(FromProtoTimestamp(op.create_time())))
        .Bind(10, op.sequence())
        .Bind(11, static_cast<int64_t>(record.charged ? 1 : 0))
        .Bind(12, record.owner)
        .Bind(13, LedgerMicros(record.lease_until))
        .BindBlob(14, snapshot)
        .Bind(15, UpstreamOutputsToJson(record.upstream_outputs))
        .Bind(16, op.provider_account());
    MUSICGW_RETURN_IF_ERROR(insert.Run());
    MUSICGW_RETURN_IF_ERROR(InsertEvent(id, op.sequence(), snapshot));
    return CreateResult{record, true};
  }

  const Clock& clock_;
  // Set by Init, then only read.
  std::unique_ptr<WalSyncer> syncer_;
  absl::Mutex mu_;
  sqlite3* db_ ABSL_GUARDED_BY(mu_);
  StatementCache statements_ ABSL_GUARDED_BY(mu_);
  const std::string get_sql_ =
      absl::StrCat("SELECT ", kRecordColumns, " FROM operations WHERE id = ?");
};

}  // namespace

absl::StatusOr<std::unique_ptr<OperationStore>> OpenSqliteOperationStore(
    const std::string& path, const SqliteOptions& options) {
  sqlite3* db = nullptr;
  const int rc =
      sqlite3_open_v2(path.c_str(), &db,
                      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX, nullptr);
  if (rc != SQLITE_OK) {
    std::string message = db != nullptr ? sqlite3_errmsg(db) : "out of memory";
    sqlite3_close_v2(db);
    return absl::UnavailableError(absl::StrCat("ledger: cannot open ", path, ": ", message));
  }
  auto store = std::make_unique<SqliteOperationStore>(
      db, options.clock != nullptr ? *options.clock : Clock::Real());
  MUSICGW_RETURN_IF_ERROR(store->Init(options));
  return store;
}

}  // namespace musicgw::operations
