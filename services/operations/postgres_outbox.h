// File: postgres_outbox.h
// The webhook outbox's statements for the PostgreSQL ledger (outbox.h), apart from the
// operations' ones. Functions take a leased connection; the caller brackets transactions.
#pragma once

#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "services/operations/outbox.h"
#include "services/operations/postgres_connection.h"

namespace musicgw::operations::pg {

// The migration that adds the outbox tables.
extern const char* const kOutboxMigration;
// Adds the outbox's named statements to the ledger's.
void AddOutboxStatements(Statements* statements);

absl::Status InsertOutbox(Pool::Lease& conn, const OutboxMessage& message, absl::Time due);
// Claims with SKIP LOCKED: replicas never take the same due delivery twice.
absl::StatusOr<std::vector<OutboxDelivery>> ClaimDueDeliveries(Pool::Lease& conn, absl::Time now,
                                                               absl::Time claim_until, int limit);
absl::Status RecordDeliveryAttempt(Pool::Lease& conn, const DeliveryAttempt& attempt,
                                   DeliveryStatus status, absl::Time next_attempt_time);
absl::StatusOr<std::vector<OutboxDelivery>> ListDeliveries(Pool::Lease& conn,
                                                           const DeliveryQuery& query);
absl::StatusOr<std::vector<DeliveryAttempt>> ListDeliveryAttempts(Pool::Lease& conn,
                                                                  absl::string_view delivery_id);
absl::Status Redeliver(Pool::Lease& conn, absl::string_view tenant, absl::string_view delivery_id,
                       absl::Time now);

}  // namespace musicgw::operations::pg
