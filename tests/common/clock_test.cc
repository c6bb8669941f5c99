#include "common/clock.h"

#include <thread>

#include "absl/synchronization/notification.h"
#include "common/provider_names.h"
#include "common/time_util.h"
#include "gtest/gtest.h"

namespace musicgw {
namespace {

TEST(FakeClockTest, MovesOnlyWhenAdvancedAndNeverBackwards) {
  FakeClock clock(absl::FromUnixSeconds(100));
  EXPECT_EQ(clock.Now(), absl::FromUnixSeconds(100));
  clock.Advance(absl::Seconds(5));
  EXPECT_EQ(clock.Now(), absl::FromUnixSeconds(105));
  clock.SetTime(absl::FromUnixSeconds(50));
  EXPECT_EQ(clock.Now(), absl::FromUnixSeconds(105));
}

TEST(FakeClockTest, WaitUntilReturnsOnceTheFakeTimeReachesTheDeadline) {
  FakeClock clock(absl::FromUnixSeconds(100));
  absl::Mutex mu;
  absl::CondVar cv;
  absl::Notification waiting;
  absl::Notification reached;
  std::thread waiter([&] {
    absl::MutexLock lock(&mu);
    waiting.Notify();
    while (!clock.WaitUntil(cv, mu, absl::FromUnixSeconds(160))) {
    }
    reached.Notify();
  });
  waiting.WaitForNotification();
  clock.Advance(absl::Seconds(30));
  // Not yet at the deadline: the waiter must still be waiting.
  EXPECT_FALSE(reached.HasBeenNotified());
  clock.Advance(absl::Seconds(30));
  reached.WaitForNotification();
  waiter.join();
}

TEST(TimeUtilTest, TimestampsAndDurationsRoundTrip) {
  const absl::Time t = absl::FromUnixMicros(1'700'000'000'123'456);
  EXPECT_EQ(FromProtoTimestamp(ToProtoTimestamp(t)), t);
  const absl::Time before_epoch = absl::FromUnixMicros(-1'500'000);
  const auto ts = ToProtoTimestamp(before_epoch);
  EXPECT_GE(ts.nanos(), 0);
  EXPECT_EQ(FromProtoTimestamp(ts), before_epoch);
  EXPECT_EQ(FromProtoDuration(ToProtoDuration(absl::Milliseconds(2500))), absl::Milliseconds(2500));
}

TEST(ProviderNamesTest, SlugAndEnumNameAgree) {
  EXPECT_EQ(ProviderSlug(musicgw::v1::PROVIDER_LOUDLY), "loudly");
  EXPECT_EQ(ProviderEnumName(musicgw::v1::PROVIDER_SOUNDPIECE), "PROVIDER_SOUNDPIECE");
  EXPECT_EQ(ProviderFromSlug("soundpiece"), musicgw::v1::PROVIDER_SOUNDPIECE);
  EXPECT_EQ(ProviderFromSlug("nope"), musicgw::v1::PROVIDER_UNSPECIFIED);
  EXPECT_EQ(ProviderFromSlug(""), musicgw::v1::PROVIDER_UNSPECIFIED);
}

}  // namespace
}  // namespace musicgw
