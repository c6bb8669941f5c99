// The Soundpiece adapter against the in-process Soundpiece emulator over loopback HTTP.
#include "adapters/soundpiece/soundpiece_adapter.h"

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "adapters/capabilities.h"
#include "adapters/http/curl_http_client.h"
#include "adapters/soundpiece/webhook.h"
#include "common/errors.h"
#include "emulators/soundpiece/soundpiece_emulator.h"
#include "gtest/gtest.h"

namespace musicgw::adapters::soundpiece {
namespace {

namespace v1 = musicgw::v1;
using Phase = UpstreamStatus::Phase;
constexpr absl::Duration kWait = absl::Seconds(30);
const std::string kSecret =
    absl::StrCat("whsec_", absl::Base64Escape("test-webhook-key-0123456789"));

// The result of one asynchronous call, shared with its callback.
template <typename T>
struct Waiter {
  absl::Notification done;
  absl::StatusOr<T> result = absl::UnknownError("no result");
  adapters::Callback<T> Done() {
    return [this](absl::StatusOr<T> r) {
      result = std::move(r);
      done.Notify();
    };
  }
  absl::StatusOr<T> Get() {
    if (!done.WaitForNotificationWithTimeout(kWait))
      return absl::DeadlineExceededError("test wait");
    return result;
  }
};

std::string Reason(const absl::Status& status) {
  google::rpc::ErrorInfo info;
  return GetErrorInfo(status, &info) ? info.reason() : "";
}

class SoundpieceAdapterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    emulators::soundpiece::Options options;
    options.processing_time = absl::Milliseconds(200);
    options.long_poll = absl::Seconds(3);
    options.webhook_secrets = {{"acct", kSecret}};
    options.webhook_retry_delays = {absl::Milliseconds(50), absl::Milliseconds(100)};
    options.threads = 32;
    auto emulator = emulators::soundpiece::Emulator::Start(options);
    ASSERT_TRUE(emulator.ok()) << emulator.status();
    emulator_ = std::move(*emulator);
    http_ = http::CurlHttpClient::Create();
    ASSERT_NE(http_, nullptr);
    adapter_ = MakeAdapter(Options());
  }

  void TearDown() override {
    adapter_.reset();
    receiver_.reset();
    http_.reset();
    emulator_.reset();
  }

  SoundpieceOptions Options() {
    SoundpieceOptions options;
    options.account = "acct";
    options.base_url = emulator_->base_url();
    options.api_key = "spk_test_key";
    options.retry.initial_backoff = absl::Milliseconds(10);
    options.retry.max_backoff = absl::Milliseconds(50);
    options.retry.max_total = absl::Seconds(10);
    options.long_poll_timeout = absl::Seconds(8);
    return options;
  }

  std::unique_ptr<SoundpieceAdapter> MakeAdapter(SoundpieceOptions options) {
    auto adapter = SoundpieceAdapter::Create(std::move(options), http_.get());
    EXPECT_TRUE(adapter.ok()) << adapter.status();
    return adapter.ok() ? std::move(*adapter) : nullptr;
  }

  // Starts a webhook receiver and an adapter that asks for webhooks to it.
  void UseWebhooks() {
    WebhookReceiverOptions options;
    options.host = "127.0.0.1";
    options.verifier.secrets = {kSecret};
    auto receiver = WebhookReceiver::Start(options, [this](const UpstreamStatus& status) {
      absl::MutexLock lock(&mu_);
      webhook_updates_.push_back(status);
    });
    ASSERT_TRUE(receiver.ok()) << receiver.status();
    receiver_ = std::move(*receiver);
    SoundpieceOptions adapter_options = Options();
    adapter_options.callback_url = receiver_->url();
    adapter_ = MakeAdapter(adapter_options);
  }

