#include "services/operations/sqlite_outbox.h"

#include <sqlite3.h>

#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "services/operations/ledger_codec.h"

namespace musicgw::operations::sqlite {

const char* const kOutboxMigration = R"sql(
CREATE TABLE webhook_deliveries (
  delivery_id TEXT PRIMARY KEY,
  event_id TEXT NOT NULL,
  tenant TEXT NOT NULL,
  endpoint TEXT NOT NULL,
  url TEXT NOT NULL,
  operation_id TEXT NOT NULL,
  event_type TEXT NOT NULL,
  body TEXT NOT NULL,
  create_time_us INTEGER NOT NULL,
  status INTEGER NOT NULL DEFAULT 0,
  attempts INTEGER NOT NULL DEFAULT 0,
  next_attempt_us INTEGER NOT NULL,
  last_status_code INTEGER NOT NULL DEFAULT 0,
  last_latency_us INTEGER NOT NULL DEFAULT 0,
  last_error TEXT NOT NULL DEFAULT ''
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_attempt_us);
CREATE INDEX webhook_deliveries_by_operation ON webhook_deliveries (tenant, operation_id);
CREATE INDEX webhook_deliveries_by_endpoint ON webhook_deliveries (tenant, endpoint, create_time_us);
CREATE TABLE webhook_attempts (
  delivery_id TEXT NOT NULL,
  attempt INTEGER NOT NULL,
  time_us INTEGER NOT NULL,
  status_code INTEGER NOT NULL,
  latency_us INTEGER NOT NULL,
  error TEXT NOT NULL,
  PRIMARY KEY (delivery_id, attempt)
) WITHOUT ROWID;
)sql";

namespace {

constexpr absl::string_view kColumns =
    "delivery_id, event_id, tenant, endpoint, url, operation_id, event_type, body, "
    "create_time_us, status, attempts, next_attempt_us, last_status_code, last_latency_us, "
    "last_error";

OutboxDelivery ReadDelivery(Stmt& stmt) {
  OutboxDelivery d;
  d.message.delivery_id = stmt.Text(0);
  d.message.event_id = stmt.Text(1);
  d.message.tenant = stmt.Text(2);
  d.message.endpoint = stmt.Text(3);
  d.message.url = stmt.Text(4);
  d.message.operation_id = stmt.Text(5);
  d.message.event_type = stmt.Text(6);
  d.message.body = stmt.Text(7);
  d.message.create_time = FromLedgerMicros(stmt.Int(8));
  d.status = static_cast<DeliveryStatus>(stmt.Int(9));
  d.attempts = static_cast<int>(stmt.Int(10));
  d.next_attempt_time = FromLedgerMicros(stmt.Int(11));
  d.last_status_code = static_cast<int>(stmt.Int(12));
  d.last_latency = absl::Microseconds(stmt.Int(13));
  d.last_error = stmt.Text(14);
  return d;
}

absl::StatusOr<std::vector<OutboxDelivery>> ReadDeliveries(Stmt& stmt) {
  std::vector<OutboxDelivery> out;
  while (true) {
    MUSICGW_ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) break;
    out.push_back(ReadDelivery(stmt));
  }
  return out;
}

}  // namespace

absl::Status InsertOutbox(StatementCache& statements, const OutboxMessage& message,
                          absl::Time due) {
  Stmt stmt(statements,
            "INSERT INTO webhook_deliveries (delivery_id, event_id, tenant, endpoint, url, "
            "operation_id, event_type, body, create_time_us, next_attempt_us) VALUES (?, ?, ?, "
            "?, ?, ?, ?, ?, ?, ?)");
  return stmt.Bind(1, message.delivery_id)
      .Bind(2, message.event_id)
      .Bind(3, message.tenant)
      .Bind(4, message.endpoint)
      .Bind(5, message.url)
      .Bind(6, message.operation_id)
      .Bind(7, message.event_type)
      .Bind(8, message.body)
      .Bind(9, LedgerMicros(message.create_time))
      .Bind(10, LedgerMicros(due))
      .Run();
}

absl::StatusOr<std::vector<OutboxDelivery>> ClaimDueDeliveries(StatementCache& statements,
                                                               absl::Time now,
                                                               absl::Time claim_until, int limit) {
  Stmt stmt(statements,
            absl::StrCat("UPDATE webhook_deliveries SET next_attempt_us = ? WHERE delivery_id IN "
                         "(SELECT delivery_id FROM webhook_deliveries WHERE status = 0 AND "
                         "next_attempt_us <= ? ORDER BY next_attempt_us LIMIT ?) RETURNING ",
                         kColumns));
  MUSICGW_RETURN_IF_ERROR(stmt.status());
  stmt.Bind(1, LedgerMicros(claim_until))
      .Bind(2, LedgerMicros(now))
      .Bind(3, static_cast<int64_t>(limit));
  return ReadDeliveries(stmt);
}

