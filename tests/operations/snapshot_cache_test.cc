// SnapshotCache on a fake clock: announced changes replace or invalidate entries, a ledger read
// never caches a state older than one announced meanwhile, the tenant check, the maximum age,
// and the bound on size.
#include "services/operations/snapshot_cache.h"

#include <memory>
#include <string>

#include "common/clock.h"
#include "gtest/gtest.h"

namespace musicgw::operations {
namespace {

namespace v1 = musicgw::v1;

v1::Operation At(int64_t sequence, v1::OperationState state = v1::OPERATION_STATE_RUNNING) {
  v1::Operation op;
  op.set_name("operations/op1");
  op.set_sequence(sequence);
  op.set_state(state);
  return op;
}

Change Announced(const std::string& id, int64_t sequence, bool with_snapshot = true) {
  Change change;
  change.operation_id = id;
  change.sequence = sequence;
  if (with_snapshot) {
    change.snapshot =
        std::make_shared<const v1::Operation>(At(sequence, v1::OPERATION_STATE_SUCCEEDED));
  }
  return change;
}

class SnapshotCacheTest : public ::testing::Test {
 protected:
  FakeClock clock_;
  SnapshotCache cache_{SnapshotCacheOptions{/*capacity=*/3, /*max_age=*/absl::Seconds(30)}, clock_};

