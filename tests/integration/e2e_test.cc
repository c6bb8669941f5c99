// End to end through the gateway: every task on its provider reaches SUCCEEDED with
// downloadable audio, against the emulators, with webhooks and both Loudly dialects.

#include <map>
#include <memory>
#include <set>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/config.h"
#include "common/crypto.h"
#include "common/errors.h"
#include "emulators/loudly/loudly_emulator.h"
#include "emulators/soundpiece/soundpiece_emulator.h"
#include "gtest/gtest.h"
#include "services/gateway/server.h"
#include "tests/integration/harness.h"
#include "tests/scratch_dir.h"

namespace musicgw::testing {
namespace {

using musicgw::v1::GenerateRequest;
using musicgw::v1::Operation;

constexpr char kWebhookSecret[] = "whsec_c2FuZGJveC13ZWJob29rLXNlY3JldC0xMjM0NTY=";

struct Downloaded {
  musicgw::v1::AssetInfo info;
  std::string bytes;
  grpc::Status status;
};

class EndToEndTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    SetTestSecrets();
    setenv("MUSICGW_TEST_LOUDLY_REFRESH", "e2e-refresh-token", 1);
    setenv("MUSICGW_TEST_WEBHOOK_SECRETS", kWebhookSecret, 1);
    const std::string dir = NewTestScratchDir("e2e");

    emulators::soundpiece::Options sp;
    sp.processing_time = absl::Milliseconds(300);
    sp.long_poll = absl::Seconds(5);
    sp.webhook_secrets = {{"acct", kWebhookSecret}};
    auto soundpiece = emulators::soundpiece::Emulator::Start(sp);
    ASSERT_TRUE(soundpiece.ok()) << soundpiece.status();
    soundpiece_ = std::move(*soundpiece);

    emulators::loudly::Options ld;
    ld.refresh_token = "e2e-refresh-token";
    ld.client_id = "1_e2e";
    ld.bundle_song_delay = absl::Milliseconds(500);
    ld.sync_latency = absl::Milliseconds(500);
    auto loudly = emulators::loudly::Emulator::Start(ld);
    ASSERT_TRUE(loudly.ok()) << loudly.status();
    loudly_ = std::move(*loudly);

    // Web dialect for Loudly, webhooks on for Soundpiece.
    nlohmann::json doc =
        TestConfig({loudly_->base_url(), soundpiece_->base_url()}, dir + "/web-ledger.db");
    const int webhook_port = FreePort();
    doc["server"]["webhook_listen"] = absl::StrCat("127.0.0.1:", webhook_port);
    doc["providers"][0] = {{"name", "loudly-web"},
                           {"type", "loudly"},
                           {"dialect", "web"},
                           {"base_url", loudly_->base_url()},
                           {"client_id", "1_e2e"},
                           {"refresh_token", {{"env", "MUSICGW_TEST_LOUDLY_REFRESH"}}},
                           {"token_state_file", dir + "/loudly-token.json"}};
    doc["providers"][1]["webhook_secrets"] = {{"env", "MUSICGW_TEST_WEBHOOK_SECRETS"}};
    doc["providers"][1]["callback_url"] =
        absl::StrCat("http://127.0.0.1:", webhook_port, "/webhooks/soundpiece");
    auto web = config::ParseConfig(doc.dump(), config::ProcessEnv());
    ASSERT_TRUE(web.ok()) << web.status();
    auto web_server = gateway::GatewayServer::Start(std::move(*web));
    ASSERT_TRUE(web_server.ok()) << web_server.status();
    web_ = std::move(*web_server);

    // B2B dialect for Loudly.
    auto b2b = config::ParseConfig(
        TestConfig({loudly_->base_url(), soundpiece_->base_url()}, dir + "/b2b-ledger.db").dump(),
        config::ProcessEnv());
    ASSERT_TRUE(b2b.ok()) << b2b.status();
    auto b2b_server = gateway::GatewayServer::Start(std::move(*b2b));
    ASSERT_TRUE(b2b_server.ok()) << b2b_server.status();
    b2b_ = std::move(*b2b_server);
  }

  static void TearDownTestSuite() {
    web_.reset();
    b2b_.reset();
    soundpiece_.reset();
    loudly_.reset();
  }

  // Generate under a fresh request_id; the operation comes back before the provider finishes.
  static Operation Submit(gateway::GatewayServer* server, GenerateRequest request) {
    request.set_request_id(NewRequestId());
    Operation operation;
    const grpc::Status status =
        Stub(server->grpc_port())->Generate(Context(kAcmeKey).get(), request, &operation);
    EXPECT_TRUE(status.ok()) << status.error_message();
    EXPECT_FALSE(operation.done()) << "Generate must return before the provider finishes";
    return operation;
  }

