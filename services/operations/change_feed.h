// File: change_feed.h
// The seam between the tracker, which commits changes to operations, and whoever fans them out
// (the watch hub). The tracker publishes every committed change, in sequence order per
// operation, after the ledger accepted it; subscribers hear each one. The in-process feed
// calls subscribers synchronously; a cross-process feed (e.g. PostgreSQL LISTEN/NOTIFY) can
// carry only the id and sequence and leave `snapshot` null, and the subscriber reads the
// ledger. Neither side knows which feed it talks to.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "musicgw/v1/musicgw.pb.h"

namespace musicgw::operations {

struct Change {
  std::string operation_id;
  int64_t sequence = 0;
  // The committed snapshot at `sequence`; null when the feed does not carry it.
  std::shared_ptr<const musicgw::v1::Operation> snapshot;
};

class ChangeSubscriber {
 public:
  virtual ~ChangeSubscriber() = default;
  // Must not block on the publisher (it may be called on the publishing thread).
  virtual void OnChange(const Change& change) = 0;
  // The feed may have missed changes (a cross-process feed reconnected): whatever the
  // subscriber follows must be re-read from the ledger's events.
  virtual void OnResync() {}
};

// Thread-safe.
class ChangeFeed {
 public:
  virtual ~ChangeFeed() = default;
  virtual void Publish(const Change& change) = 0;
  // `subscriber` is not owned; it stays subscribed until Unsubscribe, which returns once no
  // call to it is running.
  virtual void Subscribe(ChangeSubscriber* subscriber) = 0;
  virtual void Unsubscribe(ChangeSubscriber* subscriber) = 0;
  // Tells every subscriber that changes may have been missed (OnResync).
  virtual void Resync() {}
};

// Delivers each change to every subscriber on the publishing thread, before Publish returns.
std::unique_ptr<ChangeFeed> NewInProcessChangeFeed();

}  // namespace musicgw::operations
