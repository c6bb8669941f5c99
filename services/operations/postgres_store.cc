// The PostgreSQL ledger. Same schema shape as the SQLite one (times in microseconds, snapshots
// as serialized Operation protos), so both stores keep one contract and one conformance suite.
#include "services/operations/postgres_store.h"

#include <libpq-fe.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "common/errors.h"
#include "common/status_macros.h"
#include "common/time_util.h"
#include "services/operations/budget_errors.h"
#include "services/operations/ledger_codec.h"
#include "services/operations/postgres_connection.h"
#include "services/operations/postgres_outbox.h"

namespace musicgw::operations {
namespace {

namespace v1 = musicgw::v1;
using pg::BoolCell;
using pg::BytesCell;
using pg::Cell;
using pg::IntCell;
using pg::Param;
using pg::Pool;
using pg::Result;
using pg::Transaction;

// Versioned migrations, applied in order under an advisory lock; index + 1 is the version.
// Never edit an applied entry: append a new one.
const char* const kMigrations[] = {
    // 1: operations, their change events, and facts learnt about assets.
    R"sql(
CREATE TABLE operations (
  id TEXT PRIMARY KEY,
  tenant TEXT NOT NULL,
  request_id TEXT NOT NULL,
  request_hash TEXT NOT NULL,
  state INTEGER NOT NULL,
  done BOOLEAN NOT NULL,
  provider INTEGER NOT NULL,
  provider_account TEXT NOT NULL DEFAULT '',
  task INTEGER NOT NULL,
  create_time_us BIGINT NOT NULL,
  done_time_us BIGINT,
  sequence BIGINT NOT NULL,
  charged BOOLEAN NOT NULL DEFAULT FALSE,
  owner TEXT NOT NULL DEFAULT '',
  lease_until_us BIGINT NOT NULL DEFAULT 0,
  snapshot BYTEA NOT NULL,
  upstream_outputs TEXT NOT NULL DEFAULT '[]'
);
CREATE UNIQUE INDEX operations_by_request ON operations (tenant, request_id);
CREATE INDEX operations_by_tenant ON operations (tenant, id);
CREATE INDEX operations_live ON operations (owner, lease_until_us) WHERE NOT done;
CREATE INDEX operations_done ON operations (done_time_us) WHERE done;
CREATE INDEX operations_for_budgets ON operations (tenant, task, create_time_us)
  INCLUDE (state, charged, done);
CREATE INDEX operations_for_credits ON operations (provider, provider_account, create_time_us)
  INCLUDE (charged, task);
CREATE TABLE operation_events (
  operation_id TEXT NOT NULL,
  sequence BIGINT NOT NULL,
  snapshot BYTEA NOT NULL,
  PRIMARY KEY (operation_id, sequence)
);
CREATE TABLE assets (
  operation_id TEXT NOT NULL,
  idx INTEGER NOT NULL,
  size_bytes BIGINT NOT NULL,
  sha256 TEXT NOT NULL,
  PRIMARY KEY (operation_id, idx)
);
)sql",
    // 2: what replicas share besides operations: provider credentials that rotate on use
    // (postgres_credentials.h), named leases (one elected replica per job) and the quota
    // figures the quota reader publishes (postgres_quota_share.h). Times in Unix microseconds
    // of the gateway's clock.
    R"sql(
CREATE TABLE provider_credentials (
  key TEXT PRIMARY KEY,
  refresh_token TEXT NOT NULL,
  access_token TEXT NOT NULL,
  access_expiry_us BIGINT NOT NULL,
  updated_time_us BIGINT NOT NULL
);
CREATE TABLE leases (
  name TEXT PRIMARY KEY,
  owner TEXT NOT NULL,
  lease_until_us BIGINT NOT NULL
);
CREATE TABLE provider_quota (
  provider INTEGER NOT NULL,
  account TEXT NOT NULL,
  figures TEXT NOT NULL,
  read_time_us BIGINT NOT NULL,
  last_error TEXT NOT NULL,
  PRIMARY KEY (provider, account)
);
)sql",
    // 3: asset custody. `asset_custody` follows each output from pending (fetch due at
    // next_attempt_us) to held (bytes in the asset store under sha256 until expire_time_us) to
    // expired; `assets.in_custody` is what snapshots show.
    R"sql(
CREATE TABLE asset_custody (
  operation_id TEXT NOT NULL,
  idx INTEGER NOT NULL,
  tenant TEXT NOT NULL,
  state INTEGER NOT NULL,
  sha256 TEXT NOT NULL DEFAULT '',
  size_bytes BIGINT NOT NULL DEFAULT 0,
  pending_since_us BIGINT NOT NULL,
  next_attempt_us BIGINT NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0,
  expire_time_us BIGINT NOT NULL DEFAULT 0,
  PRIMARY KEY (operation_id, idx)
);
CREATE INDEX asset_custody_due ON asset_custody (next_attempt_us) WHERE state = 1;
CREATE INDEX asset_custody_expiry ON asset_custody (expire_time_us) WHERE state = 2;
CREATE INDEX asset_custody_by_digest ON asset_custody (sha256) WHERE state = 2;
ALTER TABLE assets ADD COLUMN in_custody BOOLEAN NOT NULL DEFAULT FALSE;
)sql",
    // 4: recent successful durations per provider account and task (the ETA's history).
    R"sql(
CREATE INDEX operations_for_durations ON operations (provider, provider_account, task, done_time_us)
  INCLUDE (create_time_us) WHERE state = 3;
)sql",
    // 5: the webhook outbox and its delivery attempts (postgres_outbox.cc).
    pg::kOutboxMigration,
    // 6: cancel requests made on a replica that does not track the operation; the one that
    // tracks it (now, or after a takeover) applies them.
    R"sql(
CREATE TABLE cancel_requests (
  operation_id TEXT PRIMARY KEY,
  reason TEXT NOT NULL,
  request_time_us BIGINT NOT NULL
);
)sql",
    // 7: a tenant's live operations, counted by every Generate (max_live_operations), found
    // without walking every operation the tenant ever made.
    R"sql(
CREATE INDEX operations_live_by_tenant ON operations (tenant) WHERE NOT done;
)sql",
    // 8: charged operations counted per provider account and task, for each day and each hour
    // of creation (ledger_codec.h; as the SQLite ledger's migration 9), kept by a trigger in the
    // writing transaction: each quota read sums a few counters instead of walking every
    // operation the account ever ran. Each count is spread over 8 slots by operation id, so that
    // concurrent charges on one account seldom wait for one another's row lock.
    R"sql(
CREATE TABLE charged_counts (
  provider INTEGER NOT NULL,
  provider_account TEXT NOT NULL,
  task INTEGER NOT NULL,
  hours INTEGER NOT NULL,
  bucket BIGINT NOT NULL,
  slot INTEGER NOT NULL,
  charged BIGINT NOT NULL,
  PRIMARY KEY (provider, provider_account, hours, bucket, task, slot)
);
INSERT INTO charged_counts
  SELECT provider, provider_account, task, 24, create_time_us / 86400000000, hashtext(id) & 7,
         COUNT(*)
  FROM operations WHERE charged GROUP BY 1, 2, 3, 5, 6;
