// The Soundpiece emulator against providers/soundpiece.md: §10 examples as golden shapes, the
// error layer, idempotency, long-polls, signed URLs, webhooks (verified here with OpenSSL),
// credits, rate limits and every fault kind.
#include "emulators/soundpiece/soundpiece_emulator.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <atomic>
#include <fstream>
#include <regex>
#include <set>
#include <thread>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "nlohmann/json.hpp"
#include "tests/emulators/test_util.h"

namespace musicgw::emulators::soundpiece {
namespace {

using ::musicgw::emulators::testing::Golden;
using ::musicgw::emulators::testing::ProbeDuration;
using ::musicgw::emulators::testing::RunCommand;
using ::musicgw::emulators::testing::SameShape;
using ::musicgw::emulators::testing::SteppedClock;
using ::musicgw::emulators::testing::WaitFor;
using Json = nlohmann::json;

constexpr char kKey[] = "spk_test_key";
// A fake signing secret: "whsec_" + base64("emulator-test-secret-bytes").
constexpr char kSecret[] = "whsec_ZW11bGF0b3ItdGVzdC1zZWNyZXQtYnl0ZXM=";

Options FastOptions() {
  Options o;
  o.processing_time = absl::Milliseconds(150);
  o.long_poll = absl::Seconds(2);
  o.webhook_retry_delays = {absl::Milliseconds(50), absl::Milliseconds(100)};
  o.webhook_timeout = absl::Seconds(2);
  o.source_seconds = 6;  // short sources keep FLAC rendering cheap
  return o;
}

class SoundpieceTest : public ::testing::Test {
 protected:
  void StartEmulator(Options options = FastOptions()) {
    auto emulator = Emulator::Start(std::move(options));
    ASSERT_TRUE(emulator.ok()) << emulator.status();
    emulator_ = *std::move(emulator);
    client_ = std::make_unique<httplib::Client>(emulator_->base_url());
    client_->set_read_timeout(10, 0);
  }
  void SetUp() override { StartEmulator(); }

  httplib::Result Put(const std::string& route, const Json& body, const std::string& key = kKey) {
    httplib::Headers headers;
    if (!key.empty()) headers.emplace("Authorization", absl::StrCat("Bearer ", key));
    return client_->Put(absl::StrCat("/v1/", route), headers, body.dump(), "application/json");
  }
  httplib::Result Get(const std::string& route, const std::string& id, bool wait = false,
                      const std::string& key = kKey) {
    httplib::Headers headers;
    if (!key.empty()) headers.emplace("Authorization", absl::StrCat("Bearer ", key));
    return client_->Get(absl::StrCat("/v1/", route, "?id=", id, wait ? "&wait=true" : ""), headers);
  }
  static Json Body(const httplib::Result& r) { return Json::parse(r->body, nullptr, false); }

  // PUTs `request` and long-polls until terminal; returns the final wrapped body.
  Json RunToEnd(const std::string& route, const std::string& wrapper, const Json& request) {
    auto put = Put(route, request);
    EXPECT_TRUE(put);
    if (!put) return {};
    EXPECT_EQ(put->status, 200) << put->body;
    const std::string id = Body(put)[wrapper]["id"];
    for (int i = 0; i < 10; ++i) {
      auto get = Get(route, id, /*wait=*/true);
      if (!get) continue;
      Json body = Body(get);
      if (body[wrapper]["status"] != "processing") return body;
    }
    ADD_FAILURE() << "operation never finished";
    return {};
  }

