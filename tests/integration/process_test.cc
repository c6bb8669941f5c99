// The musicgw binary as operators run it: health, reflection, config errors, SIGTERM drain.
#include <signal.h>
#include <sys/wait.h>

#include <cstdio>
#include <fstream>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "google/protobuf/descriptor.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"
#include "gtest/gtest.h"
#include "tests/integration/harness.h"
#include "tests/scratch_dir.h"

namespace musicgw::testing {
namespace {

class ProcessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SetTestSecrets();
    dir_ = NewTestScratchDir("process");
  }
  std::string dir_;
  LoopbackListener blackhole_;  // provider calls to it hang, so operations stay live
};

TEST_F(ProcessTest, AnswersHealthAndReflectionWithAllTwelveMethods) {
  auto process = GatewayProcess::Start(
      TestConfig({blackhole_.url(), blackhole_.url()}, dir_ + "/ledger.db"), dir_);
  ASSERT_TRUE(process.ok()) << process.status();
  auto channel = grpc::CreateChannel(absl::StrCat("127.0.0.1:", (*process)->grpc_port()),
                                     grpc::InsecureChannelCredentials());

  auto health = grpc::health::v1::Health::NewStub(channel);
  grpc::ClientContext health_context;
  grpc::health::v1::HealthCheckRequest health_request;
  grpc::health::v1::HealthCheckResponse health_response;
  ASSERT_TRUE(health->Check(&health_context, health_request, &health_response).ok());
  EXPECT_EQ(health_response.status(), grpc::health::v1::HealthCheckResponse::SERVING);

  // No API key needed for health and reflection.
  auto reflection = grpc::reflection::v1alpha::ServerReflection::NewStub(channel);
  grpc::ClientContext context;
  auto stream = reflection->ServerReflectionInfo(&context);
  grpc::reflection::v1alpha::ServerReflectionRequest list;
  list.set_list_services("");
  ASSERT_TRUE(stream->Write(list));
  grpc::reflection::v1alpha::ServerReflectionResponse response;
  ASSERT_TRUE(stream->Read(&response));
  std::set<std::string> services;
  for (const auto& service : response.list_services_response().service()) {
    services.insert(service.name());
  }
  EXPECT_TRUE(services.count("musicgw.v1.MusicGateway"));
  EXPECT_TRUE(services.count("grpc.health.v1.Health"));

  grpc::reflection::v1alpha::ServerReflectionRequest file;
  file.set_file_containing_symbol("musicgw.v1.MusicGateway");
  ASSERT_TRUE(stream->Write(file));
  ASSERT_TRUE(stream->Read(&response));
  std::set<std::string> methods;
  for (const auto& bytes : response.file_descriptor_response().file_descriptor_proto()) {
    google::protobuf::FileDescriptorProto descriptor;
    ASSERT_TRUE(descriptor.ParseFromString(bytes));
    for (const auto& service : descriptor.service()) {
      if (service.name() != "MusicGateway") continue;
      for (const auto& method : service.method()) methods.insert(method.name());
    }
  }
  EXPECT_EQ(methods,
            (std::set<std::string>{"Generate", "GetOperation", "ListOperations", "WatchOperation",
                                   "WaitOperation", "CancelOperation", "Download", "GetQuota",
                                   "ListProviders", "ListWebhookDeliveries", "RedeliverWebhook",
                                   "SendTestWebhook"}));
  stream->WritesDone();
  stream->Finish();
}

TEST_F(ProcessTest, BadConfigFailsAtStartWithOneLineNamingTheKey) {
  auto config = TestConfig({blackhole_.url(), "ftp://nowhere"}, dir_ + "/ledger.db");
  const std::string path = dir_ + "/bad.json";
  std::ofstream(path) << config.dump();
  const std::string command =
      absl::StrCat(MUSICGW_BINARY, " --config=", path, " 2>", dir_, "/err.txt >/dev/null");
  const int status = std::system(command.c_str());
  EXPECT_EQ(WEXITSTATUS(status), 2);
  std::ifstream err(dir_ + "/err.txt");
  std::string line, rest;
  std::getline(err, line);
  EXPECT_EQ(line, "musicgw: config error: providers[1].base_url: must be an http or https URL");
  EXPECT_FALSE(std::getline(err, rest)) << "more than one line: " << rest;
}

TEST_F(ProcessTest, SigtermEndsStreamsWithUnavailableAndExitsWithinTheDrainDeadline) {
  auto process = GatewayProcess::Start(
      TestConfig({blackhole_.url(), blackhole_.url()}, dir_ + "/ledger.db"), dir_);
  ASSERT_TRUE(process.ok()) << process.status();
  auto stub = Stub((*process)->grpc_port());

  musicgw::v1::GenerateRequest request;
  request.set_request_id(NewRequestId());
  request.set_provider(musicgw::v1::PROVIDER_LOUDLY);
  request.mutable_parametric_music()->set_genre("House");
  musicgw::v1::Operation operation;
  ASSERT_TRUE(stub->Generate(Context(kAcmeKey).get(), request, &operation).ok());

  auto watch_context = Context(kAcmeKey, absl::Seconds(30));
  musicgw::v1::WatchOperationRequest watch;
  watch.set_name(operation.name());
  auto reader = stub->WatchOperation(watch_context.get(), watch);
  musicgw::v1::OperationEvent event;
  ASSERT_TRUE(reader->Read(&event));
  EXPECT_EQ(event.kind(), musicgw::v1::OperationEvent::KIND_SNAPSHOT);

  const absl::Time sent = absl::Now();
  auto exit_status = (*process)->Signal(SIGTERM, absl::Seconds(10));
  ASSERT_TRUE(exit_status.ok()) << "musicgw did not exit after SIGTERM";
  EXPECT_TRUE(WIFEXITED(*exit_status));
  EXPECT_EQ(WEXITSTATUS(*exit_status), 0);
  // Drain deadline is 3 s in TestConfig; allow process teardown on a loaded CI machine.
  EXPECT_LT(absl::Now() - sent, absl::Seconds(8));
  while (reader->Read(&event)) {
  }
  const grpc::Status status = reader->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
  const std::string logs = (*process)->Logs();
  EXPECT_NE(logs.find("\"msg\":\"musicgw draining\""), std::string::npos);
  // No secret ever reaches the logs.
  EXPECT_EQ(logs.find("loudly_test_key"), std::string::npos);
  EXPECT_EQ(logs.find("spk_test_key"), std::string::npos);
  EXPECT_EQ(logs.find(kAcmeKey), std::string::npos);
}

}  // namespace
}  // namespace musicgw::testing
