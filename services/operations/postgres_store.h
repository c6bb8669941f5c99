// File: postgres_store.h
// The shared ledger for multi-replica deployments: the OperationStore contract on PostgreSQL.
//
// libpq (not libpqxx): it is C, so no exceptions cross into our absl::Status code; it is what
// Debian ships as libpq-dev; and it offers pipeline mode and LISTEN/NOTIFY directly.
//
// A bounded pool of connections, each with every statement prepared once. Transactions that
// must be exact across replicas (request_id uniqueness, tenant budget admission) take a
// transaction-scoped advisory lock per tenant, so concurrent Creates of one tenant serialize
// on every replica while other tenants proceed.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "services/operations/operation_store.h"

namespace musicgw::operations {

struct PostgresOptions {
  // libpq connection string or URI. A secret: it is never logged, and errors never quote it.
  std::string dsn;
  // Connections kept open; callers wait for a free one.
  int pool_size = 8;
  // How long a caller waits for a free connection before UNAVAILABLE.
  absl::Duration acquire_timeout = absl::Seconds(5);
  // libpq's connect_timeout, per attempt.
  absl::Duration connect_timeout = absl::Seconds(5);
  // At most this many other replicas' (or unowned) live operations taken per ClaimLive.
  int claim_batch = 100;
  // Create and Update run their transaction again when PostgreSQL rolled it back for a deadlock
  // or a serialization failure, up to this many attempts in all.
  int conflict_attempts = 3;
  // Lease expiry and migration timestamps; budgets' RetryInfo.
  const Clock* clock = &Clock::Real();
};

// Every committed Create and Update is announced on this channel as "<operation id>:<sequence>"
// (PostgreSQL NOTIFY, sent by the same transaction): PostgresChangeListener receives them.
inline constexpr char kPostgresChangeChannel[] = "musicgw_changes";
// OperationStore::Nudge announces "<provider number>:<upstream id>" on this channel.
inline constexpr char kPostgresNudgeChannel[] = "musicgw_nudges";
// OperationStore::RequestCancel announces "<operation id>" on this channel.
inline constexpr char kPostgresCancelChannel[] = "musicgw_cancels";

// Connects, applies pending migrations (one replica at a time, under an advisory lock) and
// returns the store. UNAVAILABLE (ErrorInfo LEDGER_UNAVAILABLE) when PostgreSQL cannot be
// reached; FAILED_PRECONDITION when the schema is newer than this binary.
absl::StatusOr<std::unique_ptr<OperationStore>> OpenPostgresOperationStore(PostgresOptions options);

}  // namespace musicgw::operations
