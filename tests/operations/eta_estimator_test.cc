// The ETA of live operations, from a seeded SQLite ledger on a fake clock.
#include "services/operations/eta_estimator.h"

#include <memory>
#include <string>

#include "common/clock.h"
#include "common/time_util.h"
#include "gtest/gtest.h"
#include "services/operations/ids.h"
#include "services/operations/sqlite_store.h"
#include "tests/operations/test_util.h"

namespace musicgw::operations {
namespace {

namespace v1 = musicgw::v1;

class EtaEstimatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SqliteOptions options;
    options.clock = &clock_;
    auto store = OpenSqliteOperationStore(testing::TempLedgerPath(), options);
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
  }

  v1::Operation Live(const std::string& request_id, const std::string& account = "sp-main") {
    v1::Operation op;
    op.set_name(OperationName(NewOperationId(clock_.Now())));
    op.set_state(v1::OPERATION_STATE_RUNNING);
    op.set_task(v1::TASK_KIND_SONG);
    op.set_provider(v1::PROVIDER_SOUNDPIECE);
    op.set_provider_account(account);
    op.set_sequence(1);
    *op.mutable_create_time() = ToProtoTimestamp(clock_.Now());
    return op;
  }

  // A successful operation of sp-main that took `took`, finished before now.
  void Seed(const std::string& request_id, absl::Duration took) {
    OperationRecord record;
    record.tenant = "t";
    record.request_id = request_id;
    record.request_hash = request_id;
    record.operation = Live(request_id);
    *record.operation.mutable_create_time() =
        ToProtoTimestamp(clock_.Now() - absl::Hours(1) - took);
    auto made = store_->Create(record, {});
    ASSERT_TRUE(made.ok()) << made.status();
    OperationUpdate update;
    update.operation = made->record.operation;
    update.operation.set_state(v1::OPERATION_STATE_SUCCEEDED);
    update.operation.set_done(true);
    *update.operation.mutable_done_time() = ToProtoTimestamp(clock_.Now() - absl::Hours(1));
    update.operation.set_sequence(2);
    update.expected_sequence = 1;
    ASSERT_TRUE(store_->Update(update).ok());
  }

  FakeClock clock_;
  std::unique_ptr<OperationStore> store_;
};

TEST(EtaMath, MedianIgnoresOutliers) {
  EXPECT_FALSE(MedianDuration({}).has_value());
  EXPECT_EQ(MedianDuration({absl::Seconds(3)}), absl::Seconds(3));
  EXPECT_EQ(MedianDuration({absl::Seconds(1), absl::Seconds(900), absl::Seconds(2)}),
            absl::Seconds(2));
  EXPECT_EQ(MedianDuration({absl::Seconds(4), absl::Seconds(2)}), absl::Seconds(3));
}

TEST_F(EtaEstimatorTest, AbsentWithoutHistory) {
  EtaEstimator eta(*store_, clock_);
  v1::Operation op = Live("x");
  eta.Annotate(&op);
  EXPECT_FALSE(op.has_estimated_done_time());
}

TEST_F(EtaEstimatorTest, FallsAsTimePassesAndStaysAfterNow) {
  // Median 60 s; the 900 s outlier does not move it.
  Seed("a", absl::Seconds(58));
  Seed("b", absl::Seconds(60));
  Seed("c", absl::Seconds(62));
  Seed("d", absl::Seconds(900));
  Seed("e", absl::Seconds(59));
  EtaEstimator eta(*store_, clock_);
  v1::Operation op = Live("x");
  const absl::Time start = clock_.Now();

  eta.Annotate(&op);
  ASSERT_TRUE(op.has_estimated_done_time());
  EXPECT_EQ(FromProtoTimestamp(op.estimated_done_time()), start + absl::Seconds(60));

  absl::Duration previous = absl::InfiniteDuration();
  for (int step = 0; step < 30; ++step) {
    clock_.Advance(absl::Seconds(7));
    eta.Annotate(&op);
    ASSERT_TRUE(op.has_estimated_done_time()) << "step " << step;
    const absl::Duration remaining = FromProtoTimestamp(op.estimated_done_time()) - clock_.Now();
    EXPECT_GT(remaining, absl::ZeroDuration()) << "step " << step;  // never in the past
    if (clock_.Now() - start < absl::Seconds(55)) {
      EXPECT_LT(remaining, previous) << "step " << step;  // falls while on schedule
    } else {
      EXPECT_LE(remaining, previous) << "step " << step;  // overdue: a few seconds from now
    }
    previous = remaining;
  }
  EXPECT_EQ(previous, EtaOptions{}.overdue_margin);
}

TEST_F(EtaEstimatorTest, ClearedWhenDoneOrWithoutAccountAndPerAccount) {
  Seed("a", absl::Seconds(30));
  EtaEstimator eta(*store_, clock_);
  v1::Operation other = Live("y", "sp-other");
  eta.Annotate(&other);
  EXPECT_FALSE(other.has_estimated_done_time());  // another account has no history

  v1::Operation op = Live("x");
  eta.Annotate(&op);
  ASSERT_TRUE(op.has_estimated_done_time());
  op.set_state(v1::OPERATION_STATE_SUCCEEDED);
  op.set_done(true);
  eta.Annotate(&op);
  EXPECT_FALSE(op.has_estimated_done_time());

  v1::Operation queued = Live("z", "");  // not routed to an account yet
  eta.Annotate(&queued);
  EXPECT_FALSE(queued.has_estimated_done_time());
}

TEST_F(EtaEstimatorTest, NewHistoryCountsAfterTheCacheExpires) {
  Seed("a", absl::Seconds(30));
  EtaOptions options;
  options.cache_ttl = absl::Seconds(10);
  EtaEstimator eta(*store_, clock_, options);
  v1::Operation op = Live("x");
  eta.Annotate(&op);
  EXPECT_EQ(FromProtoTimestamp(op.estimated_done_time()) - clock_.Now(), absl::Seconds(30));
  Seed("b", absl::Seconds(300));
  Seed("c", absl::Seconds(300));
  clock_.Advance(absl::Seconds(11));
  eta.Annotate(&op);
  EXPECT_EQ(FromProtoTimestamp(op.estimated_done_time()) - clock_.Now(),
            absl::Seconds(300) - absl::Seconds(11));
}

}  // namespace
}  // namespace musicgw::operations
