// File: sqlite_store.h
// The embedded ledger: an OperationStore in one SQLite file (WAL, schema migrations on open).
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "services/operations/operation_store.h"

namespace musicgw::operations {

struct SqliteOptions {
  // FULL (default): every commit is fsynced, so an accepted operation survives power loss as
  // well as kill -9. NORMAL (WAL) survives kill -9 (the WAL is in the OS page cache) but may
  // lose the last commits on power loss; faster.
  bool synchronous_full = true;
  absl::Duration busy_timeout = absl::Seconds(5);
  // Lease expiry and budget periods are judged on this clock (not owned; null: Clock::Real()).
  const Clock* clock = nullptr;
};

// Opens (creating and migrating) the SQLite ledger at `path` (":memory:" for throwaway tests).
absl::StatusOr<std::unique_ptr<OperationStore>> OpenSqliteOperationStore(
    const std::string& path, SqliteOptions options = {});

}  // namespace musicgw::operations