  absl::StatusOr<UpstreamStatus> Submit(
      const v1::GenerateRequest& request,
      const std::string& key = "5b1f6f0e-8a53-4e6e-9d62-1f1f7d0b7a01",
      SoundpieceAdapter* adapter = nullptr) {
    SubmitRequest submit;
    submit.operation_id = "test-op";
    submit.request_id = "req-1";
    submit.idempotency_key = key;
    submit.request = request;
    submit.deadline = absl::Now() + absl::Seconds(20);
    Waiter<UpstreamStatus> waiter;
    (adapter != nullptr ? adapter : adapter_.get())->Submit(std::move(submit), waiter.Done());
    return waiter.Get();
  }

  absl::StatusOr<UpstreamStatus> Poll(const std::string& upstream_id, v1::TaskKind task,
                                      bool wait = true) {
    PollRequest poll;
    poll.upstream_id = upstream_id;
    poll.task = task;
    poll.wait = wait;
    poll.deadline = absl::Now() + absl::Seconds(25);
    Waiter<UpstreamStatus> waiter;
    adapter_->Poll(std::move(poll), waiter.Done());
    return waiter.Get();
  }

  // Submit, then long-poll until terminal.
  absl::StatusOr<UpstreamStatus> Run(
      const v1::GenerateRequest& request,
      const std::string& key = "7c9e6679-7425-40de-944b-e07fc1f90ae7") {
    auto status = Submit(request, key);
    if (!status.ok()) return status;
    const v1::TaskKind task = TaskKindOf(request);
    for (int i = 0; i < 20 && status->phase == Phase::kRunning; ++i) {
      const std::string id = status->upstream_id;
      status = Poll(id, task);
      if (!status.ok()) return status;
    }
    return status;
  }

  absl::StatusOr<http::Response> Fetch(const std::string& url) {
    Waiter<http::Response> waiter;
    http::Request request;
    request.url = url;
    http_->Send(std::move(request), waiter.Done());
    return waiter.Get();
  }

  std::unique_ptr<emulators::soundpiece::Emulator> emulator_;
  std::unique_ptr<http::CurlHttpClient> http_;
  std::unique_ptr<SoundpieceAdapter> adapter_;
  std::unique_ptr<WebhookReceiver> receiver_;
  absl::Mutex mu_;
  std::vector<UpstreamStatus> webhook_updates_ ABSL_GUARDED_BY(mu_);
};

v1::GenerateRequest Sample() {
  v1::GenerateRequest request;
  request.mutable_sample()->set_prompt("rock, guitar, energetic");
  request.mutable_sample()->set_duration_seconds(2);
  request.mutable_sample()->set_loopable(true);
  return request;
}