  std::unique_ptr<Emulator> emulator_;
  std::unique_ptr<httplib::Client> client_;
};

std::string Uuid(int n) { return absl::StrFormat("550e8400-e29b-41d4-a716-%012d", n); }

// ---- Conformance: every §10 example ---------------------------------------------------------

struct Example {
  const char* route;
  const char* wrapper;
  const char* name;  // testdata/soundpiece/<name>_request.json and _ready.json
};

TEST_F(SoundpieceTest, EveryDocumentedExampleHasTheGoldenShape) {
  Options o = FastOptions();
  o.source_seconds = 40;  // long enough for the 30 s auto-cut example
  StartEmulator(o);
  const Example examples[] = {
      {"create.new_song", "song", "new_song"},
      {"create.new_sample", "sample", "new_sample"},
      {"create.new_fx", "fx", "new_fx"},
      {"create.remix_song", "remix_song", "remix_song"},
      {"create.remix_instrumental", "remix_instrumental", "remix_instrumental"},
      {"adapt.separate_stems", "stems", "separate_stems"},
      {"adapt.auto_cut_down", "auto_cut", "auto_cut_down"},
  };
  for (const Example& ex : examples) {
    SCOPED_TRACE(ex.route);
    Json request = Golden(absl::StrCat("soundpiece/", ex.name, "_request.json"));
    request["idempotency_key"] = Uuid(static_cast<int>(&ex - examples));
    auto put = Put(ex.route, request);
    ASSERT_TRUE(put);
    ASSERT_EQ(put->status, 200) << put->body;
    const Json created = Body(put);
    ASSERT_TRUE(created.contains(ex.wrapper)) << put->body;
    EXPECT_EQ(created[ex.wrapper]["status"], "processing");
    EXPECT_TRUE(created[ex.wrapper]["id"].get<std::string>().size() == 29);
    const Json ready = RunToEnd(ex.route, ex.wrapper, request);
    EXPECT_TRUE(SameShape(Golden(absl::StrCat("soundpiece/", ex.name, "_ready.json")), ready));
    // The DTO echoes the request fields as sent.
    for (const auto& [field, value] : request.items()) {
      EXPECT_EQ(ready[ex.wrapper][field], value) << field;
    }
  }
}

TEST_F(SoundpieceTest, ProcessingDtosMatchTheGuideExamples) {
  Json song = Golden("soundpiece/new_song_request.json");
  auto put = Put("create.new_song", song);
  ASSERT_TRUE(put);
  EXPECT_TRUE(SameShape(Golden("soundpiece/new_song_processing.json"), Body(put)));
  // Key order as in the docs: id, status, created_at, idempotency_key, echo, outputs, error.
  EXPECT_EQ(testing::KeyOrder(Body(put)["song"].dump()).size(), 9u);
  EXPECT_TRUE(absl::StrContains(put->body, R"({"song":{"id":"op_)")) << put->body;
  EXPECT_TRUE(absl::StrContains(put->body, R"("outputs":null,"error":null}})")) << put->body;

  Json instrumental = Golden("soundpiece/new_instrumental_request.json");
  put = Put("create.new_instrumental", instrumental);
  ASSERT_TRUE(put);
  EXPECT_TRUE(SameShape(Golden("soundpiece/new_instrumental_processing.json"), Body(put)));
  const Json body = Body(put);
  const std::string id = body["instrumental"]["id"];
  EXPECT_TRUE(std::regex_match(id, std::regex("^op_[0-9a-z]{26}$"))) << id;
  EXPECT_TRUE(std::regex_match(body["instrumental"]["created_at"].get<std::string>(),
                               std::regex(R"(^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$)")));
}

TEST_F(SoundpieceTest, StemsHaveFourDistinctKindsAndFiles) {
  const Json ready =
      RunToEnd("adapt.separate_stems", "stems",
               {{"idempotency_key", Uuid(1)},
                {"source", {{"url", "https://files.example.com/mix.wav?duration=4"}}}});
  const Json& outputs = ready["stems"]["outputs"];
  ASSERT_EQ(outputs.size(), 4u);
  std::set<std::string> kinds;
  std::set<std::string> contents;
  httplib::Client cdn(emulator_->base_url());
  for (const Json& out : outputs) {
    kinds.insert(out["kind"]);
    EXPECT_DOUBLE_EQ(out["duration"].get<double>(), 4.0);
    const std::string url = out["url"];
    auto file = cdn.Get(url.substr(emulator_->base_url().size()));
    ASSERT_TRUE(file);
    ASSERT_EQ(file->status, 200);
    EXPECT_EQ(file->get_header_value("Content-Type"), "audio/flac");
    contents.insert(file->body);
  }
  EXPECT_EQ(kinds, (std::set<std::string>{"vocals", "drums", "bass", "other"}));
  EXPECT_EQ(contents.size(), 4u) << "each stem is its own audio";
}

TEST_F(SoundpieceTest, FlacOutputsAreValidForSoxAndFfprobe) {
  const Json ready = RunToEnd(
      "create.new_sample", "sample",
      {{"idempotency_key", Uuid(2)}, {"prompt", "house, 124 bpm, D minor"}, {"duration", 5}});
  const std::string url = ready["sample"]["output"]["url"];
  httplib::Client cdn(emulator_->base_url());
  auto file = cdn.Get(url.substr(emulator_->base_url().size()));
  ASSERT_TRUE(file);
  ASSERT_EQ(file->status, 200);
  const std::string path = ::testing::TempDir() + "/sample.flac";
  std::ofstream(path, std::ios::binary) << file->body;
  const auto sox = RunCommand("sox --i '" + path + "'");
  EXPECT_EQ(sox.exit_code, 0) << sox.output;
  EXPECT_TRUE(absl::StrContains(sox.output, "Sample Rate    : 44100")) << sox.output;
  EXPECT_TRUE(absl::StrContains(sox.output, "Channels       : 2")) << sox.output;
  EXPECT_TRUE(absl::StrContains(sox.output, "Precision      : 16-bit")) << sox.output;
  const auto probe = RunCommand("ffprobe -v error -i '" + path + "'");
  EXPECT_EQ(probe.exit_code, 0) << probe.output;
  EXPECT_TRUE(probe.output.empty()) << probe.output;
  EXPECT_NEAR(ProbeDuration(path), 5.0, 1.0);
  EXPECT_EQ(emulator_->stats().downloads, 1);
}

// ---- Request layer errors -------------------------------------------------------------------

TEST_F(SoundpieceTest, AuthErrorsAre401WithTheDocumentedBody) {
  for (const std::string& key : {std::string(), std::string("spk_wrong")}) {
    auto put = Put("create.new_sample", Golden("soundpiece/new_sample_request.json"), key);
    ASSERT_TRUE(put);
    EXPECT_EQ(put->status, 401);
    EXPECT_EQ(Body(put), Golden("soundpiece/error_401.json"));
    auto get = Get("create.new_sample", "op_01hx7k3m9q2w5e8r4t6y1u0p3a", false, key);
    ASSERT_TRUE(get);
    EXPECT_EQ(get->status, 401);
  }
}

TEST_F(SoundpieceTest, UnknownPathsAre404AndWrongMethods405) {
  auto r = Put("create.new_polka", {{"idempotency_key", Uuid(1)}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 404);
  EXPECT_EQ(Body(r), Golden("soundpiece/error_404.json"));
  r = client_->Post("/v1/create.new_song", {{"Authorization", "Bearer spk_test_key"}}, "{}",
                    "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 405);
  EXPECT_EQ(Body(r), Golden("soundpiece/error_405.json"));
  r = client_->Delete("/v1/adapt.separate_stems");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 405);
}

TEST_F(SoundpieceTest, MalformedJsonIs400) {
  auto r = client_->Put("/v1/create.new_sample", {{"Authorization", "Bearer spk_test_key"}},
                        "{\"prompt\": ", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 400);
  EXPECT_TRUE(Body(r)["detail"].is_string());
}

TEST_F(SoundpieceTest, ValidationErrorsArePydanticLists) {
  struct Case {
    const char* route;
    Json body;
    std::vector<std::string> loc;
    const char* type;
  };
  const Case cases[] = {
      {"create.new_song",
       {{"idempotency_key", Uuid(1)}, {"prompt", "x"}},
       {"body", "lyrics"},
       "missing"},
      {"create.new_song",
       {{"prompt", "x"}, {"lyrics", "y"}},
       {"body", "idempotency_key"},
       "missing"},
      {"create.new_song",
       {{"idempotency_key", "not-a-uuid"}, {"prompt", "x"}, {"lyrics", "y"}},
       {"body", "idempotency_key"},
       "uuid_parsing"},
      {"create.new_song",
       {{"idempotency_key", Uuid(1)}, {"prompt", ""}, {"lyrics", "y"}},
       {"body", "prompt"},
       "string_too_short"},
      {"create.new_song",
       {{"idempotency_key", Uuid(1)}, {"prompt", "x"}, {"lyrics", std::string(3001, 'a')}},
       {"body", "lyrics"},
       "string_too_long"},
      {"create.new_song",
       {{"idempotency_key", Uuid(1)}, {"lyrics", "y"}, {"reference", {{"url", "not a url"}}}},
       {"body", "reference", "url"},
       "url_parsing"},
      {"create.new_sample",
       {{"idempotency_key", Uuid(1)}, {"prompt", "x"}, {"duration", 31}},
       {"body", "duration"},
       "less_than_equal"},
      {"create.new_sample",
       {{"idempotency_key", Uuid(1)}, {"prompt", "x"}, {"duration", 0}},
       {"body", "duration"},
       "greater_than"},
      {"create.new_fx",
       {{"idempotency_key", Uuid(1)}, {"prompt", "x"}, {"duration", 0.2}},
       {"body", "duration"},
       "greater_than_equal"},
      {"create.new_sample",
       {{"idempotency_key", Uuid(1)}, {"prompt", "x"}, {"duration", "long"}},
       {"body", "duration"},
       "float_parsing"},
      {"create.remix_instrumental",
       {{"idempotency_key", Uuid(1)},
        {"source", {{"url", "https://a.example/x.wav"}}},
        {"n_variations", 4}},
       {"body", "n_variations"},
       "less_than_equal"},
      {"adapt.auto_cut_down",
       {{"idempotency_key", Uuid(1)}, {"source", {{"url", "https://a.example/x.wav"}}}},
       {"body", "target_duration"},
       "missing"},
      {"create.new_sample",
       {{"idempotency_key", Uuid(1)},
        {"prompt", "x"},
        {"duration", 3},
        {"callback_url", "ftp://x"}},
       {"body", "callback_url"},
       "url_scheme"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.body.dump());
    auto r = Put(c.route, c.body);
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 422) << r->body;
    const Json detail = Body(r)["detail"];
    ASSERT_TRUE(detail.is_array());
    ASSERT_FALSE(detail.empty());
    bool found = false;
    for (const Json& e : detail) {
      // The documented entry keys; `input` (any type) and `ctx` are Pydantic v2's extras.
      for (const char* key : {"type", "loc", "msg", "input"}) EXPECT_TRUE(e.contains(key)) << key;
      EXPECT_TRUE(e["type"].is_string());
      EXPECT_TRUE(e["loc"].is_array());
      EXPECT_TRUE(e["msg"].is_string());
      for (const auto& [key, value] : e.items()) {
        EXPECT_TRUE(key == "type" || key == "loc" || key == "msg" || key == "input" || key == "ctx")
            << key;
      }
      if (e["loc"] == Json(c.loc) && e["type"] == c.type) found = true;
    }
    EXPECT_TRUE(found) << r->body;
  }
  EXPECT_EQ(emulator_->stats().operations_created, 0);
}

TEST_F(SoundpieceTest, PollValidationAndUnknownIds) {
  auto r = client_->Get("/v1/create.new_song", {{"Authorization", "Bearer spk_test_key"}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 422);
  EXPECT_EQ(Body(r)["detail"][0]["loc"], Json({"query", "id"}));
  EXPECT_EQ(Body(r)["detail"][0]["type"], "missing");
  r = Get("create.new_song", "op_SHOUTING");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 422);
  EXPECT_EQ(Body(r)["detail"][0]["type"], "string_pattern_mismatch");
  r = Get("create.new_song", "op_01hx7k3m9q2w5e8r4t6y1u0p3a");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 422);
  EXPECT_EQ(Body(r)["detail"][0]["type"], "not_found");
  // An id from another route is unknown on this one.
  auto put = Put("create.new_sample", Golden("soundpiece/new_sample_request.json"));
  const std::string id = Body(put)["sample"]["id"];
  r = Get("create.new_fx", id);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 422);
}

TEST(SoundpieceAccounts, OperationsAreScopedToTheirAccount) {
  Options o = FastOptions();
  o.api_keys = {{"spk_test_a", "alpha"}, {"spk_test_b", "beta"}};
  auto emulator = Emulator::Start(o);
  ASSERT_TRUE(emulator.ok());
  httplib::Client client((*emulator)->base_url());
  const Json body = Golden("soundpiece/new_sample_request.json");
  auto put = client.Put("/v1/create.new_sample", {{"Authorization", "Bearer spk_test_a"}},
                        body.dump(), "application/json");
  ASSERT_TRUE(put);
  const std::string id = Json::parse(put->body)["sample"]["id"];
  auto get = client.Get("/v1/create.new_sample?id=" + id, {{"Authorization", "Bearer spk_test_b"}});
  ASSERT_TRUE(get);
  EXPECT_EQ(get->status, 422);
  // The same idempotency key in another account is a different operation.
  put = client.Put("/v1/create.new_sample", {{"Authorization", "Bearer spk_test_b"}}, body.dump(),
                   "application/json");
  ASSERT_TRUE(put);
  EXPECT_NE(Json::parse(put->body)["sample"]["id"], id);
  const Stats stats = (*emulator)->stats();
  EXPECT_EQ(stats.operations_by_account.at("alpha"), 1);
  EXPECT_EQ(stats.operations_by_account.at("beta"), 1);
  EXPECT_EQ(stats.operations_by_account_route.at("alpha create.new_sample"), 1);
}

// ---- Idempotency ----------------------------------------------------------------------------

TEST_F(SoundpieceTest, SameKeySameBodyIsTheSameOperation) {
  const Json body = Golden("soundpiece/new_sample_request.json");
  auto first = Put("create.new_sample", body);
  auto second = Put("create.new_sample", body);
  ASSERT_TRUE(first && second);
  EXPECT_EQ(Body(first)["sample"]["id"], Body(second)["sample"]["id"]);
  // A different body under the same key still answers with the original (lenient default).
  Json changed = body;
  changed["prompt"] = "jazz, brushes";
  auto third = Put("create.new_sample", changed);
  ASSERT_TRUE(third);
  EXPECT_EQ(third->status, 200);
  EXPECT_EQ(Body(third)["sample"]["id"], Body(first)["sample"]["id"]);
  EXPECT_EQ(Body(third)["sample"]["prompt"], body["prompt"]);
  // The same key on another route is another operation.
  Json fx = {{"idempotency_key", body["idempotency_key"]}, {"prompt", "whoosh"}, {"duration", 2}};
  auto other = Put("create.new_fx", fx);
  ASSERT_TRUE(other);
  EXPECT_NE(Body(other)["fx"]["id"], Body(first)["sample"]["id"]);
  const Stats stats = emulator_->stats();
  EXPECT_EQ(stats.operations_created, 2);
  EXPECT_EQ(stats.operations_by_route.at("create.new_sample"), 1);
  EXPECT_EQ(stats.idempotent_replays, 2);
  EXPECT_EQ(stats.credits.at("acct"), 1000 - 2) << "replays are not charged";
}

TEST_F(SoundpieceTest, StrictModeAnswers409ForAChangedBody) {
  Options o = FastOptions();
  o.strict_idempotency = true;
  StartEmulator(o);
  const Json body = Golden("soundpiece/new_sample_request.json");
  ASSERT_EQ(Put("create.new_sample", body)->status, 200);
  EXPECT_EQ(Put("create.new_sample", body)->status, 200);
  Json changed = body;
  changed["duration"] = 9;
  auto r = Put("create.new_sample", changed);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 409);
  EXPECT_EQ(Body(r), Golden("soundpiece/error_409.json"));
  // The callback URL is not part of the request's identity.
  Json with_callback = body;
  with_callback["callback_url"] = "http://127.0.0.1:1/hook";
  EXPECT_EQ(Put("create.new_sample", with_callback)->status, 200);
  EXPECT_EQ(emulator_->stats().idempotency_conflicts, 1);
  EXPECT_EQ(emulator_->stats().operations_created, 1);
}

