#include "common/errors.h"

#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"

namespace musicgw {
namespace {

TEST(ErrorsTest, DetailsSurviveTheTripThroughGrpcStatus) {
  absl::Status status = absl::ResourceExhaustedError("quota gone");
  status = WithErrorInfo(status, "PROVIDER_QUOTA_EXHAUSTED", "loudly.com", {{"service", "vega"}});
  status = WithRetryInfo(status, absl::Seconds(42) + absl::Milliseconds(500));
  status = WithQuotaViolation(status, "provider:loudly/account:main/resource:vega", "exhausted");

  const grpc::Status wire = ToGrpcStatus(status);
  EXPECT_EQ(wire.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(wire.error_message(), "quota gone");
  google::rpc::Status rpc;
  ASSERT_TRUE(rpc.ParseFromString(wire.error_details()));
  EXPECT_EQ(rpc.code(), 8);
  EXPECT_EQ(rpc.details_size(), 3);

  const absl::Status back = FromGrpcStatus(wire);
  google::rpc::ErrorInfo info;
  ASSERT_TRUE(GetErrorInfo(back, &info));
  EXPECT_EQ(info.reason(), "PROVIDER_QUOTA_EXHAUSTED");
  EXPECT_EQ(info.domain(), "loudly.com");
  EXPECT_EQ(info.metadata().at("service"), "vega");
  google::rpc::RetryInfo retry;
  ASSERT_TRUE(GetRetryInfo(back, &retry));
  EXPECT_EQ(retry.retry_delay().seconds(), 42);
  EXPECT_EQ(retry.retry_delay().nanos(), 500000000);
  google::rpc::QuotaFailure quota;
  ASSERT_TRUE(GetQuotaFailure(back, &quota));
  ASSERT_EQ(quota.violations_size(), 1);
  EXPECT_EQ(quota.violations(0).subject(), "provider:loudly/account:main/resource:vega");
}

TEST(ErrorsTest, InvalidFieldNamesTheField) {
  const absl::Status status = InvalidFieldError("sample.duration_seconds", "must be at most 30 s");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(), "sample.duration_seconds: must be at most 30 s");
  google::rpc::BadRequest bad;
  ASSERT_TRUE(GetBadRequest(status, &bad));
  ASSERT_EQ(bad.field_violations_size(), 1);
  EXPECT_EQ(bad.field_violations(0).field(), "sample.duration_seconds");
  const absl::Status two = WithFieldViolation(status, "request_id", "required");
  ASSERT_TRUE(GetBadRequest(two, &bad));
  EXPECT_EQ(bad.field_violations_size(), 2);
}

TEST(ErrorsTest, OkStaysOk) {
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok());
  EXPECT_TRUE(FromGrpcStatus(grpc::Status::OK).ok());
  const absl::Status plain = FromGrpcStatus(grpc::Status(grpc::StatusCode::NOT_FOUND, "gone"));
  EXPECT_EQ(plain.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(plain.message(), "gone");
}

TEST(ErrorsTest, EveryErrorLeavesWithAnErrorInfo) {
  // A bare status (no detail from its source) gets a reason from its code.
  for (const auto& [status, reason] : std::vector<std::pair<absl::Status, std::string>>{
           {absl::InternalError("database or disk is full"), "INTERNAL_ERROR"},
           {absl::UnknownError("?"), "UNKNOWN_ERROR"},
           {absl::NotFoundError("operations/x not found"), "NOT_FOUND"},
           {absl::UnavailableError("shutting down"), "UNAVAILABLE"},
       }) {
    const absl::Status back = FromGrpcStatus(ToGrpcStatus(status));
    EXPECT_EQ(back.code(), status.code());
    EXPECT_EQ(back.message(), status.message());
    google::rpc::ErrorInfo info;
    ASSERT_TRUE(GetErrorInfo(back, &info)) << status;
    EXPECT_EQ(info.reason(), reason);
    EXPECT_EQ(info.domain(), kGatewayDomain);
  }
  // A source's own ErrorInfo and other details are kept as they are.
  absl::Status rich =
      WithErrorInfo(absl::UnavailableError("ledger"), "LEDGER_UNAVAILABLE", kGatewayDomain);
  rich = WithRetryInfo(rich, absl::Seconds(5));
  const absl::Status back = FromGrpcStatus(ToGrpcStatus(rich));
  google::rpc::ErrorInfo info;
  ASSERT_TRUE(GetErrorInfo(back, &info));
  EXPECT_EQ(info.reason(), "LEDGER_UNAVAILABLE");
  google::rpc::RetryInfo retry;
  EXPECT_TRUE(GetRetryInfo(back, &retry));
  EXPECT_TRUE(EnsureErrorInfo(absl::OkStatus()).ok());
}

}  // namespace
}  // namespace musicgw