TEST_F(SoundpieceAdapterTest, EveryRouteSucceedsWithTheRightAssets) {
  struct Case {
    v1::GenerateRequest request;
    std::vector<v1::AssetKind> kinds;
  };
  std::vector<Case> cases(9);
  cases[0].request.mutable_song()->set_lyrics("[Verse]\nNeon rain");
  cases[0].request.mutable_song()->set_prompt("synthwave");
  cases[0].kinds = {v1::ASSET_KIND_MIX, v1::ASSET_KIND_MIX};
  cases[1].request.mutable_instrumental()->mutable_reference()->set_url(
      "https://files.example.com/ref.mp3?duration=20");
  cases[1].kinds = {v1::ASSET_KIND_MIX, v1::ASSET_KIND_MIX};
  cases[2].request.mutable_text_to_music()->set_prompt("lofi beats");
  cases[2].kinds = {v1::ASSET_KIND_MIX, v1::ASSET_KIND_MIX};
  cases[3].request = Sample();
  cases[3].kinds = {v1::ASSET_KIND_SAMPLE};
  cases[4].request.mutable_sound_effect()->set_prompt("door slam");
  cases[4].request.mutable_sound_effect()->set_duration_seconds(1.5);
  cases[4].kinds = {v1::ASSET_KIND_SOUND_EFFECT};
  auto* remix = cases[5].request.mutable_remix_song();
  remix->mutable_source()->set_url("https://files.example.com/song.wav?duration=20");
  remix->set_lyrics("[Chorus]\nHold on");
  remix->set_prompt("acoustic");
  remix->set_variations(3);
  cases[5].kinds = {v1::ASSET_KIND_MIX, v1::ASSET_KIND_MIX, v1::ASSET_KIND_MIX};
  cases[6].request.mutable_remix_instrumental()->mutable_source()->set_url(
      "https://files.example.com/beat.flac?duration=20");
  cases[6].kinds = {v1::ASSET_KIND_MIX};
  cases[7].request.mutable_separate_stems()->mutable_source()->set_url(
      "https://files.example.com/mix.wav?duration=10");
  cases[7].kinds = {v1::ASSET_KIND_STEM_VOCALS, v1::ASSET_KIND_STEM_DRUMS, v1::ASSET_KIND_STEM_BASS,
                    v1::ASSET_KIND_STEM_OTHER};
  cases[8].request.mutable_cut_down()->mutable_source()->set_url(
      "https://files.example.com/track.wav?duration=40");
  cases[8].request.mutable_cut_down()->set_target_duration_seconds(10);
  cases[8].kinds = {v1::ASSET_KIND_MIX};

  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    SCOPED_TRACE(v1::TaskKind_Name(TaskKindOf(c.request)));
    ASSERT_TRUE(adapter_->CheckRequest(c.request).ok()) << adapter_->CheckRequest(c.request);
    auto status = Run(c.request, absl::StrCat("00000000-0000-4000-8000-00000000000", i));
    ASSERT_TRUE(status.ok()) << status.status();
    ASSERT_EQ(status->phase, Phase::kSucceeded) << status->error;
    EXPECT_TRUE(absl::StartsWith(status->upstream_id, "op_"));
    ASSERT_EQ(status->outputs.size(), c.kinds.size());
    for (size_t j = 0; j < c.kinds.size(); ++j) {
      EXPECT_EQ(status->outputs[j].kind, c.kinds[j]) << j;
      EXPECT_EQ(status->outputs[j].format, v1::AUDIO_FORMAT_FLAC);
      EXPECT_GT(status->outputs[j].duration_seconds, 0);
      EXPECT_LT(status->outputs[j].url_expire_time, absl::InfiniteFuture());
    }
  }
  EXPECT_EQ(emulator_->stats().operations_created, 9);
}

TEST_F(SoundpieceAdapterTest, RetriedPutCreatesExactlyOneUpstreamOperation) {
  // First PUT: 503 before any processing. Second: processed, then the answer is cut off (the
  // client sees a reset or, when the server keeps the connection, a read timeout).
  ASSERT_TRUE(emulator_
                  ->SetFaultPlan(R"({"rules":[
        {"match":"PUT /v1/create.new_sample","nth":[1],"action":"status","status":503},
        {"match":"PUT /v1/create.new_sample","nth":[2],"action":"reset"}]})")
                  .ok());
  SoundpieceOptions options = Options();
  options.request_timeout = absl::Seconds(1);
  auto adapter = MakeAdapter(options);
  const std::string key = "3f2b8c1e-4d5a-4b6c-8d7e-9f0a1b2c3d4e";
  auto first = Submit(Sample(), key, adapter.get());
  ASSERT_TRUE(first.ok()) << first.status();
  auto stats = emulator_->stats();
  EXPECT_EQ(stats.faults_injected, 2);
  EXPECT_EQ(stats.puts, 2);  // the 503 never reached the route
  EXPECT_EQ(stats.operations_created, 1);
  EXPECT_EQ(stats.idempotent_replays, 1);
  // The engine re-submits after a gateway restart with the same key: still the same operation.
  auto again = Submit(Sample(), key, adapter.get());
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->upstream_id, first->upstream_id);
  stats = emulator_->stats();
  EXPECT_EQ(stats.operations_created, 1);
  EXPECT_EQ(stats.operations_by_account_route["acct create.new_sample"], 1);
}

