// File: live_trackers.h
// The trackers of the operations this replica tracks: by id, by upstream id (for webhooks),
// and how many are live per provider and state (for metrics).
//
// Thread-safe; a leaf lock (taken under a tracker's lock, never the other way).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "musicgw/v1/musicgw.pb.h"
#include "services/operations/engine.h"

namespace musicgw::operations {

class Tracker;

class LiveTrackers {
 public:
  // Registers `tracker` (live in `state`); false when stopped or the id is tracked already.
  bool Add(const std::shared_ptr<Tracker>& tracker, musicgw::v1::Provider provider,
           musicgw::v1::OperationState state, absl::string_view upstream_id);
  std::shared_ptr<Tracker> Find(const std::string& id) const;
  std::shared_ptr<Tracker> FindByUpstream(musicgw::v1::Provider provider,
                                          absl::string_view upstream_id) const;
  void SetUpstream(musicgw::v1::Provider provider, absl::string_view upstream_id,
                   const std::string& id);
  // The operation is done (or no longer tracked here): forgets `tracker` (when it is the one
  // registered); returns whether it was.
  bool Retire(const Tracker* tracker, musicgw::v1::Provider provider,
              absl::string_view upstream_id);
  // This replica lost its leases: forgets every tracker (registering goes on) and returns them.
  std::vector<std::shared_ptr<Tracker>> TakeAll();
  // Stops registering; returns every tracker.
  std::vector<std::shared_ptr<Tracker>> Stop();
  bool stopped() const;
  int64_t size() const;

  // A live operation moved between (provider, state) pairs; UNSPECIFIED: not live.
  void Count(musicgw::v1::Provider provider, musicgw::v1::OperationState state, int delta);
  std::vector<LiveCount> Counts() const;

 private:
  static std::string UpstreamKey(musicgw::v1::Provider provider, absl::string_view upstream_id);

  mutable absl::Mutex mu_;
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  absl::flat_hash_map<std::string, std::shared_ptr<Tracker>> live_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, std::string> by_upstream_ ABSL_GUARDED_BY(mu_);
  std::map<std::pair<int, int>, int64_t> counts_ ABSL_GUARDED_BY(mu_);
};

}  // namespace musicgw::operations
