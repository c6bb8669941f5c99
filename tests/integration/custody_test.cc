// Asset custody through the musicgw binary and the Soundpiece emulator: the first Download
// carries the digest, a download of several messages is exact in full and from any offset,
// custody serves the bytes after the provider's URL answers 404, a custody failure falls back
// to the provider (and is retried in the background), a SIGKILL during a custody fetch is
// resumed after the restart, and retention deletes the bytes.
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/crypto.h"
#include "common/errors.h"
#include "emulators/soundpiece/soundpiece_emulator.h"
#include "gtest/gtest.h"
#include "tests/integration/harness.h"
#include "tests/scratch_dir.h"

namespace musicgw::testing {
namespace {

namespace v1 = musicgw::v1;

constexpr int64_t kMiB = 1024 * 1024;

struct Downloaded {
  grpc::Status status;
  v1::AssetInfo info;
  std::string bytes;
};

class CustodyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SetTestSecrets();
    dir_ = NewTestScratchDir("custody");
    emulators::soundpiece::Options sp;
    sp.processing_time = absl::Milliseconds(200);
    sp.long_poll = absl::Seconds(2);
    auto soundpiece = emulators::soundpiece::Emulator::Start(sp);
    ASSERT_TRUE(soundpiece.ok()) << soundpiece.status();
    soundpiece_ = std::move(*soundpiece);
    // Loudly is not used here: nothing listens at its address.
    const std::string nowhere = absl::StrCat("http://127.0.0.1:", FreePort());
    config_ = TestConfig({nowhere, soundpiece_->base_url()}, dir_ + "/ledger.db");
    config_["operations"]["custody_retry_seconds"] = 3;
    config_["operations"]["custody_sweep_seconds"] = 0.2;
  }

  void StartGateway() {
    auto process = GatewayProcess::Start(config_, dir_);
    ASSERT_TRUE(process.ok()) << process.status();
    gateway_ = std::move(*process);
    stub_ = Stub(gateway_->grpc_port());
  }

  static v1::GenerateRequest Sample() {
    v1::GenerateRequest request;
    request.set_request_id(NewRequestId());
    request.set_provider(v1::PROVIDER_SOUNDPIECE);
    request.mutable_sample()->set_prompt("custody");
    request.mutable_sample()->set_duration_seconds(3);
    return request;
  }

  v1::Operation GetOperation(const std::string& name) {
    v1::GetOperationRequest get;
    get.set_name(name);
    v1::Operation op;
    const grpc::Status status = stub_->GetOperation(Context(kAcmeKey).get(), get, &op);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return op;
  }

  Downloaded Download(const std::string& asset, int64_t offset = 0) {
    v1::DownloadRequest request;
    request.set_asset(asset);
    request.set_offset(offset);
    auto context = Context(kAcmeKey, absl::Seconds(60));
    auto reader = stub_->Download(context.get(), request);
    Downloaded result;
    v1::DownloadChunk chunk;
    bool first = true;
    while (reader->Read(&chunk)) {
      if (first) {
        EXPECT_TRUE(chunk.has_info());
        result.info = chunk.info();
        first = false;
        continue;
      }
      EXPECT_EQ(chunk.offset(), offset + static_cast<int64_t>(result.bytes.size()));
      result.bytes += chunk.data();
    }
    result.status = reader->Finish();
    return result;
  }

  std::string ObjectPath(const std::string& sha256) const {
    return absl::StrCat(dir_, "/ledger.db.assets/", sha256.substr(0, 2), "/", sha256);
  }

  std::string dir_;
  std::unique_ptr<emulators::soundpiece::Emulator> soundpiece_;
  nlohmann::json config_;
  std::unique_ptr<GatewayProcess> gateway_;
  std::unique_ptr<v1::MusicGateway::Stub> stub_;
};