// ---- Long-poll and signed URLs --------------------------------------------------------------

TEST_F(SoundpieceTest, LongPollReturnsEarlyAtTheTerminalStatus) {
  Options o = FastOptions();
  o.processing_time = absl::Milliseconds(400);
  o.long_poll = absl::Seconds(5);
  StartEmulator(o);
  auto put = Put("create.new_sample", Golden("soundpiece/new_sample_request.json"));
  const std::string id = Body(put)["sample"]["id"];
  const absl::Time start = absl::Now();
  auto r = Get("create.new_sample", id, /*wait=*/true);
  const absl::Duration took = absl::Now() - start;
  ASSERT_TRUE(r);
  EXPECT_EQ(Body(r)["sample"]["status"], "ready");
  EXPECT_LT(took, absl::Seconds(2));
  EXPECT_GT(took, absl::Milliseconds(200));
  // Without wait=true a GET answers at once.
  auto put2 =
      Put("create.new_fx", {{"idempotency_key", Uuid(9)}, {"prompt", "door"}, {"duration", 1}});
  const std::string id2 = Body(put2)["fx"]["id"];
  auto quick = Get("create.new_fx", id2);
  EXPECT_EQ(Body(quick)["fx"]["status"], "processing");
  EXPECT_EQ(emulator_->stats().polls, 1);
  EXPECT_EQ(emulator_->stats().gets, 2);
}