INSERT INTO charged_counts
  SELECT provider, provider_account, task, 1, create_time_us / 3600000000, hashtext(id) & 7,
         COUNT(*)
  FROM operations WHERE charged GROUP BY 1, 2, 3, 5, 6;
CREATE FUNCTION charged_counts_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.charged THEN
    UPDATE charged_counts SET charged = charged - 1
      WHERE provider = OLD.provider AND provider_account = OLD.provider_account
        AND task = OLD.task AND slot = hashtext(OLD.id) & 7
        AND ((hours = 24 AND bucket = OLD.create_time_us / 86400000000)
          OR (hours = 1 AND bucket = OLD.create_time_us / 3600000000));
  END IF;
  IF TG_OP IN ('INSERT', 'UPDATE') AND NEW.charged THEN
    INSERT INTO charged_counts VALUES
        (NEW.provider, NEW.provider_account, NEW.task, 24, NEW.create_time_us / 86400000000,
         hashtext(NEW.id) & 7, 1),
        (NEW.provider, NEW.provider_account, NEW.task, 1, NEW.create_time_us / 3600000000,
         hashtext(NEW.id) & 7, 1)
      ON CONFLICT (provider, provider_account, hours, bucket, task, slot)
      DO UPDATE SET charged = charged_counts.charged + 1;
  END IF;
  RETURN NULL;
END $$;
CREATE TRIGGER charged_counts_insert AFTER INSERT ON operations
  FOR EACH ROW WHEN (NEW.charged) EXECUTE FUNCTION charged_counts_count();
CREATE TRIGGER charged_counts_update
  AFTER UPDATE OF charged, provider, provider_account, task, create_time_us ON operations
  FOR EACH ROW WHEN ((OLD.charged OR NEW.charged) AND
    (OLD.charged, OLD.provider, OLD.provider_account, OLD.task, OLD.create_time_us)
    IS DISTINCT FROM (NEW.charged, NEW.provider, NEW.provider_account, NEW.task, NEW.create_time_us))
  EXECUTE FUNCTION charged_counts_count();
CREATE TRIGGER charged_counts_delete AFTER DELETE ON operations
  FOR EACH ROW WHEN (OLD.charged) EXECUTE FUNCTION charged_counts_count();
)sql",
    // 9: the operations each budget counts (all but the failed or cancelled ones the provider did
    // not charge for), per tenant and task, for each day and each hour of creation (ledger_codec.h;
    // as the SQLite ledger's migration 10), split into reserved
    // (not done) and used (done), kept by a trigger like charged_counts, in 8 slots. Every
    // Generate of a tenant with a budget reads them instead of walking the tenant's operations of
    // the whole period.
    R"sql(
CREATE TABLE budget_counts (
  tenant TEXT NOT NULL,
  task INTEGER NOT NULL,
  hours INTEGER NOT NULL,
  bucket BIGINT NOT NULL,
  slot INTEGER NOT NULL,
  reserved BIGINT NOT NULL,
  used BIGINT NOT NULL,
  PRIMARY KEY (tenant, task, hours, bucket, slot)
);
INSERT INTO budget_counts
  SELECT tenant, task, 24, create_time_us / 86400000000, hashtext(id) & 7,
         COUNT(*) FILTER (WHERE NOT done), COUNT(*) FILTER (WHERE done)
  FROM operations WHERE state NOT IN (4, 5) OR charged GROUP BY 1, 2, 4, 5;
INSERT INTO budget_counts
  SELECT tenant, task, 1, create_time_us / 3600000000, hashtext(id) & 7,
         COUNT(*) FILTER (WHERE NOT done), COUNT(*) FILTER (WHERE done)
  FROM operations WHERE state NOT IN (4, 5) OR charged GROUP BY 1, 2, 4, 5;
CREATE FUNCTION budget_counts_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP IN ('UPDATE', 'DELETE') AND (OLD.state NOT IN (4, 5) OR OLD.charged) THEN
    UPDATE budget_counts
      SET reserved = reserved - (NOT OLD.done)::INTEGER, used = used - OLD.done::INTEGER
      WHERE tenant = OLD.tenant AND task = OLD.task AND slot = hashtext(OLD.id) & 7
        AND ((hours = 24 AND bucket = OLD.create_time_us / 86400000000)
          OR (hours = 1 AND bucket = OLD.create_time_us / 3600000000));
  END IF;
  IF TG_OP IN ('INSERT', 'UPDATE') AND (NEW.state NOT IN (4, 5) OR NEW.charged) THEN
    INSERT INTO budget_counts VALUES
        (NEW.tenant, NEW.task, 24, NEW.create_time_us / 86400000000, hashtext(NEW.id) & 7,
         (NOT NEW.done)::INTEGER, NEW.done::INTEGER),
        (NEW.tenant, NEW.task, 1, NEW.create_time_us / 3600000000, hashtext(NEW.id) & 7,
         (NOT NEW.done)::INTEGER, NEW.done::INTEGER)
      ON CONFLICT (tenant, task, hours, bucket, slot) DO UPDATE
      SET reserved = budget_counts.reserved + EXCLUDED.reserved,
          used = budget_counts.used + EXCLUDED.used;
  END IF;
  RETURN NULL;
END $$;
CREATE TRIGGER budget_counts_insert AFTER INSERT ON operations
  FOR EACH ROW WHEN (NEW.state NOT IN (4, 5) OR NEW.charged)
  EXECUTE FUNCTION budget_counts_count();
CREATE TRIGGER budget_counts_update
  AFTER UPDATE OF state, done, charged, tenant, task, create_time_us ON operations
  FOR EACH ROW WHEN ((OLD.state NOT IN (4, 5) OR OLD.charged OR
                      NEW.state NOT IN (4, 5) OR NEW.charged) AND
    (OLD.state NOT IN (4, 5) OR OLD.charged, OLD.done, OLD.tenant, OLD.task, OLD.create_time_us)
    IS DISTINCT FROM
    (NEW.state NOT IN (4, 5) OR NEW.charged, NEW.done, NEW.tenant, NEW.task, NEW.create_time_us))
  EXECUTE FUNCTION budget_counts_count();
CREATE TRIGGER budget_counts_delete AFTER DELETE ON operations
  FOR EACH ROW WHEN (OLD.state NOT IN (4, 5) OR OLD.charged)
  EXECUTE FUNCTION budget_counts_count();
)sql",
    // 10: the counters' rows locked in one order by every write: the day's row, then the hour's.
    // Migrations 8 and 9 took the old rows with one UPDATE whose scan could meet the hour's row
    // first, while an INSERT took the day's first: two replicas' writes on one counter then
    // deadlocked, and PostgreSQL aborted one after a second's wait.
    R"sql(
