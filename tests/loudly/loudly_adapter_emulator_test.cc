// LoudlyAdapter through CurlHttpClient against the in-process Loudly emulator (both dialects):
// generations to terminal success, token refresh single flight and rotation across a restart,
// the B2B synchronous call, quota and error mapping, limits read back, catalog and CheckRequest.
#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "adapters/http/curl_http_client.h"
#include "adapters/loudly/loudly_adapter.h"
#include "common/crypto.h"
#include "common/errors.h"
#include "emulators/loudly/loudly_emulator.h"
#include "gtest/gtest.h"
#include "tests/loudly/test_util.h"
#include "tests/scratch_dir.h"

namespace musicgw::adapters::loudly {
namespace {

using testing::ConcurrentReadQuota;
using testing::Reason;
using testing::Waiter;
namespace emu = musicgw::emulators::loudly;

constexpr char kClientId[] = "1_test_client";
constexpr char kRefreshToken[] = "test-refresh-token";
constexpr char kApiKey[] = "loudly_test_key";

class LoudlyEmulatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    state_file_ = NewTestScratchDir("loudly-emu") + "/token.json";
    client_ = http::CurlHttpClient::Create();
    ASSERT_NE(client_, nullptr);
  }
  void TearDown() override {
    client_.reset();  // every callback has run once this returns
    emulator_.reset();
    std::remove(state_file_.c_str());
  }

  void StartEmulator(emu::Options options) {
    options.client_id = kClientId;
    options.refresh_token = kRefreshToken;
    options.api_keys = {{kApiKey, "b2b"}};
    auto emulator = emu::Emulator::Start(std::move(options));
    ASSERT_TRUE(emulator.ok()) << emulator.status();
    emulator_ = *std::move(emulator);
  }
  static emu::Options Fast() {
    emu::Options options;
    options.bundle_song_delay = absl::Milliseconds(300);
    options.sync_latency = absl::Milliseconds(100);
    return options;
  }

  LoudlyOptions Common(Dialect dialect) const {
    LoudlyOptions options;
    options.account = "test-acct";
    options.dialect = dialect;
    options.base_url = emulator_->base_url();
    options.retry.initial_backoff = absl::Milliseconds(5);
    options.retry.max_backoff = absl::Milliseconds(50);
    options.min_poll_interval = absl::Milliseconds(50);
    options.max_poll_interval = absl::Milliseconds(200);
    options.catalog_refresh_interval = absl::ZeroDuration();
    return options;
  }
  LoudlyOptions Web() const {
    LoudlyOptions options = Common(Dialect::kWeb);
    options.client_id = kClientId;
    options.refresh_token = kRefreshToken;
    options.token_state_file = state_file_;
    return options;
  }
  LoudlyOptions B2B() const {
    LoudlyOptions options = Common(Dialect::kB2B);
    options.api_key = kApiKey;
    return options;
  }
  std::unique_ptr<LoudlyAdapter> Make(LoudlyOptions options) {
    auto adapter = LoudlyAdapter::Create(std::move(options), client_.get());
    EXPECT_TRUE(adapter.ok()) << adapter.status();
    return adapter.ok() ? *std::move(adapter) : nullptr;
  }

  static SubmitRequest CapturedAdvanced() {
    SubmitRequest submit;
    submit.request = testing::CapturedAdvancedRequest();
    submit.deadline = absl::Now() + absl::Minutes(1);
    return submit;
  }
  static SubmitRequest Text(const std::string& prompt, int duration) {
    SubmitRequest submit;
    submit.request.mutable_text_to_music()->set_prompt(prompt);
    submit.request.mutable_text_to_music()->set_duration_seconds(duration);
    submit.deadline = absl::Now() + absl::Minutes(1);
    return submit;
  }

  absl::StatusOr<UpstreamStatus> SubmitAndWait(LoudlyAdapter& adapter, SubmitRequest submit) {
    Waiter<UpstreamStatus> submitted;
    adapter.Submit(std::move(submit), submitted.callback());
    absl::StatusOr<UpstreamStatus> status = submitted.Get();
    // Poll as the engine's tracker would, honouring next_poll_after.
    const absl::Time give_up = absl::Now() + testing::kWait;
    while (status.ok() && status->phase == UpstreamStatus::Phase::kRunning) {
      if (absl::Now() > give_up) return absl::DeadlineExceededError("still running");
      absl::SleepFor(status->next_poll_after);
      PollRequest poll;
      poll.upstream_id = status->upstream_id;
      poll.deadline = absl::Now() + absl::Seconds(10);
      Waiter<UpstreamStatus> polled;
      adapter.Poll(poll, polled.callback());
      status = polled.Get();
    }
    return status;
  }