TEST_F(SoundpieceTest, LongPollTimesOutWithTheCurrentState) {
  Options o = FastOptions();
  o.processing_time = absl::Seconds(30);
  o.long_poll = absl::Milliseconds(500);
  StartEmulator(o);
  auto put = Put("create.new_sample", Golden("soundpiece/new_sample_request.json"));
  const std::string id = Body(put)["sample"]["id"];
  const absl::Time start = absl::Now();
  auto r = Get("create.new_sample", id, /*wait=*/true);
  const absl::Duration took = absl::Now() - start;
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(Body(r)["sample"]["status"], "processing");
  EXPECT_GE(took, absl::Milliseconds(450));
  EXPECT_LT(took, absl::Seconds(3));
}

TEST_F(SoundpieceTest, ManyConcurrentLongPollsWaitWithoutBlockingEachOther) {
  Options o = FastOptions();
  o.processing_time = absl::Milliseconds(800);
  o.long_poll = absl::Seconds(5);
  o.rate_limit_burst = 1000;
  StartEmulator(o);
  constexpr int kPolls = 64;
  std::vector<std::string> ids;
  for (int i = 0; i < kPolls; ++i) {
    auto put = Put("create.new_fx",
                   {{"idempotency_key", Uuid(100 + i)}, {"prompt", "tick"}, {"duration", 1}});
    ASSERT_TRUE(put);
    ids.push_back(Body(put)["fx"]["id"]);
  }
  std::atomic<int> ready{0};
  std::vector<std::thread> threads;
  threads.reserve(ids.size());
  const absl::Time start = absl::Now();
  for (const std::string& id : ids) {
    threads.emplace_back([&, id] {
      httplib::Client c(emulator_->base_url());
      c.set_read_timeout(10, 0);
      auto r =
          c.Get("/v1/create.new_fx?wait=true&id=" + id, {{"Authorization", "Bearer spk_test_key"}});
      if (r && Json::parse(r->body)["fx"]["status"] == "ready") ++ready;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ready.load(), kPolls);
  EXPECT_LT(absl::Now() - start, absl::Seconds(4));
}

TEST_F(SoundpieceTest, SignedUrlsExpireAndEveryGetMintsFreshOnes) {
  Options o = FastOptions();
  o.url_ttl = absl::Seconds(1);
  SteppedClock clock;
  o.clock = clock.Function();
  StartEmulator(o);
  const Json ready = RunToEnd("create.new_fx", "fx",
                              {{"idempotency_key", Uuid(3)}, {"prompt", "click"}, {"duration", 1}});
  const std::string url = ready["fx"]["output"]["url"];
  EXPECT_TRUE(absl::StrContains(url, "/cdn/")) << url;
  EXPECT_TRUE(absl::StrContains(url, "exp=") && absl::StrContains(url, "sig=")) << url;
  httplib::Client cdn(emulator_->base_url());
  const std::string path = url.substr(emulator_->base_url().size());
  ASSERT_EQ(cdn.Get(path)->status, 200);
  // Tampered signature.
  EXPECT_EQ(cdn.Get(path.substr(0, path.size() - 2) + "00")->status, 403);
  clock.Advance(absl::Seconds(3));
  auto expired = cdn.Get(path);
  ASSERT_TRUE(expired);
  EXPECT_EQ(expired->status, 403);
  EXPECT_TRUE(absl::StrContains(expired->body, "expired"));
  const std::string id = ready["fx"]["id"];
  auto again = Get("create.new_fx", id);
  const std::string fresh = Body(again)["fx"]["output"]["url"];
  EXPECT_NE(fresh, url);
  EXPECT_EQ(cdn.Get(fresh.substr(emulator_->base_url().size()))->status, 200);
  EXPECT_EQ(emulator_->stats().downloads_denied, 2);
}

// ---- Credits and rate limits ----------------------------------------------------------------

TEST_F(SoundpieceTest, CreditsAreChargedOnAcceptAndRunOutWith402) {
  Options o = FastOptions();
  o.initial_credits = 5;
  o.route_cost = {{"create.new_song", 3}};
  StartEmulator(o);
  Json song = Golden("soundpiece/new_song_request.json");
  ASSERT_EQ(Put("create.new_song", song)->status, 200);
  song["idempotency_key"] = Uuid(2);
  auto r = Put("create.new_song", song);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 402);
  EXPECT_EQ(Body(r), Golden("soundpiece/error_402.json"));
  EXPECT_EQ(emulator_->stats().credits.at("acct"), 2);
  // After a top-up the same key goes through (a 402 does not use up the key).
  emulator_->SetCredits("acct", 10);
  EXPECT_EQ(Put("create.new_song", song)->status, 200);
  EXPECT_EQ(emulator_->stats().credits.at("acct"), 7);
  // Over the control endpoint too.
  auto set =
      client_->Post("/_emulator/credits", R"({"account":"acct","credits":0})", "application/json");
  ASSERT_TRUE(set);
  EXPECT_EQ(set->status, 200);
  EXPECT_EQ(emulator_->stats().credits.at("acct"), 0);
}

TEST_F(SoundpieceTest, RateLimitAnswers429WithRetryAfter) {
  Options o = FastOptions();
  o.rate_limit_per_second = 0.5;
  o.rate_limit_burst = 3;
  StartEmulator(o);
  int limited = 0;
  for (int i = 0; i < 5; ++i) {
    auto r = Get("create.new_song", "op_01hx7k3m9q2w5e8r4t6y1u0p3a");
    ASSERT_TRUE(r);
    if (r->status == 429) {
      ++limited;
      EXPECT_TRUE(SameShape(Golden("soundpiece/error_429.json"), Body(r)));
      EXPECT_TRUE(absl::StrContains(Body(r)["detail"].get<std::string>(),
                                    "Rate limit exceeded; retry in "));
      EXPECT_EQ(r->get_header_value("Retry-After"), "2");
    }
  }
  EXPECT_EQ(limited, 2);
}

// ---- Webhooks -------------------------------------------------------------------------------

// A receiver that verifies Standard Webhooks signatures independently of the emulator's code.
class Receiver {
 public:
  explicit Receiver(std::string secret) : secret_(std::move(secret)) {
    server_.Post("/hook", [this](const httplib::Request& req, httplib::Response& res) {
      absl::MutexLock lock(&mu_);
      Delivery d;
      d.id = req.get_header_value("webhook-id");
      d.timestamp = req.get_header_value("webhook-timestamp");
      d.signature = req.get_header_value("webhook-signature");
      d.body = req.body;
      d.valid = Verify(d);
      deliveries_.push_back(d);
      res.status = d.valid ? (fail_next_ > 0 ? (--fail_next_, 500) : 204) : 401;
    });
    port_ = server_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
  }
  ~Receiver() {
    server_.stop();
    thread_.join();
  }
  std::string url() const { return absl::StrCat("http://127.0.0.1:", port_, "/hook"); }
  void FailNext(int n) {
    absl::MutexLock lock(&mu_);
    fail_next_ = n;
  }

  struct Delivery {
    std::string id, timestamp, signature, body;
    bool valid = false;
  };
  std::vector<Delivery> deliveries() {
    absl::MutexLock lock(&mu_);
    return deliveries_;
  }

 private:
  bool Verify(const Delivery& d) const {
    // Standard Webhooks: key = base64-decode(secret without "whsec_"); HMAC-SHA256 over
    // "id.timestamp.body"; header "v1,<base64>" (space-separated when several).
    std::string key;
    if (!absl::Base64Unescape(secret_.substr(6), &key)) return false;
    const std::string payload = d.id + "." + d.timestamp + "." + d.body;
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
         reinterpret_cast<const unsigned char*>(payload.data()), payload.size(), mac, &len);
    const std::string expected =
        "v1," + absl::Base64Escape(std::string(reinterpret_cast<char*>(mac), len));
    for (absl::string_view sig : absl::StrSplit(d.signature, ' ')) {
      if (sig.size() == expected.size() &&
          CRYPTO_memcmp(sig.data(), expected.data(), sig.size()) == 0) {
        return true;
      }
    }
    return false;
  }

  std::string secret_;
  httplib::Server server_;
  std::thread thread_;
  int port_ = 0;
  absl::Mutex mu_;
  std::vector<Delivery> deliveries_ ABSL_GUARDED_BY(mu_);
  int fail_next_ ABSL_GUARDED_BY(mu_) = 0;
};

