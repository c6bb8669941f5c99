#include "services/operations/executor.h"

#include <algorithm>

#include "common/thread_priority.h"

namespace musicgw::operations {

Executor::Executor(int threads, const Clock& clock, int nice) : clock_(clock) {
  threads = std::max(1, threads);
  threads_.reserve(threads);
  for (int i = 0; i < threads; ++i) threads_.emplace_back([this, nice] { Loop(nice); });
}

Executor::~Executor() { Stop(); }

void Executor::Post(Task task) {
  absl::MutexLock lock(&mu_);
  if (stopping_) return;  // `task` is destroyed on return, unrun
  ready_.push_back(std::move(task));
  cv_.Signal();
}

void Executor::PostAfter(absl::Duration delay, Task task) {
  if (delay <= absl::ZeroDuration()) return Post(std::move(task));
  absl::MutexLock lock(&mu_);
  if (stopping_) return;
  const auto key = std::make_pair(clock_.Now() + delay, next_seq_++);
  const bool earliest = timed_.empty() || key < timed_.begin()->first;
  timed_.emplace(key, std::move(task));
  // A worker may be sleeping until a later timer.
  if (earliest) cv_.SignalAll();
}

bool Executor::InWorker() const {
  const auto self = std::this_thread::get_id();
  return std::any_of(threads_.begin(), threads_.end(),
                     [self](const std::thread& t) { return t.get_id() == self; });
}

int64_t Executor::Queued() const {
  absl::MutexLock lock(&mu_);
  const absl::Time now = clock_.Now();
  int64_t due = 0;
  for (auto it = timed_.begin(); it != timed_.end() && it->first.first <= now; ++it) ++due;
  return static_cast<int64_t>(ready_.size()) + due;
}

void Executor::Stop() {
  std::deque<Task> ready;
  std::map<std::pair<absl::Time, uint64_t>, Task> timed;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_ && threads_.empty()) return;
    stopping_ = true;
    ready.swap(ready_);
    timed.swap(timed_);
    cv_.SignalAll();
  }
  // Pending tasks are destroyed here, outside the lock (their captures may post again).
  ready.clear();
  timed.clear();
  const auto self = std::this_thread::get_id();
  for (auto& thread : threads_) {
    if (!thread.joinable()) continue;
    if (thread.get_id() == self) {
      thread.detach();
    } else {
      thread.join();
    }
  }
  threads_.clear();
}

void Executor::Loop(int nice) {
  LowerCurrentThreadPriorityOrWarn(nice, "worker thread");
  absl::MutexLock lock(&mu_);
  while (!stopping_) {
    const absl::Time now = clock_.Now();
    while (!timed_.empty() && timed_.begin()->first.first <= now) {
      ready_.push_back(std::move(timed_.begin()->second));
      timed_.erase(timed_.begin());
    }
    if (!ready_.empty()) {
      Task task = std::move(ready_.front());
      ready_.pop_front();
      if (!ready_.empty()) cv_.Signal();
      mu_.Unlock();
      std::move(task)();
      task = nullptr;  // destroy captures outside the lock
      mu_.Lock();
      continue;
    }
    if (timed_.empty()) {
      cv_.Wait(&mu_);
    } else {
      clock_.WaitUntil(cv_, mu_, timed_.begin()->first.first);
    }
  }
}

}  // namespace musicgw::operations
