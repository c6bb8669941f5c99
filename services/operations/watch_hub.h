// File: watch_hub.h
// WatchOperation's fan-out: the subscribers of each operation, fed from the change feed. A new
// watch gets the snapshot (or, resuming after a sequence, the changes it missed, replayed from
// the ledger's events), then every change; a slow reader's backlog coalesces to the latest
// snapshot (WatchState). Every watcher of a change shares its snapshot (one copy, serialized
// once). Heartbeats come from one timer that serves every idle watcher; it fires at most 16
// times per heartbeat interval, whatever the number of watchers, and sends a heartbeat to every
// watcher idle for at least 15/16 of the interval. Shutdown ends every watch with the given
// status.
//
// Thread-safe. Lock order: WatchHub::mu_ -> (the `current` callback's locks | WatchState).
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "musicgw/v1/musicgw.pb.h"
#include "services/operations/change_feed.h"
#include "services/operations/event_stream.h"
#include "services/operations/executor.h"
#include "services/operations/operation_store.h"
#include "services/operations/watch_stream.h"

namespace musicgw::operations {

struct WatchHubOptions {
  // A watcher that was sent nothing for this long gets a heartbeat.
  absl::Duration heartbeat = absl::Seconds(15);
  // Events buffered per watcher before its backlog coalesces to the latest snapshot.
  int buffer = 16;
};

class WatchHub final : public ChangeSubscriber, public std::enable_shared_from_this<WatchHub> {
 public:
  // `executor` runs the heartbeat timer; `store` serves replays (and snapshots a feed does not
  // carry).
  WatchHub(WatchHubOptions options, const Clock& clock, std::shared_ptr<Executor> executor,
           std::shared_ptr<OperationStore> store);

  // Opens a watch of operation `operation_id`. `current` returns its latest committed snapshot;
  // it is called with the hub's lock held, so no change of the operation is delivered between
  // that snapshot and the watch's subscription. INVALID_ARGUMENT when `after_sequence` is
  // ahead of the operation; UNAVAILABLE (SHUTTING_DOWN) after Shutdown.
  absl::StatusOr<std::unique_ptr<EventStream<musicgw::v1::OperationEvent>>> Open(
      const std::string& operation_id, int64_t after_sequence,
      absl::FunctionRef<absl::StatusOr<musicgw::v1::Operation>()> current);
  // The same watch, its events sharing the snapshots of every other watcher (no copy).
  absl::StatusOr<std::unique_ptr<EventStream<WatchEvent>>> OpenShared(
      const std::string& operation_id, int64_t after_sequence,
      absl::FunctionRef<absl::StatusOr<musicgw::v1::Operation>()> current);

  // ChangeSubscriber: queues the change for the operation's watchers. A change without its
  // snapshot (another replica's, through a cross-process feed) is read from the ledger's
  // events, every one after what the operation's watchers have, so none is skipped.
  void OnChange(const Change& change) override;
  // Re-reads the events of every watched operation (the feed may have missed some).
  void OnResync() override;

  // Ends every watch with `status`; later Opens fail with it.
  void Shutdown(const absl::Status& status);

  // Watch streams not yet closed by their readers.
  int64_t open_watches() const { return open_->load(); }
  // When the heartbeat timer fires next (InfiniteFuture: not armed). One timer serves every
  // watch.
  absl::Time next_heartbeat() const;

 private:
  using Watchers = std::vector<std::weak_ptr<WatchState>>;

  // Subscribes a new watcher (what Open and OpenShared share).
  absl::StatusOr<std::shared_ptr<WatchState>> Subscribe(
      const std::string& operation_id, int64_t after_sequence,
      absl::FunctionRef<absl::StatusOr<musicgw::v1::Operation>()> current);
  // The stream that closes `state`; `Event` as in WatchStream.
  template <typename Event>
  std::unique_ptr<EventStream<Event>> StreamOf(std::shared_ptr<WatchState> state);

  // Queues what a new watcher sees first.
  absl::Status Fill(WatchState& state, const musicgw::v1::Operation& current,
                    int64_t after_sequence);
  // Queues the operation's events after the oldest position among its watchers, unless every
  // watcher has `sequence` already (0: unknown, always read).
  void CatchUp(const std::string& operation_id, int64_t sequence);
  // Queues `snapshots` (in sequence order) for the operation's watchers; forgets the
  // operation once one is done.
  void Deliver(const std::string& operation_id,
               const std::vector<std::shared_ptr<const musicgw::v1::Operation>>& snapshots);
  // The single heartbeat timer: arms it to fire at `at` unless it fires earlier already.
  void ArmLocked(absl::Time at) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Tick();

  const WatchHubOptions options_;
  const Clock& clock_;
  const std::shared_ptr<Executor> executor_;
  const std::shared_ptr<OperationStore> store_;
  const std::shared_ptr<std::atomic<int64_t>> open_;

  mutable absl::Mutex mu_;
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status shutdown_status_ ABSL_GUARDED_BY(mu_);
  // Subscribers by operation id (operations still changing).
  std::map<std::string, Watchers> by_operation_ ABSL_GUARDED_BY(mu_);
  // Every open watch, for heartbeats and shutdown.
  Watchers all_ ABSL_GUARDED_BY(mu_);
  size_t prune_at_ ABSL_GUARDED_BY(mu_) = 64;
  // When the heartbeat timer fires next; InfiniteFuture: not armed.
  absl::Time timer_at_ ABSL_GUARDED_BY(mu_) = absl::InfiniteFuture();
  uint64_t timer_generation_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace musicgw::operations
