// The engine with the real Soundpiece adapter and HTTP client against the in-process Soundpiece
// emulator: one upstream job and bounded polling whatever the number of watchers, downloads of
// real FLAC bytes, and signed URLs that expired before the download refreshed transparently.
#include <curl/curl.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/notification.h"
#include "adapters/http/curl_http_client.h"
#include "adapters/soundpiece/soundpiece_adapter.h"
#include "common/crypto.h"
#include "emulators/soundpiece/soundpiece_emulator.h"
#include "gtest/gtest.h"
#include "services/operations/engine.h"
#include "tests/operations/test_util.h"

namespace musicgw::operations {
namespace {

namespace v1 = musicgw::v1;
using testing::StreamReader;

constexpr char kTenant[] = "tenant-a";

class EmulatorTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { curl_global_init(CURL_GLOBAL_DEFAULT); }

  void SetUp() override {
    emulators::soundpiece::Options emulator_options;
    emulator_options.processing_time = absl::Milliseconds(300);
    emulator_options.long_poll = absl::Seconds(2);
    auto emulator = emulators::soundpiece::Emulator::Start(emulator_options);
    ASSERT_TRUE(emulator.ok()) << emulator.status();
    emulator_ = std::move(*emulator);
    http_ = http::CurlHttpClient::Create();
    ASSERT_NE(http_, nullptr);
    adapters::soundpiece::SoundpieceOptions adapter_options;
    adapter_options.account = "acct";
    adapter_options.base_url = emulator_->base_url();
    adapter_options.api_key = "spk_test_key";
    auto adapter = adapters::soundpiece::SoundpieceAdapter::Create(adapter_options, http_.get());
    ASSERT_TRUE(adapter.ok()) << adapter.status();
    adapter_ = std::move(*adapter);
    adapter_->Start();

    EngineOptions options;
    options.download_chunk_bytes = 16 * 1024;
    options.download_buffer_bytes = 64 * 1024;
    auto store = OpenSqliteOperationStore(testing::TempLedgerPath());
    ASSERT_TRUE(store.ok());
    auto engine = CreateOperationsEngine(options, std::move(*store), {adapter_.get()}, http_.get());
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = std::move(*engine);
    ASSERT_TRUE(engine_->Start().ok());
  }

  void TearDown() override {
    engine_.reset();
    if (adapter_ != nullptr) adapter_->Stop();
    adapter_.reset();
    http_.reset();
    emulator_.reset();
  }

  static v1::GenerateRequest Sample() {
    v1::GenerateRequest request;
    request.set_request_id(RandomUuid());
    request.mutable_sample()->set_prompt("rock, guitar, energetic, no drums");
    request.mutable_sample()->set_duration_seconds(2);
    return request;
  }

  absl::StatusOr<v1::Operation> WaitDone(const std::string& name) {
    absl::Notification done;
    absl::StatusOr<v1::Operation> result;
    engine_->Wait(kTenant, name, absl::Seconds(30), [&](absl::StatusOr<v1::Operation> op) {
      result = std::move(op);
      done.Notify();
    });
    done.WaitForNotification();
    return result;
  }

  std::string Download(const std::string& asset, v1::AssetInfo* info) {
    auto stream = engine_->Download(kTenant, asset, 0);
    EXPECT_TRUE(stream.ok()) << stream.status();
    if (!stream.ok()) return "";
    StreamReader<v1::DownloadChunk> reader(*std::move(stream));
    EXPECT_TRUE(reader.WaitFinished(absl::Seconds(30)));
    EXPECT_TRUE(reader.status().ok()) << reader.status();
    std::string data;
    for (const auto& chunk : reader.messages()) {
      if (chunk.has_info()) {
        *info = chunk.info();
      } else {
        data += chunk.data();
      }
    }
    return data;
  }

  std::unique_ptr<emulators::soundpiece::Emulator> emulator_;
  std::unique_ptr<http::CurlHttpClient> http_;
  std::unique_ptr<adapters::soundpiece::SoundpieceAdapter> adapter_;
  std::unique_ptr<OperationsEngine> engine_;
};

TEST_F(EmulatorTest, ManyWatchersOneUpstreamJobAndRealFlacBytes) {
  auto op = engine_->Generate(kTenant, Sample());
  ASSERT_TRUE(op.ok()) << op.status();
  std::vector<std::unique_ptr<StreamReader<v1::OperationEvent>>> watchers;
  for (int i = 0; i < 50; ++i) {
    auto stream = engine_->Watch(kTenant, op->name(), 0);
    ASSERT_TRUE(stream.ok());
    watchers.push_back(std::make_unique<StreamReader<v1::OperationEvent>>(*std::move(stream)));
  }
  auto done = WaitDone(op->name());
  ASSERT_TRUE(done.ok());
  ASSERT_EQ(done->state(), v1::OPERATION_STATE_SUCCEEDED) << done->error().message();
  ASSERT_GE(done->outputs_size(), 1);
  EXPECT_EQ(done->outputs(0).format(), v1::AUDIO_FORMAT_FLAC);
  for (auto& watcher : watchers) {
    ASSERT_TRUE(watcher->WaitFinished());
    EXPECT_TRUE(watcher->messages().back().operation().done());
  }
  const auto stats = emulator_->stats();
  EXPECT_EQ(stats.operations_created, 1);
  // A 300 ms job with 2 s long-polls: a handful of polls, not one per watcher.
  EXPECT_LE(stats.polls, 5);

  v1::AssetInfo info;
  const std::string bytes = Download(done->outputs(0).name(), &info);
  ASSERT_GT(bytes.size(), 4u);
  EXPECT_EQ(bytes.substr(0, 4), "fLaC");
  EXPECT_EQ(info.size_bytes(), static_cast<int64_t>(bytes.size()));
  // The first full pass taught the gateway the digest; the next download announces it.
  const std::string sha = Sha256Hex(bytes);
  // Stored before that download's stream ended.
  auto current = engine_->Get(kTenant, op->name());
  ASSERT_TRUE(current.ok());
  EXPECT_EQ(current->outputs(0).sha256(), sha);
  v1::AssetInfo again;
  EXPECT_EQ(Download(done->outputs(0).name(), &again), bytes);
  EXPECT_EQ(again.sha256(), sha);
}

TEST_F(EmulatorTest, ExpiredSignedUrlIsRefreshedBeforeTheDownload) {
  // Every URL the emulator mints expires at once (Soundpiece signs for ~15 minutes).
  ASSERT_TRUE(emulator_
                  ->SetFaultPlan(R"({"rules":[{"match":"GET /v1/*","action":"expire_url",
                                   "url_ttl_ms":0}]})")
                  .ok());
  auto op = engine_->Generate(kTenant, Sample());
  ASSERT_TRUE(op.ok());
  auto done = WaitDone(op->name());
  ASSERT_TRUE(done.ok());
  ASSERT_EQ(done->state(), v1::OPERATION_STATE_SUCCEEDED);
  // Fresh URLs from now on.
  ASSERT_TRUE(emulator_->SetFaultPlan(R"({"rules":[]})").ok());
  const int64_t gets_before = emulator_->stats().gets;
  v1::AssetInfo info;
  const std::string bytes = Download(done->outputs(0).name(), &info);
  EXPECT_EQ(bytes.substr(0, 4), "fLaC");
  const auto stats = emulator_->stats();
  EXPECT_EQ(stats.downloads_denied, 0);    // never tried the dead URL
  EXPECT_EQ(stats.gets - gets_before, 1);  // one quick GET minted a fresh one
  EXPECT_EQ(stats.operations_created, 1);
}

}  // namespace
}  // namespace musicgw::operations
