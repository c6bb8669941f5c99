// File: clock.h
// The one source of time for logic that depends on it (routing cooldowns, trackers, watch
// heartbeats, budgets, quota). Production code uses Clock::Real(); tests use FakeClock and
// advance it by hand, so time-dependent behaviour is tested without sleeping.
#pragma once

#include <cstdint>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace musicgw {

class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() const = 0;

  // Waits on `cv` (with `mu` held) until it is signalled or this clock reaches `deadline`.
  // Returns true when the deadline was reached. Timer loops use it so a fake clock can drive
  // them; spurious wake-ups are allowed, callers re-check their condition.
  virtual bool WaitUntil(absl::CondVar& cv, absl::Mutex& mu, absl::Time deadline) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) = 0;

  // absl::Now(), and real waits. Never destroyed.
  static const Clock& Real();
};

// A clock that moves only when told. Waits through it re-check the fake time at a short real
// interval, so a thread blocked in WaitUntil notices Advance() promptly without a lost wake-up.
class FakeClock final : public Clock {
 public:
  explicit FakeClock(absl::Time start = absl::FromUnixSeconds(1'800'000'000));

  absl::Time Now() const override;
  bool WaitUntil(absl::CondVar& cv, absl::Mutex& mu, absl::Time deadline) const override
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);

  void Advance(absl::Duration by);
  void SetTime(absl::Time to);

 private:
  mutable absl::Mutex mu_;
  absl::Time now_ ABSL_GUARDED_BY(mu_);
};

}  // namespace musicgw