TEST_F(SoundpieceAdapterTest, TimedOutPutIsRetriedWithTheSameKey) {
  // The first PUT is held 1.5 s before processing; the client gives up after 0.5 s and retries.
  ASSERT_TRUE(emulator_
                  ->SetFaultPlan(R"({"rules":[
        {"match":"PUT /v1/create.new_sample","nth":[1],"action":"latency","delay_ms":1500}]})")
                  .ok());
  SoundpieceOptions options = Options();
  options.request_timeout = absl::Milliseconds(500);
  auto adapter = MakeAdapter(options);
  auto status = Submit(Sample(), "a1b2c3d4-e5f6-4789-8abc-def012345678", adapter.get());
  ASSERT_TRUE(status.ok()) << status.status();
  // Wait for the held first PUT to be processed too: it must find the retry's operation.
  const absl::Time give_up = absl::Now() + kWait;
  while (emulator_->stats().puts < 2 && absl::Now() < give_up)
    absl::SleepFor(absl::Milliseconds(50));
  const auto stats = emulator_->stats();
  EXPECT_EQ(stats.puts, 2);
  EXPECT_EQ(stats.operations_created, 1);
  EXPECT_EQ(stats.idempotent_replays, 1);
}

TEST_F(SoundpieceAdapterTest, GarbledAnswersAreRetriedWithTheSameKey) {
  ASSERT_TRUE(emulator_
                  ->SetFaultPlan(R"({"rules":[
        {"match":"PUT /v1/create.new_sample","nth":[1],"action":"truncate"},
        {"match":"PUT /v1/create.new_sample","nth":[2],"action":"malformed"}]})")
                  .ok());
  auto status = Submit(Sample(), "c0ffee00-1234-4abc-8def-0123456789ab");
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_EQ(status->phase, Phase::kRunning);
  const auto stats = emulator_->stats();
  EXPECT_EQ(stats.puts, 3);
  EXPECT_EQ(stats.operations_created, 1);
  EXPECT_EQ(stats.idempotent_replays, 2);
}

