// File: sqlite_store.h
// The embedded ledger: an OperationStore in one SQLite file (WAL, schema migrations on open).
//
// What it guarantees with synchronous_full (the default):
//  - kill -9 of the process loses nothing that was committed: the WAL is in the OS page cache.
//  - Power loss loses nothing a write returned for: each write commits, then waits for an
//    fdatasync of the WAL that started after its commit (one sync covers every writer queued
//    behind it). So an accepted Generate, every done state, every step at a provider without
//    idempotency keys, and outbox, lease and custody expiry writes are on disk before anyone is
//    told.
//  - A reader can see a write while that write's sync runs (one fsync early). Where that would
//    be told on as settled it waits: a retried Generate's answer waits for the sync, and an
//    asset's expiry syncs before it is visible (its bytes are deleted after).
//  - The exception is an OperationUpdate with wait_durable=false (the tracker's SUBMITTING and
//    RUNNING at a provider that dedupes submissions): it is on disk with the next sync anyone
//    runs. A power loss before that takes it back, and every commit after it: the WAL's
//    chained checksums make the recovered log a prefix of the commits. The operation then
//    restarts from its last durable state and the tracker re-submits with the same idempotency
//    key, which the provider answers with the same job.
//  - Custody rows (pending and held) do not wait for a sync either: a durable SUCCEEDED brings
//    them with it, and one taken back by a power loss is fetched again (AddPendingCustody).
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
