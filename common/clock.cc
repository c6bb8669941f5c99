#include "common/clock.h"

#include <algorithm>

#include "absl/time/clock.h"

namespace musicgw {
namespace {

class RealClock final : public Clock {
 public:
  absl::Time Now() const override { return absl::Now(); }
  bool WaitUntil(absl::CondVar& cv, absl::Mutex& mu, absl::Time deadline) const override
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    return cv.WaitWithDeadline(&mu, deadline);
  }
};

// How often a wait on a fake clock looks at it again.
constexpr absl::Duration kFakeRecheck = absl::Milliseconds(2);

}  // namespace

const Clock& Clock::Real() {
  static const RealClock* const clock = new RealClock();
  return *clock;
}

FakeClock::FakeClock(absl::Time start) : now_(start) {}

absl::Time FakeClock::Now() const {
  absl::MutexLock lock(&mu_);
  return now_;
}

bool FakeClock::WaitUntil(absl::CondVar& cv, absl::Mutex& mu, absl::Time deadline) const {
  if (Now() >= deadline) return true;
  cv.WaitWithTimeout(&mu, kFakeRecheck);
  return Now() >= deadline;
}

void FakeClock::Advance(absl::Duration by) {
  absl::MutexLock lock(&mu_);
  now_ += std::max(by, absl::ZeroDuration());
}

void FakeClock::SetTime(absl::Time to) {
  absl::MutexLock lock(&mu_);
  now_ = std::max(now_, to);
}

}  // namespace musicgw