TEST_F(SoundpieceAdapterTest, ProviderAuthFailureIsAConfigurationFault) {
  SoundpieceOptions options = Options();
  options.api_key = "spk_wrong_key";
  auto adapter = MakeAdapter(options);
  auto status = Submit(Sample(), "5b1f6f0e-8a53-4e6e-9d62-1f1f7d0b7a01", adapter.get());
  EXPECT_EQ(status.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(Reason(status.status()), "PROVIDER_AUTH_FAILED");
  EXPECT_FALSE(absl::StrContains(status.status().ToString(), "spk_wrong_key"));
  EXPECT_EQ(emulator_->stats().puts, 1);  // never retried
}

TEST_F(SoundpieceAdapterTest, OutOfCreditsIsResourceExhaustedWithQuotaFailure) {
  emulator_->SetCredits("acct", 0);
  auto status = Submit(Sample());
  EXPECT_EQ(status.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(Reason(status.status()), "PROVIDER_QUOTA_EXHAUSTED");
  google::rpc::QuotaFailure quota;
  ASSERT_TRUE(GetQuotaFailure(status.status(), &quota));
  EXPECT_EQ(quota.violations(0).subject(), "provider:soundpiece/account:acct/resource:credits");
  EXPECT_GT(adapter_->last_quota_exhausted(), absl::InfinitePast());
  Waiter<std::vector<QuotaFigure>> figures;
  adapter_->ReadQuota(figures.Done());
  auto read = figures.Get();
  ASSERT_TRUE(read.ok());
  ASSERT_EQ(read->size(), 1u);
  EXPECT_EQ((*read)[0].resource, "credits");
  EXPECT_EQ((*read)[0].remaining, 0);
  // Topped up: the same key goes through and the figure is unknown again.
  emulator_->SetCredits("acct", 10);
  ASSERT_TRUE(Submit(Sample()).ok());
  Waiter<std::vector<QuotaFigure>> again;
  adapter_->ReadQuota(again.Done());
  EXPECT_EQ((*again.Get())[0].remaining, -1);
}

TEST_F(SoundpieceAdapterTest, ValidationErrorNamesOurField) {
  v1::GenerateRequest request = Sample();
  request.mutable_sample()->set_duration_seconds(31);  // the emulator allows at most 30 s
  auto status = Submit(request);
  EXPECT_EQ(status.status().code(), absl::StatusCode::kInvalidArgument);
  google::rpc::BadRequest bad;
  ASSERT_TRUE(GetBadRequest(status.status(), &bad)) << status.status();
  ASSERT_GE(bad.field_violations_size(), 1);
  EXPECT_EQ(bad.field_violations(0).field(), "sample.duration_seconds");
  EXPECT_EQ(emulator_->stats().puts, 1);
}

TEST_F(SoundpieceAdapterTest, MissingEndpointIsFailedPrecondition) {
  SoundpieceOptions options = Options();
  options.base_url = absl::StrCat(emulator_->base_url(), "/wrong-prefix");
  auto adapter = MakeAdapter(options);
  auto status = Submit(Sample(), "5b1f6f0e-8a53-4e6e-9d62-1f1f7d0b7a01", adapter.get());
  EXPECT_EQ(status.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Reason(status.status()), "PROVIDER_ENDPOINT_MISSING");
}

TEST_F(SoundpieceAdapterTest, RateLimitHonoursRetryAfterThenSurfaces) {
  ASSERT_TRUE(emulator_
                  ->SetFaultPlan(R"({"rules":[
        {"match":"PUT /v1/create.new_sample","nth":[1],"action":"rate_limit","retry_after":1}]})")
                  .ok());
  auto ok = Submit(Sample());
  ASSERT_TRUE(ok.ok()) << ok.status();  // retried after the server's delay
  EXPECT_EQ(emulator_->stats().faults_injected, 1);
  EXPECT_EQ(emulator_->stats().puts, 1);

  ASSERT_TRUE(emulator_
                  ->SetFaultPlan(R"({"rules":[
        {"match":"PUT /v1/create.new_sample","action":"rate_limit","retry_after":30}]})")
                  .ok());
  auto limited = Submit(Sample(), "9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a");
  EXPECT_EQ(limited.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(Reason(limited.status()), "PROVIDER_RATE_LIMITED");
  google::rpc::RetryInfo retry;
  ASSERT_TRUE(GetRetryInfo(limited.status(), &retry));
  EXPECT_EQ(retry.retry_delay().seconds(), 30);
}

// A submission answered only with 5xx may have been processed (the body was sent): retried with
// the same key, then outcome unknown rather than UNAVAILABLE (which would invite a retry that
// pays twice).
TEST_F(SoundpieceAdapterTest, PersistentServerErrorsLeaveTheSubmissionOutcomeUnknown) {
  ASSERT_TRUE(emulator_
                  ->SetFaultPlan(R"({"rules":[
        {"match":"PUT /v1/create.new_sample","action":"status","status":502}]})")
                  .ok());
  auto status = Submit(Sample());
  EXPECT_EQ(status.status().code(), absl::StatusCode::kUnknown);
  EXPECT_EQ(Reason(status.status()), "PROVIDER_OUTCOME_UNKNOWN");
  EXPECT_EQ(emulator_->stats().faults_injected, 5);  // max_attempts
  EXPECT_EQ(emulator_->stats().operations_created, 0);
}

TEST_F(SoundpieceAdapterTest, UnknownOperationIsNotFound) {
  auto status = Poll("op_0000000000000000000000000a", v1::TASK_KIND_SAMPLE);
  EXPECT_EQ(status.status().code(), absl::StatusCode::kNotFound) << status.status();
  EXPECT_EQ(Reason(status.status()), "PROVIDER_OPERATION_UNKNOWN");
}

