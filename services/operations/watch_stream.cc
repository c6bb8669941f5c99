#include "services/operations/watch_stream.h"

#include <algorithm>
#include <utility>

#include "common/time_util.h"

namespace musicgw::operations {

namespace v1 = musicgw::v1;

const std::string& SharedSnapshot::Encoded(absl::FunctionRef<void(v1::Operation*)> annotate) const {
  absl::call_once(encoded_once_, [&] {
    v1::Operation sent = *operation_;
    annotate(&sent);
    sent.SerializeToString(&encoded_);
  });
  return encoded_;
}

const std::string& SharedSnapshot::Encoded() const {
  absl::call_once(encoded_once_, [&] { operation_->SerializeToString(&encoded_); });
  return encoded_;
}

v1::OperationEvent ToOperationEvent(const WatchEvent& event) {
  v1::OperationEvent message;
  message.set_kind(event.kind);
  if (event.snapshot != nullptr) *message.mutable_operation() = event.snapshot->operation();
  message.set_sequence(event.sequence);
  *message.mutable_send_time() = ToProtoTimestamp(event.send_time);
  message.set_coalesced(event.coalesced);
  return message;
}

WatchEvent FromOperationEvent(v1::OperationEvent event) {
  WatchEvent out;
  out.kind = event.kind();
  if (event.has_operation()) {
    out.snapshot = std::make_shared<const SharedSnapshot>(
        std::make_shared<const v1::Operation>(std::move(*event.mutable_operation())));
  }
  out.sequence = event.sequence();
  out.send_time = FromProtoTimestamp(event.send_time());
  out.coalesced = event.coalesced();
  return out;
}

bool WatchState::OwedLocked() {
  if (!waiting_) return false;
  waiting_ = false;
  return true;
}

bool WatchState::Push(Snapshot op, musicgw::v1::OperationEvent::Kind kind, bool replay,
                      bool coalesced) {
  absl::MutexLock lock(&mu_);
  if (closed_ || finished_ || terminal_queued_) return false;
  const v1::Operation& operation = op->operation();
  // Never an older (or the same) state twice.
  if (operation.sequence() <= last_queued_sequence_) return false;
  if (!replay && queue_.size() >= capacity_) {
    // The reader is behind: its backlog is superseded by this latest snapshot.
    queue_.clear();
    coalesced = true;
  }
  // A heartbeat still queued is pointless behind a real event.
  if (!queue_.empty() && queue_.back().op == nullptr) queue_.pop_back();
  last_queued_sequence_ = operation.sequence();
  if (operation.done()) terminal_queued_ = true;
  queue_.push_back(Item{std::move(op), kind, coalesced, last_queued_sequence_});
  return OwedLocked();
}

bool WatchState::Heartbeat(absl::Time now, absl::Duration interval, absl::Duration slack,
                           absl::Duration* next_check) {
  absl::MutexLock lock(&mu_);
  if (closed_ || finished_ || (terminal_queued_ && queue_.empty())) {
    *next_check = absl::InfiniteDuration();
    return false;
  }
  const absl::Duration idle = now - last_activity_;
  if (idle + slack < interval || !queue_.empty()) {
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

std::optional<WatchEvent> WatchState::Next(bool* finished, absl::Status* final_status) {
  absl::MutexLock lock(&mu_);
  if (!queue_.empty()) {
    Item item = std::move(queue_.front());
    queue_.erase(queue_.begin());
    if (queue_.empty()) queue_.clear();  // gives a grown buffer back
    const absl::Time now = clock_.Now();
    last_activity_ = now;
    const bool last = queue_.empty() && terminal_queued_;
    return WatchEvent{item.kind, std::move(item.op), item.sequence, now, item.coalesced, last};
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
