// Per-tenant limits over a real loopback channel: a tenant over its rate gets
// RESOURCE_EXHAUSTED with TENANT_RATE_LIMITED, QuotaFailure and RetryInfo, before any ledger
// work, while another tenant is still served; a tenant's concurrent live operations are capped
// by the ledger.
#include <memory>
#include <string>

#include "common/config.h"
#include "common/errors.h"
#include "gtest/gtest.h"
#include "services/gateway/server.h"
#include "tests/integration/harness.h"
#include "tests/scratch_dir.h"

namespace musicgw::testing {
namespace {

class TenantLimitsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SetTestSecrets();
    // Providers that accept connections and never answer: operations stay live.
    ASSERT_TRUE(hanging_.ok());
    nlohmann::json doc =
        TestConfig({hanging_.url(), hanging_.url()}, NewTestScratchDir("limits") + "/ledger.db");
    for (auto& tenant : doc["tenants"]) {
      if (tenant["name"] == "acme") {
        tenant["limits"] = {{"list_per_second", 1},
                            {"list_burst", 2},
                            {"max_live_operations", 2},
                            {"max_open_streams", 1}};
      }
    }
    auto config = config::ParseConfig(doc.dump(), config::ProcessEnv());
    ASSERT_TRUE(config.ok()) << config.status();
    auto server = gateway::GatewayServer::Start(std::move(*config));
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    stub_ = Stub(server_->grpc_port());
  }

  grpc::Status List(const std::string& key) {
    musicgw::v1::ListOperationsRequest request;
    musicgw::v1::ListOperationsResponse response;
    return stub_->ListOperations(Context(key).get(), request, &response);
  }

  grpc::Status Generate(const std::string& key) {
    musicgw::v1::GenerateRequest request;
    request.set_request_id(NewRequestId());
    request.set_provider(musicgw::v1::PROVIDER_SOUNDPIECE);
    request.mutable_sample()->set_prompt("held");
    request.mutable_sample()->set_duration_seconds(5);
    musicgw::v1::Operation operation;
    return stub_->Generate(Context(key).get(), request, &operation);
  }

  LoopbackListener hanging_;
  std::unique_ptr<gateway::GatewayServer> server_;
  std::unique_ptr<musicgw::v1::MusicGateway::Stub> stub_;
};

void ExpectRateLimited(const grpc::Status& status, const std::string& limit) {
  ASSERT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << status.error_message();
  const absl::Status rich = FromGrpcStatus(status);
  google::rpc::ErrorInfo info;
  ASSERT_TRUE(GetErrorInfo(rich, &info));
  EXPECT_EQ(info.reason(), "TENANT_RATE_LIMITED");
  EXPECT_EQ(info.metadata().at("limit"), limit);
  google::rpc::QuotaFailure quota;
  EXPECT_TRUE(GetQuotaFailure(rich, &quota));
  google::rpc::RetryInfo retry;
  EXPECT_TRUE(GetRetryInfo(rich, &retry));
}

TEST_F(TenantLimitsTest, OneTenantOverItsRateIsRefusedAndAnotherIsStillServed) {
  // A burst of 2 at 1/s: at most 3 in the first second, however slow the machine.
  int admitted = 0;
  grpc::Status refused;
  for (int i = 0; i < 5; ++i) {
    grpc::Status status = List(kAcmeKey);
    if (status.ok()) {
      ++admitted;
    } else {
      refused = status;
    }
  }
  EXPECT_LE(admitted, 3);
  ExpectRateLimited(refused, "list_rate");
  for (int i = 0; i < 5; ++i) EXPECT_TRUE(List(kGlobexKey).ok());
}

TEST_F(TenantLimitsTest, ConcurrentLiveOperationsAreCappedByTheLedger) {
  ASSERT_TRUE(Generate(kAcmeKey).ok());
  ASSERT_TRUE(Generate(kAcmeKey).ok());
  ExpectRateLimited(Generate(kAcmeKey), "max_live_operations");
  EXPECT_TRUE(Generate(kGlobexKey).ok());
}

TEST_F(TenantLimitsTest, OpenStreamsAreCappedAndFreedWhenAStreamEnds) {
  musicgw::v1::Operation operation;
  {
    musicgw::v1::GenerateRequest request;
    request.set_request_id(NewRequestId());
    request.set_provider(musicgw::v1::PROVIDER_SOUNDPIECE);
    request.mutable_sample()->set_prompt("watched");
    request.mutable_sample()->set_duration_seconds(5);
    ASSERT_TRUE(stub_->Generate(Context(kAcmeKey).get(), request, &operation).ok());
  }
  musicgw::v1::WatchOperationRequest watch;
  watch.set_name(operation.name());
  auto first_context = Context(kAcmeKey, absl::Seconds(30));
  auto first = stub_->WatchOperation(first_context.get(), watch);
  musicgw::v1::OperationEvent event;
  ASSERT_TRUE(first->Read(&event));  // the first stream holds the tenant's only slot
  auto second_context = Context(kAcmeKey);
  auto second = stub_->WatchOperation(second_context.get(), watch);
  EXPECT_FALSE(second->Read(&event));
  ExpectRateLimited(second->Finish(), "open_streams");
  first_context->TryCancel();
  while (first->Read(&event)) {
  }
  first->Finish();
  // The slot comes back when the server has dropped the first stream: poll for it.
  bool served = false;
  for (int i = 0; i < 200 && !served; ++i) {
    auto context = Context(kAcmeKey);
    auto again = stub_->WatchOperation(context.get(), watch);
    served = again->Read(&event);
    context->TryCancel();
    while (again->Read(&event)) {
    }
    again->Finish();
  }
  EXPECT_TRUE(served);
}

}  // namespace
}  // namespace musicgw::testing