CREATE OR REPLACE FUNCTION charged_counts_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.charged THEN
    UPDATE charged_counts SET charged = charged - 1
      WHERE provider = OLD.provider AND provider_account = OLD.provider_account
        AND task = OLD.task AND slot = hashtext(OLD.id) & 7
        AND hours = 24 AND bucket = OLD.create_time_us / 86400000000;
    UPDATE charged_counts SET charged = charged - 1
      WHERE provider = OLD.provider AND provider_account = OLD.provider_account
        AND task = OLD.task AND slot = hashtext(OLD.id) & 7
        AND hours = 1 AND bucket = OLD.create_time_us / 3600000000;
  END IF;
  IF TG_OP IN ('INSERT', 'UPDATE') AND NEW.charged THEN
    INSERT INTO charged_counts VALUES
        (NEW.provider, NEW.provider_account, NEW.task, 24, NEW.create_time_us / 86400000000,
         hashtext(NEW.id) & 7, 1)
      ON CONFLICT (provider, provider_account, hours, bucket, task, slot)
      DO UPDATE SET charged = charged_counts.charged + 1;
    INSERT INTO charged_counts VALUES
        (NEW.provider, NEW.provider_account, NEW.task, 1, NEW.create_time_us / 3600000000,
         hashtext(NEW.id) & 7, 1)
      ON CONFLICT (provider, provider_account, hours, bucket, task, slot)
      DO UPDATE SET charged = charged_counts.charged + 1;
  END IF;
  RETURN NULL;
END $$;
CREATE OR REPLACE FUNCTION budget_counts_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP IN ('UPDATE', 'DELETE') AND (OLD.state NOT IN (4, 5) OR OLD.charged) THEN
    UPDATE budget_counts
      SET reserved = reserved - (NOT OLD.done)::INTEGER, used = used - OLD.done::INTEGER
      WHERE tenant = OLD.tenant AND task = OLD.task AND slot = hashtext(OLD.id) & 7
        AND hours = 24 AND bucket = OLD.create_time_us / 86400000000;
    UPDATE budget_counts
      SET reserved = reserved - (NOT OLD.done)::INTEGER, used = used - OLD.done::INTEGER
      WHERE tenant = OLD.tenant AND task = OLD.task AND slot = hashtext(OLD.id) & 7
        AND hours = 1 AND bucket = OLD.create_time_us / 3600000000;
  END IF;
  IF TG_OP IN ('INSERT', 'UPDATE') AND (NEW.state NOT IN (4, 5) OR NEW.charged) THEN
    INSERT INTO budget_counts VALUES
        (NEW.tenant, NEW.task, 24, NEW.create_time_us / 86400000000, hashtext(NEW.id) & 7,
         (NOT NEW.done)::INTEGER, NEW.done::INTEGER)
      ON CONFLICT (tenant, task, hours, bucket, slot) DO UPDATE
      SET reserved = budget_counts.reserved + EXCLUDED.reserved,
          used = budget_counts.used + EXCLUDED.used;
    INSERT INTO budget_counts VALUES
        (NEW.tenant, NEW.task, 1, NEW.create_time_us / 3600000000, hashtext(NEW.id) & 7,
         (NOT NEW.done)::INTEGER, NEW.done::INTEGER)
      ON CONFLICT (tenant, task, hours, bucket, slot) DO UPDATE
      SET reserved = budget_counts.reserved + EXCLUDED.reserved,
          used = budget_counts.used + EXCLUDED.used;
  END IF;
  RETURN NULL;
END $$;
)sql",
};

// Any constant shared by every replica: serializes migrations.
constexpr int64_t kMigrationLock = 0x6d75736963677701;

constexpr absl::string_view kCustodyColumns =
    "operation_id, idx, tenant, state, sha256, size_bytes, pending_since_us, next_attempt_us, "
    "attempts, expire_time_us";

constexpr absl::string_view kRecordColumns =
    "id, tenant, request_id, request_hash, charged, owner, snapshot, upstream_outputs";
// The parameters of a count over the ledger's counters ("budget_usage", "charged"): the count's
// two keys, then `since` as the counters split it (SplitLedgerCount).
std::vector<Param> CountParams(Param first_key, Param second_key, absl::Time since) {
  const LedgerCountSplit split = SplitLedgerCount(since);
  return {std::move(first_key),         std::move(second_key),        Param::Int(split.first_day),
          Param::Int(split.first_hour), Param::Int(split.until_hour), Param::Int(split.from_us),
          Param::Int(split.until_us)};
}

// The parameters of "budget_usage": a budget's tenant and task, and its period's start.
std::vector<Param> BudgetParams(absl::string_view tenant, v1::TaskKind task,
                                absl::Time period_start) {
  return CountParams(Param::Text(tenant), Param::Int(task), period_start);
}