TEST_F(CustodyTest, FirstDownloadCarriesTheDigestOfItsBytes) {
  StartGateway();
  const v1::Operation done = WaitDone(*stub_, GenerateOk(*stub_, Sample()).name());
  ASSERT_EQ(done.state(), v1::OPERATION_STATE_SUCCEEDED) << done.error().message();
  ASSERT_EQ(done.outputs_size(), 1);
  // Known before SUCCEEDED was announced: already in the WaitOperation answer.
  EXPECT_TRUE(done.outputs(0).in_custody());
  EXPECT_EQ(done.outputs(0).sha256().size(), 64u);
  EXPECT_GT(done.outputs(0).size_bytes(), 0);

  const Downloaded file = Download(done.outputs(0).name());
  ASSERT_TRUE(file.status.ok()) << file.status.error_message();
  EXPECT_TRUE(file.info.in_custody());
  EXPECT_EQ(file.info.sha256(), Sha256Hex(file.bytes));
  EXPECT_EQ(file.info.sha256(), done.outputs(0).sha256());
  EXPECT_EQ(file.info.size_bytes(), static_cast<int64_t>(file.bytes.size()));
  EXPECT_EQ(file.bytes.substr(0, 4), "fLaC");

  // Resumable at any offset.
  const Downloaded tail = Download(done.outputs(0).name(), 1000);
  ASSERT_TRUE(tail.status.ok()) << tail.status.error_message();
  EXPECT_EQ(tail.info.offset(), 1000);
  EXPECT_EQ(tail.bytes, file.bytes.substr(1000));
}

TEST_F(CustodyTest, MultiMessageDownloadIsExactInFullAndFromAnyOffset) {
  StartGateway();
  v1::GenerateRequest request = Sample();
  // About 2 MB: a full 1 MiB data message, then a partial one.
  request.mutable_sample()->set_duration_seconds(30);
  const v1::Operation done = WaitDone(*stub_, GenerateOk(*stub_, request).name());
  ASSERT_EQ(done.state(), v1::OPERATION_STATE_SUCCEEDED) << done.error().message();
  ASSERT_TRUE(done.outputs(0).in_custody());
  const int64_t size = done.outputs(0).size_bytes();
  ASSERT_GT(size, kMiB) << "the sample is too short to span several messages";

  const Downloaded file = Download(done.outputs(0).name());
  ASSERT_TRUE(file.status.ok()) << file.status.error_message();
  EXPECT_TRUE(file.info.in_custody());
  EXPECT_EQ(file.info.size_bytes(), size);
  EXPECT_EQ(static_cast<int64_t>(file.bytes.size()), size);
  EXPECT_EQ(Sha256Hex(file.bytes), file.info.sha256());
  EXPECT_EQ(file.info.sha256(), done.outputs(0).sha256());

  // Inside a message, on a message boundary, the last byte, and the end.
  for (const int64_t offset : {int64_t{7}, kMiB, kMiB + 7, size - 1, size}) {
    const Downloaded tail = Download(done.outputs(0).name(), offset);
    ASSERT_TRUE(tail.status.ok()) << offset << ": " << tail.status.error_message();
    EXPECT_EQ(tail.info.offset(), offset);
    EXPECT_EQ(tail.info.sha256(), file.info.sha256());
    EXPECT_TRUE(tail.bytes == file.bytes.substr(static_cast<size_t>(offset))) << offset;
  }
}

TEST_F(CustodyTest, DownloadWorksAfterTheProviderUrlAnswers404) {
  StartGateway();
  const v1::Operation done = WaitDone(*stub_, GenerateOk(*stub_, Sample()).name());
  ASSERT_EQ(done.state(), v1::OPERATION_STATE_SUCCEEDED) << done.error().message();
  ASSERT_TRUE(done.outputs(0).in_custody());
  // From now on the provider's file host says the file is gone: every GET of it is a 404.
  ASSERT_TRUE(soundpiece_
                  ->SetFaultPlan(R"({"rules":[
                      {"match":"GET /cdn/*","action":"status","status":404,"body":"gone"}]})")
                  .ok());
  const Downloaded file = Download(done.outputs(0).name());
  ASSERT_TRUE(file.status.ok()) << file.status.error_message();
  EXPECT_EQ(file.info.sha256(), Sha256Hex(file.bytes));
  EXPECT_EQ(file.info.sha256(), done.outputs(0).sha256());
  // Served from custody: the provider was not asked.
  EXPECT_EQ(soundpiece_->stats().faults_injected, 0) << soundpiece_->StatsJson();
}

