// File: executor.h
// A small pool of worker threads with delayed tasks: where the engine runs ledger writes and
// fan-out, so callbacks arriving on the HTTP loop thread never block it.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"

namespace musicgw::operations {

class Executor {
 public:
  using Task = absl::AnyInvocable<void() &&>;

  // Delays are measured on `clock` (a fake clock in tests drives the timers). Workers run at
  // `nice` (0: the process's priority; see common/thread_priority.h).
  explicit Executor(int threads, const Clock& clock = Clock::Real(), int nice = 0);
  ~Executor();  // Stop()
  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;

  // Runs `task` on a worker. After Stop() the task is dropped (destroyed unrun).
  void Post(Task task);
  // Runs `task` on a worker after `delay`.
  void PostAfter(absl::Duration delay, Task task);
  // Drops pending tasks and joins the workers. Idempotent. From a worker thread it cannot join
  // that thread, so the thread is detached and exits after its current task.
  void Stop();
  // True on one of this executor's workers.
  bool InWorker() const;
  // Tasks due to run and waiting for a worker (posted, or delayed and past their time): how far
  // the workers are behind.
  int64_t Queued() const;

 private:
  void Loop(int nice);

  const Clock& clock_;
  mutable absl::Mutex mu_;
  absl::CondVar cv_;
  std::deque<Task> ready_ ABSL_GUARDED_BY(mu_);
  // (when, tie-break) -> task; a map because AnyInvocable is move-only.
  std::map<std::pair<absl::Time, uint64_t>, Task> timed_ ABSL_GUARDED_BY(mu_);
  uint64_t next_seq_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace musicgw::operations
