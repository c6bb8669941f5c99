// LoudlyAdapter logic against a scripted HTTP client (fake_http_client.h): token single flight,
// 401 renewal, refresh-token rotation and persistence, retry classification, the B2B
// synchronous path and its Poll semantics. The emulator-backed tests cover the real wire.
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/notification.h"
#include "adapters/loudly/loudly_adapter.h"
#include "adapters/loudly/loudly_catalog.h"
#include "adapters/loudly/loudly_token.h"
#include "common/crypto.h"
#include "common/errors.h"
#include "gtest/gtest.h"
#include "tests/loudly/fake_http_client.h"
#include "tests/loudly/test_util.h"
#include "tests/scratch_dir.h"

namespace musicgw::adapters::loudly {
namespace {

using testing::ConcurrentReadQuota;
using testing::FakeHttpClient;
using testing::Reason;
using testing::Waiter;

std::string Jwt(int64_t exp, int seq) {
  return absl::StrCat(
      Base64UrlEncode(R"({"alg":"RS256"})"), ".",
      Base64UrlEncode(absl::StrCat(R"({"aud":"Core","jti":"j)", seq, R"(","exp":)", exp, "}")),
      ".sig");
}

std::map<std::string, std::string> ParseUrlencoded(const std::string& body) {
  std::map<std::string, std::string> out;
  for (absl::string_view pair : absl::StrSplit(body, '&')) {
    std::pair<std::string, std::string> kv = absl::StrSplit(pair, absl::MaxSplits('=', 1));
    std::string value;
    for (size_t i = 0; i < kv.second.size(); ++i) {
      if (kv.second[i] == '+') {
        value.push_back(' ');
      } else if (kv.second[i] == '%' && i + 2 < kv.second.size()) {
        value.push_back(static_cast<char>(std::stoi(kv.second.substr(i + 1, 2), nullptr, 16)));
        i += 2;
      } else {
        value.push_back(kv.second[i]);
      }
    }
    out[kv.first] = value;
  }
  return out;
}

http::Response Json(int status, std::string body) {
  http::Response response;
  response.status = status;
  response.headers = {{"Content-Type", "application/json"}};
  response.body = std::move(body);
  return response;
}

// A scripted Loudly: both dialects, rotating refresh tokens, per-call fault hooks.
class ScriptedLoudly {
 public:
  absl::StatusOr<http::Response> Handle(const http::Request& request) {
    absl::MutexLock lock(&mu_);
    if (!faults_.empty()) {
      auto fault = faults_.front();
      faults_.erase(faults_.begin());
      return fault;
    }
    const std::string path = request.url.substr(request.url.find('/', 8));
    if (path == "/oauth/v2/token") {
      auto form = ParseUrlencoded(request.body);
      if (form["client_id"] != "1_client" || form["grant_type"] != "refresh_token" ||
          form["refresh_token"] != refresh_token_) {
        return Json(400, R"({"error":"invalid_grant","error_description":"bad refresh token"})");
      }
      ++refreshes_;
      refresh_token_ = absl::StrCat("rt-", refreshes_);
      const std::string token = Jwt(absl::ToUnixSeconds(absl::Now() + token_lifetime_), refreshes_);
      valid_.insert(token);
      return Json(200, absl::StrCat(R"({"token_type":"Bearer","expires_in":3600,"access_token":")",
                                    token, R"(","refresh_token":")", refresh_token_, R"("})"));
    }
    if (absl::StartsWith(path, "/api/")) {
      if (http::FindHeader(request.headers, "API-KEY") != "key-secret-123") {
        return Json(401, R"({"error":"unauthorized"})");
      }
      if (path == "/api/ai/songs" || path == "/api/ai/prompt/songs") {
        ++songs_;
        return Json(200,
                    absl::StrCat(R"({"id":"song-)", songs_,
                                 R"(","title":"Night Drive","duration":61000,)"
                                 R"("music_file_path":"https:\/\/cdn.example\/a.mp3",)"
                                 R"("bpm":124,"key":{"id":5,"name":"D minor","active":true}})"));
      }
      if (path == "/api/ai/genres") {
        return Json(200, R"([{"id":7,"name":"House","micro_genres":[{"name":"Deep House"}]}])");
      }
      if (path == "/api/ai/structures") return Json(200, R"([{"id":2,"name":"IVC"}])");
      if (path == "/api/ai/prompt/random") return Json(200, R"({"prompt":"flute house"})");
      if (absl::StartsWith(path, "/api/account/limits")) {
        return Json(200, R"([{"request_type":"GENERATE_SONG_VEGA_1","limit":15,"used":)" +
                             std::to_string(songs_) + R"(,"left":)" + std::to_string(15 - songs_) +
                             R"(,"date_from":"2025-10-01","date_to":"2025-10-31"}])");
      }
      return Json(404, R"({"error":"not found"})");
    }
    auto auth = http::FindHeader(request.headers, "Authorization");
    if (!auth.has_value() || !absl::StartsWith(*auth, "Bearer ") ||
        valid_.count(auth->substr(7)) == 0) {
      return Json(401, R"({"error":"unauthorized"})");
    }
    if (path == "/ai/vega/bundles" && request.method == "POST") {
      ++bundles_;
      return Json(200, absl::StrCat(R"({"id":"bundle-)", bundles_,
                                    R"(","created_at":"2025-04-03T11:04:42+0200","vega_songs":[],)"
                                    R"("is_finished":false,"errors":[]})"));
    }
    if (absl::StartsWith(path, "/ai/vega/bundles/")) {
      return Json(
          200, absl::StrCat(R"({"id":"bundle-1","vega_songs":[{"id":"s","title":"Twilight Groove",)"
                            R"("duration":129000,"music_file_path":"https:\/\/cdn\/x.mp3?cb=1"}],)"
                            R"("errors":[]})"));
    }
    if (path == "/users/limits") {
      return Json(200, R"({"usage_data":{"generate_vega_song":{"total":10,"used":1,)"
                       R"("available":9,"top_up":null}}})");
    }
    return Json(404, "{}");
  }

  void RevokeAccessTokens() {
    absl::MutexLock lock(&mu_);
    valid_.clear();
  }
  void AddFault(absl::StatusOr<http::Response> fault) {
    absl::MutexLock lock(&mu_);
    faults_.push_back(std::move(fault));
  }
  void SetRefreshToken(std::string token) {
    absl::MutexLock lock(&mu_);
    refresh_token_ = std::move(token);
  }
  int refreshes() {
    absl::MutexLock lock(&mu_);
    return refreshes_;
  }
  std::string refresh_token() {
    absl::MutexLock lock(&mu_);
    return refresh_token_;
  }

 private:
  absl::Mutex mu_;
  std::string refresh_token_ = "rt-initial";
  std::set<std::string> valid_;
  std::vector<absl::StatusOr<http::Response>> faults_;
  int refreshes_ = 0;
  int bundles_ = 0;
  int songs_ = 0;
  absl::Duration token_lifetime_ = absl::Hours(1);
};

class LoudlyAdapterFakeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    state_file_ = NewTestScratchDir("loudly-fake") + "/token.json";
    client_ = std::make_unique<FakeHttpClient>(
        [this](const http::Request& request) { return server_.Handle(request); });
  }
  void TearDown() override { std::remove(state_file_.c_str()); }

  LoudlyOptions WebOptions() {
    LoudlyOptions options;
    options.account = "acct";
    options.dialect = Dialect::kWeb;
    options.base_url = "http://loudly.test";
    options.client_id = "1_client";
    options.refresh_token = "rt-initial";
    options.token_state_file = state_file_;
    options.retry.initial_backoff = absl::Milliseconds(1);
    options.retry.max_backoff = absl::Milliseconds(5);
    return options;
  }
  LoudlyOptions B2BOptions() {
    LoudlyOptions options;
    options.account = "acct";
    options.dialect = Dialect::kB2B;
    options.base_url = "http://loudly.test/";
    options.api_key = "key-secret-123";
    options.catalog_refresh_interval = absl::ZeroDuration();
    options.retry.initial_backoff = absl::Milliseconds(1);
    options.retry.max_backoff = absl::Milliseconds(5);
    return options;
  }
  std::unique_ptr<LoudlyAdapter> Make(LoudlyOptions options) {
    auto adapter = LoudlyAdapter::Create(std::move(options), client_.get());
    EXPECT_TRUE(adapter.ok()) << adapter.status();
    return adapter.ok() ? *std::move(adapter) : nullptr;
  }
  static SubmitRequest Parametric(const std::string& genre) {
    SubmitRequest submit;
    submit.request.mutable_parametric_music()->set_genre(genre);
    submit.deadline = absl::Now() + absl::Minutes(1);
    return submit;
  }

  ScriptedLoudly server_;
  std::unique_ptr<FakeHttpClient> client_;
  std::string state_file_;
};