  absl::StatusOr<std::vector<QuotaFigure>> Quota(LoudlyAdapter& adapter) {
    Waiter<std::vector<QuotaFigure>> read;
    adapter.ReadQuota(read.callback());
    return read.Get();
  }
  static const QuotaFigure* Find(const std::vector<QuotaFigure>& figures,
                                 const std::string& resource) {
    for (const auto& figure : figures) {
      if (figure.resource == resource) return &figure;
    }
    return nullptr;
  }

  // GETs a file URL and returns its bytes.
  absl::StatusOr<http::Response> Fetch(const std::string& url) {
    absl::Notification done;
    absl::StatusOr<http::Response> result;
    http::Request request;
    request.url = url;
    client_->Send(std::move(request), [&](absl::StatusOr<http::Response> response) {
      result = std::move(response);
      done.Notify();
    });
    EXPECT_TRUE(done.WaitForNotificationWithTimeout(testing::kWait));
    return result;
  }

  std::unique_ptr<emu::Emulator> emulator_;
  std::unique_ptr<http::CurlHttpClient> client_;
  std::string state_file_;
};

TEST_F(LoudlyEmulatorTest, WebAdvancedAndText2MusicBundlesSucceedWithMp3) {
  StartEmulator(Fast());
  auto adapter = Make(Web());
  ASSERT_NE(adapter, nullptr);

  auto advanced = SubmitAndWait(*adapter, CapturedAdvanced());
  ASSERT_TRUE(advanced.ok()) << advanced.status();
  ASSERT_EQ(advanced->phase, UpstreamStatus::Phase::kSucceeded) << advanced->error;
  ASSERT_EQ(advanced->outputs.size(), 1u);
  const ProviderOutput& song = advanced->outputs[0];
  EXPECT_FALSE(song.title.empty());
  EXPECT_DOUBLE_EQ(song.duration_seconds, 129.0);  // 128 s asked, one second longer delivered
  EXPECT_EQ(song.format, musicgw::v1::AUDIO_FORMAT_MP3);
  EXPECT_EQ(song.content_type, "audio/mpeg");
  EXPECT_EQ(song.bpm, 125);
  EXPECT_EQ(song.key, "E-minor");
  EXPECT_TRUE(absl::StrContains(song.url, ".mp3?cb=")) << song.url;

  auto text = SubmitAndWait(*adapter, Text("warm lo-fi piano with vinyl crackle", 30));
  ASSERT_TRUE(text.ok()) << text.status();
  ASSERT_EQ(text->phase, UpstreamStatus::Phase::kSucceeded) << text->error;
  ASSERT_EQ(text->outputs.size(), 1u);
  EXPECT_DOUBLE_EQ(text->outputs[0].duration_seconds, 31.0);
  // The URL serves the MP3 (the shorter song: the emulator renders on first download).
  auto file = Fetch(text->outputs[0].url);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->status, 200);
  EXPECT_EQ(file->Header("Content-Type").value_or(""), "audio/mpeg");
  EXPECT_GT(file->body.size(), 1000u);

  const emu::Stats stats = emulator_->stats();
  EXPECT_EQ(stats.bundles_by_type.at("ADVANCED"), 1);
  EXPECT_EQ(stats.bundles_by_type.at("TEXT2MUSIC"), 1);
  EXPECT_EQ(stats.token_refreshes, 1);
  EXPECT_EQ(stats.validation_errors, 0);
}

TEST_F(LoudlyEmulatorTest, FailedBundleFailsTheOperation) {
  StartEmulator(Fast());
  ASSERT_TRUE(
      emulator_
          ->SetFaultPlan(R"({"rules":[{"match":"POST /ai/vega/bundles","action":"fail_operation",)"
                         R"("error_message":"Generation failed"}]})")
          .ok());
  auto adapter = Make(Web());
  auto result = SubmitAndWait(*adapter, Text("anything", 30));
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->phase, UpstreamStatus::Phase::kFailed);
  EXPECT_EQ(Reason(result->error), "PROVIDER_GENERATION_FAILED");
}

