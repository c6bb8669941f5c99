// Every RPC over a real loopback channel to an in-process gateway: authentication, tenant
// isolation, validation, idempotency, and the error details clients decode.
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/config.h"
#include "common/errors.h"
#include "gtest/gtest.h"
#include "services/gateway/server.h"
#include "tests/integration/harness.h"
#include "tests/scratch_dir.h"

namespace musicgw::testing {
namespace {

using musicgw::v1::MusicGateway;

class RpcSurfaceTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    SetTestSecrets();
    // Nothing listens on port 9 (discard) here: submissions fail, which this suite does not
    // care about; it checks what the gateway itself answers.
    const std::string dir = NewTestScratchDir("rpc");
    auto config = config::ParseConfig(
        TestConfig({"http://127.0.0.1:9", "http://127.0.0.1:9"}, dir + "/ledger.db").dump(),
        config::ProcessEnv());
    ASSERT_TRUE(config.ok()) << config.status();
    auto server = gateway::GatewayServer::Start(std::move(*config));
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
  }
  static void TearDownTestSuite() { server_.reset(); }

  void SetUp() override { stub_ = Stub(server_->grpc_port()); }

  musicgw::v1::Operation MustGenerate(const std::string& key,
                                      const musicgw::v1::GenerateRequest& request) {
    musicgw::v1::Operation operation;
    grpc::Status status = stub_->Generate(Context(key).get(), request, &operation);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return operation;
  }

  static musicgw::v1::GenerateRequest Sample() {
    musicgw::v1::GenerateRequest request;
    request.set_request_id(NewRequestId());
    request.mutable_sample()->set_prompt("rock guitar");
    request.mutable_sample()->set_duration_seconds(8);
    return request;
  }

  inline static std::unique_ptr<gateway::GatewayServer> server_;
  std::unique_ptr<MusicGateway::Stub> stub_;
};

std::string Reason(const grpc::Status& status) {
  google::rpc::ErrorInfo info;
  if (!GetErrorInfo(FromGrpcStatus(status), &info)) return "";
  return info.reason();
}

std::string Field(const grpc::Status& status) {
  google::rpc::BadRequest bad;
  if (!GetBadRequest(FromGrpcStatus(status), &bad) || bad.field_violations_size() == 0) return "";
  return bad.field_violations(0).field();
}

// Runs every RPC with `key` and returns each one's status.
std::vector<std::pair<std::string, grpc::Status>> CallEverything(MusicGateway::Stub& stub,
                                                                 const std::string& key,
                                                                 const std::string& name) {
  std::vector<std::pair<std::string, grpc::Status>> results;
  {
    musicgw::v1::GenerateRequest request;
    request.set_request_id(NewRequestId());
    request.mutable_sample()->set_prompt("x");
    request.mutable_sample()->set_duration_seconds(1);
    musicgw::v1::Operation response;
    results.emplace_back("Generate", stub.Generate(Context(key).get(), request, &response));
  }
  {
    musicgw::v1::GetOperationRequest request;
    request.set_name(name);
    musicgw::v1::Operation response;
    results.emplace_back("GetOperation", stub.GetOperation(Context(key).get(), request, &response));
  }
  {
    musicgw::v1::ListOperationsRequest request;
    musicgw::v1::ListOperationsResponse response;
    results.emplace_back("ListOperations",
                         stub.ListOperations(Context(key).get(), request, &response));
  }
  {
    musicgw::v1::WatchOperationRequest request;
    request.set_name(name);
    auto context = Context(key);
    auto reader = stub.WatchOperation(context.get(), request);
    musicgw::v1::OperationEvent event;
    while (reader->Read(&event)) context->TryCancel();
    results.emplace_back("WatchOperation", reader->Finish());
  }
  {
    musicgw::v1::WaitOperationRequest request;
    request.set_name(name);
    request.mutable_timeout()->set_nanos(1000000);
    musicgw::v1::Operation response;
    results.emplace_back("WaitOperation",
                         stub.WaitOperation(Context(key).get(), request, &response));
  }
  {
    musicgw::v1::CancelOperationRequest request;
    request.set_name(name);
    musicgw::v1::Operation response;
    results.emplace_back("CancelOperation",
                         stub.CancelOperation(Context(key).get(), request, &response));
  }
  {
    musicgw::v1::DownloadRequest request;
    request.set_asset(name + "/assets/0");
    auto context = Context(key);
    auto reader = stub.Download(context.get(), request);
    musicgw::v1::DownloadChunk chunk;
    while (reader->Read(&chunk)) {
    }
    results.emplace_back("Download", reader->Finish());
  }
  {
    musicgw::v1::GetQuotaRequest request;
    musicgw::v1::QuotaReport response;
    results.emplace_back("GetQuota", stub.GetQuota(Context(key).get(), request, &response));
  }
  {
    musicgw::v1::ListProvidersRequest request;
    musicgw::v1::ListProvidersResponse response;
    results.emplace_back("ListProviders",
                         stub.ListProviders(Context(key).get(), request, &response));
  }
  return results;
}

