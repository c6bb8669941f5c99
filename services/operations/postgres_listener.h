// File: postgres_listener.h
// The cross-replica half of the change feed: one dedicated PostgreSQL connection LISTENing on
// kPostgresChangeChannel, handing each committed change ("<id>:<sequence>") to a callback (and
// optionally webhook nudges from kPostgresNudgeChannel and cancel requests from
// kPostgresCancelChannel to others).
//
// NOTIFY is not durable: while the connection is down (a network cut, PostgreSQL restarting)
// changes are missed. So after every (re)connection the listener calls `on_resync` first; its
// consumer then replays what it follows from the events table, and nothing is skipped.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace musicgw::operations {

struct PostgresListenerOptions {
  std::string dsn;  // a secret: never logged
  // Reconnection backoff bounds (doubling from min to max).
  absl::Duration min_backoff = absl::Milliseconds(100);
  absl::Duration max_backoff = absl::Seconds(5);
  absl::Duration connect_timeout = absl::Seconds(5);
  // When set, the listener also LISTENs on kPostgresNudgeChannel and hands each nudge
  // (OperationStore::Nudge) here, on its thread. Nudges are best effort: polling stays the
  // source of truth.
  std::function<void(int provider, absl::string_view upstream_id)> on_nudge;
  // When set, the listener also LISTENs on kPostgresCancelChannel and hands the id of each
  // operation a cancel was requested for (OperationStore::RequestCancel) here, on its thread.
  // Best effort too: the ledger keeps the request, and its owner looks for pending ones.
  std::function<void(absl::string_view operation_id)> on_cancel;
};

class PostgresChangeListener {
 public:
  // Called on the listener's thread, in commit order of the notifying transactions.
  using OnChange = std::function<void(absl::string_view operation_id, int64_t sequence)>;
  // Called on the listener's thread after each successful (re)connection, before any change.
  using OnResync = std::function<void()>;

  // Starts the listening thread; it connects (and reconnects) by itself.
  static std::unique_ptr<PostgresChangeListener> Start(PostgresListenerOptions options,
                                                       OnChange on_change, OnResync on_resync);
  virtual ~PostgresChangeListener() = default;  // stops the thread
  // True while LISTEN is in force on a live connection.
  virtual bool connected() const = 0;
};

}  // namespace musicgw::operations