TEST_F(LoudlyAdapterFakeTest, WebSubmitAndPollWithOneTokenRefresh) {
  auto adapter = Make(WebOptions());
  ASSERT_NE(adapter, nullptr);
  EXPECT_FALSE(adapter->synchronous());
  EXPECT_FALSE(adapter->idempotent_submit());
  EXPECT_EQ(adapter->dialect(), "loudly-web");

  Waiter<UpstreamStatus> submitted;
  adapter->Submit(Parametric("Techno"), submitted.callback());
  auto& status = submitted.Get();
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_EQ(submitted.thread, client_->loop_thread());
  EXPECT_EQ(status->phase, UpstreamStatus::Phase::kRunning);
  EXPECT_EQ(status->upstream_id, "bundle-1");
  EXPECT_EQ(status->next_poll_after, absl::Seconds(1));

  const auto requests = client_->requests();
  ASSERT_EQ(requests.size(), 2u);
  EXPECT_EQ(requests[1].method, "POST");
  EXPECT_TRUE(absl::StartsWith(*http::FindHeader(requests[1].headers, "Content-Type"),
                               "multipart/form-data; boundary="));
  EXPECT_TRUE(absl::StrContains(requests[1].body, "name=\"bundle_type\"\r\n\r\nADVANCED\r\n"));

  Waiter<UpstreamStatus> polled;
  PollRequest poll;
  poll.upstream_id = status->upstream_id;
  adapter->Poll(poll, polled.callback());
  auto& done = polled.Get();
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(done->phase, UpstreamStatus::Phase::kSucceeded);
  ASSERT_EQ(done->outputs.size(), 1u);
  EXPECT_EQ(done->outputs[0].url, "https://cdn/x.mp3?cb=1");
  EXPECT_EQ(server_.refreshes(), 1);
  EXPECT_EQ(adapter->token_refreshes(), 1);
}

TEST_F(LoudlyAdapterFakeTest, FiftyConcurrentCallsShareOneRefreshAfterRevocation) {
  auto adapter = Make(WebOptions());
  ASSERT_NE(adapter, nullptr);
  Waiter<std::vector<QuotaFigure>> first;
  adapter->ReadQuota(first.callback());
  ASSERT_TRUE(first.Get().ok());
  ASSERT_EQ(server_.refreshes(), 1);

  server_.RevokeAccessTokens();  // every call now meets a 401 with the cached token
  for (auto& figures : ConcurrentReadQuota(*adapter, 50, 5)) {
    ASSERT_TRUE(figures.ok()) << figures.status();
    EXPECT_EQ(figures->at(0).remaining, 9);
  }
  EXPECT_EQ(server_.refreshes(), 2);
}

