// File: watch_stream.h
// One WatchOperation subscriber: a bounded queue of shared snapshots fed by the operation's
// tracker and drained by the transport. A slow reader never blocks the producer: when its
// queue is full the backlog is replaced by the latest snapshot (coalesced=true). Every watcher
// of a change shares one SharedSnapshot, serialized once for all of them.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>

#include "absl/base/call_once.h"
#include "absl/base/thread_annotations.h"
#include "absl/container/inlined_vector.h"
#include "absl/functional/any_invocable.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "musicgw/v1/musicgw.pb.h"
#include "services/operations/event_stream.h"

namespace musicgw::operations {

// One committed state of an operation, as every watcher of it sends it. Thread-safe.
class SharedSnapshot {
 public:
  explicit SharedSnapshot(std::shared_ptr<const musicgw::v1::Operation> operation)
      : operation_(std::move(operation)) {}

  const musicgw::v1::Operation& operation() const { return *operation_; }
  // The operation serialized, after `annotate` edited a copy of it. Computed once, by the first
  // caller (only that caller's `annotate` runs); later callers share the bytes.
  const std::string& Encoded(absl::FunctionRef<void(musicgw::v1::Operation*)> annotate) const;
  const std::string& Encoded() const;

 private:
  const std::shared_ptr<const musicgw::v1::Operation> operation_;
  mutable absl::once_flag encoded_once_;
  mutable std::string encoded_;
};

// An OperationEvent whose operation is shared with every other watcher of the same change.
struct WatchEvent {
  musicgw::v1::OperationEvent::Kind kind = musicgw::v1::OperationEvent::KIND_UNSPECIFIED;
  std::shared_ptr<const SharedSnapshot> snapshot;  // null for heartbeats
  int64_t sequence = 0;
  absl::Time send_time;
  bool coalesced = false;
  // The stream ends (OK) right after this event: a transport may send the end with it.
  bool last = false;
};

// The event as a message of its own (a copy of the operation).
musicgw::v1::OperationEvent ToOperationEvent(const WatchEvent& event);
// A message as a WatchEvent (its operation in a snapshot of its own).
WatchEvent FromOperationEvent(musicgw::v1::OperationEvent event);

class WatchState {
 public:
  using Snapshot = std::shared_ptr<const SharedSnapshot>;

  WatchState(int capacity, const Clock& clock)
      : capacity_(capacity < 1 ? 1 : capacity), clock_(clock), last_activity_(clock.Now()) {}

  // Each Push/Heartbeat/Finish returns true when the reader is owed a wake-up: then call
  // RunWake() with no lock held.
  //
  // Queues a snapshot unless it is not newer than the last one queued. `replay` events (sent at
  // the start of a resumed stream) ignore the capacity.
  bool Push(Snapshot op, musicgw::v1::OperationEvent::Kind kind, bool replay = false,
            bool coalesced = false);
  // Queues a heartbeat when nothing was sent for `interval` (less `slack`: the caller serves
  // whatever falls due within it at once). *next_check: when to look again (more than `slack`
  // away); returns false with *next_check = InfiniteDuration() once the stream is over.
  bool Heartbeat(absl::Time now, absl::Duration interval, absl::Duration slack,
                 absl::Duration* next_check);
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
  std::optional<WatchEvent> Next(bool* finished, absl::Status* final_status);

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
  // Usually holds one event at most: inline, so an idle watcher allocates no queue.
  absl::InlinedVector<Item, 1> queue_ ABSL_GUARDED_BY(mu_);
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

// The EventStream the transport holds; destroying it closes the state. `Event` is WatchEvent
// (shared snapshots) or OperationEvent (a copy per event).
template <typename Event>
class WatchStream final : public EventStream<Event> {
 public:
  WatchStream(std::shared_ptr<WatchState> state, std::function<void()> on_close)
      : state_(std::move(state)), on_close_(std::move(on_close)) {}
  ~WatchStream() override {
    state_->Close();
    if (on_close_) on_close_();
  }
  std::optional<Event> Next(bool* finished, absl::Status* final_status) override {
    std::optional<WatchEvent> event = state_->Next(finished, final_status);
    if constexpr (std::is_same_v<Event, WatchEvent>) {
      return event;
    } else {
      if (!event.has_value()) return std::nullopt;
      return ToOperationEvent(*event);
    }
  }
  void SetWakeup(absl::AnyInvocable<void()> wake) override { state_->SetWakeup(std::move(wake)); }

 private:
  std::shared_ptr<WatchState> state_;
  std::function<void()> on_close_;
};

}  // namespace musicgw::operations
