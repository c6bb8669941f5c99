#include "services/operations/live_trackers.h"

#include "absl/strings/str_cat.h"
#include "services/operations/tracker.h"

namespace musicgw::operations {

namespace v1 = musicgw::v1;

std::string LiveTrackers::UpstreamKey(v1::Provider provider, absl::string_view upstream_id) {
  return absl::StrCat(static_cast<int>(provider), "/", upstream_id);
}

bool LiveTrackers::Add(const std::shared_ptr<Tracker>& tracker, v1::Provider provider,
                       v1::OperationState state, absl::string_view upstream_id) {
  absl::MutexLock lock(&mu_);
  if (stopped_ || live_.count(tracker->id()) > 0) return false;
  if (!upstream_id.empty()) by_upstream_[UpstreamKey(provider, upstream_id)] = tracker->id();
  if (state != v1::OPERATION_STATE_UNSPECIFIED) {
    counts_[{static_cast<int>(provider), static_cast<int>(state)}] += 1;
  }
  live_.emplace(tracker->id(), tracker);
  return true;
}

std::shared_ptr<Tracker> LiveTrackers::Find(const std::string& id) const {
  absl::MutexLock lock(&mu_);
  auto it = live_.find(id);
  return it == live_.end() ? nullptr : it->second;
}

std::shared_ptr<Tracker> LiveTrackers::FindByUpstream(v1::Provider provider,
                                                      absl::string_view upstream_id) const {
  absl::MutexLock lock(&mu_);
  auto it = by_upstream_.find(UpstreamKey(provider, upstream_id));
  if (it == by_upstream_.end()) return nullptr;
  auto live = live_.find(it->second);
  return live == live_.end() ? nullptr : live->second;
}

void LiveTrackers::SetUpstream(v1::Provider provider, absl::string_view upstream_id,
                               const std::string& id) {
  absl::MutexLock lock(&mu_);
  by_upstream_[UpstreamKey(provider, upstream_id)] = id;
}

bool LiveTrackers::Retire(const Tracker* tracker, v1::Provider provider,
                          absl::string_view upstream_id) {
  absl::MutexLock lock(&mu_);
  auto it = live_.find(tracker->id());
  if (it == live_.end() || it->second.get() != tracker) return false;
  live_.erase(it);
  if (!upstream_id.empty()) by_upstream_.erase(UpstreamKey(provider, upstream_id));
  return true;
}

std::vector<std::shared_ptr<Tracker>> LiveTrackers::TakeAll() {
  std::vector<std::shared_ptr<Tracker>> trackers;
  absl::MutexLock lock(&mu_);
  for (auto& [id, tracker] : live_) trackers.push_back(std::move(tracker));
  live_.clear();
  by_upstream_.clear();
  counts_.clear();
  return trackers;
}

std::vector<std::shared_ptr<Tracker>> LiveTrackers::Stop() {
  std::vector<std::shared_ptr<Tracker>> trackers;
  absl::MutexLock lock(&mu_);
  stopped_ = true;
  for (auto& [id, tracker] : live_) trackers.push_back(tracker);
  return trackers;
}

bool LiveTrackers::stopped() const {
  absl::MutexLock lock(&mu_);
  return stopped_;
}

int64_t LiveTrackers::size() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int64_t>(live_.size());
}

void LiveTrackers::Count(v1::Provider provider, v1::OperationState state, int delta) {
  if (state == v1::OPERATION_STATE_UNSPECIFIED) return;
  absl::MutexLock lock(&mu_);
  counts_[{static_cast<int>(provider), static_cast<int>(state)}] += delta;
}

std::vector<LiveCount> LiveTrackers::Counts() const {
  std::vector<LiveCount> counts;
  absl::MutexLock lock(&mu_);
  for (const auto& [key, count] : counts_) {
    if (count <= 0) continue;
    counts.push_back(
        {static_cast<v1::Provider>(key.first), static_cast<v1::OperationState>(key.second), count});
  }
  return counts;
}

}  // namespace musicgw::operations
