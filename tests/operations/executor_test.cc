#include "services/operations/executor.h"

#include <algorithm>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "common/thread_priority.h"
#include "gtest/gtest.h"

namespace musicgw::operations {
namespace {

TEST(ExecutorTest, WorkersRunAtTheExecutorsNice) {
  const int before = CurrentThreadNice();
  const int lowered = std::min(19, before + 10);  // the highest nice is 19
  Executor background(2, Clock::Real(), lowered);
  Executor foreground(1);
  int background_nice = -100, foreground_nice = -100;
  absl::Notification background_ran, foreground_ran;
  background.Post([&] {
    background_nice = CurrentThreadNice();
    background_ran.Notify();
  });
  foreground.Post([&] {
    foreground_nice = CurrentThreadNice();
    foreground_ran.Notify();
  });
  background_ran.WaitForNotification();
  foreground_ran.WaitForNotification();
  EXPECT_EQ(background_nice, lowered);
  EXPECT_EQ(foreground_nice, before);
}

TEST(ExecutorTest, QueuedCountsTasksDueAndWaitingForAWorker) {
  FakeClock clock;
  Executor executor(1, clock);
  absl::Notification busy, release;
  executor.Post([&] {
    busy.Notify();
    release.WaitForNotification();
  });
  busy.WaitForNotification();  // the only worker is taken
  EXPECT_EQ(executor.Queued(), 0);

  absl::Mutex mu;
  int ran = 0;
  auto count = [&] {
    absl::MutexLock lock(&mu);
    ++ran;
  };
  executor.Post(count);
  executor.Post(count);
  executor.PostAfter(absl::Seconds(10), count);
  EXPECT_EQ(executor.Queued(), 2);  // the delayed one is not due yet
  clock.Advance(absl::Seconds(10));
  EXPECT_EQ(executor.Queued(), 3);

  release.Notify();
  absl::MutexLock lock(&mu);
  mu.Await(absl::Condition(
      +[](int* n) { return *n == 3; }, &ran));
  EXPECT_EQ(executor.Queued(), 0);
}

}  // namespace
}  // namespace musicgw::operations