TEST_F(RpcSurfaceTest, EveryRpcNeedsAValidApiKey) {
  const std::string name = "operations/" + std::string(26, 'a');
  for (const std::string key : {"", "not-a-key"}) {
    auto results = CallEverything(*stub_, key, name);
    ASSERT_EQ(results.size(), 9u);
    for (const auto& [method, status] : results) {
      EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << method << " key=" << key;
      EXPECT_EQ(Reason(status), "API_KEY_INVALID") << method;
    }
  }
}

TEST_F(RpcSurfaceTest, AnotherTenantsOperationIsNotFoundEverywhere) {
  const musicgw::v1::Operation operation = MustGenerate(kAcmeKey, Sample());
  ASSERT_FALSE(operation.name().empty());
  auto results = CallEverything(*stub_, kGlobexKey, operation.name());
  for (const auto& [method, status] : results) {
    if (method == "Generate" || method == "ListOperations" || method == "GetQuota" ||
        method == "ListProviders") {
      EXPECT_TRUE(status.ok()) << method << ": " << status.error_message();
    } else {
      EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND) << method;
    }
  }
  // Globex's list never shows Acme's operation; Acme's does.
  musicgw::v1::ListOperationsRequest list;
  musicgw::v1::ListOperationsResponse page;
  ASSERT_TRUE(stub_->ListOperations(Context(kGlobexKey).get(), list, &page).ok());
  for (const auto& op : page.operations()) EXPECT_NE(op.name(), operation.name());
  ASSERT_TRUE(stub_->ListOperations(Context(kAcmeKey).get(), list, &page).ok());
  bool found = false;
  for (const auto& op : page.operations()) found |= op.name() == operation.name();
  EXPECT_TRUE(found);
  // The owner sees it.
  musicgw::v1::GetOperationRequest get;
  get.set_name(operation.name());
  musicgw::v1::Operation fetched;
  ASSERT_TRUE(stub_->GetOperation(Context(kAcmeKey).get(), get, &fetched).ok());
  EXPECT_EQ(fetched.name(), operation.name());
  EXPECT_EQ(fetched.request().request_id(), operation.request().request_id());
}

