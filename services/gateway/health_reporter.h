// File: health_reporter.h
// Keeps the gRPC health status in step with what the gateway can do: NOT_SERVING while the probe
// (the ledger's write status) fails, SERVING again once it passes. One thread checks at Start()
// and then every `interval` of the given Clock, so tests drive it with a FakeClock and wait on
// checks() rather than on time. The sink hears only changes (and the first answer).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"

namespace musicgw::gateway {

class HealthReporter {
 public:
  using Probe = std::function<absl::Status()>;
  using Sink = std::function<void(bool serving)>;

  // `clock` must outlive the reporter.
  HealthReporter(const Clock& clock, absl::Duration interval, Probe probe, Sink sink);
  ~HealthReporter();
  HealthReporter(const HealthReporter&) = delete;
  HealthReporter& operator=(const HealthReporter&) = delete;

  // Checks once on the calling thread (so the status is set when Start returns), then starts
  // the timer thread. Once only.
  void Start();
  // Ends the timer thread; the sink is not called after Stop returns. Idempotent.
  void Stop();

  // Completed checks so far; an observable for tests.
  int64_t checks() const;
  // Blocks until checks() >= count or `timeout` (real time) passes; false on timeout.
  bool AwaitChecks(int64_t count, absl::Duration timeout) const;

 private:
  void CheckOnce();
  void Run();

  const Clock& clock_;
  const absl::Duration interval_;
  const Probe probe_;
  const Sink sink_;

  mutable absl::Mutex mu_;
  absl::CondVar wake_;
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  int64_t checks_ ABSL_GUARDED_BY(mu_) = 0;
  // Set with each check, before checks_ counts it, so a test that saw the count and then
  // advances a fake clock by `interval` always triggers the next check.
  absl::Time next_check_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  std::optional<bool> serving_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

}  // namespace musicgw::gateway
