// File: snapshot_cache.h
// Recently read operations, kept in memory so GetOperation of a hot operation costs no ledger
// read. Coherent through the change feed alone: every change announced on it replaces the
// cached snapshot (or, when the feed carries no snapshot, marks it stale), and a ledger read
// is cached only if no newer change was announced for that operation meanwhile. So a hit is
// never older than a state this process has announced, whichever replica committed it. A
// maximum age bounds how long an entry is served without re-reading the ledger, in case a
// cross-process feed misses a change (a dropped connection). Bounded, least recently used out.
#pragma once

#include <cstdint>
#include <list>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "musicgw/v1/musicgw.pb.h"
#include "services/operations/change_feed.h"

namespace musicgw::operations {

struct SnapshotCacheOptions {
  size_t capacity = 16384;
  absl::Duration max_age = absl::Seconds(30);
};

class SnapshotCache final : public ChangeSubscriber {
 public:
  SnapshotCache(SnapshotCacheOptions options, const Clock& clock);

  struct Hit {
    // Null on a miss: read the ledger (after BeginRead) and Offer what it returned.
    std::shared_ptr<const musicgw::v1::Operation> operation;
    // The cached operation belongs to another tenant (never served to `tenant`).
    bool foreign = false;
  };
  Hit Find(absl::string_view id, absl::string_view tenant);

  // A stamp to take before reading the ledger and hand to Offer with what the read returned.
  uint64_t BeginRead() const;
  // Caches `operation` as read from the ledger, unless a newer change was announced (or
  // might have been, and forgotten) since `read_stamp`.
  void Offer(absl::string_view id, absl::string_view tenant,
             const musicgw::v1::Operation& operation, uint64_t read_stamp);

  void OnChange(const Change& change) override;
  // Changes may have been missed: nothing cached is served, nor any ledger read begun before.
  void OnResync() override;
  // The ledger's view of `id` changed outside the feed (asset custody facts): read it again.
  void Forget(absl::string_view id);

  size_t size() const;

 private:
  struct Entry {
    std::string id;
    std::string tenant;                                       // empty until a ledger read names it
    std::shared_ptr<const musicgw::v1::Operation> operation;  // null: stale, read the ledger
    int64_t sequence = 0;       // the newest sequence known, cached or not
    uint64_t changed_at = 0;    // stamp of the last change announced for it
    uint64_t forgotten_at = 0;  // stamp of the last Forget
    absl::Time loaded_at;
  };
  using Lru = std::list<Entry>;

  // Moves `it` to the front; evicts past capacity. Returns the entry.
  Entry& TouchLocked(Lru::iterator it) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Entry& InsertLocked(absl::string_view id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const SnapshotCacheOptions options_;
  const Clock& clock_;
  mutable absl::Mutex mu_;
  Lru lru_ ABSL_GUARDED_BY(mu_);  // most recently used first
  absl::flat_hash_map<absl::string_view, Lru::iterator> index_ ABSL_GUARDED_BY(mu_);
  uint64_t stamp_ ABSL_GUARDED_BY(mu_) = 0;          // counts announced changes
  uint64_t evicted_stamp_ ABSL_GUARDED_BY(mu_) = 0;  // newest change forgotten by eviction
  uint64_t resync_stamp_ ABSL_GUARDED_BY(mu_) = 0;   // the last OnResync
};

}  // namespace musicgw::operations