TEST_F(CustodyTest, CustodyFailureFallsBackToTheProviderAndIsRetried) {
  // The first GET of the file (custody's) says 404; later ones are served.
  ASSERT_TRUE(soundpiece_
                  ->SetFaultPlan(R"({"rules":[{"match":"GET /cdn/*","nth":[1],
                                   "action":"status","status":404}]})")
                  .ok());
  StartGateway();
  const v1::Operation done = WaitDone(*stub_, GenerateOk(*stub_, Sample()).name());
  ASSERT_EQ(done.state(), v1::OPERATION_STATE_SUCCEEDED) << done.error().message();
  ASSERT_EQ(done.outputs_size(), 1);
  EXPECT_FALSE(done.outputs(0).in_custody());
  EXPECT_EQ(soundpiece_->stats().faults_injected, 1) << soundpiece_->StatsJson();

  // Streamed from the provider as before custody existed.
  const Downloaded file = Download(done.outputs(0).name());
  ASSERT_TRUE(file.status.ok()) << file.status.error_message();
  EXPECT_EQ(file.bytes.substr(0, 4), "fLaC");

  // The background retry takes it into custody.
  ASSERT_TRUE(Eventually([&] { return GetOperation(done.name()).outputs(0).in_custody(); },
                         absl::Seconds(30)));
  const v1::Operation held = GetOperation(done.name());
  EXPECT_EQ(held.outputs(0).sha256(), Sha256Hex(file.bytes));
  const Downloaded again = Download(done.outputs(0).name());
  ASSERT_TRUE(again.status.ok()) << again.status.error_message();
  EXPECT_TRUE(again.info.in_custody());
  EXPECT_EQ(again.bytes, file.bytes);
}

TEST_F(CustodyTest, KilledDuringACustodyFetchTheRestartCompletesIt) {
  // The first GET of the file hangs: custody is fetching when the gateway dies.
  ASSERT_TRUE(soundpiece_
                  ->SetFaultPlan(R"({"rules":[{"match":"GET /cdn/*","nth":[1],
                                   "action":"hang","delay_ms":60000}]})")
                  .ok());
  StartGateway();
  const v1::Operation accepted = GenerateOk(*stub_, Sample());
  ASSERT_TRUE(Eventually([&] { return soundpiece_->stats().faults_injected >= 1; }))
      << soundpiece_->StatsJson();
  // SUCCEEDED waits for custody.
  EXPECT_EQ(GetOperation(accepted.name()).state(), v1::OPERATION_STATE_RUNNING);
  auto killed = gateway_->Signal(SIGKILL, absl::Seconds(5));
  ASSERT_TRUE(killed.ok());
  ASSERT_TRUE(WIFSIGNALED(*killed));
  gateway_.reset();
  StartGateway();

  const v1::Operation done = WaitDone(*stub_, accepted.name());
  ASSERT_EQ(done.state(), v1::OPERATION_STATE_SUCCEEDED) << done.error().message();
  EXPECT_TRUE(done.outputs(0).in_custody());
  const Downloaded file = Download(done.outputs(0).name());
  ASSERT_TRUE(file.status.ok()) << file.status.error_message();
  EXPECT_TRUE(file.info.in_custody());
  EXPECT_EQ(file.info.sha256(), Sha256Hex(file.bytes));
  EXPECT_EQ(done.outputs(0).sha256(), file.info.sha256());
}

TEST_F(CustodyTest, AfterRetentionDownloadIsNotFoundAssetExpired) {
  config_["tenant_defaults"]["asset_retention_seconds"] = 1;
  StartGateway();
  const v1::Operation done = WaitDone(*stub_, GenerateOk(*stub_, Sample()).name());
  ASSERT_EQ(done.state(), v1::OPERATION_STATE_SUCCEEDED) << done.error().message();
  ASSERT_TRUE(done.outputs(0).in_custody());
  const std::string object = ObjectPath(done.outputs(0).sha256());
  Downloaded file;
  ASSERT_TRUE(Eventually(
      [&] {
        file = Download(done.outputs(0).name());
        return file.status.error_code() == grpc::StatusCode::NOT_FOUND;
      },
      absl::Seconds(30)))
      << file.status.error_message();
  google::rpc::ErrorInfo info;
  ASSERT_TRUE(GetErrorInfo(FromGrpcStatus(file.status), &info));
  EXPECT_EQ(info.reason(), "ASSET_EXPIRED");
  EXPECT_EQ(info.domain(), kGatewayDomain);
  // The ledger marks the asset expired first; the sweep removes its object right after.
  EXPECT_TRUE(Eventually(
      [&] {
        struct stat st {};
        return stat(object.c_str(), &st) != 0;
      },
      absl::Seconds(10)))
      << object << " is still on disk";
  EXPECT_FALSE(GetOperation(done.name()).outputs(0).in_custody());
}

}  // namespace
}  // namespace musicgw::testing