// Every statement, prepared once per connection by name.
const pg::Statements& LedgerStatements() {
  static const auto* const statements = [] {
    auto* all = new pg::Statements{
        {"get", absl::StrCat("SELECT ", kRecordColumns, " FROM operations WHERE id = $1")},
        {"find", absl::StrCat("SELECT ", kRecordColumns,
                              " FROM operations WHERE tenant = $1 AND request_id = $2")},
        {"tenant_lock", "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))"},
        {"live_count", "SELECT COUNT(*) FROM operations WHERE tenant = $1 AND NOT done"},
        {"insert",
         "INSERT INTO operations (id, tenant, request_id, request_hash, state, done, provider, "
         "task, create_time_us, done_time_us, sequence, charged, owner, lease_until_us, snapshot, "
         "upstream_outputs, provider_account) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NULL, "
         "$10, $11, $12, $13, $14, $15, $16)"},
        {"insert_event",
         "INSERT INTO operation_events (operation_id, sequence, snapshot) VALUES ($1, $2, $3)"},
        {"update",
         "UPDATE operations SET state = $1, done = $2, provider = $3, done_time_us = $4, "
         "sequence = $5, charged = $6, snapshot = $7, provider_account = $8, "
         "upstream_outputs = COALESCE($9, upstream_outputs) WHERE id = $10 AND sequence = $11 AND "
         "($12 = '' OR owner = $12)"},
        {"sequence", "SELECT sequence FROM operations WHERE id = $1"},
        // Delivered to every listening replica when (and only if) the transaction commits.
        {"notify", "SELECT pg_notify('musicgw_changes', $1::text || ':' || $2::text)"},
        {"nudge", "SELECT pg_notify('musicgw_nudges', $1::text || ':' || $2::text)"},
        {"list",
         absl::StrCat("SELECT ", kRecordColumns,
                      " FROM operations WHERE tenant = $1 AND (cardinality($2::int[]) = 0 OR "
                      "state = ANY($2::int[])) AND ($3 = 0 OR provider = $3) AND ($4 = 0 OR task = "
                      "$4) AND ($5 = '' OR id < $5) ORDER BY id DESC LIMIT $6")},
        {"events_after",
         "SELECT sequence, snapshot FROM operation_events WHERE operation_id = $1 AND sequence > "
         "$2 ORDER BY sequence"},
        // A bounded batch, so a dead replica's operations spread over the survivors; SKIP LOCKED:
        // a row another replica is claiming or updating right now is left to the next claim.
        {"claim",
         "UPDATE operations SET owner = $1, lease_until_us = $2 WHERE id IN (SELECT id FROM "
         "operations WHERE NOT done AND (owner = '' OR lease_until_us < $3) ORDER BY "
         "lease_until_us LIMIT $4 FOR UPDATE SKIP LOCKED)"},
        {"next_expiry",
         "SELECT MIN(lease_until_us) FROM operations WHERE NOT done AND owner <> '' AND "
         "owner <> $1"},
        // Only for an operation that is still live; the first request's reason stays.
        {"cancel_request",
         "INSERT INTO cancel_requests (operation_id, reason, request_time_us) SELECT id, $2, $3 "
         "FROM operations WHERE id = $1 AND NOT done ON CONFLICT (operation_id) DO NOTHING"},
        {"cancel_notify", "SELECT pg_notify('musicgw_cancels', $1::text)"},
        {"pending_cancels",
         "SELECT c.operation_id, c.reason FROM cancel_requests c JOIN operations o ON o.id = "
         "c.operation_id WHERE o.owner = $1 AND NOT o.done ORDER BY c.operation_id"},
        {"owned_live", absl::StrCat("SELECT ", kRecordColumns,
                                    " FROM operations WHERE NOT done AND owner = $1 ORDER BY id")},
        {"renew", "UPDATE operations SET lease_until_us = $1 WHERE NOT done AND owner = $2"},
        // One row rewritten in place: a real write (WAL record, commit) that changes nothing.
        {"probe",
         "UPDATE schema_migrations SET applied_time_us = applied_time_us WHERE version = (SELECT "
         "MAX(version) FROM schema_migrations)"},
        {"set_outputs", "UPDATE operations SET upstream_outputs = $1 WHERE id = $2"},
        {"set_asset",
         "INSERT INTO assets (operation_id, idx, size_bytes, sha256) VALUES ($1, $2, $3, $4) "
         "ON CONFLICT (operation_id, idx) DO UPDATE SET size_bytes = EXCLUDED.size_bytes, "
         "sha256 = EXCLUDED.sha256"},
        {"assets",
         "SELECT idx, size_bytes, sha256, in_custody FROM assets WHERE operation_id = $1"},
        {"custody_pending",
         "INSERT INTO asset_custody (operation_id, idx, tenant, state, pending_since_us, "
         "next_attempt_us) SELECT $1::text, i, $2::text, 1, $4::bigint, $5::bigint FROM "
         "generate_series(0, $3::int - 1) AS i "
         "ON CONFLICT DO NOTHING"},
        {"custody_held",
         "UPDATE asset_custody SET state = 2, sha256 = $3, size_bytes = $4, expire_time_us = $5 "
         "WHERE operation_id = $1 AND idx = $2"},
        {"custody_facts",
         "INSERT INTO assets (operation_id, idx, size_bytes, sha256, in_custody) VALUES ($1, $2, "
         "$3, $4, TRUE) ON CONFLICT (operation_id, idx) DO UPDATE SET size_bytes = "
         "EXCLUDED.size_bytes, sha256 = EXCLUDED.sha256, in_custody = TRUE"},
        {"custody_defer",
         "UPDATE asset_custody SET attempts = $3, next_attempt_us = $4 WHERE operation_id = $1 "
         "AND idx = $2 AND state = 1"},
        {"custody_get", absl::StrCat("SELECT ", kCustodyColumns,
                                     " FROM asset_custody WHERE operation_id = $1 ORDER BY idx")},
        {"custody_due",
         absl::StrCat("SELECT ", kCustodyColumns,
                      " FROM asset_custody WHERE state = 1 AND next_attempt_us <= $1 ORDER BY "
                      "next_attempt_us LIMIT $2")},
        // SKIP LOCKED: two replicas sweeping at once expire disjoint rows.
        {"custody_expire",
         absl::StrCat("UPDATE asset_custody SET state = 3 WHERE (operation_id, idx) IN (SELECT "
                      "operation_id, idx FROM asset_custody WHERE state = 2 AND expire_time_us < "
                      "$1 ORDER BY expire_time_us LIMIT $2 FOR UPDATE SKIP LOCKED) RETURNING ",
                      kCustodyColumns)},
        {"custody_unflag",
         "UPDATE assets SET in_custody = FALSE WHERE operation_id = $1 AND idx = $2"},
        {"custody_digest_refs",
         "SELECT COUNT(*) FROM asset_custody WHERE sha256 = $1 AND state = 2"},
        {"custody_held_bytes",
         "SELECT COALESCE(SUM(size_bytes), 0) FROM (SELECT DISTINCT sha256, size_bytes FROM "
         "asset_custody WHERE state = 2) AS held"},
        {"custody_pending_summary",
         "SELECT COUNT(*), COALESCE(MIN(pending_since_us), 0) FROM asset_custody WHERE state = 1"},
        // Events, then cancel requests, of operations done before $1; counts both.
        {"prune",
         "WITH gone AS (SELECT id FROM operations WHERE done AND done_time_us < $1), "
         "events AS (DELETE FROM operation_events WHERE operation_id IN (SELECT id FROM gone) "
         "RETURNING 1), cancels AS (DELETE FROM cancel_requests WHERE operation_id IN (SELECT id "
         "FROM gone) RETURNING 1) SELECT (SELECT COUNT(*) FROM events) + (SELECT COUNT(*) FROM "
         "cancels)"},
        // What a budget counts since its period's start (SplitLedgerCount): reserved (not done)
        // and used (done), from whole days' and hours' counters and the rows of a partial hour
        // (none for a budget period, which starts on the hour).
        {"budget_usage",
         "SELECT COALESCE(SUM(r), 0)::BIGINT, COALESCE(SUM(u), 0)::BIGINT FROM ("
         "SELECT reserved AS r, used AS u FROM budget_counts "
         "WHERE tenant = $1 AND task = $2 AND hours = 24 AND bucket >= $3 "
         "UNION ALL SELECT reserved, used FROM budget_counts "
         "WHERE tenant = $1 AND task = $2 AND hours = 1 AND bucket >= $4 AND bucket < $5 "
         "UNION ALL SELECT (NOT done)::INTEGER, done::INTEGER FROM operations "
         "WHERE tenant = $1 AND task = $2 AND create_time_us >= $6 AND create_time_us < $7 AND "
         "(state NOT IN (4, 5) OR charged)) counted"},
        // Charged operations since an instant (SplitLedgerCount): whole days' and hours'
        // counters, and the rows of the partial hour.
        {"charged",
         "SELECT task, SUM(n)::BIGINT FROM ("
         "SELECT task, charged AS n FROM charged_counts "
         "WHERE provider = $1 AND provider_account = $2 AND hours = 24 AND bucket >= $3 "
         "UNION ALL SELECT task, charged FROM charged_counts "
         "WHERE provider = $1 AND provider_account = $2 AND hours = 1 AND bucket >= $4 AND "
         "bucket < $5 "
         "UNION ALL SELECT task, 1 FROM operations "
         "WHERE provider = $1 AND provider_account = $2 AND create_time_us >= $6 AND "
         "create_time_us < $7 AND charged) counted GROUP BY task HAVING SUM(n) <> 0"},

        {"durations",
         "SELECT done_time_us - create_time_us FROM operations WHERE provider = $1 AND "
         "provider_account = $2 AND task = $3 AND state = 3 AND done_time_us IS NOT NULL "
         "ORDER BY done_time_us DESC LIMIT $4"},
    };
    pg::AddOutboxStatements(all);
    return all;
  }();
  return *statements;
}

