#include "services/operations/postgres_outbox.h"

#include <libpq-fe.h>

#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "services/operations/ledger_codec.h"

namespace musicgw::operations::pg {

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
  create_time_us BIGINT NOT NULL,
  status INTEGER NOT NULL DEFAULT 0,
  attempts INTEGER NOT NULL DEFAULT 0,
  next_attempt_us BIGINT NOT NULL,
  last_status_code INTEGER NOT NULL DEFAULT 0,
  last_latency_us BIGINT NOT NULL DEFAULT 0,
  last_error TEXT NOT NULL DEFAULT ''
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_us) WHERE status = 0;
CREATE INDEX webhook_deliveries_by_operation ON webhook_deliveries (tenant, operation_id);
CREATE INDEX webhook_deliveries_by_endpoint ON webhook_deliveries (tenant, endpoint, create_time_us);
CREATE TABLE webhook_attempts (
  delivery_id TEXT NOT NULL,
  attempt INTEGER NOT NULL,
  time_us BIGINT NOT NULL,
  status_code INTEGER NOT NULL,
  latency_us BIGINT NOT NULL,
  error TEXT NOT NULL,
  PRIMARY KEY (delivery_id, attempt)
);
)sql";

namespace {

constexpr absl::string_view kColumns =
    "delivery_id, event_id, tenant, endpoint, url, operation_id, event_type, body, "
    "create_time_us, status, attempts, next_attempt_us, last_status_code, last_latency_us, "
    "last_error";

std::vector<OutboxDelivery> ReadDeliveries(const PGresult* r) {
  std::vector<OutboxDelivery> out;
  for (int row = 0; row < PQntuples(r); ++row) {
    OutboxDelivery d;
    d.message.delivery_id = Cell(r, row, 0);
    d.message.event_id = Cell(r, row, 1);
    d.message.tenant = Cell(r, row, 2);
    d.message.endpoint = Cell(r, row, 3);
    d.message.url = Cell(r, row, 4);
    d.message.operation_id = Cell(r, row, 5);
    d.message.event_type = Cell(r, row, 6);
    d.message.body = Cell(r, row, 7);
    d.message.create_time = FromLedgerMicros(IntCell(r, row, 8));
    d.status = static_cast<DeliveryStatus>(IntCell(r, row, 9));
    d.attempts = static_cast<int>(IntCell(r, row, 10));
    d.next_attempt_time = FromLedgerMicros(IntCell(r, row, 11));
    d.last_status_code = static_cast<int>(IntCell(r, row, 12));
    d.last_latency = absl::Microseconds(IntCell(r, row, 13));
    d.last_error = Cell(r, row, 14);
    out.push_back(std::move(d));
  }
  return out;
}

}  // namespace

void AddOutboxStatements(Statements* statements) {
  statements->emplace("outbox_insert",
                      "INSERT INTO webhook_deliveries (delivery_id, event_id, tenant, endpoint, "
                      "url, operation_id, event_type, body, create_time_us, next_attempt_us) "
                      "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)");
  statements->emplace(
      "outbox_claim",
      absl::StrCat("UPDATE webhook_deliveries SET next_attempt_us = $1 WHERE delivery_id IN "
                   "(SELECT delivery_id FROM webhook_deliveries WHERE status = 0 AND "
                   "next_attempt_us <= $2 ORDER BY next_attempt_us LIMIT $3 FOR UPDATE SKIP "
                   "LOCKED) RETURNING ",
                   kColumns));
  statements->emplace("outbox_attempt",
                      "INSERT INTO webhook_attempts (delivery_id, attempt, time_us, status_code, "
                      "latency_us, error) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT "
                      "(delivery_id, attempt) DO UPDATE SET time_us = excluded.time_us, "
                      "status_code = excluded.status_code, latency_us = excluded.latency_us, "
                      "error = excluded.error");
  statements->emplace("outbox_record",
                      "UPDATE webhook_deliveries SET status = $1, attempts = GREATEST(attempts, "
                      "$2), next_attempt_us = $3, last_status_code = $4, last_latency_us = $5, "
                      "last_error = $6 WHERE delivery_id = $7");
  statements->emplace(
      "outbox_list_all",
      absl::StrCat("SELECT ", kColumns,
                   " FROM webhook_deliveries WHERE tenant = $1 AND ($2 = '' OR "
                   "operation_id = $2) AND ($3 = '' OR endpoint = $3) AND ($5 = '' OR "
                   "delivery_id = $5) ORDER BY create_time_us, delivery_id LIMIT $4"));
  statements->emplace("outbox_attempts",
                      "SELECT attempt, time_us, status_code, latency_us, error FROM "
                      "webhook_attempts WHERE delivery_id = $1 ORDER BY attempt");
  statements->emplace("outbox_redeliver",
                      "UPDATE webhook_deliveries SET status = 0, next_attempt_us = $1 WHERE "
                      "delivery_id = $2 AND tenant = $3");
}

