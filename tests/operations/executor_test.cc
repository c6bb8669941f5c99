#include "services/operations/executor.h"

#include <algorithm>

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

}  // namespace
}  // namespace musicgw::operations