std::string IdOf(const v1::Operation& op) {
  OperationRecord record;
  record.operation.set_name(op.name());
  return record.id();
}

class PostgresOperationStore final : public OperationStore {
 public:
  explicit PostgresOperationStore(PostgresOptions options)
      : clock_(*options.clock),
        claim_batch_(options.claim_batch),
        conflict_attempts_(std::max(1, options.conflict_attempts)),
        pool_(std::move(options), LedgerStatements()) {}

  absl::Status Migrate() {
    MUSICGW_ASSIGN_OR_RETURN(auto conn, pool_.Acquire());
    Transaction txn(conn);
    MUSICGW_RETURN_IF_ERROR(txn.Begin());
    MUSICGW_RETURN_IF_ERROR(
        conn->Simple(absl::StrCat("SELECT pg_advisory_xact_lock(", kMigrationLock, ")").c_str())
            .status());
    MUSICGW_RETURN_IF_ERROR(
        conn->Simple("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
                     "applied_time_us BIGINT NOT NULL)")
            .status());
    MUSICGW_ASSIGN_OR_RETURN(
        Result current, conn->Simple("SELECT COALESCE(MAX(version), 0) FROM schema_migrations"));
    const int64_t have = IntCell(current.get(), 0, 0);
    const int64_t latest = sizeof(kMigrations) / sizeof(kMigrations[0]);
    if (have > latest) {
      return absl::FailedPreconditionError(absl::StrCat("ledger schema version ", have,
                                                        " is newer than this binary (", latest,
                                                        "); refusing to open"));
    }
    for (int64_t version = have + 1; version <= latest; ++version) {
      MUSICGW_RETURN_IF_ERROR(conn->Simple(kMigrations[version - 1]).status());
      MUSICGW_RETURN_IF_ERROR(
          conn->Simple(absl::StrCat("INSERT INTO schema_migrations VALUES (", version, ", ",
                                    absl::ToUnixMicros(clock_.Now()), ")")
                           .c_str())
              .status());
    }
    return txn.Commit();
  }

  absl::StatusOr<CreateResult> Create(const OperationRecord& record,
                                      const std::vector<BudgetCheck>& budgets) override {
    return RetryConflicts([&] { return CreateOnce(record, budgets); });
  }

  absl::Status Update(const OperationUpdate& update) override {
    return RetryConflicts([&] { return UpdateOnce(update); });
  }

  absl::StatusOr<OperationRecord> Get(absl::string_view id) override {
    MUSICGW_ASSIGN_OR_RETURN(auto conn, pool_.Acquire());
    MUSICGW_ASSIGN_OR_RETURN(Result result, conn->Run("get", {Param::Text(id)}));
    if (PQntuples(result.get()) == 0) {
      return absl::NotFoundError(absl::StrCat("operation ", id, " not found"));
    }
    return ReadRecord(conn, result.get(), 0);
  }

  absl::StatusOr<OperationRecord> FindByRequestId(absl::string_view tenant,
                                                  absl::string_view request_id) override {
    MUSICGW_ASSIGN_OR_RETURN(auto conn, pool_.Acquire());
    MUSICGW_ASSIGN_OR_RETURN(Result result,
                             conn->Run("find", {Param::Text(tenant), Param::Text(request_id)}));
    if (PQntuples(result.get()) == 0) {
      return absl::NotFoundError("no operation with that request_id");
    }
    return ReadRecord(conn, result.get(), 0);
  }

  absl::StatusOr<std::vector<OperationRecord>> List(const ListQuery& query) override {
    std::vector<std::string> states;
    for (auto state : query.states) states.push_back(absl::StrCat(static_cast<int>(state)));
    MUSICGW_ASSIGN_OR_RETURN(auto conn, pool_.Acquire());
    MUSICGW_ASSIGN_OR_RETURN(
        Result result,
        conn->Run("list", {Param::Text(query.tenant),
                           Param::Text(absl::StrCat("{", absl::StrJoin(states, ","), "}")),
                           Param::Int(query.provider), Param::Int(query.task),
                           Param::Text(query.before_id), Param::Int(query.limit)}));
    return ReadRecords(conn, result.get());
  }

  absl::StatusOr<std::vector<StoredEvent>> EventsAfter(absl::string_view id,
                                                       int64_t after_sequence) override {
    MUSICGW_ASSIGN_OR_RETURN(auto conn, pool_.Acquire());
    MUSICGW_ASSIGN_OR_RETURN(
        Result result, conn->Run("events_after", {Param::Text(id), Param::Int(after_sequence)}));
    std::vector<StoredEvent> events;
    for (int row = 0; row < PQntuples(result.get()); ++row) {
      StoredEvent event;
      event.sequence = IntCell(result.get(), row, 0);
      if (!event.operation.ParseFromString(BytesCell(result.get(), row, 1))) {
        return absl::DataLossError(absl::StrCat("ledger: corrupt event of operation ", id));
      }
      events.push_back(std::move(event));
    }
    return events;
  }

  absl::StatusOr<std::vector<OperationRecord>> ClaimLive(absl::string_view owner,
                                                         absl::Time lease_until) override {
    MUSICGW_ASSIGN_OR_RETURN(auto conn, pool_.Acquire());
    // What it owns already (e.g. before its own restart) is renewed, not claimed.
    MUSICGW_RETURN_IF_ERROR(
        conn->Run("renew", {Param::Int(LedgerMicros(lease_until)), Param::Text(owner)}).status());
    MUSICGW_RETURN_IF_ERROR(
        conn->Run("claim", {Param::Text(owner), Param::Int(LedgerMicros(lease_until)),
                            Param::Int(LedgerMicros(clock_.Now())), Param::Int(claim_batch_)})
            .status());
    MUSICGW_ASSIGN_OR_RETURN(Result result, conn->Run("owned_live", {Param::Text(owner)}));
    return ReadRecords(conn, result.get());
  }

  absl::Status RenewLeases(absl::string_view owner, absl::Time lease_until) override {
    MUSICGW_ASSIGN_OR_RETURN(auto conn, pool_.Acquire());
    return conn->Run("renew", {Param::Int(LedgerMicros(lease_until)), Param::Text(owner)}).status();
  }

  absl::Status Nudge(v1::Provider provider, absl::string_view upstream_id) override {
    MUSICGW_ASSIGN_OR_RETURN(auto conn, pool_.Acquire());
    return conn->Run("nudge", {Param::Int(provider), Param::Text(upstream_id)}).status();
  }

  absl::StatusOr<absl::Time> NextLeaseExpiry(absl::string_view owner) override {
    MUSICGW_ASSIGN_OR_RETURN(auto conn, pool_.Acquire());
    MUSICGW_ASSIGN_OR_RETURN(Result result, conn->Run("next_expiry", {Param::Text(owner)}));
    if (PQntuples(result.get()) == 0 || PQgetisnull(result.get(), 0, 0) != 0) {
      return absl::InfiniteFuture();
    }
    return FromLedgerMicros(IntCell(result.get(), 0, 0));
  }

