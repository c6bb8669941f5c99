// Generate's accept off gRPC's threads: run once it answers with the accept's result; dropped
// unrun (its executor stopped) it answers UNAVAILABLE SHUTTING_DOWN without accepting.
#include "services/gateway/pending_accept.h"

#include <optional>
#include <utility>

#include "absl/synchronization/notification.h"
#include "common/errors.h"
#include "gtest/gtest.h"
#include "services/operations/executor.h"

namespace musicgw::gateway {
namespace {

namespace v1 = musicgw::v1;

struct Outcome {
  int accepts = 0;
  int answers = 0;
  std::optional<absl::StatusOr<v1::Operation>> answer;
};

PendingAccept Make(Outcome* outcome) {
  return PendingAccept(
      [outcome]() -> absl::StatusOr<v1::Operation> {
        ++outcome->accepts;
        v1::Operation op;
        op.set_name("operations/accepted");
        return op;
      },
      [outcome](absl::StatusOr<v1::Operation> answer) {
        ++outcome->answers;
        outcome->answer = std::move(answer);
      });
}

TEST(PendingAcceptTest, RunAnswersWithTheAcceptOnce) {
  Outcome outcome;
  {
    PendingAccept accept = Make(&outcome);
    PendingAccept moved(std::move(accept));  // the moved-from one answers nothing
    std::move(moved)();
  }
  EXPECT_EQ(outcome.accepts, 1);
  EXPECT_EQ(outcome.answers, 1);
  ASSERT_TRUE(outcome.answer.has_value() && outcome.answer->ok());
  EXPECT_EQ((*outcome.answer)->name(), "operations/accepted");
}

TEST(PendingAcceptTest, DroppedUnrunAnswersShuttingDownWithoutAccepting) {
  Outcome outcome;
  { PendingAccept accept = Make(&outcome); }
  EXPECT_EQ(outcome.accepts, 0);
  EXPECT_EQ(outcome.answers, 1);
  ASSERT_TRUE(outcome.answer.has_value());
  EXPECT_EQ(outcome.answer->status().code(), absl::StatusCode::kUnavailable);
  google::rpc::ErrorInfo info;
  ASSERT_TRUE(GetErrorInfo(outcome.answer->status(), &info));
  EXPECT_EQ(info.reason(), "SHUTTING_DOWN");
}

TEST(PendingAcceptTest, AStoppedExecutorAnswersEveryPendingAccept) {
  Outcome ran;
  Outcome dropped;
  operations::Executor executor(1);
  absl::Notification done;
  executor.Post(Make(&ran));
  executor.Post([&done] { done.Notify(); });
  done.WaitForNotification();
  executor.Stop();
  executor.Post(Make(&dropped));
  EXPECT_EQ(ran.accepts, 1);
  EXPECT_EQ(ran.answers, 1);
  EXPECT_EQ(dropped.accepts, 0);
  ASSERT_EQ(dropped.answers, 1);
  EXPECT_EQ(dropped.answer->status().code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace musicgw::gateway
