// File: wal_syncer.h
// Group fsync of the SQLite ledger's write-ahead log. The ledger commits with
// synchronous=NORMAL (the commit is in the log, visible, and survives kill -9, but is not yet on
// disk) and then asks here to be durable: one fdatasync of the log covers every commit that
// finished before it started, so writers that arrive while one sync runs share the next one. A
// commit never waits for another writer's transaction, only for the disk.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace musicgw::operations {

// Counters of the ledger's durability work, for tests and benchmarks.
struct LedgerSyncStats {
  // Writes that returned only once on disk (each asked SyncCommitted once).
  std::atomic<int64_t> durable_writes{0};
  // fdatasyncs of the write-ahead log.
  std::atomic<int64_t> syncs{0};
};

class WalSyncer {
 public:
  // Opens `wal_path` (the log must exist). `stats` (optional, not owned) counts the work;
  // `before_sync` (optional) runs before each fdatasync, outside any lock (tests hold it to line
  // writers up behind a sync).
  static absl::StatusOr<std::unique_ptr<WalSyncer>> Open(const std::string& wal_path,
                                                         LedgerSyncStats* stats,
                                                         std::function<void()> before_sync);
  WalSyncer(int fd, LedgerSyncStats* stats, std::function<void()> before_sync)
      : fd_(fd), stats_(stats), before_sync_(std::move(before_sync)) {}
  ~WalSyncer();
  WalSyncer(const WalSyncer&) = delete;
  WalSyncer& operator=(const WalSyncer&) = delete;

  // Returns once every commit that finished before this call is on disk: either a sync that
  // started after the call completed, or this caller runs one. After a failed sync every call
  // fails (what reached the disk is unknown until the log is recovered by a restart).
  absl::Status SyncCommitted();
  // The failure of an earlier sync, or OK: writers check it before they commit.
  absl::Status failure() const;

 private:
  bool NotSyncing() const ABSL_SHARED_LOCKS_REQUIRED(mu_);

  const int fd_;
  LedgerSyncStats* const stats_;
  const std::function<void()> before_sync_;
  mutable absl::Mutex mu_;
  // Callers numbered in arrival order; every caller up to synced_ is durable.
  int64_t requested_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t synced_ ABSL_GUARDED_BY(mu_) = 0;
  bool syncing_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status failure_ ABSL_GUARDED_BY(mu_);
};

}  // namespace musicgw::operations
