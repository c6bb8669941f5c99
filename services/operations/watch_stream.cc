#include "services/operations/watch_stream.h"

#include <algorithm>
#include <utility>

#include "common/time_util.h"

namespace musicgw::operations {

bool WatchState::OwedLocked() {
  if (!waiting_) return false;
  waiting_ = false;
  return true;
}

bool WatchState::Push(Snapshot op, musicgw::v1::OperationEvent::Kind kind, bool replay,
                      bool coalesced) {
  absl::MutexLock lock(&mu_);
  if (closed_ || finished_ || terminal_queued_) return false;
  // Never an older (or the same) state twice.
  if (op->sequence() <= last_queued_sequence_) return false;
  if (!replay && queue_.size() >= capacity_) {
    // The reader is behind: its backlog is superseded by this latest snapshot.
    queue_.clear();
    coalesced = true;
  }
  // A heartbeat still queued is pointless behind a real event.
  if (!queue_.empty() && queue_.back().op == nullptr) queue_.pop_back();
  last_queued_sequence_ = op->sequence();
  if (op->done()) terminal_queued_ = true;
  queue_.push_back(Item{std::move(op), kind, coalesced, last_queued_sequence_});
  return OwedLocked();
}

bool WatchState::Heartbeat(absl::Time now, absl::Duration interval, absl::Duration* next_check) {
  absl::MutexLock lock(&mu_);
  if (closed_ || finished_ || (terminal_queued_ && queue_.empty())) {
    *next_check = absl::InfiniteDuration();
    return false;
  }
  const absl::Duration idle = now - last_activity_;
  if (idle < interval || !queue_.empty()) {
    *next_check = queue_.empty() ? interval - idle : interval;
    return false;
  }
  *next_check = interval;
  last_activity_ = now;
  queue_.push_back(
      Item{nullptr, musicgw::v1::OperationEvent::KIND_HEARTBEAT, false, last_queued_sequence_});
  return OwedLocked();
}

bool WatchState::Finish(absl::Status status) {
  absl::MutexLock lock(&mu_);
  if (closed_ || finished_) return false;
  finished_ = true;
  final_status_ = std::move(status);
  queue_.clear();
  return OwedLocked();
}

bool WatchState::EndAfterQueue() {
  absl::MutexLock lock(&mu_);
  if (closed_ || finished_ || terminal_queued_) return false;
  terminal_queued_ = true;
  return OwedLocked();
}

bool WatchState::over() const {
  absl::MutexLock lock(&mu_);
  return closed_ || finished_ || terminal_queued_;
}

void WatchState::SkipTo(int64_t sequence) {
  absl::MutexLock lock(&mu_);
  last_queued_sequence_ = std::max(last_queued_sequence_, sequence);
}

int64_t WatchState::position() const {
  absl::MutexLock lock(&mu_);
  return last_queued_sequence_;
}

void WatchState::RunWake() {
  absl::MutexLock lock(&wake_mu_);
  if (wake_) wake_();
}

void WatchState::SetWakeup(absl::AnyInvocable<void()> wake) {
  absl::MutexLock lock(&wake_mu_);
  wake_ = std::move(wake);
}

void WatchState::Close() {
  {
    absl::MutexLock lock(&mu_);
    closed_ = true;
    queue_.clear();
  }
  absl::MutexLock lock(&wake_mu_);
  wake_ = nullptr;
}

std::optional<musicgw::v1::OperationEvent> WatchState::Next(bool* finished,
                                                            absl::Status* final_status) {
  absl::MutexLock lock(&mu_);
  if (!queue_.empty()) {
    Item item = std::move(queue_.front());
    queue_.pop_front();
    musicgw::v1::OperationEvent event;
    event.set_kind(item.kind);
    if (item.op != nullptr) *event.mutable_operation() = *item.op;
    event.set_sequence(item.sequence);
    const absl::Time now = clock_.Now();
    *event.mutable_send_time() = ToProtoTimestamp(now);
    event.set_coalesced(item.coalesced);
    last_activity_ = now;
    return event;
  }
  if (finished_) {
    *finished = true;
    *final_status = final_status_;
    return std::nullopt;
  }
  if (terminal_queued_) {
    *finished = true;
    *final_status = absl::OkStatus();
    return std::nullopt;
  }
  waiting_ = true;
  return std::nullopt;
}

}  // namespace musicgw::operations