TEST_F(LoudlyEmulatorTest, TokenExpiryMidRunIsRefreshedOnceUnderFiftyConcurrentCalls) {
  emu::Options options = Fast();
  // Long enough that the 50 calls are served before the next token expires too, even on a
  // loaded machine.
  options.access_token_ttl = absl::Seconds(2);
  StartEmulator(options);
  LoudlyOptions web = Web();
  web.token_refresh_margin = absl::ZeroDuration();
  auto adapter = Make(web);
  ASSERT_TRUE(Quota(*adapter).ok());
  ASSERT_EQ(emulator_->stats().token_refreshes, 1);

  // The token's lifetime is wall-clock time: let it run out.
  absl::SleepFor(absl::Milliseconds(2200));
  for (auto& result : ConcurrentReadQuota(*adapter, 50, 5)) {
    ASSERT_TRUE(result.ok()) << result.status();
  }
  EXPECT_EQ(emulator_->stats().token_refreshes, 2);
  EXPECT_EQ(adapter->token_refreshes(), 2);
}

TEST_F(LoudlyEmulatorTest, FiftyCallsRefusedWith401ShareOneRefreshAndRetry) {
  StartEmulator(Fast());
  auto adapter = Make(Web());
  ASSERT_TRUE(Quota(*adapter).ok());
  // The provider forgets every token it issued (and the rotation): each cached-token call now
  // gets a 401, and the rotated refresh token is refused, so the one refresh falls back to the
  // configured token.
  emulator_->Reset();
  for (auto& result : ConcurrentReadQuota(*adapter, 50, 1)) {
    ASSERT_TRUE(result.ok()) << result.status();
  }
  const emu::Stats stats = emulator_->stats();
  EXPECT_EQ(stats.token_refreshes, 1);
  EXPECT_EQ(stats.token_refreshes_rejected, 1);
  // Calls issued after the first 401 wait for the refresh instead of trying the dead token.
  EXPECT_GE(stats.unauthorized, 1);
  EXPECT_LE(stats.unauthorized, 50);
}

TEST_F(LoudlyEmulatorTest, RotatedRefreshTokenSurvivesARestart) {
  StartEmulator(Fast());
  {
    auto adapter = Make(Web());
    ASSERT_TRUE(Quota(*adapter).ok());
  }
  // The configured token has been rotated away upstream; only the persisted one still works.
  ASSERT_NE(emulator_->current_refresh_token(), kRefreshToken);
  auto restarted = Make(Web());
  ASSERT_NE(restarted, nullptr);
  auto figures = Quota(*restarted);
  ASSERT_TRUE(figures.ok()) << figures.status();
  const emu::Stats stats = emulator_->stats();
  EXPECT_EQ(stats.token_refreshes, 2);
  EXPECT_EQ(stats.token_refreshes_rejected, 0);
}

