#include "common/thread_priority.h"

#include <algorithm>
#include <thread>

#include "gtest/gtest.h"

namespace musicgw {
namespace {

// `by` below `nice`, within the highest nice value.
int Lowered(int nice, int by) { return std::min(19, nice + by); }

// Each test works in a thread of its own: nice is per thread, and raising it cannot always be
// undone without privilege.
TEST(ThreadPriorityTest, RaisesOnlyTheCallingThreadsNice) {
  const int before = CurrentThreadNice();
  int inside = -100;
  std::thread([&] {
    ASSERT_TRUE(SetCurrentThreadNice(Lowered(before, 7)).ok());
    inside = CurrentThreadNice();
  }).join();
  EXPECT_EQ(inside, Lowered(before, 7));
  EXPECT_EQ(CurrentThreadNice(), before);
}

TEST(ThreadPriorityTest, ZeroLeavesTheThreadAsItIs) {
  const int before = CurrentThreadNice();
  int inside = -100;
  std::thread([&] {
    ASSERT_TRUE(SetCurrentThreadNice(0).ok());
    inside = CurrentThreadNice();
  }).join();
  EXPECT_EQ(inside, before);
}

TEST(ThreadPriorityTest, ThreadsStartedByALoweredThreadInheritItsNice) {
  const int before = CurrentThreadNice();
  int child = -100;
  std::thread([&] {
    ASSERT_TRUE(SetCurrentThreadNice(Lowered(before, 5)).ok());
    std::thread([&] { child = CurrentThreadNice(); }).join();
  }).join();
  EXPECT_EQ(child, Lowered(before, 5));
}

TEST(ThreadPriorityTest, LowerOrWarnLowersTheCallingThread) {
  const int before = CurrentThreadNice();
  int inside = -100;
  std::thread([&] {
    LowerCurrentThreadPriorityOrWarn(Lowered(before, 3), "test thread");
    inside = CurrentThreadNice();
  }).join();
  EXPECT_EQ(inside, Lowered(before, 3));
}

}  // namespace
}  // namespace musicgw
