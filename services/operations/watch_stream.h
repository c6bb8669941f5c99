// File: watch_stream.h
// One WatchOperation subscriber: a bounded queue of shared snapshots fed by the operation's
// tracker and drained by the transport. A slow reader never blocks the producer: when its
// queue is full the backlog is replaced by the latest snapshot (coalesced=true).
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "musicgw/v1/musicgw.pb.h"
#include "services/operations/event_stream.h"

namespace musicgw::operations {

class WatchState {
 public:
  using Snapshot = std::shared_ptr<const musicgw::v1::Operation>;

  WatchState(int capacity, const Clock& clock)
      : capacity_(capacity < 1 ? 1 : capacity), clock_(clock), last_activity_(clock.Now()) {}

  // Each Push/Heartbeat/Finish returns true when the reader is owed a wake-up: then call
  // RunWake() with no lock held.
  //
  // Queues a snapshot unless it is not newer than the last one queued. `replay` events (sent at
  // the start of a resumed stream) ignore the capacity.
  bool Push(Snapshot op, musicgw::v1::OperationEvent::Kind kind, bool replay = false,
            bool coalesced = false);
  // Queues a heartbeat when nothing was sent for `interval`. *next_check: when to look again;
  // returns false with *next_check = InfiniteDuration() once the stream is over.
  bool Heartbeat(absl::Time now, absl::Duration interval, absl::Duration* next_check);
  // Ends the stream at once with `status` (shutdown); the backlog is dropped.
  bool Finish(absl::Status status);
  // The stream ends (OK) once what is queued has been read: for an operation already done.
  bool EndAfterQueue();
  // True once the reader is gone or the stream cannot take more events.
  bool over() const;
  // The watcher has seen (or skipped) every change up to `sequence`: later Pushes of those are
  // dropped.
  void SkipTo(int64_t sequence);
  // The newest sequence queued or skipped to.
  int64_t position() const;

  void RunWake();
  void SetWakeup(absl::AnyInvocable<void()> wake);
  // The reader is gone: after return, the wake-up is not running and never runs again.
  void Close();
  std::optional<musicgw::v1::OperationEvent> Next(bool* finished, absl::Status* final_status);

 private:
  struct Item {
    Snapshot op;  // null for heartbeats
    musicgw::v1::OperationEvent::Kind kind;
    bool coalesced;
    int64_t sequence;
  };
  bool OwedLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const size_t capacity_;
  const Clock& clock_;
  mutable absl::Mutex mu_;
  std::deque<Item> queue_ ABSL_GUARDED_BY(mu_);
  int64_t last_queued_sequence_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Time last_activity_ ABSL_GUARDED_BY(mu_);
  bool terminal_queued_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;  // Finish() called
  absl::Status final_status_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  bool waiting_ ABSL_GUARDED_BY(mu_) = false;

  // Held while the wake-up runs, so Close() can wait for a running one.
  absl::Mutex wake_mu_;
  absl::AnyInvocable<void()> wake_ ABSL_GUARDED_BY(wake_mu_);
};

// The EventStream the transport holds; destroying it closes the state.
class WatchStream final : public EventStream<musicgw::v1::OperationEvent> {
 public:
  WatchStream(std::shared_ptr<WatchState> state, std::function<void()> on_close)
      : state_(std::move(state)), on_close_(std::move(on_close)) {}
  ~WatchStream() override {
    state_->Close();
    if (on_close_) on_close_();
  }
  std::optional<musicgw::v1::OperationEvent> Next(bool* finished,
                                                  absl::Status* final_status) override {
    return state_->Next(finished, final_status);
  }
  void SetWakeup(absl::AnyInvocable<void()> wake) override { state_->SetWakeup(std::move(wake)); }

 private:
  std::shared_ptr<WatchState> state_;
  std::function<void()> on_close_;
};

}  // namespace musicgw::operations
