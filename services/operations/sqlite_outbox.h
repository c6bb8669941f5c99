// File: sqlite_outbox.h
// The webhook outbox's statements for the SQLite ledger (outbox.h), apart from the operations'
// ones. Every function runs with the store's lock held; RecordDeliveryAttempt is a transaction
// of its own, InsertOutbox joins the caller's.
#pragma once

#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "services/operations/outbox.h"
#include "services/operations/sqlite_statement.h"

namespace musicgw::operations::sqlite {

// The migration that adds the outbox tables.
extern const char* const kOutboxMigration;

absl::Status InsertOutbox(StatementCache& statements, const OutboxMessage& message, absl::Time due);
absl::StatusOr<std::vector<OutboxDelivery>> ClaimDueDeliveries(StatementCache& statements,
                                                               absl::Time now,
                                                               absl::Time claim_until, int limit);
// The attempt row and the delivery's new state, in one transaction.
absl::Status RecordDeliveryAttempt(StatementCache& statements, const DeliveryAttempt& attempt,
                                   DeliveryStatus status, absl::Time next_attempt_time);
absl::StatusOr<std::vector<OutboxDelivery>> ListDeliveries(StatementCache& statements,
                                                           const DeliveryQuery& query);
absl::StatusOr<std::vector<DeliveryAttempt>> ListDeliveryAttempts(StatementCache& statements,
                                                                  absl::string_view delivery_id);
absl::Status Redeliver(StatementCache& statements, absl::string_view tenant,
                       absl::string_view delivery_id, absl::Time now);

}  // namespace musicgw::operations::sqlite