absl::Status InsertOutbox(Pool::Lease& conn, const OutboxMessage& m, absl::Time due) {
  return conn
      ->Run("outbox_insert",
            {Param::Text(m.delivery_id), Param::Text(m.event_id), Param::Text(m.tenant),
             Param::Text(m.endpoint), Param::Text(m.url), Param::Text(m.operation_id),
             Param::Text(m.event_type), Param::Text(m.body),
             Param::Int(LedgerMicros(m.create_time)), Param::Int(LedgerMicros(due))})
      .status();
}

absl::StatusOr<std::vector<OutboxDelivery>> ClaimDueDeliveries(Pool::Lease& conn, absl::Time now,
                                                               absl::Time claim_until, int limit) {
  MUSICGW_ASSIGN_OR_RETURN(
      Result r, conn->Run("outbox_claim", {Param::Int(LedgerMicros(claim_until)),
                                           Param::Int(LedgerMicros(now)), Param::Int(limit)}));
  return ReadDeliveries(r.get());
}

absl::Status RecordDeliveryAttempt(Pool::Lease& conn, const DeliveryAttempt& a,
                                   DeliveryStatus status, absl::Time next_attempt_time) {
  Transaction txn(conn);
  MUSICGW_RETURN_IF_ERROR(txn.Begin());
  MUSICGW_RETURN_IF_ERROR(
      conn->Run("outbox_attempt",
                {Param::Text(a.delivery_id), Param::Int(a.attempt),
                 Param::Int(LedgerMicros(a.time)), Param::Int(a.status_code),
                 Param::Int(absl::ToInt64Microseconds(a.latency)), Param::Text(a.error)})
          .status());
  MUSICGW_ASSIGN_OR_RETURN(
      Result updated,
      conn->Run("outbox_record",
                {Param::Int(static_cast<int64_t>(status)), Param::Int(a.attempt),
                 Param::Int(LedgerMicros(next_attempt_time)), Param::Int(a.status_code),
                 Param::Int(absl::ToInt64Microseconds(a.latency)), Param::Text(a.error),
                 Param::Text(a.delivery_id)}));
  if (absl::string_view(PQcmdTuples(updated.get())) != "1") {
    return absl::NotFoundError(absl::StrCat("no webhook delivery ", a.delivery_id));
  }
  return txn.Commit();
}

absl::StatusOr<std::vector<OutboxDelivery>> ListDeliveries(Pool::Lease& conn,
                                                           const DeliveryQuery& query) {
  MUSICGW_ASSIGN_OR_RETURN(
      Result r,
      conn->Run("outbox_list_all", {Param::Text(query.tenant), Param::Text(query.operation_id),
                                    Param::Text(query.endpoint), Param::Int(query.limit),
                                    Param::Text(query.delivery_id)}));
  return ReadDeliveries(r.get());
}

absl::StatusOr<std::vector<DeliveryAttempt>> ListDeliveryAttempts(Pool::Lease& conn,
                                                                  absl::string_view delivery_id) {
  MUSICGW_ASSIGN_OR_RETURN(Result r, conn->Run("outbox_attempts", {Param::Text(delivery_id)}));
  std::vector<DeliveryAttempt> out;
  for (int row = 0; row < PQntuples(r.get()); ++row) {
    DeliveryAttempt a;
    a.delivery_id = std::string(delivery_id);
    a.attempt = static_cast<int>(IntCell(r.get(), row, 0));
    a.time = FromLedgerMicros(IntCell(r.get(), row, 1));
    a.status_code = static_cast<int>(IntCell(r.get(), row, 2));
    a.latency = absl::Microseconds(IntCell(r.get(), row, 3));
    a.error = Cell(r.get(), row, 4);
    out.push_back(std::move(a));
  }
  return out;
}

absl::Status Redeliver(Pool::Lease& conn, absl::string_view tenant, absl::string_view delivery_id,
                       absl::Time now) {
  MUSICGW_ASSIGN_OR_RETURN(
      Result r, conn->Run("outbox_redeliver", {Param::Int(LedgerMicros(now)),
                                               Param::Text(delivery_id), Param::Text(tenant)}));
  if (absl::string_view(PQcmdTuples(r.get())) != "1") {
    return absl::NotFoundError(absl::StrCat("webhook delivery ", delivery_id, " not found"));
  }
  return absl::OkStatus();
}

}  // namespace musicgw::operations::pg