Options WebhookOptions() {
  Options o = FastOptions();
  o.webhook_secrets = {{"acct", kSecret}};
  return o;
}

TEST_F(SoundpieceTest, WebhooksAreSignedPerStandardWebhooks) {
  StartEmulator(WebhookOptions());
  Receiver receiver(kSecret);
  Json body = Golden("soundpiece/new_sample_request.json");
  body["callback_url"] = receiver.url();
  auto put = Put("create.new_sample", body);
  ASSERT_EQ(put->status, 200);
  EXPECT_FALSE(Body(put)["sample"].contains("callback_url")) << "callback_url is not echoed";
  ASSERT_TRUE(WaitFor([&] { return receiver.deliveries().size() == 1; }));
  const auto d = receiver.deliveries()[0];
  EXPECT_TRUE(d.valid) << d.signature;
  EXPECT_TRUE(absl::StartsWith(d.signature, "v1,"));
  const Json payload = Json::parse(d.body);
  EXPECT_EQ(payload["type"], "create.new_sample.ready");
  EXPECT_EQ(payload["data"]["id"], Body(put)["sample"]["id"]);
  EXPECT_EQ(payload["data"]["idempotency_key"], body["idempotency_key"]);
  EXPECT_TRUE(SameShape(Golden("soundpiece/new_sample_ready.json")["sample"], payload["data"]));
  EXPECT_NEAR(std::stoll(d.timestamp), absl::ToUnixSeconds(absl::Now()), 5);
  EXPECT_TRUE(WaitFor([&] { return emulator_->stats().webhook_successes == 1; }));
}

