// SIGTERM with client-side health checking attached: the grpc.health.v1 Watch stream learns
// NOT_SERVING and ends at once, and the process exits well within its drain deadline.
#include <signal.h>
#include <sys/wait.h>

#include <memory>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "gtest/gtest.h"
#include "tests/integration/harness.h"
#include "tests/scratch_dir.h"

namespace musicgw::testing {
namespace {

using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

constexpr int kDrainDeadlineSeconds = 6;

TEST(DrainTest, SigtermEndsHealthWatchAtOnceAndExitsWithinTheDeadline) {
  SetTestSecrets();
  const std::string dir = NewTestScratchDir("drain");
  LoopbackListener blackhole;
  nlohmann::json config = TestConfig({blackhole.url(), blackhole.url()}, dir + "/ledger.db");
  config["server"]["drain_deadline_seconds"] = kDrainDeadlineSeconds;
  auto process = GatewayProcess::Start(config, dir);
  ASSERT_TRUE(process.ok()) << process.status();
  auto channel = grpc::CreateChannel(absl::StrCat("127.0.0.1:", (*process)->grpc_port()),
                                     grpc::InsecureChannelCredentials());
  auto health = grpc::health::v1::Health::NewStub(channel);

  // What client-side health checking holds: a Watch of the whole server, and one of the service.
  grpc::ClientContext server_context;
  server_context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  HealthCheckRequest whole;
  auto server_watch = health->Watch(&server_context, whole);
  grpc::ClientContext service_context;
  service_context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  HealthCheckRequest named;
  named.set_service("musicgw.v1.MusicGateway");
  auto service_watch = health->Watch(&service_context, named);
  HealthCheckResponse response;
  ASSERT_TRUE(server_watch->Read(&response));
  EXPECT_EQ(response.status(), HealthCheckResponse::SERVING);
  ASSERT_TRUE(service_watch->Read(&response));
  EXPECT_EQ(response.status(), HealthCheckResponse::SERVING);
  // An unknown name is answered, not hung.
  grpc::ClientContext unknown_context;
  HealthCheckRequest unknown;
  unknown.set_service("no.such.Service");
  HealthCheckResponse unknown_response;
  EXPECT_EQ(health->Check(&unknown_context, unknown, &unknown_response).error_code(),
            grpc::StatusCode::NOT_FOUND);

  const absl::Time sent = absl::Now();
  ASSERT_EQ(kill((*process)->pid(), SIGTERM), 0);
  // The streams end on their own (the reads return false); nothing here waits a fixed time.
  bool saw_not_serving = false;
  while (server_watch->Read(&response)) {
    saw_not_serving |= response.status() == HealthCheckResponse::NOT_SERVING;
  }
  const grpc::Status server_end = server_watch->Finish();
  const absl::Duration ended_after = absl::Now() - sent;
  while (service_watch->Read(&response)) {
  }
  const grpc::Status service_end = service_watch->Finish();
  EXPECT_TRUE(saw_not_serving) << "the watcher is told before its stream ends";
  EXPECT_EQ(server_end.error_code(), grpc::StatusCode::UNAVAILABLE) << server_end.error_message();
  EXPECT_EQ(service_end.error_code(), grpc::StatusCode::UNAVAILABLE) << service_end.error_message();

  auto exit_status = (*process)->Signal(0, absl::Seconds(kDrainDeadlineSeconds));
  ASSERT_TRUE(exit_status.ok()) << "musicgw did not exit within its drain deadline: "
                                << (*process)->Logs();
  const absl::Duration exited_after = absl::Now() - sent;
  EXPECT_TRUE(WIFEXITED(*exit_status));
  EXPECT_EQ(WEXITSTATUS(*exit_status), 0);
  // Before, the Watch ended only at the deadline and the process exited about a second after.
  EXPECT_LT(ended_after, absl::Seconds(kDrainDeadlineSeconds) / 4) << "not at once";
  EXPECT_LT(exited_after, absl::Seconds(kDrainDeadlineSeconds)) << "not within the deadline";
  EXPECT_NE((*process)->Logs().find("\"msg\":\"musicgw stopped\""), std::string::npos);
}

}  // namespace
}  // namespace musicgw::testing