TEST_F(SoundpieceAdapterTest, FailedOperationsCarryTheProviderError) {
  ASSERT_TRUE(emulator_
                  ->SetFaultPlan(R"({"rules":[
        {"match":"PUT /v1/create.new_sample","action":"fail_operation",
         "error_code":"internal_error","error_message":"Generation failed"}]})")
                  .ok());
  auto failed = Run(Sample());
  ASSERT_TRUE(failed.ok()) << failed.status();
  EXPECT_EQ(failed->phase, Phase::kFailed);
  EXPECT_EQ(failed->error.code(), absl::StatusCode::kInternal);
  google::rpc::ErrorInfo info;
  ASSERT_TRUE(GetErrorInfo(failed->error, &info));
  EXPECT_EQ(info.reason(), "PROVIDER_OPERATION_FAILED");
  EXPECT_EQ(info.domain(), "soundpiece.co");
  EXPECT_EQ(info.metadata().at("provider_code"), "internal_error");
  EXPECT_EQ(info.metadata().at("provider_message"), "Generation failed");

  v1::GenerateRequest stems;
  stems.mutable_separate_stems()->mutable_source()->set_url(
      "https://files.example.com/__fail__.wav");
  auto unreadable = Run(stems, "11111111-2222-4333-8444-555555555555");
  ASSERT_TRUE(unreadable.ok()) << unreadable.status();
  EXPECT_EQ(unreadable->phase, Phase::kFailed);
  EXPECT_EQ(unreadable->error.code(), absl::StatusCode::kInvalidArgument) << unreadable->error;
}

TEST_F(SoundpieceAdapterTest, WebhookArrivesVerified) {
  UseWebhooks();
  auto status = Run(Sample());
  ASSERT_TRUE(status.ok()) << status.status();
  ASSERT_EQ(status->phase, Phase::kSucceeded);
  absl::MutexLock lock(&mu_);
  ASSERT_TRUE(mu_.AwaitWithTimeout(
      absl::Condition(
          +[](std::vector<UpstreamStatus>* v) { return !v->empty(); }, &webhook_updates_),
      kWait));
  EXPECT_EQ(webhook_updates_[0].upstream_id, status->upstream_id);
  EXPECT_EQ(webhook_updates_[0].phase, Phase::kSucceeded);
  EXPECT_EQ(receiver_->counters().verified, 1);
}

TEST_F(SoundpieceAdapterTest, LostWebhookStillCompletesByPolling) {
  UseWebhooks();
  ASSERT_TRUE(emulator_
                  ->SetFaultPlan(R"({"rules":[
        {"match":"WEBHOOK create.new_sample","action":"webhook_lost"}]})")
                  .ok());
  auto status = Run(Sample());
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_EQ(status->phase, Phase::kSucceeded);
  EXPECT_EQ(receiver_->counters().verified, 0);
  // The emulator drops the delivery on its scheduler thread, possibly after the poll that
  // completed the operation: wait for its count.
  const absl::Time deadline = absl::Now() + kWait;
  while (emulator_->stats().webhooks_dropped < 1 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  EXPECT_GE(emulator_->stats().webhooks_dropped, 1);
}

TEST_F(SoundpieceAdapterTest, BadlySignedAndDuplicateDeliveriesAreRejected) {
  UseWebhooks();
  ASSERT_TRUE(emulator_
                  ->SetFaultPlan(R"({"rules":[
        {"match":"WEBHOOK create.new_sample","nth":[1],"action":"webhook_bad_signature"},
        {"match":"WEBHOOK create.new_sample","nth":[2],"action":"webhook_duplicate"}]})")
                  .ok());
  auto first = Run(Sample(), "aaaaaaaa-0000-4000-8000-000000000001");
  ASSERT_TRUE(first.ok());
  auto second = Run(Sample(), "aaaaaaaa-0000-4000-8000-000000000002");
  ASSERT_TRUE(second.ok());
  absl::MutexLock lock(&mu_);
  // The forged delivery is refused, the emulator's retry with the right key passes; the
  // duplicate is acknowledged but not forwarded: exactly one update per operation.
  ASSERT_TRUE(mu_.AwaitWithTimeout(
      absl::Condition(
          +[](std::vector<UpstreamStatus>* v) { return v->size() >= 2; }, &webhook_updates_),
      kWait));
  const WebhookCounters counters = receiver_->counters();
  EXPECT_GE(counters.bad_signature, 1);
  EXPECT_EQ(counters.verified, 2);
  EXPECT_EQ(webhook_updates_.size(), 2u);
}