TEST_F(SoundpieceTest, DuringARotationEverySecretSigns) {
  // A second fake secret: "whsec_" + base64("rotated-test-secret").
  constexpr char kRotated[] = "whsec_cm90YXRlZC10ZXN0LXNlY3JldA==";
  Options o = WebhookOptions();
  o.webhook_secrets = {{"acct", absl::StrCat(kSecret, " ", kRotated)}};
  StartEmulator(o);
  Receiver old_receiver(kSecret);
  Receiver new_receiver(kRotated);
  Json body = Golden("soundpiece/new_sample_request.json");
  body["callback_url"] = old_receiver.url();
  ASSERT_EQ(Put("create.new_sample", body)->status, 200);
  body["idempotency_key"] = Uuid(31);
  body["callback_url"] = new_receiver.url();
  ASSERT_EQ(Put("create.new_sample", body)->status, 200);
  ASSERT_TRUE(WaitFor([&] {
    return old_receiver.deliveries().size() == 1 && new_receiver.deliveries().size() == 1;
  }));
  EXPECT_TRUE(old_receiver.deliveries()[0].valid);
  EXPECT_TRUE(new_receiver.deliveries()[0].valid);
  const std::string signature = new_receiver.deliveries()[0].signature;
  EXPECT_EQ(std::count(signature.begin(), signature.end(), ' '), 1) << signature;
  Options bad = WebhookOptions();
  bad.webhook_secrets = {{"acct", "not-a-secret"}};
  EXPECT_FALSE(Emulator::Start(bad).ok());
}

TEST_F(SoundpieceTest, FailedWebhookDeliveriesAreRetriedWithTheSameIdAndTimestamp) {
  StartEmulator(WebhookOptions());
  Receiver receiver(kSecret);
  receiver.FailNext(2);
  Json body = Golden("soundpiece/new_sample_request.json");
  body["callback_url"] = receiver.url();
  ASSERT_EQ(Put("create.new_sample", body)->status, 200);
  ASSERT_TRUE(WaitFor([&] { return receiver.deliveries().size() == 3; }));
  const auto d = receiver.deliveries();
  for (const auto& x : d) {
    EXPECT_TRUE(x.valid);
    EXPECT_EQ(x.id, d[0].id);
    EXPECT_EQ(x.timestamp, d[0].timestamp) << "the first attempt's timestamp on every retry";
    EXPECT_EQ(x.body, d[0].body);
  }
  ASSERT_TRUE(WaitFor([&] { return emulator_->stats().webhook_successes == 1; }));
  const Stats stats = emulator_->stats();
  EXPECT_EQ(stats.webhook_attempts, 3);
  EXPECT_EQ(stats.webhook_failures, 2);
}

TEST_F(SoundpieceTest, FailedOperationsCarryErrorAndAFailedWebhook) {
  StartEmulator(WebhookOptions());
  ASSERT_TRUE(
      emulator_
          ->SetFaultPlan(R"([{"match":"PUT /v1/create.new_sample","action":"fail_operation"}])")
          .ok());
  Receiver receiver(kSecret);
  Json body = Golden("soundpiece/new_sample_request.json");
  body["callback_url"] = receiver.url();
  const Json failed = RunToEnd("create.new_sample", "sample", body);
  EXPECT_TRUE(SameShape(Golden("soundpiece/new_sample_failed.json"), failed));
  EXPECT_EQ(failed["sample"]["status"], "failed");
  EXPECT_EQ(failed["sample"]["error"]["code"], "internal_error");
  EXPECT_TRUE(failed["sample"]["output"].is_null());
  ASSERT_TRUE(WaitFor([&] { return receiver.deliveries().size() == 1; }));
  const Json hook = Json::parse(receiver.deliveries()[0].body);
  EXPECT_TRUE(SameShape(Golden("soundpiece/webhook_new_sample_failed.json"), hook));
  EXPECT_EQ(hook["type"], "create.new_sample.failed");
  EXPECT_EQ(emulator_->stats().operations_failed, 1);
}