  static Operation Wait(gateway::GatewayServer* server, const Operation& operation) {
    musicgw::v1::WaitOperationRequest wait;
    wait.set_name(operation.name());
    wait.mutable_timeout()->set_seconds(60);
    Operation done;
    const grpc::Status status =
        Stub(server->grpc_port())
            ->WaitOperation(Context(kAcmeKey, absl::Seconds(70)).get(), wait, &done);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return done;
  }

  static Operation GenerateAndWait(gateway::GatewayServer* server, GenerateRequest request) {
    return Wait(server, Submit(server, std::move(request)));
  }

  static Downloaded Download(gateway::GatewayServer* server, const std::string& asset,
                             int64_t offset = 0) {
    auto stub = Stub(server->grpc_port());
    musicgw::v1::DownloadRequest request;
    request.set_asset(asset);
    request.set_offset(offset);
    auto context = Context(kAcmeKey, absl::Seconds(60));
    auto reader = stub->Download(context.get(), request);
    Downloaded result;
    musicgw::v1::DownloadChunk chunk;
    bool first = true;
    while (reader->Read(&chunk)) {
      if (first) {
        EXPECT_TRUE(chunk.has_info()) << "the first message carries AssetInfo";
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

  inline static std::unique_ptr<gateway::GatewayServer> web_;
  inline static std::unique_ptr<gateway::GatewayServer> b2b_;
  inline static std::unique_ptr<emulators::soundpiece::Emulator> soundpiece_;
  inline static std::unique_ptr<emulators::loudly::Emulator> loudly_;
};

void ExpectFlac(const Downloaded& file, const std::string& what) {
  ASSERT_TRUE(file.status.ok()) << what << ": " << file.status.error_message();
  ASSERT_GT(file.bytes.size(), 4u) << what;
  EXPECT_EQ(file.bytes.substr(0, 4), "fLaC") << what;
  EXPECT_EQ(file.info.content_type(), "audio/flac") << what;
  if (file.info.size_bytes() > 0) {
    EXPECT_EQ(file.info.size_bytes(), static_cast<int64_t>(file.bytes.size())) << what;
  }
  if (!file.info.sha256().empty()) EXPECT_EQ(file.info.sha256(), Sha256Hex(file.bytes)) << what;
}

TEST_F(EndToEndTest, EverySoundpieceTaskSucceedsWithFlacAssets) {
  const std::string source = "https://files.example.com/track.wav?duration=40";
  std::map<std::string, std::pair<GenerateRequest, int>> cases;
  GenerateRequest r;
  r.set_provider(musicgw::v1::PROVIDER_SOUNDPIECE);
  auto with = [&](auto fill, int outputs) {
    GenerateRequest request = r;
    fill(request);
    return std::make_pair(request, outputs);
  };
  cases["song"] = with(
      [](GenerateRequest& q) {
        q.mutable_song()->set_lyrics("[Verse]\nNeon rain");
        q.mutable_song()->set_prompt("synthwave, melancholic");
      },
      2);
  cases["instrumental"] = with(
      [&](GenerateRequest& q) { q.mutable_instrumental()->mutable_reference()->set_url(source); },
      2);
  cases["text_to_music"] =
      with([](GenerateRequest& q) { q.mutable_text_to_music()->set_prompt("lofi, rain"); }, 2);
  cases["sample"] = with(
      [](GenerateRequest& q) {
        q.mutable_sample()->set_prompt("rock, guitar");
        q.mutable_sample()->set_duration_seconds(4);
        q.mutable_sample()->set_loopable(true);
      },
      1);
  cases["sound_effect"] = with(
      [](GenerateRequest& q) {
        q.mutable_sound_effect()->set_prompt("typing");
        q.mutable_sound_effect()->set_duration_seconds(1.5);
      },
      1);
  cases["remix_song"] = with(
      [&](GenerateRequest& q) {
        q.mutable_remix_song()->mutable_source()->set_url(source);
        q.mutable_remix_song()->set_lyrics("[Chorus]\nla la");
        q.mutable_remix_song()->set_prompt("acoustic");
        q.mutable_remix_song()->set_variations(2);
      },
      2);
  cases["remix_instrumental"] = with(
      [&](GenerateRequest& q) {
        q.mutable_remix_instrumental()->mutable_source()->set_url(source);
      },
      1);
  cases["separate_stems"] = with(
      [&](GenerateRequest& q) { q.mutable_separate_stems()->mutable_source()->set_url(source); },
      4);
  cases["cut_down"] = with(
      [&](GenerateRequest& q) {
        q.mutable_cut_down()->mutable_source()->set_url(source);
        q.mutable_cut_down()->set_target_duration_seconds(20);
      },
      1);
  for (const auto& [name, c] : cases) {
    const Operation done = GenerateAndWait(web_.get(), c.first);
    ASSERT_EQ(done.state(), musicgw::v1::OPERATION_STATE_SUCCEEDED)
        << name << ": " << done.error().message();
    EXPECT_EQ(done.provider(), musicgw::v1::PROVIDER_SOUNDPIECE);
    EXPECT_TRUE(absl::StartsWith(done.upstream_id(), "op_")) << name;
    ASSERT_EQ(done.outputs_size(), c.second) << name;
    std::set<int> kinds;
    for (const auto& asset : done.outputs()) {
      kinds.insert(asset.kind());
      EXPECT_EQ(asset.format(), musicgw::v1::AUDIO_FORMAT_FLAC) << name;
      ExpectFlac(Download(web_.get(), asset.name()), name + " " + asset.name());
    }
    if (name == "separate_stems") {
      EXPECT_EQ(kinds, (std::set<int>{
                           musicgw::v1::ASSET_KIND_STEM_VOCALS, musicgw::v1::ASSET_KIND_STEM_DRUMS,
                           musicgw::v1::ASSET_KIND_STEM_BASS, musicgw::v1::ASSET_KIND_STEM_OTHER}));
    }
  }
}

TEST_F(EndToEndTest, LoudlyWebDialectParametricAndTextToMusicSucceedWithMp3) {
  GenerateRequest parametric;
  parametric.set_provider(musicgw::v1::PROVIDER_LOUDLY);
  auto* task = parametric.mutable_parametric_music();
  task->set_genre("Deep House");
  task->set_duration_seconds(30);
  task->set_bpm(125);
  task->set_key_root(musicgw::v1::KEY_ROOT_E);
  task->set_key_quality(musicgw::v1::KEY_QUALITY_MINOR);
  task->add_instruments("drums");
  task->add_instruments("bass");
  GenerateRequest text;
  text.set_provider(musicgw::v1::PROVIDER_LOUDLY);
  text.mutable_text_to_music()->set_prompt("energetic house with flute");
  text.mutable_text_to_music()->set_duration_seconds(30);
  for (const GenerateRequest& request : {parametric, text}) {
    const Operation done = GenerateAndWait(web_.get(), request);
    ASSERT_EQ(done.state(), musicgw::v1::OPERATION_STATE_SUCCEEDED) << done.error().message();
    ASSERT_GE(done.outputs_size(), 1);
    const auto& asset = done.outputs(0);
    EXPECT_EQ(asset.format(), musicgw::v1::AUDIO_FORMAT_MP3);
    EXPECT_NEAR(asset.duration_seconds(), 31, 1.01);
    const Downloaded file = Download(web_.get(), asset.name());
    ASSERT_TRUE(file.status.ok()) << file.status.error_message();
    EXPECT_EQ(file.info.content_type(), "audio/mpeg");
    ASSERT_GT(file.bytes.size(), 1000u);
    const bool id3 = file.bytes.substr(0, 3) == "ID3";
    const bool frame = static_cast<unsigned char>(file.bytes[0]) == 0xFF &&
                       (static_cast<unsigned char>(file.bytes[1]) & 0xE0) == 0xE0;
    EXPECT_TRUE(id3 || frame) << "not an MP3";
  }
}

TEST_F(EndToEndTest, LoudlyB2bSynchronousCallBecomesAnOperation) {
  GenerateRequest request;
  request.set_provider(musicgw::v1::PROVIDER_LOUDLY);
  request.mutable_parametric_music()->set_genre("House");
  request.mutable_parametric_music()->set_duration_seconds(30);
  const Operation done = GenerateAndWait(b2b_.get(), request);
  ASSERT_EQ(done.state(), musicgw::v1::OPERATION_STATE_SUCCEEDED) << done.error().message();
  ASSERT_EQ(done.outputs_size(), 1);
  const Downloaded file = Download(b2b_.get(), done.outputs(0).name());
  ASSERT_TRUE(file.status.ok()) << file.status.error_message();
  EXPECT_GT(file.bytes.size(), 1000u);
}

// Loudly's B2B POST answers only once the song exists (15 s here): the client gets its operation
// while that call is still in flight, and the call's answer completes it.
TEST_F(EndToEndTest, LoudlyB2bFifteenSecondCallDoesNotHoldUpGenerate) {
  ASSERT_TRUE(loudly_
                  ->SetFaultPlan(R"({"rules":[{"match":"POST /api/ai/songs","times":1,)"
                                 R"("action":"latency","delay_ms":15000}]})")
                  .ok());
  const int64_t songs_before = loudly_->stats().b2b_songs;
  GenerateRequest request;
  request.set_provider(musicgw::v1::PROVIDER_LOUDLY);
  request.mutable_parametric_music()->set_genre("House");
  request.mutable_parametric_music()->set_duration_seconds(30);
  const Operation submitted = Submit(b2b_.get(), request);
  ASSERT_FALSE(submitted.name().empty());
  EXPECT_EQ(loudly_->stats().b2b_songs, songs_before);  // Loudly has not answered yet

  const Operation done = Wait(b2b_.get(), submitted);
  ASSERT_EQ(done.state(), musicgw::v1::OPERATION_STATE_SUCCEEDED) << done.error().message();
  EXPECT_EQ(done.outputs_size(), 1);
  EXPECT_EQ(loudly_->stats().b2b_songs, songs_before + 1);
}

TEST_F(EndToEndTest, ValidateOnlyOnLoudlyB2bIsTheProvidersDryRun) {
  GenerateRequest request;
  request.set_request_id(NewRequestId());
  request.set_provider(musicgw::v1::PROVIDER_LOUDLY);
  request.set_validate_only(true);
  request.mutable_text_to_music()->set_prompt("late night lo-fi");
  const auto before = loudly_->stats();
  Operation checked;
  auto stub = Stub(b2b_->grpc_port());
  const grpc::Status status = stub->Generate(Context(kAcmeKey).get(), request, &checked);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_TRUE(checked.name().empty());  // nothing stored
  EXPECT_EQ(checked.provider(), musicgw::v1::PROVIDER_LOUDLY);
  const auto after = loudly_->stats();
  EXPECT_EQ(after.b2b_test_songs, before.b2b_test_songs + 1);  // test=true reached Loudly
  EXPECT_EQ(after.b2b_songs, before.b2b_songs);                // and no song was made
}

TEST_F(EndToEndTest, DownloadResumesAtAnOffset) {
  GenerateRequest request;
  request.set_provider(musicgw::v1::PROVIDER_SOUNDPIECE);
  request.mutable_sample()->set_prompt("pads");
  request.mutable_sample()->set_duration_seconds(10);
  const Operation done = GenerateAndWait(web_.get(), request);
  ASSERT_EQ(done.state(), musicgw::v1::OPERATION_STATE_SUCCEEDED);
  const Downloaded full = Download(web_.get(), done.outputs(0).name());
  ASSERT_TRUE(full.status.ok());
  const int64_t offset = static_cast<int64_t>(full.bytes.size()) / 3;
  const Downloaded tail = Download(web_.get(), done.outputs(0).name(), offset);
  ASSERT_TRUE(tail.status.ok()) << tail.status.error_message();
  EXPECT_EQ(tail.info.offset(), offset);
  EXPECT_EQ(Sha256Hex(tail.bytes), Sha256Hex(full.bytes.substr(offset)));
  const Downloaded beyond =
      Download(web_.get(), done.outputs(0).name(), static_cast<int64_t>(full.bytes.size()) + 1);
  EXPECT_EQ(beyond.status.error_code(), grpc::StatusCode::OUT_OF_RANGE);
}

TEST_F(EndToEndTest, GetQuotaShowsTheEmulatorsRemainingCounts) {
  auto stub = Stub(web_->grpc_port());
  auto remaining = [&]() -> int64_t {
    musicgw::v1::QuotaReport report;
    musicgw::v1::GetQuotaRequest request;
    request.set_provider(musicgw::v1::PROVIDER_LOUDLY);
    EXPECT_TRUE(stub->GetQuota(Context(kAcmeKey).get(), request, &report).ok());
    for (const auto& quota : report.provider_quotas()) {
      if (quota.resource() == "generate_vega_song") return quota.remaining();
    }
    return -2;
  };
  // The monitor reads at start; wait for the first figures.
  int64_t before = -1;
  ASSERT_TRUE(Eventually([&] { return (before = remaining()) >= 0; }, absl::Seconds(10)));
  GenerateRequest request;
  request.set_provider(musicgw::v1::PROVIDER_LOUDLY);
  request.mutable_parametric_music()->set_genre("Techno");
  ASSERT_EQ(GenerateAndWait(web_.get(), request).state(), musicgw::v1::OPERATION_STATE_SUCCEEDED);
  // Read again after each generation (with a short coalescing delay).
  int64_t after = before;
  EXPECT_TRUE(Eventually([&] { return (after = remaining()) < before; }, absl::Seconds(20)))
      << "remaining stayed at " << after << ", was " << before;
}

}  // namespace
}  // namespace musicgw::testing
