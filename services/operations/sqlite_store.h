// File: sqlite_store.h
// The embedded ledger: an OperationStore in one SQLite file (WAL, schema migrations on open).
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "services/operations/operation_store.h"
#include "services/operations/wal_syncer.h"

namespace musicgw::operations {

struct SqliteOptions {
  // True (default): every write returns only once it is on disk (an fdatasync of the WAL), so
  // an accepted operation survives power loss as well as kill -9. Writers that commit while a
  // sync runs share the next one (group commit: under load, one fsync covers many writes).
  // False (synchronous=NORMAL, no fsync): survives kill -9 (the WAL is in the OS page cache)
  // but may lose the last commits on power loss.
  bool synchronous_full = true;
  // Counts durable writes and fsyncs (optional, not owned).
  LedgerSyncStats* sync_stats = nullptr;
  // Runs before each fsync (tests line writers up behind one).
  std::function<void()> before_sync;
  absl::Duration busy_timeout = absl::Seconds(5);
  // Lease expiry and budget periods are judged on this clock (not owned; null: Clock::Real()).
  const Clock* clock = nullptr;
};

// Opens (creating and migrating) the SQLite ledger at `path` (":memory:" for throwaway tests).
absl::StatusOr<std::unique_ptr<OperationStore>> OpenSqliteOperationStore(
    const std::string& path, const SqliteOptions& options = {});

}  // namespace musicgw::operations