  absl::Status RequestCancel(absl::string_view id, absl::string_view reason,
                             absl::Time now) override {
    MUSICGW_ASSIGN_OR_RETURN(auto conn, pool_.Acquire());
    Transaction txn(conn);
    MUSICGW_RETURN_IF_ERROR(txn.Begin());
    MUSICGW_RETURN_IF_ERROR(conn->Run("cancel_request", {Param::Text(id), Param::Text(reason),
                                                         Param::Int(LedgerMicros(now))})
                                .status());
    MUSICGW_ASSIGN_OR_RETURN(Result seq, conn->Run("sequence", {Param::Text(id)}));
    if (PQntuples(seq.get()) == 0) {
      return absl::NotFoundError(absl::StrCat("ledger: no operation ", id));
    }
    // Announced again on a repeated request: applying it twice is harmless.
    MUSICGW_RETURN_IF_ERROR(conn->Run("cancel_notify", {Param::Text(id)}).status());
    return txn.Commit();
  }

  absl::StatusOr<std::map<std::string, std::string>> PendingCancels(
      absl::string_view owner) override {
    MUSICGW_ASSIGN_OR_RETURN(auto conn, pool_.Acquire());
    MUSICGW_ASSIGN_OR_RETURN(Result result, conn->Run("pending_cancels", {Param::Text(owner)}));
    std::map<std::string, std::string> pending;
    for (int row = 0; row < PQntuples(result.get()); ++row) {
      pending.emplace(PQgetvalue(result.get(), row, 0), PQgetvalue(result.get(), row, 1));
    }
    return pending;
  }

  absl::Status ProbeWrite() override {
    MUSICGW_ASSIGN_OR_RETURN(auto conn, pool_.Acquire());
    return conn->Run("probe", {}).status();
  }

  absl::Status SetUpstreamOutputs(absl::string_view id,
                                  const std::vector<UpstreamOutput>& outputs) override {
    MUSICGW_ASSIGN_OR_RETURN(auto conn, pool_.Acquire());
    return conn->Run("set_outputs", {Param::Text(UpstreamOutputsToJson(outputs)), Param::Text(id)})
        .status();
  }

  absl::Status SetAssetFacts(absl::string_view id, int index, int64_t size_bytes,
                             absl::string_view sha256) override {
    MUSICGW_ASSIGN_OR_RETURN(auto conn, pool_.Acquire());
    return conn
        ->Run("set_asset",
              {Param::Text(id), Param::Int(index), Param::Int(size_bytes), Param::Text(sha256)})
        .status();
  }

  absl::Status AddPendingCustody(absl::string_view id, absl::string_view tenant, int count,
                                 absl::Time now, absl::Time next_attempt) override {
    MUSICGW_ASSIGN_OR_RETURN(auto conn, pool_.Acquire());
    return conn
        ->Run("custody_pending",
              {Param::Text(id), Param::Text(tenant), Param::Int(count),
               Param::Int(LedgerMicros(now)), Param::Int(LedgerMicros(next_attempt))})
        .status();
  }

  absl::Status RecordCustody(absl::string_view id, int index, int64_t size_bytes,
                             absl::string_view sha256, absl::Time expire_time) override {
    MUSICGW_ASSIGN_OR_RETURN(auto conn, pool_.Acquire());
    Transaction txn(conn);
    MUSICGW_RETURN_IF_ERROR(txn.Begin());
    MUSICGW_RETURN_IF_ERROR(
        conn->Run("custody_held", {Param::Text(id), Param::Int(index), Param::Text(sha256),
                                   Param::Int(size_bytes), Param::Int(LedgerMicros(expire_time))})
            .status());
    MUSICGW_RETURN_IF_ERROR(
        conn->Run("custody_facts",
                  {Param::Text(id), Param::Int(index), Param::Int(size_bytes), Param::Text(sha256)})
            .status());
    return txn.Commit();
  }

  absl::Status DeferCustody(absl::string_view id, int index, int attempts,
                            absl::Time next_attempt) override {
    MUSICGW_ASSIGN_OR_RETURN(auto conn, pool_.Acquire());
    return conn
        ->Run("custody_defer", {Param::Text(id), Param::Int(index), Param::Int(attempts),
                                Param::Int(LedgerMicros(next_attempt))})
        .status();
  }

  absl::StatusOr<std::vector<CustodyRecord>> GetCustody(absl::string_view id) override {
    MUSICGW_ASSIGN_OR_RETURN(auto conn, pool_.Acquire());
    MUSICGW_ASSIGN_OR_RETURN(Result result, conn->Run("custody_get", {Param::Text(id)}));
    return ReadCustody(result.get());
  }

  absl::StatusOr<std::vector<CustodyRecord>> DueCustody(absl::Time now, int limit) override {
    MUSICGW_ASSIGN_OR_RETURN(auto conn, pool_.Acquire());
    MUSICGW_ASSIGN_OR_RETURN(Result result, conn->Run("custody_due", {Param::Int(LedgerMicros(now)),
                                                                      Param::Int(limit)}));
    return ReadCustody(result.get());
  }

  absl::StatusOr<std::vector<CustodyRecord>> ExpireCustody(absl::Time now, int limit) override {
    MUSICGW_ASSIGN_OR_RETURN(auto conn, pool_.Acquire());
    Transaction txn(conn);
    MUSICGW_RETURN_IF_ERROR(txn.Begin());
    MUSICGW_ASSIGN_OR_RETURN(
        Result result,
        conn->Run("custody_expire", {Param::Int(LedgerMicros(now)), Param::Int(limit)}));
    std::vector<CustodyRecord> expired = ReadCustody(result.get());
    for (const auto& row : expired) {
      MUSICGW_RETURN_IF_ERROR(
          conn->Run("custody_unflag", {Param::Text(row.operation_id), Param::Int(row.index)})
              .status());
    }
    MUSICGW_RETURN_IF_ERROR(txn.Commit());
    return expired;
  }

  absl::StatusOr<int64_t> CountHeldDigest(absl::string_view sha256) override {
    MUSICGW_ASSIGN_OR_RETURN(auto conn, pool_.Acquire());
    MUSICGW_ASSIGN_OR_RETURN(Result result,
                             conn->Run("custody_digest_refs", {Param::Text(sha256)}));
    return PQntuples(result.get()) > 0 ? IntCell(result.get(), 0, 0) : 0;
  }

  absl::StatusOr<CustodySummary> ReadCustodySummary() override {
    MUSICGW_ASSIGN_OR_RETURN(auto conn, pool_.Acquire());
    CustodySummary summary;
    MUSICGW_ASSIGN_OR_RETURN(Result held, conn->Run("custody_held_bytes", {}));
    if (PQntuples(held.get()) > 0) summary.held_bytes = IntCell(held.get(), 0, 0);
    MUSICGW_ASSIGN_OR_RETURN(Result pending, conn->Run("custody_pending_summary", {}));
    if (PQntuples(pending.get()) > 0) {
      summary.pending = IntCell(pending.get(), 0, 0);
      if (summary.pending > 0)
        summary.oldest_pending = FromLedgerMicros(IntCell(pending.get(), 0, 1));
    }
    return summary;
  }

