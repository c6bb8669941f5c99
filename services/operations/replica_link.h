// File: replica_link.h
// What ties replicas that share one ledger together, beside the ledger itself: other
// replicas' committed changes (so a watch works on any replica), webhook nudges (so a
// webhook reaching any replica is applied by the one tracking the operation) and cancel
// requests (so CancelOperation works on any replica). A single node
// has none. The PostgreSQL one listens with LISTEN/NOTIFY (postgres_listener.h).
#pragma once

#include <functional>
#include <memory>

#include "absl/strings/string_view.h"
#include "musicgw/v1/musicgw.pb.h"
#include "services/operations/change_feed.h"
#include "services/operations/postgres_listener.h"

namespace musicgw::operations {

class ReplicaLink {
 public:
  using OnNudge = std::function<void(musicgw::v1::Provider, absl::string_view upstream_id)>;
  using OnCancelRequest = std::function<void(absl::string_view operation_id)>;
  virtual ~ReplicaLink() = default;
  // Publishes every replica's committed changes into `feed` (Change without snapshot), and
  // feed->Resync() whenever some may have been missed; hands nudges to `on_nudge` and cancel
  // requests (OperationStore::RequestCancel) to `on_cancel`. `feed` must outlive Stop().
  virtual void Start(ChangeFeed* feed, OnNudge on_nudge, OnCancelRequest on_cancel) = 0;
  // Returns once no callback runs any more.
  virtual void Stop() = 0;
};

// The link over PostgreSQL LISTEN/NOTIFY on the ledger's database (`options.dsn`).
std::shared_ptr<ReplicaLink> NewPostgresReplicaLink(PostgresListenerOptions options);

}  // namespace musicgw::operations