TEST_F(RpcSurfaceTest, InvalidRequestsNameTheField) {
  const std::string good = "operations/" + std::string(26, 'a');
  struct Case {
    std::string name;
    grpc::Status status;
    std::string field;
  };
  std::vector<Case> cases;
  auto generate = [&](const std::string& label, const musicgw::v1::GenerateRequest& request,
                      const std::string& field) {
    musicgw::v1::Operation response;
    cases.push_back({label, stub_->Generate(Context(kAcmeKey).get(), request, &response), field});
  };
  musicgw::v1::GenerateRequest request = Sample();
  request.clear_request_id();
  generate("missing request_id", request, "request_id");
  request = Sample();
  request.clear_task();
  generate("missing task", request, "task");
  request = Sample();
  request.mutable_sample()->set_duration_seconds(31);
  generate("sample too long", request, "sample.duration_seconds");
  request = Sample();
  request.set_provider(musicgw::v1::PROVIDER_LOUDLY);
  generate("loudly cannot sample", request, "sample");
  request = Sample();
  request.clear_sample();
  request.mutable_parametric_music()->set_genre("House");
  request.mutable_parametric_music()->set_duration_seconds(421);
  generate("loudly 420 s", request, "parametric_music.duration_seconds");
  request = Sample();
  request.set_provider(static_cast<musicgw::v1::Provider>(42));
  generate("unknown provider", request, "provider");

  musicgw::v1::GetOperationRequest get;
  get.set_name("operations/NOPE");
  musicgw::v1::Operation op;
  cases.push_back({"bad name", stub_->GetOperation(Context(kAcmeKey).get(), get, &op), "name"});
  musicgw::v1::ListOperationsRequest list;
  list.set_page_size(5000);
  musicgw::v1::ListOperationsResponse page;
  cases.push_back(
      {"page size", stub_->ListOperations(Context(kAcmeKey).get(), list, &page), "page_size"});
  musicgw::v1::DownloadRequest download;
  download.set_asset(good + "/assets/x");
  {
    auto context = Context(kAcmeKey);
    auto reader = stub_->Download(context.get(), download);
    musicgw::v1::DownloadChunk chunk;
    while (reader->Read(&chunk)) {
    }
    cases.push_back({"bad asset", reader->Finish(), "asset"});
  }
  musicgw::v1::WaitOperationRequest wait;
  wait.set_name(good);
  wait.mutable_timeout()->set_seconds(3600);
  cases.push_back(
      {"wait too long", stub_->WaitOperation(Context(kAcmeKey).get(), wait, &op), "timeout"});
  for (const auto& c : cases) {
    EXPECT_EQ(c.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.name;
    EXPECT_EQ(Field(c.status), c.field) << c.name << ": " << c.status.error_message();
  }
}

TEST_F(RpcSurfaceTest, GenerateIsIdempotentOnRequestId) {
  const musicgw::v1::GenerateRequest request = Sample();
  const musicgw::v1::Operation first = MustGenerate(kAcmeKey, request);
  const musicgw::v1::Operation again = MustGenerate(kAcmeKey, request);
  EXPECT_EQ(first.name(), again.name());
  EXPECT_EQ(first.state(), musicgw::v1::OPERATION_STATE_QUEUED);
  // The same request_id from another tenant is another operation.
  const musicgw::v1::Operation other = MustGenerate(kGlobexKey, request);
  EXPECT_NE(other.name(), first.name());

  musicgw::v1::GenerateRequest changed = request;
  changed.mutable_sample()->set_duration_seconds(9);
  musicgw::v1::Operation response;
  const grpc::Status status = stub_->Generate(Context(kAcmeKey).get(), changed, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_EQ(Reason(status), "REQUEST_ID_REUSED");
}

TEST_F(RpcSurfaceTest, ValidateOnlyStoresNothing) {
  musicgw::v1::GenerateRequest request = Sample();
  request.set_validate_only(true);
  const musicgw::v1::Operation operation = MustGenerate(kAcmeKey, request);
  EXPECT_TRUE(operation.name().empty());
}

TEST_F(RpcSurfaceTest, ListProvidersReportsTheValidatorsRanges) {
  musicgw::v1::ListProvidersResponse response;
  ASSERT_TRUE(stub_->ListProviders(Context(kAcmeKey).get(), {}, &response).ok());
  ASSERT_EQ(response.providers_size(), 2);
  bool found = false;
  for (const auto& provider : response.providers()) {
    if (provider.provider() != musicgw::v1::PROVIDER_SOUNDPIECE) continue;
    for (const auto& task : provider.tasks()) {
      if (task.task() != musicgw::v1::TASK_KIND_SAMPLE) continue;
      for (const auto& spec : task.parameters()) {
        if (spec.field() != "sample.duration_seconds") continue;
        found = true;
        EXPECT_EQ(spec.max(), 30);
        EXPECT_TRUE(spec.min_exclusive());
      }
    }
  }
  EXPECT_TRUE(found);
}

TEST_F(RpcSurfaceTest, TenantBudgetsAdmitExactlyTheLimit) {
  // TestConfig gives acme 10 SOUND_EFFECT per day.
  int admitted = 0;
  grpc::Status last;
  for (int i = 0; i < 12; ++i) {
    musicgw::v1::GenerateRequest request;
    request.set_request_id(NewRequestId());
    request.mutable_sound_effect()->set_prompt("impact");
    request.mutable_sound_effect()->set_duration_seconds(1);
    musicgw::v1::Operation response;
    last = stub_->Generate(Context(kAcmeKey).get(), request, &response);
    if (last.ok()) ++admitted;
  }
  EXPECT_EQ(admitted, 10);
  EXPECT_EQ(last.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  google::rpc::QuotaFailure quota;
  google::rpc::RetryInfo retry;
  ASSERT_TRUE(GetQuotaFailure(FromGrpcStatus(last), &quota));
  EXPECT_EQ(quota.violations(0).subject(), "tenant:acme");
  EXPECT_NE(quota.violations(0).description().find("task:SOUND_EFFECT/day"), std::string::npos)
      << quota.violations(0).description();
  EXPECT_TRUE(GetRetryInfo(FromGrpcStatus(last), &retry));

  musicgw::v1::QuotaReport report;
  ASSERT_TRUE(stub_->GetQuota(Context(kAcmeKey).get(), {}, &report).ok());
  ASSERT_EQ(report.tenant_budgets_size(), 1);
  EXPECT_EQ(report.tenant_budgets(0).limit(), 10);
  EXPECT_EQ(report.tenant_budgets(0).remaining(), 0);
}

}  // namespace
}  // namespace musicgw::testing