  absl::StatusOr<int64_t> PruneEvents(absl::Time done_before) override {
    MUSICGW_ASSIGN_OR_RETURN(auto conn, pool_.Acquire());
    MUSICGW_ASSIGN_OR_RETURN(Result result,
                             conn->Run("prune", {Param::Int(LedgerMicros(done_before))}));
    return IntCell(result.get(), 0, 0);
  }

  absl::StatusOr<BudgetUsage> ReadBudget(absl::string_view tenant, v1::TaskKind task,
                                         absl::Time period_start) override {
    MUSICGW_ASSIGN_OR_RETURN(auto conn, pool_.Acquire());
    MUSICGW_ASSIGN_OR_RETURN(Result result,
                             conn->Run("budget_usage", BudgetParams(tenant, task, period_start)));
    BudgetUsage usage;
    if (PQntuples(result.get()) > 0) {
      usage.reserved = IntCell(result.get(), 0, 0);
      usage.used = IntCell(result.get(), 0, 1);
    }
    return usage;
  }

  absl::StatusOr<std::map<v1::TaskKind, int64_t>> CountCharged(v1::Provider provider,
                                                               absl::string_view account,
                                                               absl::Time since) override {
    MUSICGW_ASSIGN_OR_RETURN(auto conn, pool_.Acquire());
    MUSICGW_ASSIGN_OR_RETURN(
        Result result,
        conn->Run("charged", CountParams(Param::Int(provider), Param::Text(account), since)));
    std::map<v1::TaskKind, int64_t> counts;
    for (int row = 0; row < PQntuples(result.get()); ++row) {
      counts[static_cast<v1::TaskKind>(IntCell(result.get(), row, 0))] =
          IntCell(result.get(), row, 1);
    }
    return counts;
  }

  absl::StatusOr<std::vector<absl::Duration>> RecentDurations(v1::Provider provider,
                                                              absl::string_view account,
                                                              v1::TaskKind task,
                                                              int limit) override {
    MUSICGW_ASSIGN_OR_RETURN(auto conn, pool_.Acquire());
    MUSICGW_ASSIGN_OR_RETURN(Result result,
                             conn->Run("durations", {Param::Int(provider), Param::Text(account),
                                                     Param::Int(task), Param::Int(limit)}));
    const int rows = PQntuples(result.get());
    std::vector<absl::Duration> durations;
    durations.reserve(rows);
    for (int row = 0; row < rows; ++row) {
      durations.push_back(absl::Microseconds(IntCell(result.get(), row, 0)));
    }
    return durations;
  }

  absl::Status EnqueueOutbox(const OutboxMessage& message) override {
    MUSICGW_ASSIGN_OR_RETURN(auto conn, pool_.Acquire());
    return pg::InsertOutbox(conn, message, message.create_time);
  }
  absl::StatusOr<std::vector<OutboxDelivery>> ClaimDueDeliveries(absl::Time now,
                                                                 absl::Time claim_until,
                                                                 int limit) override {
    MUSICGW_ASSIGN_OR_RETURN(auto conn, pool_.Acquire());
    return pg::ClaimDueDeliveries(conn, now, claim_until, limit);
  }
  absl::Status RecordDeliveryAttempt(const DeliveryAttempt& attempt, DeliveryStatus status,
                                     absl::Time next_attempt_time) override {
    MUSICGW_ASSIGN_OR_RETURN(auto conn, pool_.Acquire());
    return pg::RecordDeliveryAttempt(conn, attempt, status, next_attempt_time);
  }
  absl::StatusOr<std::vector<OutboxDelivery>> ListDeliveries(const DeliveryQuery& query) override {
    MUSICGW_ASSIGN_OR_RETURN(auto conn, pool_.Acquire());
    return pg::ListDeliveries(conn, query);
  }
  absl::StatusOr<std::vector<DeliveryAttempt>> ListDeliveryAttempts(
      absl::string_view delivery_id) override {
    MUSICGW_ASSIGN_OR_RETURN(auto conn, pool_.Acquire());
    return pg::ListDeliveryAttempts(conn, delivery_id);
  }
  absl::Status Redeliver(absl::string_view tenant, absl::string_view delivery_id,
                         absl::Time now) override {
    MUSICGW_ASSIGN_OR_RETURN(auto conn, pool_.Acquire());
    return pg::Redeliver(conn, tenant, delivery_id, now);
  }

 private:
  // Runs `attempt` (one whole transaction) again while PostgreSQL rolls it back for a conflict.
  template <typename Attempt>
  auto RetryConflicts(Attempt attempt) -> decltype(attempt()) {
    for (int tries = 1;; ++tries) {
      auto result = attempt();
      if (tries >= conflict_attempts_ || !pg::IsTransactionConflict(StatusOf(result))) {
        return result;
      }
    }
  }
  static const absl::Status& StatusOf(const absl::Status& status) { return status; }
  template <typename T>
  static absl::Status StatusOf(const absl::StatusOr<T>& result) {
    return result.status();
  }

  absl::StatusOr<CreateResult> CreateOnce(const OperationRecord& record,
                                          const std::vector<BudgetCheck>& budgets) {
    MUSICGW_ASSIGN_OR_RETURN(auto conn, pool_.Acquire());
    Transaction txn(conn);
    MUSICGW_RETURN_IF_ERROR(txn.Begin());
    // One tenant's Creates serialize on every replica: request_id uniqueness and budget
    // admission are then exact, and other tenants are not held up.
    MUSICGW_RETURN_IF_ERROR(conn->Run("tenant_lock", {Param::Text(record.tenant)}).status());
    MUSICGW_ASSIGN_OR_RETURN(Result existing, conn->Run("find", {Param::Text(record.tenant),
                                                                 Param::Text(record.request_id)}));
    if (PQntuples(existing.get()) > 0) {
      MUSICGW_ASSIGN_OR_RETURN(OperationRecord found, ReadRecord(conn, existing.get(), 0));
      return CreateResult{std::move(found), false};
    }
    for (const BudgetCheck& budget : budgets) {
      MUSICGW_ASSIGN_OR_RETURN(
          Result count, budget.live_only
                            ? conn->Run("live_count", {Param::Text(record.tenant)})
                            : conn->Run("budget_usage", BudgetParams(record.tenant, budget.task,
                                                                     budget.period_start)));
      const int64_t used =
          IntCell(count.get(), 0, 0) + (budget.live_only ? 0 : IntCell(count.get(), 0, 1));
      if (used >= budget.limit) return BudgetRefusal(record.tenant, budget, used, clock_.Now());
    }
    const v1::Operation& op = record.operation;
    const std::string id = record.id();
    const std::string snapshot = op.SerializeAsString();
    MUSICGW_RETURN_IF_ERROR(
        conn->Run(
                "insert",
                {Param::Text(id), Param::Text(record.tenant), Param::Text(record.request_id),
                 Param::Text(record.request_hash), Param::Int(op.state()), Param::Bool(op.done()),
                 Param::Int(op.provider()), Param::Int(op.task()),
                 Param::Int(LedgerMicros(FromProtoTimestamp(op.create_time()))),
                 Param::Int(op.sequence()), Param::Bool(record.charged), Param::Text(record.owner),
                 Param::Int(LedgerMicros(record.lease_until)), Param::Bytes(snapshot),
                 Param::Text(UpstreamOutputsToJson(record.upstream_outputs)),
                 Param::Text(op.provider_account())})
            .status());
    MUSICGW_RETURN_IF_ERROR(conn->Run("insert_event", {Param::Text(id), Param::Int(op.sequence()),
                                                       Param::Bytes(snapshot)})
                                .status());
    MUSICGW_RETURN_IF_ERROR(
        conn->Run("notify", {Param::Text(id), Param::Int(op.sequence())}).status());
    MUSICGW_RETURN_IF_ERROR(txn.Commit());
    return CreateResult{record, true};
  }

