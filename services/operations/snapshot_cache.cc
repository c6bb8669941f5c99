#include "services/operations/snapshot_cache.h"

#include <algorithm>
#include <utility>

namespace musicgw::operations {

namespace v1 = musicgw::v1;

SnapshotCache::SnapshotCache(SnapshotCacheOptions options, const Clock& clock)
    : options_(options), clock_(clock) {}

SnapshotCache::Hit SnapshotCache::Find(absl::string_view id, absl::string_view tenant) {
  const absl::Time now = clock_.Now();
  absl::MutexLock lock(&mu_);
  auto it = index_.find(id);
  if (it == index_.end()) return {};
  Entry& entry = TouchLocked(it->second);
  if (entry.operation == nullptr || entry.tenant.empty() ||
      now - entry.loaded_at > options_.max_age) {
    return {};
  }
  if (entry.tenant != tenant) return Hit{nullptr, /*foreign=*/true};
  return Hit{entry.operation, false};
}

uint64_t SnapshotCache::BeginRead() const {
  absl::MutexLock lock(&mu_);
  return stamp_;
}

void SnapshotCache::Offer(absl::string_view id, absl::string_view tenant,
                          const v1::Operation& operation, uint64_t read_stamp) {
  auto snapshot = std::make_shared<const v1::Operation>(operation);
  const absl::Time now = clock_.Now();
  absl::MutexLock lock(&mu_);
  if (resync_stamp_ > read_stamp) return;  // the read may predate a change the feed missed
  auto it = index_.find(id);
  if (it == index_.end()) {
    // A change announced after the read began may have been evicted with its entry.
    if (evicted_stamp_ > read_stamp) return;
    Entry& entry = InsertLocked(id);
    entry.tenant = std::string(tenant);
    entry.operation = std::move(snapshot);
    entry.sequence = operation.sequence();
    entry.loaded_at = now;
    return;
  }
  Entry& entry = TouchLocked(it->second);
  if (operation.sequence() < entry.sequence) return;  // a newer state was announced
  if (entry.forgotten_at > read_stamp) return;        // changed outside the feed since
  entry.tenant = std::string(tenant);
  entry.operation = std::move(snapshot);
  entry.sequence = operation.sequence();
  entry.loaded_at = now;
}

void SnapshotCache::OnChange(const Change& change) {
  const absl::Time now = clock_.Now();
  absl::MutexLock lock(&mu_);
  const uint64_t stamp = ++stamp_;
  auto it = index_.find(change.operation_id);
  // An unknown operation gets an entry too: it remembers the sequence, so a ledger read that
  // began before this change cannot cache an older state afterwards.
  Entry& entry = it == index_.end() ? InsertLocked(change.operation_id) : *it->second;
  entry.changed_at = stamp;
  if (change.sequence < entry.sequence) return;  // changes of one operation arrive in order
  entry.sequence = change.sequence;
  entry.operation = change.snapshot;  // null (stale) when the feed carries none
  entry.loaded_at = now;
}

void SnapshotCache::OnResync() {
  absl::MutexLock lock(&mu_);
  const uint64_t stamp = ++stamp_;
  for (Entry& entry : lru_) {
    entry.operation = nullptr;
    entry.changed_at = stamp;
  }
  resync_stamp_ = stamp;
}

void SnapshotCache::Forget(absl::string_view id) {
  absl::MutexLock lock(&mu_);
  const uint64_t stamp = ++stamp_;
  auto it = index_.find(id);
  if (it == index_.end()) {
    evicted_stamp_ = std::max(evicted_stamp_, stamp);
    return;
  }
  it->second->operation = nullptr;
  it->second->changed_at = stamp;
  it->second->forgotten_at = stamp;
}

size_t SnapshotCache::size() const {
  absl::MutexLock lock(&mu_);
  return lru_.size();
}

SnapshotCache::Entry& SnapshotCache::TouchLocked(Lru::iterator it) {
  if (it != lru_.begin()) lru_.splice(lru_.begin(), lru_, it);
  return *it;
}

SnapshotCache::Entry& SnapshotCache::InsertLocked(absl::string_view id) {
  lru_.emplace_front();
  Entry& entry = lru_.front();
  entry.id = std::string(id);
  index_.emplace(entry.id, lru_.begin());
  while (lru_.size() > std::max<size_t>(options_.capacity, 1)) {
    Entry& last = lru_.back();
    evicted_stamp_ = std::max(evicted_stamp_, last.changed_at);
    index_.erase(last.id);
    lru_.pop_back();
  }
  return entry;
}

}  // namespace musicgw::operations