  void Read(const std::string& id, int64_t sequence, const std::string& tenant = "t1") {
    cache_.Offer(id, tenant, At(sequence), cache_.BeginRead());
  }
};

TEST_F(SnapshotCacheTest, MissesUntilReadThenHits) {
  EXPECT_EQ(cache_.Find("op1", "t1").operation, nullptr);
  Read("op1", 1);
  auto hit = cache_.Find("op1", "t1");
  ASSERT_NE(hit.operation, nullptr);
  EXPECT_EQ(hit.operation->sequence(), 1);
}

TEST_F(SnapshotCacheTest, AnotherTenantIsToldForeignAndGetsNothing) {
  Read("op1", 1, "t1");
  auto hit = cache_.Find("op1", "t2");
  EXPECT_TRUE(hit.foreign);
  EXPECT_EQ(hit.operation, nullptr);
}

TEST_F(SnapshotCacheTest, PublishedChangeReplacesTheCachedSnapshot) {
  Read("op1", 1);
  cache_.OnChange(Announced("op1", 2));
  auto hit = cache_.Find("op1", "t1");
  ASSERT_NE(hit.operation, nullptr);
  EXPECT_EQ(hit.operation->sequence(), 2);
  EXPECT_EQ(hit.operation->state(), v1::OPERATION_STATE_SUCCEEDED);
}

TEST_F(SnapshotCacheTest, ChangeWithoutSnapshotForcesALedgerRead) {
  Read("op1", 1);
  cache_.OnChange(Announced("op1", 2, /*with_snapshot=*/false));
  EXPECT_EQ(cache_.Find("op1", "t1").operation, nullptr);
  Read("op1", 2);
  auto hit = cache_.Find("op1", "t1");
  ASSERT_NE(hit.operation, nullptr);
  EXPECT_EQ(hit.operation->sequence(), 2);
}

TEST_F(SnapshotCacheTest, SlowReadCannotCacheAStateOlderThanAnAnnouncedOne) {
  // The read began (and saw sequence 1) before sequence 2 was announced.
  const uint64_t stamp = cache_.BeginRead();
  cache_.OnChange(Announced("op1", 2, /*with_snapshot=*/false));
  cache_.Offer("op1", "t1", At(1), stamp);
  EXPECT_EQ(cache_.Find("op1", "t1").operation, nullptr);

  // Same with an entry already cached and the change carrying its snapshot.
  Read("op1", 2);
  const uint64_t stamp2 = cache_.BeginRead();
  cache_.OnChange(Announced("op1", 3));
  cache_.Offer("op1", "t1", At(2), stamp2);
  auto hit = cache_.Find("op1", "t1");
  ASSERT_NE(hit.operation, nullptr);
  EXPECT_EQ(hit.operation->sequence(), 3);
}

TEST_F(SnapshotCacheTest, SlowReadIsDroppedWhenTheChangeItMissedWasEvicted) {
  const uint64_t stamp = cache_.BeginRead();
  cache_.OnChange(Announced("op1", 2, /*with_snapshot=*/false));
  // Three other operations push op1's entry, and what it knew, out.
  for (const char* other : {"a", "b", "c"}) Read(other, 1);
  EXPECT_EQ(cache_.size(), 3u);
  cache_.Offer("op1", "t1", At(1), stamp);
  EXPECT_EQ(cache_.Find("op1", "t1").operation, nullptr);
  // A read that began after the eviction is cached.
  Read("op1", 2);
  EXPECT_NE(cache_.Find("op1", "t1").operation, nullptr);
}

TEST_F(SnapshotCacheTest, EntriesOlderThanTheMaximumAgeAreReadAgain) {
  Read("op1", 1);
  clock_.Advance(absl::Seconds(29));
  EXPECT_NE(cache_.Find("op1", "t1").operation, nullptr);
  clock_.Advance(absl::Seconds(2));
  EXPECT_EQ(cache_.Find("op1", "t1").operation, nullptr);
  Read("op1", 1);
  EXPECT_NE(cache_.Find("op1", "t1").operation, nullptr);
}

TEST_F(SnapshotCacheTest, LeastRecentlyUsedIsEvictedAtCapacity) {
  Read("a", 1);
  Read("b", 1);
  Read("c", 1);
  ASSERT_NE(cache_.Find("a", "t1").operation, nullptr);  // a is now the most recent
  Read("d", 1);
  EXPECT_EQ(cache_.size(), 3u);
  EXPECT_EQ(cache_.Find("b", "t1").operation, nullptr);
  EXPECT_NE(cache_.Find("a", "t1").operation, nullptr);
  EXPECT_NE(cache_.Find("d", "t1").operation, nullptr);
}

TEST_F(SnapshotCacheTest, ChangesOfAnUnreadOperationAreNotServedWithoutItsTenant) {
  cache_.OnChange(Announced("op1", 1));
  EXPECT_EQ(cache_.Find("op1", "t1").operation, nullptr);
  EXPECT_FALSE(cache_.Find("op1", "t1").foreign);
  Read("op1", 1, "t2");
  EXPECT_TRUE(cache_.Find("op1", "t1").foreign);
}

TEST_F(SnapshotCacheTest, AForgottenOperationIsReadAgainAndAnEarlierReadIsNotCached) {
  Read("op1", 4);
  const uint64_t before = cache_.BeginRead();
  cache_.Forget("op1");  // e.g. its assets were taken into custody: same sequence, new facts
  EXPECT_EQ(cache_.Find("op1", "t1").operation, nullptr);
  cache_.Offer("op1", "t1", At(4), before);  // read before the change: stale facts
  EXPECT_EQ(cache_.Find("op1", "t1").operation, nullptr);
  Read("op1", 4);
  EXPECT_NE(cache_.Find("op1", "t1").operation, nullptr);
}

TEST_F(SnapshotCacheTest, AResyncDropsEverythingAndReadsBegunBeforeIt) {
  Read("op1", 1);
  Read("op2", 1);
  const uint64_t before = cache_.BeginRead();
  cache_.OnResync();
  EXPECT_EQ(cache_.Find("op1", "t1").operation, nullptr);
  EXPECT_EQ(cache_.Find("op2", "t1").operation, nullptr);
  cache_.Offer("op3", "t1", At(1), before);
  EXPECT_EQ(cache_.Find("op3", "t1").operation, nullptr);
  Read("op1", 1);
  EXPECT_NE(cache_.Find("op1", "t1").operation, nullptr);
}

}  // namespace
}  // namespace musicgw::operations