TEST_F(SoundpieceTest, NoSecretMeansNoWebhooks) {
  Receiver receiver(kSecret);
  Json body = Golden("soundpiece/new_sample_request.json");
  body["callback_url"] = receiver.url();
  RunToEnd("create.new_sample", "sample", body);
  // A barrier instead of a wait: a webhook is queued when its operation completes, due at
  // once, and the one scheduler handles tasks in due order; so once a second operation has
  // completed, any webhook of the first would have been attempted.
  ASSERT_TRUE(WaitFor([&] { return emulator_->stats().operations_ready == 1; }));
  body["idempotency_key"] = Uuid(31);
  body.erase("callback_url");
  RunToEnd("create.new_sample", "sample", body);
  ASSERT_TRUE(WaitFor([&] { return emulator_->stats().operations_ready == 2; }));
  EXPECT_TRUE(receiver.deliveries().empty());
  EXPECT_EQ(emulator_->stats().webhook_attempts, 0);
}

TEST_F(SoundpieceTest, WebhookFaults) {
  StartEmulator(WebhookOptions());
  ASSERT_TRUE(emulator_
                  ->SetFaultPlan(R"({"rules":[
      {"match":"WEBHOOK create.new_sample","nth":[1],"action":"webhook_lost"},
      {"match":"WEBHOOK create.new_sample","nth":[2],"action":"webhook_duplicate"},
      {"match":"WEBHOOK create.new_sample","nth":[3],"action":"webhook_bad_signature"}]})")
                  .ok());
  Receiver receiver(kSecret);
  Json body = Golden("soundpiece/new_sample_request.json");
  body["callback_url"] = receiver.url();
  // 1st delivery: lost for good.
  RunToEnd("create.new_sample", "sample", body);
  ASSERT_TRUE(WaitFor([&] { return emulator_->stats().webhooks_dropped == 1; }));
  EXPECT_TRUE(receiver.deliveries().empty());
  // 2nd: delivered twice with one webhook-id.
  body["idempotency_key"] = Uuid(21);
  RunToEnd("create.new_sample", "sample", body);
  ASSERT_TRUE(WaitFor([&] { return receiver.deliveries().size() == 2; }));
  EXPECT_EQ(receiver.deliveries()[0].id, receiver.deliveries()[1].id);
  // 3rd: a bad signature (rejected by the receiver), then a good retry.
  body["idempotency_key"] = Uuid(22);
  RunToEnd("create.new_sample", "sample", body);
  ASSERT_TRUE(WaitFor([&] { return receiver.deliveries().size() == 4; }));
  EXPECT_FALSE(receiver.deliveries()[2].valid);
  EXPECT_TRUE(receiver.deliveries()[3].valid);
  EXPECT_EQ(receiver.deliveries()[2].id, receiver.deliveries()[3].id);
}

// ---- Faults ---------------------------------------------------------------------------------

TEST_F(SoundpieceTest, ScriptedStatusOnTheNthPoll) {
  auto set = client_->Post(
      "/_emulator/faults",
      R"({"seed":3,"rules":[{"match":"GET /v1/create.new_sample","nth":[2],"action":"status","status":503,"retry_after":2}]})",
      "application/json");
  ASSERT_TRUE(set);
  ASSERT_EQ(set->status, 200) << set->body;
  auto put = Put("create.new_sample", Golden("soundpiece/new_sample_request.json"));
  const std::string id = Body(put)["sample"]["id"];
  EXPECT_EQ(Get("create.new_sample", id)->status, 200);
  auto second = Get("create.new_sample", id);
  EXPECT_EQ(second->status, 503);
  EXPECT_EQ(second->get_header_value("Retry-After"), "2");
  EXPECT_EQ(Body(second)["detail"], "Service Unavailable");
  EXPECT_EQ(Get("create.new_sample", id)->status, 200);
  EXPECT_EQ(emulator_->stats().faults_injected, 1);
  auto plan = client_->Get("/_emulator/faults");
  EXPECT_EQ(Json::parse(plan->body)["rules"][0]["fired"], 1);
}

TEST_F(SoundpieceTest, ConnectionResetAfterProcessingKeepsTheOperation) {
  ASSERT_TRUE(
      emulator_
          ->SetFaultPlan(R"([{"match":"PUT /v1/create.new_sample","nth":[1],"action":"reset"}])")
          .ok());
  const Json body = Golden("soundpiece/new_sample_request.json");
  auto first = Put("create.new_sample", body);
  EXPECT_FALSE(first) << "the client sees a broken response";
  auto retry = Put("create.new_sample", body);
  ASSERT_TRUE(retry);
  EXPECT_EQ(retry->status, 200);
  EXPECT_EQ(emulator_->stats().operations_created, 1) << "the retry found the first operation";
}