namespace {

absl::Status RecordInTransaction(StatementCache& statements, const DeliveryAttempt& attempt,
                                 DeliveryStatus status, absl::Time next_attempt_time) {
  Stmt insert(statements,
              "INSERT OR REPLACE INTO webhook_attempts (delivery_id, attempt, time_us, "
              "status_code, latency_us, error) VALUES (?, ?, ?, ?, ?, ?)");
  MUSICGW_RETURN_IF_ERROR(insert.Bind(1, attempt.delivery_id)
                              .Bind(2, static_cast<int64_t>(attempt.attempt))
                              .Bind(3, LedgerMicros(attempt.time))
                              .Bind(4, static_cast<int64_t>(attempt.status_code))
                              .Bind(5, absl::ToInt64Microseconds(attempt.latency))
                              .Bind(6, attempt.error)
                              .Run());
  Stmt update(statements,
              "UPDATE webhook_deliveries SET status = ?, attempts = MAX(attempts, ?), "
              "next_attempt_us = ?, last_status_code = ?, last_latency_us = ?, last_error = ? "
              "WHERE delivery_id = ?");
  MUSICGW_RETURN_IF_ERROR(update.Bind(1, static_cast<int64_t>(status))
                              .Bind(2, static_cast<int64_t>(attempt.attempt))
                              .Bind(3, LedgerMicros(next_attempt_time))
                              .Bind(4, static_cast<int64_t>(attempt.status_code))
                              .Bind(5, absl::ToInt64Microseconds(attempt.latency))
                              .Bind(6, attempt.error)
                              .Bind(7, attempt.delivery_id)
                              .Run());
  if (sqlite3_changes(statements.db()) != 1) {
    return absl::NotFoundError(absl::StrCat("no webhook delivery ", attempt.delivery_id));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status RecordDeliveryAttempt(StatementCache& statements, const DeliveryAttempt& attempt,
                                   DeliveryStatus status, absl::Time next_attempt_time) {
  MUSICGW_RETURN_IF_ERROR(Stmt(statements, "BEGIN IMMEDIATE").Run());
  absl::Status written = RecordInTransaction(statements, attempt, status, next_attempt_time);
  if (written.ok()) written = Stmt(statements, "COMMIT").Run();
  if (!written.ok()) Stmt(statements, "ROLLBACK").Run().IgnoreError();
  return written;
}

absl::StatusOr<std::vector<OutboxDelivery>> ListDeliveries(StatementCache& statements,
                                                           const DeliveryQuery& query) {
  std::string sql = absl::StrCat("SELECT ", kColumns, " FROM webhook_deliveries WHERE tenant = ?");
  if (!query.operation_id.empty()) sql += " AND operation_id = ?";
  if (!query.endpoint.empty()) sql += " AND endpoint = ?";
  if (!query.delivery_id.empty()) sql += " AND delivery_id = ?";
  sql += " ORDER BY create_time_us, delivery_id LIMIT ?";
  Stmt stmt(statements, sql);
  MUSICGW_RETURN_IF_ERROR(stmt.status());
  int i = 1;
  stmt.Bind(i++, query.tenant);
  if (!query.operation_id.empty()) stmt.Bind(i++, query.operation_id);
  if (!query.endpoint.empty()) stmt.Bind(i++, query.endpoint);
  if (!query.delivery_id.empty()) stmt.Bind(i++, query.delivery_id);
  stmt.Bind(i, static_cast<int64_t>(query.limit));
  return ReadDeliveries(stmt);
}

absl::StatusOr<std::vector<DeliveryAttempt>> ListDeliveryAttempts(StatementCache& statements,
                                                                  absl::string_view delivery_id) {
  Stmt stmt(statements,
            "SELECT attempt, time_us, status_code, latency_us, error FROM webhook_attempts "
            "WHERE delivery_id = ? ORDER BY attempt");
  stmt.Bind(1, delivery_id);
  std::vector<DeliveryAttempt> out;
  while (true) {
    MUSICGW_ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) break;
    DeliveryAttempt a;
    a.delivery_id = std::string(delivery_id);
    a.attempt = static_cast<int>(stmt.Int(0));
    a.time = FromLedgerMicros(stmt.Int(1));
    a.status_code = static_cast<int>(stmt.Int(2));
    a.latency = absl::Microseconds(stmt.Int(3));
    a.error = stmt.Text(4);
    out.push_back(std::move(a));
  }
  return out;
}

absl::Status Redeliver(StatementCache& statements, absl::string_view tenant,
                       absl::string_view delivery_id, absl::Time now) {
  Stmt stmt(statements,
            "UPDATE webhook_deliveries SET status = 0, next_attempt_us = ? WHERE delivery_id = ? "
            "AND tenant = ?");
  MUSICGW_RETURN_IF_ERROR(
      stmt.Bind(1, LedgerMicros(now)).Bind(2, delivery_id).Bind(3, tenant).Run());
  if (sqlite3_changes(statements.db()) != 1) {
    return absl::NotFoundError(absl::StrCat("webhook delivery ", delivery_id, " not found"));
  }
  return absl::OkStatus();
}

}  // namespace musicgw::operations::sqlite
