// File: access_log.h
// The per-call access log, written off the call path: a call appends a record to one of a few
// bounded queues (its thread's, so callers on different threads do not contend on one lock)
// and a writer thread formats the queued records as JSON lines and writes them in batches,
// one write and one flush per batch. A full queue drops the record and counts it: a burst of
// calls must not stall on a slow log sink. Lines of different threads may interleave out of
// time order within a batch; each carries its own timestamp.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace musicgw::gateway {

// One call, as the "rpc" log line shows it. Never holds secrets.
struct AccessRecord {
  absl::Time time;
  std::string method;
  std::string tenant;
  std::string operation;
  std::string provider;
  std::string code;
  std::string error;
  double latency_ms = 0;
};

struct AccessLogOptions {
  size_t capacity = 65536;  // records queued at most, over all queues
  int queues = 8;
  absl::Duration flush_interval = absl::Milliseconds(50);
};

class AccessLog {
 public:
  // `sink` receives whole lines (one or more, each ending in '\n'), on the writer thread.
  using Sink = absl::AnyInvocable<void(absl::string_view lines)>;

  AccessLog(AccessLogOptions options, Sink sink);
  // Writes everything queued, then stops the writer.
  ~AccessLog();
  AccessLog(const AccessLog&) = delete;
  AccessLog& operator=(const AccessLog&) = delete;

  // Queues `record`; false when its queue is full (the record is dropped and counted).
  bool Append(AccessRecord record);
  // Returns once everything appended before the call has reached the sink.
  void Flush();
  uint64_t dropped() const { return dropped_.load(std::memory_order_relaxed); }

  // The process's log: stderr, like common/log. Lives until exit, flushed on destruction.
  static AccessLog& Default();

  // The JSON line for `record` (with its '\n'), appended to `out`.
  static void FormatLine(const AccessRecord& record, std::string* out);

 private:
  struct Queue {
    absl::Mutex mu;
    std::vector<AccessRecord> records ABSL_GUARDED_BY(mu);
  };

  void Run();
  // Moves every queued record to the sink; returns how many.
  size_t DrainOnce();

  const AccessLogOptions options_;
  const size_t per_queue_;
  Sink sink_;  // writer thread only
  std::vector<std::unique_ptr<Queue>> queues_;
  std::atomic<uint64_t> dropped_{0};

  absl::Mutex mu_;
  absl::CondVar wake_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t flush_requested_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t flush_done_ ABSL_GUARDED_BY(mu_) = 0;
  std::thread writer_;
};

}  // namespace musicgw::gateway