TEST_F(LoudlyAdapterFakeTest, RotatedRefreshTokenIsPersistedAndUsedAfterRestart) {
  {
    auto adapter = Make(WebOptions());
    Waiter<std::vector<QuotaFigure>> read;
    adapter->ReadQuota(read.callback());
    ASSERT_TRUE(read.Get().ok());
  }
  struct stat info {};
  ASSERT_EQ(::stat(state_file_.c_str(), &info), 0);
  EXPECT_EQ(info.st_mode & 0777, 0600u);
  std::ifstream in(state_file_);
  std::stringstream text;
  text << in.rdbuf();
  EXPECT_TRUE(absl::StrContains(text.str(), "\"rt-1\""));
  ASSERT_EQ(server_.refresh_token(), "rt-1");

  // A new instance (a restart) authenticates with the persisted token, not the configured one.
  auto restarted = Make(WebOptions());
  Waiter<std::vector<QuotaFigure>> read;
  restarted->ReadQuota(read.callback());
  ASSERT_TRUE(read.Get().ok()) << read.Get().status();
  EXPECT_EQ(server_.refresh_token(), "rt-2");
}

TEST_F(LoudlyAdapterFakeTest, RejectedPersistedTokenFallsBackToTheConfiguredOne) {
  ASSERT_TRUE(WriteTokenState(state_file_, "1_client", "rt-revoked").ok());
  auto adapter = Make(WebOptions());
  Waiter<std::vector<QuotaFigure>> read;
  adapter->ReadQuota(read.callback());
  ASSERT_TRUE(read.Get().ok()) << read.Get().status();
  EXPECT_EQ(server_.refreshes(), 1);
}

