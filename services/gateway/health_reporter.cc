#include "services/gateway/health_reporter.h"

#include <utility>

#include "common/log.h"

namespace musicgw::gateway {

HealthReporter::HealthReporter(const Clock& clock, absl::Duration interval, Probe probe, Sink sink)
    : clock_(clock), interval_(interval), probe_(std::move(probe)), sink_(std::move(sink)) {}

HealthReporter::~HealthReporter() { Stop(); }

void HealthReporter::Start() {
  CheckOnce();
  thread_ = std::thread([this] { Run(); });
}

void HealthReporter::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopped_ = true;
    wake_.SignalAll();
  }
  if (thread_.joinable()) thread_.join();
}

int64_t HealthReporter::checks() const {
  absl::MutexLock lock(&mu_);
  return checks_;
}

bool HealthReporter::AwaitChecks(int64_t count, absl::Duration timeout) const {
  absl::MutexLock lock(&mu_);
  const auto reached = [this, count]()
                           ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return checks_ >= count; };
  return mu_.AwaitWithTimeout(absl::Condition(&reached), timeout);
}

void HealthReporter::CheckOnce() {
  const absl::Status status = probe_();
  const bool serving = status.ok();
  bool changed = false;
  {
    absl::MutexLock lock(&mu_);
    if (stopped_) return;
    changed = !serving_.has_value() || *serving_ != serving;
    serving_ = serving;
  }
  if (changed) {
    if (serving) {
      log::Info("health: serving");
    } else {
      log::Warning("health: not serving", {{"why", status.message()}});
    }
    sink_(serving);
  }
  absl::MutexLock lock(&mu_);
  next_check_ = clock_.Now() + interval_;
  ++checks_;
}

void HealthReporter::Run() {
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      while (!stopped_ && !clock_.WaitUntil(wake_, mu_, next_check_)) {
      }
      if (stopped_) return;
    }
    CheckOnce();
  }
}

}  // namespace musicgw::gateway
