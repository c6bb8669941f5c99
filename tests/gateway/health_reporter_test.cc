#include "services/gateway/health_reporter.h"

#include <utility>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "common/clock.h"
#include "gtest/gtest.h"

namespace musicgw::gateway {
namespace {

constexpr absl::Duration kInterval = absl::Seconds(1);
// Real-time bound on waiting for the reporter's thread; never reached when things work.
constexpr absl::Duration kPatience = absl::Seconds(10);

// The probe's answer and every report, shared with the reporter's thread.
class Ledger {
 public:
  absl::Status Probe() {
    absl::MutexLock lock(&mu_);
    ++probes_;
    return status_;
  }
  void Set(absl::Status status) {
    absl::MutexLock lock(&mu_);
    status_ = std::move(status);
  }
  void Report(bool serving) {
    absl::MutexLock lock(&mu_);
    reports_.push_back(serving);
  }
  std::vector<bool> reports() const {
    absl::MutexLock lock(&mu_);
    return reports_;
  }
  int probes() const {
    absl::MutexLock lock(&mu_);
    return probes_;
  }

 private:
  mutable absl::Mutex mu_;
  absl::Status status_;
  std::vector<bool> reports_;
  int probes_ = 0;
};

TEST(HealthReporterTest, ReportsAtStartThenFollowsTheProbeOnEachTick) {
  FakeClock clock;
  Ledger ledger;
  HealthReporter reporter(
      clock, kInterval, [&ledger] { return ledger.Probe(); },
      [&ledger](bool serving) { ledger.Report(serving); });
  reporter.Start();
  // The first answer is there when Start returns.
  EXPECT_EQ(reporter.checks(), 1);
  EXPECT_EQ(ledger.reports(), std::vector<bool>{true});

  ledger.Set(absl::UnavailableError("database or disk is full"));
  clock.Advance(kInterval);
  ASSERT_TRUE(reporter.AwaitChecks(2, kPatience));
  EXPECT_EQ(ledger.reports(), (std::vector<bool>{true, false}));

  // Still failing: no new report, only a new check.
  clock.Advance(kInterval);
  ASSERT_TRUE(reporter.AwaitChecks(3, kPatience));
  EXPECT_EQ(ledger.reports(), (std::vector<bool>{true, false}));

  ledger.Set(absl::OkStatus());
  clock.Advance(kInterval);
  ASSERT_TRUE(reporter.AwaitChecks(4, kPatience));
  EXPECT_EQ(ledger.reports(), (std::vector<bool>{true, false, true}));
  reporter.Stop();
}

TEST(HealthReporterTest, ChecksOnlyWhenTheClockReachesTheInterval) {
  FakeClock clock;
  Ledger ledger;
  HealthReporter reporter(
      clock, kInterval, [&ledger] { return ledger.Probe(); },
      [&ledger](bool serving) { ledger.Report(serving); });
  reporter.Start();
  clock.Advance(kInterval / 2);
  clock.Advance(kInterval / 2);
  // The tick at exactly one interval is the second check; had a check run at the half-way
  // point, the count would reach 3 after the next full interval below.
  ASSERT_TRUE(reporter.AwaitChecks(2, kPatience));
  clock.Advance(kInterval);
  ASSERT_TRUE(reporter.AwaitChecks(3, kPatience));
  EXPECT_EQ(reporter.checks(), 3);
  EXPECT_EQ(ledger.probes(), 3);
  reporter.Stop();
}

TEST(HealthReporterTest, StopEndsTheTimerAndNoReportFollows) {
  FakeClock clock;
  Ledger ledger;
  HealthReporter reporter(
      clock, kInterval, [&ledger] { return ledger.Probe(); },
      [&ledger](bool serving) { ledger.Report(serving); });
  reporter.Start();
  reporter.Stop();
  const int probes = ledger.probes();
  ledger.Set(absl::UnavailableError("ledger"));
  clock.Advance(10 * kInterval);
  // The thread is joined: nothing can probe or report any more.
  EXPECT_EQ(ledger.probes(), probes);
  EXPECT_EQ(ledger.reports(), std::vector<bool>{true});
  reporter.Stop();  // idempotent
}

}  // namespace
}  // namespace musicgw::gateway