TEST_F(LoudlyAdapterFakeTest, RepeatedUnauthorizedIsAProviderAuthFault) {
  auto adapter = Make(WebOptions());
  Waiter<std::vector<QuotaFigure>> warm;
  adapter->ReadQuota(warm.callback());
  ASSERT_TRUE(warm.Get().ok());
  // One 401: the token is renewed and the call retried once.
  server_.AddFault(Json(401, R"({"error":"unauthorized"})"));
  Waiter<std::vector<QuotaFigure>> read;
  adapter->ReadQuota(read.callback());
  auto& first = read.Get();
  EXPECT_TRUE(first.ok());                  // one 401, then the renewed token works
  server_.SetRefreshToken("rt-elsewhere");  // the provider no longer honours ours
  server_.RevokeAccessTokens();
  Waiter<std::vector<QuotaFigure>> failed;
  adapter->ReadQuota(failed.callback());
  const absl::Status status = failed.Get().status();
  EXPECT_EQ(status.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(Reason(status), "PROVIDER_AUTH_FAILED");
  EXPECT_FALSE(absl::StrContains(status.message(), "rt-"));
  EXPECT_TRUE(absl::StrContains(status.message(), "not at fault"));
}

TEST_F(LoudlyAdapterFakeTest, UnauthorizedAfterAFreshTokenIsNotRetriedAgain) {
  auto adapter = Make(WebOptions());
  Waiter<std::vector<QuotaFigure>> warm;
  adapter->ReadQuota(warm.callback());
  ASSERT_TRUE(warm.Get().ok());
  // The call and its retry with a freshly refreshed token are both refused.
  server_.AddFault(Json(401, R"({"code":401,"message":"Expired JWT Token"})"));
  server_.AddFault(Json(200, R"({"token_type":"Bearer","expires_in":3600,)"
                             R"("access_token":"fresh-token-value","refresh_token":"rt-x"})"));
  server_.AddFault(Json(401, R"({"code":401,"message":"Invalid JWT Token"})"));
  Waiter<std::vector<QuotaFigure>> read;
  adapter->ReadQuota(read.callback());
  const absl::Status status = read.Get().status();
  EXPECT_EQ(status.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(Reason(status), "PROVIDER_AUTH_FAILED");
  EXPECT_FALSE(absl::StrContains(status.ToString(), "fresh-token-value"));
  EXPECT_EQ(client_->Count("/users/limits"), 3);  // warm-up, the call, its one retry
  EXPECT_EQ(client_->Count("/oauth/v2/token"), 2);
}

TEST_F(LoudlyAdapterFakeTest, FormUrlencodedBodiesOnRequest) {
  LoudlyOptions options = B2BOptions();
  options.form_urlencoded = true;
  auto adapter = Make(options);
  SubmitRequest submit = Parametric("Deep House");
  submit.request.mutable_parametric_music()->add_instruments("synth");
  Waiter<UpstreamStatus> submitted;
  adapter->Submit(std::move(submit), submitted.callback());
  ASSERT_TRUE(submitted.Get().ok());
  const http::Request request = client_->requests().back();
  EXPECT_EQ(http::FindHeader(request.headers, "Content-Type"), "application/x-www-form-urlencoded");
  EXPECT_EQ(request.body, "genre=Deep+House&instruments%5B%5D=SYNTH");
}

// A generation POST is re-sent only when it provably never reached processing (a 429, a
// connection never made); a 5xx, a reset or a timeout leaves the outcome unknown (the song may
// exist and be charged) and is sent once. (Until Loudly's 5xx were retried: each re-POST could
// be charged again.)
TEST_F(LoudlyAdapterFakeTest, GenerationIsResentOnlyWhenItNeverReachedProcessing) {
  auto adapter = Make(B2BOptions());
  server_.AddFault(Json(500,
                        "{\"error\":\"External service calling limit exceeded: (service: "
                        "GENERATE_SONG_VEGA_1, Timer seconds remaining: 120, Attempts remaining: "
                        "0)\"}"));
  Waiter<UpstreamStatus> limited;
  adapter->Submit(Parametric("House"), limited.callback());
  const absl::Status status = limited.Get().status();
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  google::rpc::RetryInfo retry;
  ASSERT_TRUE(GetRetryInfo(status, &retry));
  EXPECT_EQ(retry.retry_delay().seconds(), 120);
  EXPECT_EQ(client_->Count("/api/ai/songs"), 1);

  server_.AddFault(Json(503, "busy"));
  Waiter<UpstreamStatus> busy;
  adapter->Submit(Parametric("House"), busy.callback());
  EXPECT_EQ(busy.Get().status().code(), absl::StatusCode::kUnknown) << busy.Get().status();
  EXPECT_EQ(Reason(busy.Get().status()), "PROVIDER_OUTCOME_UNKNOWN");
  EXPECT_FALSE(GetRetryInfo(busy.Get().status(), &retry));
  EXPECT_EQ(client_->Count("/api/ai/songs"), 2);

  // A 429 is answered before processing: sent again.
  server_.AddFault(Json(429, "{\"error\":\"too_many_requests\"}"));
  Waiter<UpstreamStatus> throttled;
  adapter->Submit(Parametric("House"), throttled.callback());
  ASSERT_TRUE(throttled.Get().ok()) << throttled.Get().status();
  EXPECT_EQ(client_->Count("/api/ai/songs"), 4);

  // A connection that could not be made is retried: the request never left.
  server_.AddFault(absl::UnavailableError(
      "HTTP transport error (loudly x: Failed to connect to 127.0.0.1 port 9 after 0 ms: "
      "Connection refused)"));
  Waiter<UpstreamStatus> reconnected;
  adapter->Submit(Parametric("House"), reconnected.callback());
  ASSERT_TRUE(reconnected.Get().ok()) << reconnected.Get().status();
  EXPECT_EQ(client_->Count("/api/ai/songs"), 6);

  // A connection broken after sending is not: the song may exist (and be charged) already.
  server_.AddFault(absl::UnavailableError(
      "HTTP transport error (loudly x: Recv failure: Connection reset by peer)"));
  Waiter<UpstreamStatus> broken;
  adapter->Submit(Parametric("House"), broken.callback());
  EXPECT_EQ(broken.Get().status().code(), absl::StatusCode::kUnknown);
  EXPECT_EQ(Reason(broken.Get().status()), "PROVIDER_OUTCOME_UNKNOWN");
  EXPECT_EQ(client_->Count("/api/ai/songs"), 7);

  // A timeout is not retried for a generation: the provider may still be producing the song.
  server_.AddFault(absl::DeadlineExceededError("timed out"));
  Waiter<UpstreamStatus> timed_out;
  adapter->Submit(Parametric("House"), timed_out.callback());
  EXPECT_EQ(timed_out.Get().status().code(), absl::StatusCode::kUnknown);
  EXPECT_EQ(Reason(timed_out.Get().status()), "PROVIDER_OUTCOME_UNKNOWN");
  EXPECT_EQ(client_->Count("/api/ai/songs"), 8);

  // Reads are retried after a reset.
  server_.AddFault(absl::UnavailableError("HTTP transport error (Connection reset by peer)"));
  Waiter<std::vector<QuotaFigure>> read;
  adapter->ReadQuota(read.callback());
  ASSERT_TRUE(read.Get().ok()) << read.Get().status();
  EXPECT_EQ(client_->Count("/api/account/limits"), 2);
}

TEST_F(LoudlyAdapterFakeTest, B2BSubmitIsTerminalAndPollReturnsTheStoredResult) {
  auto adapter = Make(B2BOptions());
  EXPECT_TRUE(adapter->synchronous());
  EXPECT_EQ(adapter->dialect(), "loudly-b2b");
  Waiter<UpstreamStatus> submitted;
  adapter->Submit(Parametric("House"), submitted.callback());
  auto& song = submitted.Get();
  ASSERT_TRUE(song.ok()) << song.status();
  EXPECT_EQ(song->phase, UpstreamStatus::Phase::kSucceeded);
  EXPECT_EQ(song->outputs.at(0).key, "D-minor");
  const auto requests = client_->requests();
  EXPECT_EQ(http::FindHeader(requests.back().headers, "API-KEY"), "key-secret-123");
  EXPECT_EQ(requests.back().url, "http://loudly.test/api/ai/songs");

  PollRequest poll;
  poll.upstream_id = song->upstream_id;
  Waiter<UpstreamStatus> polled;
  adapter->Poll(poll, polled.callback());
  ASSERT_TRUE(polled.Get().ok());
  EXPECT_EQ(polled.Get()->outputs.at(0).title, "Night Drive");

  poll.upstream_id = "never-seen";
  Waiter<UpstreamStatus> unknown;
  adapter->Poll(poll, unknown.callback());
  EXPECT_EQ(unknown.Get().status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Reason(unknown.Get().status()), "PROVIDER_NO_LOOKUP");

  SubmitRequest dry = Parametric("House");
  dry.validate_only = true;
  Waiter<UpstreamStatus> validated;
  adapter->Submit(std::move(dry), validated.callback());
  ASSERT_TRUE(validated.Get().ok());
  EXPECT_TRUE(absl::StrContains(client_->requests().back().body, "name=\"test\"\r\n\r\ntrue\r\n"));

  Waiter<bool> cancelled;
  adapter->Cancel(poll, cancelled.callback());
  ASSERT_TRUE(cancelled.Get().ok());
  EXPECT_FALSE(*cancelled.Get());
  EXPECT_EQ(cancelled.thread, client_->loop_thread());
}

TEST_F(LoudlyAdapterFakeTest, B2BCatalogFeedsCheckRequest) {
  auto adapter = Make(B2BOptions());
  musicgw::v1::GenerateRequest request;
  request.mutable_parametric_music()->set_genre("Polka");
  EXPECT_TRUE(adapter->CheckRequest(request).ok());  // no catalog yet: the provider judges
  Waiter<ProviderCatalog> read;
  adapter->RefreshCatalog(read.callback());
  ASSERT_TRUE(read.Get().ok()) << read.Get().status();
  EXPECT_EQ(read.Get()->genres, (std::vector<std::string>{"House", "Deep House"}));
  EXPECT_EQ(adapter->catalog().example_prompt, "flute house");
  const absl::Status status = adapter->CheckRequest(request);
  google::rpc::BadRequest bad;
  ASSERT_TRUE(GetBadRequest(status, &bad));
  EXPECT_EQ(bad.field_violations(0).field(), "parametric_music.genre");
  request.mutable_parametric_music()->set_genre("Deep House");
  EXPECT_TRUE(adapter->CheckRequest(request).ok());
}

TEST_F(LoudlyAdapterFakeTest, WebAccountValidatesAgainstTheShippedCatalog) {
  // The web dialect publishes no catalog: the gateway's own is what validation and
  // ListProviders use, so an unknown genre fails at once instead of at the provider.
  auto adapter = Make(WebOptions());
  const ProviderCatalog catalog = adapter->catalog();
  EXPECT_EQ(catalog.genres, ShippedCatalog().genres);
  EXPECT_NE(std::find(catalog.genres.begin(), catalog.genres.end(), "Deep House"),
            catalog.genres.end());
  EXPECT_NE(std::find(catalog.genres.begin(), catalog.genres.end(), "Alternative Hip Hop"),
            catalog.genres.end());
  EXPECT_FALSE(catalog.structures.empty());

  musicgw::v1::GenerateRequest request;
  request.mutable_parametric_music()->set_genre("Deep House");
  request.mutable_parametric_music()->set_genre_blend("Techno");
  EXPECT_TRUE(adapter->CheckRequest(request).ok());
  for (const char* field : {"parametric_music.genre", "parametric_music.genre_blend"}) {
    musicgw::v1::GenerateRequest bad_request = request;
    if (absl::EndsWith(field, "blend")) {
      bad_request.mutable_parametric_music()->set_genre_blend("Polka Step");
    } else {
      bad_request.mutable_parametric_music()->set_genre("Polka Step");
    }
    const absl::Status status = adapter->CheckRequest(bad_request);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    google::rpc::BadRequest bad;
    ASSERT_TRUE(GetBadRequest(status, &bad));
    EXPECT_EQ(bad.field_violations(0).field(), field);
  }
}

TEST_F(LoudlyAdapterFakeTest, ConfiguredCatalogReplacesTheShippedOne) {
  config::ProviderConfig config;
  config.name = "main";
  config.dialect = "web";
  config.client_id = "1_client";
  config.refresh_token = "rt";
  config.catalog_genres = {"Polka Step"};
  config.catalog_structures = {{7, "Seven"}};
  auto options = LoudlyOptionsFromConfig(config);
  ASSERT_TRUE(options.ok());
  options->base_url = "http://loudly.test";
  options->token_state_file = state_file_;
  auto adapter = Make(*options);
  EXPECT_EQ(adapter->catalog().genres, std::vector<std::string>{"Polka Step"});
  ASSERT_EQ(adapter->catalog().structures.size(), 1u);
  EXPECT_EQ(adapter->catalog().structures[0].id(), 7);
  musicgw::v1::GenerateRequest request;
  request.mutable_parametric_music()->set_genre("Polka Step");
  request.mutable_parametric_music()->set_structure_id(7);
  EXPECT_TRUE(adapter->CheckRequest(request).ok());
  request.mutable_parametric_music()->set_genre("House");
  EXPECT_EQ(adapter->CheckRequest(request).code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(LoudlyAdapterFakeTest, CreateRejectsIncompleteOptions) {
  LoudlyOptions b2b = B2BOptions();
  b2b.api_key.clear();
  EXPECT_EQ(LoudlyAdapter::Create(b2b, client_.get()).status().code(),
            absl::StatusCode::kInvalidArgument);
  LoudlyOptions web = WebOptions();
  web.refresh_token.clear();
  EXPECT_EQ(LoudlyAdapter::Create(web, client_.get()).status().code(),
            absl::StatusCode::kInvalidArgument);
  web = WebOptions();
  web.base_url = "ftp://x";
  EXPECT_FALSE(LoudlyAdapter::Create(web, client_.get()).ok());

  config::ProviderConfig config;
  config.name = "main";
  config.dialect = "web";
  config.client_id = "1_client";
  config.refresh_token = "rt";
  auto options = LoudlyOptionsFromConfig(config);
  ASSERT_TRUE(options.ok());
  EXPECT_EQ(options->dialect, Dialect::kWeb);
  EXPECT_EQ(options->base_url, "https://soundtracks.loudly.com");
  config.dialect = "graphql";
  EXPECT_FALSE(LoudlyOptionsFromConfig(config).ok());
}

}  // namespace
}  // namespace musicgw::adapters::loudly