TEST_F(LoudlyEmulatorTest, WrongRefreshTokenIsAProviderAuthFault) {
  StartEmulator(Fast());
  LoudlyOptions web = Web();
  web.refresh_token = "not-the-token";
  auto adapter = Make(web);
  auto figures = Quota(*adapter);
  EXPECT_EQ(figures.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(Reason(figures.status()), "PROVIDER_AUTH_FAILED");
  EXPECT_FALSE(absl::StrContains(figures.status().ToString(), "not-the-token"));
}

TEST_F(LoudlyEmulatorTest, B2BSynchronousGenerationWithLongLatencyCompletes) {
  emu::Options options = Fast();
  options.sync_latency = absl::Seconds(3);
  StartEmulator(options);
  LoudlyOptions b2b = B2B();
  b2b.request_timeout = absl::Seconds(1);  // the generation POST runs on sync_timeout instead
  b2b.sync_timeout = absl::Seconds(30);
  auto adapter = Make(b2b);
  ASSERT_TRUE(adapter->synchronous());
  SubmitRequest submit = CapturedAdvanced();
  submit.request.mutable_parametric_music()->set_genre("House");
  submit.request.mutable_parametric_music()->clear_genre_blend();
  submit.request.mutable_parametric_music()->clear_structure_id();
  submit.request.mutable_parametric_music()->set_duration_seconds(60);
  Waiter<UpstreamStatus> submitted;
  adapter->Submit(std::move(submit), submitted.callback());
  auto& song = submitted.Get();
  ASSERT_TRUE(song.ok()) << song.status();
  ASSERT_EQ(song->phase, UpstreamStatus::Phase::kSucceeded) << song->error;
  ASSERT_EQ(song->outputs.size(), 1u);
  EXPECT_DOUBLE_EQ(song->outputs[0].duration_seconds, 61.0);
  EXPECT_EQ(song->outputs[0].content_type, "audio/mpeg");
  EXPECT_EQ(emulator_->stats().b2b_songs, 1);

  PollRequest poll;
  poll.upstream_id = song->upstream_id;
  Waiter<UpstreamStatus> polled;
  adapter->Poll(poll, polled.callback());
  ASSERT_TRUE(polled.Get().ok());
  EXPECT_EQ(polled.Get()->outputs[0].url, song->outputs[0].url);
}

TEST_F(LoudlyEmulatorTest, B2BConnectionLostAfterSendingIsNeverResent) {
  StartEmulator(Fast());
  // The emulator generates the song, then breaks the answer off (today it stalls after the
  // headers rather than closing, so the POST ends by timeout; either way the outcome is unknown).
  ASSERT_TRUE(emulator_
                  ->SetFaultPlan(R"({"rules":[{"match":"POST /api/ai/prompt/songs","times":1,)"
                                 R"("action":"reset"}]})")
                  .ok());
  LoudlyOptions b2b = B2B();
  b2b.sync_timeout = absl::Seconds(2);
  auto adapter = Make(b2b);
  Waiter<UpstreamStatus> submitted;
  adapter->Submit(Text("lost answer", 30), submitted.callback());
  const absl::Status status = submitted.Get().status();
  EXPECT_EQ(status.code(), absl::StatusCode::kUnknown) << status;
  EXPECT_EQ(Reason(status), "PROVIDER_OUTCOME_UNKNOWN") << status;
  EXPECT_EQ(emulator_->stats().b2b_songs, 1);  // generated (and charged) once, never twice
}

TEST_F(LoudlyEmulatorTest, B2BDryRunSpendsNothing) {
  StartEmulator(Fast());
  auto adapter = Make(B2B());
  SubmitRequest submit = Text("dry run please", 30);
  submit.validate_only = true;
  Waiter<UpstreamStatus> submitted;
  adapter->Submit(std::move(submit), submitted.callback());
  ASSERT_TRUE(submitted.Get().ok()) << submitted.Get().status();
  const emu::Stats stats = emulator_->stats();
  EXPECT_EQ(stats.b2b_test_songs, 1);
  EXPECT_EQ(stats.b2b_songs, 0);
}

TEST_F(LoudlyEmulatorTest, QuotaFiveHundredBecomesResourceExhaustedWithRetryInfo) {
  emu::Options options = Fast();
  options.b2b_limits = {{"GENERATE_VEGA_SONG_WITH_PROMPT", 1}};
  StartEmulator(options);
  auto adapter = Make(B2B());
  Waiter<UpstreamStatus> first;
  adapter->Submit(Text("first", 30), first.callback());
  ASSERT_TRUE(first.Get().ok()) << first.Get().status();

  Waiter<UpstreamStatus> second;
  adapter->Submit(Text("second", 30), second.callback());
  const absl::Status status = second.Get().status();
  ASSERT_EQ(status.code(), absl::StatusCode::kResourceExhausted) << status;
  google::rpc::ErrorInfo info;
  ASSERT_TRUE(GetErrorInfo(status, &info));
  EXPECT_EQ(info.reason(), "PROVIDER_QUOTA_EXHAUSTED");
  EXPECT_EQ(info.domain(), "loudly.com");
  google::rpc::RetryInfo retry;
  ASSERT_TRUE(GetRetryInfo(status, &retry));
  EXPECT_GT(retry.retry_delay().seconds(), 0);
  EXPECT_EQ(absl::StrCat(retry.retry_delay().seconds()),
            info.metadata().at("timer_seconds_remaining"));
  google::rpc::QuotaFailure quota;
  ASSERT_TRUE(GetQuotaFailure(status, &quota));
  ASSERT_EQ(quota.violations_size(), 1);
  EXPECT_EQ(
      quota.violations(0).subject(),
      absl::StrCat("provider:loudly/account:test-acct/resource:", info.metadata().at("service")));
  // Not retried: exactly one quota answer.
  EXPECT_EQ(emulator_->stats().quota_rejections, 1);
}

TEST_F(LoudlyEmulatorTest, ProviderRejectionIsInvalidArgumentWithItsError) {
  StartEmulator(Fast());
  auto adapter = Make(B2B());
  SubmitRequest submit;
  submit.request.mutable_parametric_music()->set_genre("Polka Step");
  submit.deadline = absl::Now() + absl::Minutes(1);
  Waiter<UpstreamStatus> submitted;
  adapter->Submit(std::move(submit), submitted.callback());
  const absl::Status status = submitted.Get().status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  google::rpc::ErrorInfo info;
  ASSERT_TRUE(GetErrorInfo(status, &info));
  EXPECT_EQ(info.reason(), "PROVIDER_REJECTED");
  EXPECT_EQ(info.domain(), "loudly.com");
  EXPECT_EQ(info.metadata().at("http_status"), "400");
  EXPECT_FALSE(info.metadata().at("error").empty());
  EXPECT_EQ(emulator_->stats().validation_errors, 1);
}

TEST_F(LoudlyEmulatorTest, WebLimitsDecreaseAfterAGeneration) {
  StartEmulator(Fast());
  auto adapter = Make(Web());
  auto before = Quota(*adapter);
  ASSERT_TRUE(before.ok()) << before.status();
  const QuotaFigure* vega = Find(*before, "generate_vega_song");
  ASSERT_NE(vega, nullptr);
  EXPECT_GT(vega->limit, 0);
  EXPECT_GT(vega->reset_time, absl::InfinitePast());
  const int64_t remaining = vega->remaining;

  auto song = SubmitAndWait(*adapter, Text("short jingle", 30));
  ASSERT_TRUE(song.ok() && song->phase == UpstreamStatus::Phase::kSucceeded);
  auto after = Quota(*adapter);
  ASSERT_TRUE(after.ok());
  ASSERT_NE(Find(*after, "generate_vega_song"), nullptr);
  EXPECT_EQ(Find(*after, "generate_vega_song")->remaining, remaining - 1);
}

TEST_F(LoudlyEmulatorTest, B2BLimitsInBothShapesDecreaseAfterAGeneration) {
  for (const emu::LimitsShape shape : {emu::LimitsShape::kArray, emu::LimitsShape::kObject}) {
    SCOPED_TRACE(shape == emu::LimitsShape::kArray ? "array" : "object");
    emu::Options options = Fast();
    options.limits_shape = shape;
    options.b2b_top_up = 100;
    StartEmulator(options);
    auto adapter = Make(B2B());
    auto before = Quota(*adapter);
    ASSERT_TRUE(before.ok()) << before.status();
    const QuotaFigure* prompt = Find(*before, "GENERATE_VEGA_SONG_WITH_PROMPT");
    ASSERT_NE(prompt, nullptr);
    const int64_t remaining = prompt->remaining;
    EXPECT_EQ(Find(*before, "top_up") != nullptr, shape == emu::LimitsShape::kObject);

    Waiter<UpstreamStatus> song;
    adapter->Submit(Text("limits", 30), song.callback());
    ASSERT_TRUE(song.Get().ok()) << song.Get().status();
    auto after = Quota(*adapter);
    ASSERT_TRUE(after.ok());
    ASSERT_NE(Find(*after, "GENERATE_VEGA_SONG_WITH_PROMPT"), nullptr);
    EXPECT_EQ(Find(*after, "GENERATE_VEGA_SONG_WITH_PROMPT")->remaining, remaining - 1);
    // Close the pooled keep-alive connections before the emulator stops.
    adapter.reset();
    client_ = http::CurlHttpClient::Create();
    emulator_.reset();
  }
}

TEST_F(LoudlyEmulatorTest, CatalogRefreshFeedsCheckRequest) {
  StartEmulator(Fast());
  LoudlyOptions b2b = B2B();
  b2b.catalog_refresh_interval = absl::Milliseconds(100);
  auto adapter = Make(b2b);
  adapter->Start();
  const absl::Time give_up = absl::Now() + testing::kWait;
  while (adapter->catalog().genres.empty() && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  const ProviderCatalog catalog = adapter->catalog();
  ASSERT_FALSE(catalog.genres.empty());
  EXPECT_FALSE(catalog.structures.empty());
  EXPECT_FALSE(catalog.example_prompt.empty());
  EXPECT_NE(std::find(catalog.genres.begin(), catalog.genres.end(), "House"), catalog.genres.end());

  musicgw::v1::GenerateRequest request;
  request.mutable_parametric_music()->set_genre("Polka Step");
  const absl::Status status = adapter->CheckRequest(request);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  google::rpc::BadRequest bad;
  ASSERT_TRUE(GetBadRequest(status, &bad));
  ASSERT_EQ(bad.field_violations_size(), 1);
  EXPECT_EQ(bad.field_violations(0).field(), "parametric_music.genre");
  request.mutable_parametric_music()->set_genre(catalog.genres.back());
  request.mutable_parametric_music()->set_structure_id(catalog.structures.front().id());
  EXPECT_TRUE(adapter->CheckRequest(request).ok());
  adapter->Stop();
}

}  // namespace
}  // namespace musicgw::adapters::loudly