TEST_F(SoundpieceTest, ResetBeforeProcessingCreatesNothing) {
  ASSERT_TRUE(
      emulator_->SetFaultPlan(R"([{"match":"PUT /v1/*","action":"reset","before":true,"times":1}])")
          .ok());
  EXPECT_FALSE(Put("create.new_sample", Golden("soundpiece/new_sample_request.json")));
  EXPECT_EQ(emulator_->stats().operations_created, 0);
  EXPECT_TRUE(Put("create.new_sample", Golden("soundpiece/new_sample_request.json")));
}

TEST_F(SoundpieceTest, HangTripsTheClientReadTimeout) {
  ASSERT_TRUE(
      emulator_->SetFaultPlan(R"([{"match":"GET *","action":"hang","delay_ms":3000,"times":1}])")
          .ok());
  client_->set_read_timeout(0, 300 * 1000);
  const absl::Time start = absl::Now();
  auto r = Get("create.new_sample", "op_01hx7k3m9q2w5e8r4t6y1u0p3a");
  EXPECT_FALSE(r);
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
}

TEST_F(SoundpieceTest, TruncatedAndMalformedBodies) {
  ASSERT_TRUE(emulator_
                  ->SetFaultPlan(R"([
      {"match":"PUT /v1/create.new_sample","nth":[1],"action":"truncate"},
      {"match":"PUT /v1/create.new_sample","nth":[2],"action":"malformed"}])")
                  .ok());
  const Json body = Golden("soundpiece/new_sample_request.json");
  auto truncated = Put("create.new_sample", body);
  ASSERT_TRUE(truncated);
  EXPECT_EQ(truncated->status, 200);
  EXPECT_TRUE(Json::parse(truncated->body, nullptr, false).is_discarded()) << truncated->body;
  auto malformed = Put("create.new_sample", body);
  ASSERT_TRUE(malformed);
  EXPECT_TRUE(Json::parse(malformed->body, nullptr, false).is_discarded());
  EXPECT_EQ(Put("create.new_sample", body)->status, 200);
}

TEST_F(SoundpieceTest, RateLimitLatencyAndQuotaFaults) {
  ASSERT_TRUE(emulator_
                  ->SetFaultPlan(R"([
      {"match":"PUT /v1/create.new_fx","nth":[1],"action":"rate_limit","retry_after":7},
      {"match":"PUT /v1/create.new_fx","nth":[2],"action":"quota_exhausted"},
      {"match":"PUT /v1/create.new_fx","nth":[3],"action":"latency","delay_ms":300}])")
                  .ok());
  const Json body = {{"idempotency_key", Uuid(5)}, {"prompt", "pop"}, {"duration", 1}};
  auto limited = Put("create.new_fx", body);
  EXPECT_EQ(limited->status, 429);
  EXPECT_EQ(limited->get_header_value("Retry-After"), "7");
  EXPECT_EQ(Body(limited)["detail"], "Rate limit exceeded; retry in 7 seconds");
  auto broke = Put("create.new_fx", body);
  EXPECT_EQ(broke->status, 402);
  const absl::Time start = absl::Now();
  EXPECT_EQ(Put("create.new_fx", body)->status, 200);
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(290));
}

TEST_F(SoundpieceTest, ProbabilisticFaultsAreDeterministicForASeed) {
  auto pattern = [&](uint64_t seed) {
    EXPECT_TRUE(
        emulator_
            ->SetFaultPlan(absl::StrCat(
                R"({"seed":)", seed,
                R"(,"rules":[{"match":"GET /v1/*","probability":0.5,"action":"status","status":500}]})"))
            .ok());
    std::string out;
    for (int i = 0; i < 16; ++i) {
      out += Get("create.new_song", "op_01hx7k3m9q2w5e8r4t6y1u0p3a")->status == 500 ? 'x' : '.';
    }
    return out;
  };
  const std::string a = pattern(42);
  EXPECT_EQ(a, pattern(42));
  EXPECT_NE(a.find('x'), std::string::npos);
  EXPECT_NE(a.find('.'), std::string::npos);
}

TEST_F(SoundpieceTest, ExpireUrlFaultShortensOneAnswer) {
  SteppedClock clock;
  Options o = FastOptions();
  o.clock = clock.Function();
  StartEmulator(o);
  const Json ready = RunToEnd("create.new_fx", "fx",
                              {{"idempotency_key", Uuid(6)}, {"prompt", "a"}, {"duration", 1}});
  const std::string id = ready["fx"]["id"];
  ASSERT_TRUE(
      emulator_
          ->SetFaultPlan(
              R"([{"match":"GET /v1/create.new_fx","nth":[1],"action":"expire_url","url_ttl_ms":0}])")
          .ok());
  auto r = Get("create.new_fx", id);
  const std::string url = Body(r)["fx"]["output"]["url"];
  httplib::Client cdn(emulator_->base_url());
  clock.Advance(absl::Seconds(2));  // past the whole second the URL expired in
  EXPECT_EQ(cdn.Get(url.substr(emulator_->base_url().size()))->status, 403);
  const std::string fresh = Body(Get("create.new_fx", id))["fx"]["output"]["url"];
  EXPECT_EQ(cdn.Get(fresh.substr(emulator_->base_url().size()))->status, 200);
}

TEST_F(SoundpieceTest, SourceFixturesFailTheOperationNotTheRequest) {
  const Json failed = RunToEnd(
      "adapt.separate_stems", "stems",
      {{"idempotency_key", Uuid(7)}, {"source", {{"url", "https://x.example/__fail__.wav"}}}});
  EXPECT_EQ(failed["stems"]["status"], "failed");
  EXPECT_EQ(failed["stems"]["error"]["code"], "source_unreadable");
  const Json cut = RunToEnd("adapt.auto_cut_down", "auto_cut",
                            {{"idempotency_key", Uuid(8)},
                             {"source", {{"url", "https://x.example/a.wav?duration=10"}}},
                             {"target_duration", 60}});
  EXPECT_EQ(cut["auto_cut"]["status"], "failed");
}

TEST_F(SoundpieceTest, StatsAndResetOverHttp) {
  Put("create.new_sample", Golden("soundpiece/new_sample_request.json"));
  auto stats = client_->Get("/_emulator/stats");
  ASSERT_TRUE(stats);
  const Json s = Json::parse(stats->body);
  EXPECT_EQ(s["operations_created"], 1);
  EXPECT_EQ(s["operations_by_route"]["create.new_sample"], 1);
  EXPECT_EQ(s["operations_by_account_route"]["acct create.new_sample"], 1);
  EXPECT_EQ(s["puts"], 1);
  ASSERT_EQ(client_->Post("/_emulator/reset", "", "application/json")->status, 200);
  EXPECT_EQ(emulator_->stats().operations_created, 0);
  EXPECT_EQ(emulator_->stats().credits.at("acct"), 1000);
  EXPECT_EQ(client_->Post("/_emulator/faults", "{not json", "application/json")->status, 400);
}

}  // namespace
}  // namespace musicgw::emulators::soundpiece