  absl::Status UpdateOnce(const OperationUpdate& update) {
    const v1::Operation& op = update.operation;
    if (op.sequence() != update.expected_sequence + 1) {
      return absl::InvalidArgumentError("ledger: sequence must advance by one");
    }
    const std::string id = IdOf(op);
    const std::string snapshot = op.SerializeAsString();
    MUSICGW_ASSIGN_OR_RETURN(auto conn, pool_.Acquire());
    Transaction txn(conn);
    MUSICGW_RETURN_IF_ERROR(txn.Begin());
    MUSICGW_ASSIGN_OR_RETURN(
        Result updated,
        conn->Run(
            "update",
            {Param::Int(op.state()), Param::Bool(op.done()), Param::Int(op.provider()),
             op.has_done_time() ? Param::Int(LedgerMicros(FromProtoTimestamp(op.done_time())))
                                : Param::Null(),
             Param::Int(op.sequence()), Param::Bool(update.charged), Param::Bytes(snapshot),
             Param::Text(op.provider_account()),
             update.upstream_outputs.has_value()
                 ? Param::Text(UpstreamOutputsToJson(*update.upstream_outputs))
                 : Param::Null(),
             Param::Text(id), Param::Int(update.expected_sequence), Param::Text(update.owner)}));
    if (absl::string_view(PQcmdTuples(updated.get())) != "1") {
      MUSICGW_ASSIGN_OR_RETURN(Result seq, conn->Run("sequence", {Param::Text(id)}));
      if (PQntuples(seq.get()) == 0) {
        return absl::NotFoundError(absl::StrCat("ledger: no operation ", id));
      }
      if (IntCell(seq.get(), 0, 0) == update.expected_sequence) {
        return absl::AbortedError(
            absl::StrCat("ledger: operation ", id, " is owned by another replica"));
      }
      return absl::AbortedError(absl::StrCat("ledger: operation ", id, " is at sequence ",
                                             IntCell(seq.get(), 0, 0), ", not ",
                                             update.expected_sequence));
    }
    MUSICGW_RETURN_IF_ERROR(conn->Run("insert_event", {Param::Text(id), Param::Int(op.sequence()),
                                                       Param::Bytes(snapshot)})
                                .status());
    for (const OutboxMessage& message : update.outbox) {
      MUSICGW_RETURN_IF_ERROR(pg::InsertOutbox(conn, message, message.create_time));
    }
    MUSICGW_RETURN_IF_ERROR(
        conn->Run("notify", {Param::Text(id), Param::Int(op.sequence())}).status());
    return txn.Commit();
  }

  absl::StatusOr<OperationRecord> ReadRecord(Pool::Lease& conn, const PGresult* result, int row) {
    OperationRecord record;
    const std::string id = Cell(result, row, 0);
    record.tenant = Cell(result, row, 1);
    record.request_id = Cell(result, row, 2);
    record.request_hash = Cell(result, row, 3);
    record.charged = BoolCell(result, row, 4);
    record.owner = Cell(result, row, 5);
    if (!record.operation.ParseFromString(BytesCell(result, row, 6))) {
      return absl::DataLossError(absl::StrCat("ledger: corrupt snapshot of operation ", id));
    }
    record.upstream_outputs = UpstreamOutputsFromJson(Cell(result, row, 7));
    if (record.operation.outputs_size() > 0) {
      MUSICGW_ASSIGN_OR_RETURN(Result assets, conn->Run("assets", {Param::Text(id)}));
      for (int i = 0; i < PQntuples(assets.get()); ++i) {
        const int64_t index = IntCell(assets.get(), i, 0);
        if (index < 0 || index >= record.operation.outputs_size()) continue;
        auto* asset = record.operation.mutable_outputs(static_cast<int>(index));
        asset->set_size_bytes(IntCell(assets.get(), i, 1));
        asset->set_sha256(Cell(assets.get(), i, 2));
        asset->set_in_custody(BoolCell(assets.get(), i, 3));
      }
    }
    return record;
  }

  static std::vector<CustodyRecord> ReadCustody(const PGresult* result) {
    std::vector<CustodyRecord> rows;
    for (int row = 0; row < PQntuples(result); ++row) {
      CustodyRecord record;
      record.operation_id = Cell(result, row, 0);
      record.index = static_cast<int>(IntCell(result, row, 1));
      record.tenant = Cell(result, row, 2);
      record.state = static_cast<CustodyState>(IntCell(result, row, 3));
      record.sha256 = Cell(result, row, 4);
      record.size_bytes = IntCell(result, row, 5);
      record.pending_since = FromLedgerMicros(IntCell(result, row, 6));
      record.next_attempt = FromLedgerMicros(IntCell(result, row, 7));
      record.attempts = static_cast<int>(IntCell(result, row, 8));
      record.expire_time = FromLedgerMicros(IntCell(result, row, 9));
      rows.push_back(std::move(record));
    }
    return rows;
  }

  absl::StatusOr<std::vector<OperationRecord>> ReadRecords(Pool::Lease& conn,
                                                           const PGresult* result) {
    std::vector<OperationRecord> records;
    for (int row = 0; row < PQntuples(result); ++row) {
      MUSICGW_ASSIGN_OR_RETURN(OperationRecord record, ReadRecord(conn, result, row));
      records.push_back(std::move(record));
    }
    return records;
  }

  const Clock& clock_;
  const int64_t claim_batch_;
  const int conflict_attempts_;
  Pool pool_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<OperationStore>> OpenPostgresOperationStore(
    PostgresOptions options) {
  if (options.dsn.empty()) return absl::InvalidArgumentError("ledger: empty PostgreSQL DSN");
  if (options.pool_size < 1) return absl::InvalidArgumentError("ledger: pool_size must be >= 1");
  if (options.claim_batch < 1) {
    return absl::InvalidArgumentError("ledger: claim_batch must be >= 1");
  }
  if (options.clock == nullptr) options.clock = &Clock::Real();
  auto store = std::make_unique<PostgresOperationStore>(std::move(options));
  MUSICGW_RETURN_IF_ERROR(store->Migrate());
  return store;
}

}  // namespace musicgw::operations