TEST_F(SoundpieceAdapterTest, ExpiredUrlIsRefreshedByARead) {
  auto done = Run(Sample());
  ASSERT_TRUE(done.ok()) << done.status();
  ASSERT_EQ(done->phase, Phase::kSucceeded);
  // The next GET mints URLs that live one second.
  ASSERT_TRUE(emulator_
                  ->SetFaultPlan(R"({"rules":[
        {"match":"GET /v1/create.new_sample","nth":[1],"action":"expire_url","url_ttl_ms":1000}]})")
                  .ok());
  auto stale = Poll(done->upstream_id, v1::TASK_KIND_SAMPLE, /*wait=*/false);
  ASSERT_TRUE(stale.ok()) << stale.status();
  ASSERT_EQ(stale->outputs.size(), 1u);
  EXPECT_LE(stale->outputs[0].url_expire_time, absl::Now() + absl::Seconds(1));
  // Wait (bounded) until the provider refuses it.
  int denied = 0;
  const absl::Time give_up = absl::Now() + absl::Seconds(10);
  while (absl::Now() < give_up) {
    auto response = Fetch(stale->outputs[0].url);
    ASSERT_TRUE(response.ok()) << response.status();
    denied = response->status;
    if (denied == 403) break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_EQ(denied, 403);

  auto fresh = Poll(done->upstream_id, v1::TASK_KIND_SAMPLE, /*wait=*/false);
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  EXPECT_NE(fresh->outputs[0].url, stale->outputs[0].url);
  EXPECT_GT(fresh->outputs[0].url_expire_time, absl::Now());
  auto file = Fetch(fresh->outputs[0].url);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->status, 200);
  EXPECT_TRUE(absl::StartsWith(file->body, "fLaC"));
  EXPECT_EQ(Fetch(stale->outputs[0].url)->status, 403);  // the old one stays dead
  EXPECT_GE(emulator_->stats().downloads_denied, 2);
  EXPECT_GE(emulator_->stats().downloads, 1);
}

TEST_F(SoundpieceAdapterTest, CheckRequestUsesTheCapabilityTable) {
  v1::GenerateRequest request;
  request.mutable_text_to_music()->set_prompt("lofi");
  request.mutable_text_to_music()->set_duration_seconds(60);  // Loudly only
  EXPECT_EQ(adapter_->CheckRequest(request).code(), absl::StatusCode::kInvalidArgument);
  v1::GenerateRequest loudly;
  loudly.mutable_parametric_music()->set_genre("House");
  EXPECT_EQ(adapter_->CheckRequest(loudly).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(adapter_->idempotent_submit());
  EXPECT_FALSE(adapter_->synchronous());
  EXPECT_EQ(adapter_->dialect(), "soundpiece-v1");
}

TEST(SoundpieceOptionsTest, FromConfigAndCreateChecks) {
  config::ProviderConfig config;
  config.name = "sp-main";
  config.type = v1::PROVIDER_SOUNDPIECE;
  config.dialect = "v1";
  config.base_url = "http://127.0.0.1:1";
  config.api_key = "spk_x";
  config.callback_url = "https://gw.example.com/webhooks/soundpiece";
  auto options = SoundpieceOptionsFromConfig(config);
  ASSERT_TRUE(options.ok()) << options.status();
  EXPECT_EQ(options->account, "sp-main");
  EXPECT_EQ(options->callback_url, config.callback_url);
  config.dialect = "v2";
  EXPECT_FALSE(SoundpieceOptionsFromConfig(config).ok());
  auto http = http::CurlHttpClient::Create();
  options->api_key.clear();
  auto missing_key = SoundpieceAdapter::Create(*options, http.get());
  EXPECT_EQ(missing_key.status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace musicgw::adapters::soundpiece
