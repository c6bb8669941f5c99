// The Loudly emulator against providers/loudly.md: every exchange of the captured web session
// replayed (golden shapes, formula values and key order, escaped slashes), token rotation and
// 401s, limits that move, the B2B dialect's wire forms, quota and validation errors, and faults.
#include "emulators/loudly/loudly_emulator.h"

#include <fstream>
#include <regex>
#include <thread>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "nlohmann/json.hpp"
#include "tests/emulators/test_util.h"

namespace musicgw::emulators::loudly {
namespace {

using ::musicgw::emulators::testing::Golden;
using ::musicgw::emulators::testing::KeyOrder;
using ::musicgw::emulators::testing::ProbeDuration;
using ::musicgw::emulators::testing::ReadTestdata;
using ::musicgw::emulators::testing::SameShape;
using ::musicgw::emulators::testing::SteppedClock;
using ::musicgw::emulators::testing::WaitFor;
using Json = nlohmann::json;

constexpr char kApiKey[] = "loudly_test_key";

Options FastOptions() {
  Options o;
  o.bundle_song_delay = absl::Milliseconds(150);
  o.sync_latency = absl::Milliseconds(100);
  o.default_duration_seconds = 30;
  return o;
}

class LoudlyTest : public ::testing::Test {
 protected:
  void StartEmulator(Options options = FastOptions()) {
    auto emulator = Emulator::Start(std::move(options));
    ASSERT_TRUE(emulator.ok()) << emulator.status();
    emulator_ = *std::move(emulator);
    client_ = std::make_unique<httplib::Client>(emulator_->base_url());
    client_->set_read_timeout(15, 0);
  }
  void SetUp() override { StartEmulator(); }

  // refresh_token grant with the current token; returns the access token.
  std::string Login() {
    auto r = client_->Post(
        "/oauth/v2/token",
        absl::StrCat("client_id=1_test_client&grant_type=refresh_token&refresh_token=",
                     emulator_->current_refresh_token()),
        "application/x-www-form-urlencoded");
    EXPECT_TRUE(r);
    if (!r) return "";
    EXPECT_EQ(r->status, 200) << r->body;
    return Json::parse(r->body)["access_token"];
  }
  httplib::Headers Bearer(const std::string& token) {
    return {{"Authorization", absl::StrCat("Bearer ", token)}};
  }
  // A captured multipart request, sent with CRLF line ends and its own boundary.
  httplib::Result PostCaptured(const std::string& name, const std::string& token) {
    const std::string lf = ReadTestdata(absl::StrCat("loudly/", name, ".multipart"));
    const std::string first_line = lf.substr(0, lf.find('\n'));
    const std::string boundary = first_line.substr(2);
    std::string body = absl::StrReplaceAll(lf, {{"\n", "\r\n"}});
    return client_->Post("/ai/vega/bundles", Bearer(token), body,
                         absl::StrCat("multipart/form-data; boundary=", boundary).c_str());
  }
  Json PollUntilSong(const std::string& id, const std::string& token, std::string* raw = nullptr) {
    Json body;
    std::string text;
    const bool appeared = WaitFor([&] {
      auto r = client_->Get(absl::StrCat("/ai/vega/bundles/", id, "?limit=10"), Bearer(token));
      if (!r) return false;
      text = r->body;
      body = Json::parse(text);
      return !body["vega_songs"].empty();
    });
    if (!appeared) {
      ADD_FAILURE() << "no song appeared";
      return {};
    }
    if (raw != nullptr) *raw = text;
    return body;
  }
  httplib::Result B2B(const std::string& path, const httplib::Params& form, bool multipart = false,
                      const std::string& key = kApiKey) {
    httplib::Headers headers = {{"Accept", "application/json"}};
    if (!key.empty()) headers.emplace("API-KEY", key);
    if (!multipart) return client_->Post(path.c_str(), headers, form);
    httplib::MultipartFormDataItems items;
    for (const auto& [k, v] : form) items.push_back({k, v, "", ""});
    return client_->Post(path.c_str(), headers, items);
  }
  std::string Download(const std::string& url, const std::string& name) {
    const std::string base = emulator_->base_url();
    EXPECT_TRUE(absl::StartsWith(url, base)) << url;
    auto r = client_->Get(url.substr(base.size()).c_str());
    EXPECT_TRUE(r);
    EXPECT_EQ(r->status, 200);
    EXPECT_EQ(r->get_header_value("Content-Type"), "audio/mpeg");
    std::string path = ::testing::TempDir() + "/" + name;
    std::ofstream(path, std::ios::binary) << r->body;
    return path;
  }

  std::unique_ptr<Emulator> emulator_;
  std::unique_ptr<httplib::Client> client_;
};

// ---- The captured session, replayed ---------------------------------------------------------

TEST_F(LoudlyTest, CapturedAdvancedBundleReplays) {
  const std::string token = Login();
  auto created = PostCaptured("web_bundle_advanced_request", token);
  ASSERT_TRUE(created);
  ASSERT_EQ(created->status, 200) << created->body;
  const Json golden_created = Golden("loudly/web_bundle_advanced_created.json");
  const Json body = Json::parse(created->body);
  EXPECT_TRUE(SameShape(golden_created, body));
  // Same request, same formula: every value, and the key order of the POST answer.
  EXPECT_EQ(body["formula"], golden_created["formula"]);
  EXPECT_TRUE(absl::StrContains(created->body, R"("key":"E-minor")"));
  EXPECT_EQ(KeyOrder(created->body),
            KeyOrder(ReadTestdata("loudly/web_bundle_advanced_created.json")));
  EXPECT_EQ(KeyOrder(Json::parse(created->body)["formula"].dump()).size(), 12u);
  EXPECT_TRUE(std::regex_match(body["created_at"].get<std::string>(),
                               std::regex(R"(^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}$)")));

  std::string raw;
  const Json ready = PollUntilSong(body["id"], token, &raw);
  const Json golden_ready = Golden("loudly/web_bundle_advanced_ready.json");
  EXPECT_TRUE(SameShape(golden_ready, ready));
  EXPECT_EQ(ready["formula"], golden_ready["formula"]);
  const Json& song = ready["vega_songs"][0];
  EXPECT_EQ(song["duration"], 129000) << "128 s requested -> 129000 ms, as captured";
  EXPECT_EQ(song["formula"], golden_ready["vega_songs"][0]["formula"]);
  EXPECT_TRUE(
      std::regex_search(song["music_file_path"].get<std::string>(),
                        std::regex(R"(/assets/music_file/[0-9a-f-]{36}\.mp3\?cb=\d{14}$)")));
  EXPECT_TRUE(absl::StrContains(raw, R"(\/assets\/music_file\/)")) << "slashes escaped as captured";
  // The GET's formula keys come in the captured (jsonb) order.
  const auto formula_start = raw.find("\"formula\":") + 10;
  const auto golden_raw = ReadTestdata("loudly/web_bundle_advanced_ready.json");
  const auto golden_start = golden_raw.find("\"formula\":") + 10;
  EXPECT_EQ(raw.substr(formula_start, raw.find('}', formula_start) - formula_start).size() > 0,
            true);
  EXPECT_EQ(KeyOrder(raw.substr(formula_start, raw.find('}', formula_start) - formula_start + 1)),
            KeyOrder(golden_raw.substr(golden_start,
                                       golden_raw.find('}', golden_start) - golden_start + 1)));
  EXPECT_TRUE(std::regex_match(
      song["id"].get<std::string>(),
      std::regex("^[0-9a-f]{8}-[0-9a-f]{4}-1[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}$")));
}

TEST_F(LoudlyTest, CapturedMinimalBundleReplays) {
  const std::string token = Login();
  Options slow = FastOptions();
  auto created = PostCaptured("web_bundle_minimal_request", token);
  ASSERT_TRUE(created);
  ASSERT_EQ(created->status, 200) << created->body;
  const Json body = Json::parse(created->body);
  EXPECT_TRUE(SameShape(Golden("loudly/web_bundle_minimal_created.json"), body));
  EXPECT_EQ(body["formula"], Golden("loudly/web_bundle_minimal_created.json")["formula"]);
  // Before the song's time: the pending shape, twice, as captured.
  for (int i = 0; i < 2; ++i) {
    auto pending =
        client_->Get(absl::StrCat("/ai/vega/bundles/", body["id"].get<std::string>(), "?limit=10"),
                     Bearer(token));
    ASSERT_TRUE(pending);
    EXPECT_TRUE(
        SameShape(Golden("loudly/web_bundle_minimal_pending.json"), Json::parse(pending->body)));
  }
  const Json ready = PollUntilSong(body["id"], token);
  EXPECT_EQ(ready["vega_songs"][0]["duration"], 31000) << "default 30 s + 1";
}

TEST_F(LoudlyTest, CapturedText2MusicBundleReplays) {
  const std::string token = Login();
  auto created = PostCaptured("web_bundle_t2m_request", token);
  ASSERT_TRUE(created);
  ASSERT_EQ(created->status, 200) << created->body;
  const Json body = Json::parse(created->body);
  EXPECT_TRUE(SameShape(Golden("loudly/web_bundle_t2m_created.json"), body));
  EXPECT_EQ(body["type"], "TEXT2MUSIC");
  EXPECT_EQ(body["formula"]["prompt"], "Michael Jordan sign Russian anthem");
  EXPECT_TRUE(body["formula"]["genre"].is_string()) << "the server picks the genre";
  const Json ready = PollUntilSong(body["id"], token);
  EXPECT_TRUE(SameShape(Golden("loudly/web_bundle_t2m_ready.json"), ready));
  EXPECT_EQ(emulator_->stats().bundles_by_type.at("TEXT2MUSIC"), 1);
}

TEST_F(LoudlyTest, CapturedTokenAndLimitsReplay) {
  auto r = client_->Post(
      "/oauth/v2/token",
      "client_id=1_test_client&grant_type=refresh_token&refresh_token=test-refresh-token",
      "application/x-www-form-urlencoded");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200);
  const Json token = Json::parse(r->body);
  EXPECT_TRUE(SameShape(Golden("loudly/web_token_response.json"), token));
  EXPECT_EQ(KeyOrder(r->body), KeyOrder(ReadTestdata("loudly/web_token_response.json")));
  EXPECT_EQ(token["token_type"], "Bearer");
  EXPECT_EQ(token["expires_in"], 3600);
  // The JWT: three base64url parts, claims as captured, exp = iat + expires_in.
  const std::vector<std::string> parts =
      absl::StrSplit(token["access_token"].get<std::string>(), '.');
  ASSERT_EQ(parts.size(), 3u);
  std::string header, claims;
  ASSERT_TRUE(absl::WebSafeBase64Unescape(parts[0], &header));
  ASSERT_TRUE(absl::WebSafeBase64Unescape(parts[1], &claims));
  EXPECT_EQ(Json::parse(header)["alg"], "RS256");
  const Json c = Json::parse(claims);
  for (const char* claim : {"aud", "jti", "iat", "nbf", "exp", "sub", "scopes"}) {
    EXPECT_TRUE(c.contains(claim)) << claim;
  }
  EXPECT_EQ(c["aud"], "Core");
  EXPECT_EQ(c["exp"].get<int64_t>() - c["iat"].get<int64_t>(), 3600);

  auto limits = client_->Get("/users/limits", Bearer(token["access_token"]));
  ASSERT_TRUE(limits);
  EXPECT_TRUE(SameShape(Golden("loudly/web_users_limits.json"), Json::parse(limits->body)));
  EXPECT_EQ(KeyOrder(Json::parse(limits->body)["usage_data"].dump()).size(), 7u);
}

// ---- Auth -----------------------------------------------------------------------------------

TEST_F(LoudlyTest, RefreshTokensRotateAndOldOnesAreRejected) {
  const std::string first = emulator_->current_refresh_token();
  Login();
  const std::string second = emulator_->current_refresh_token();
  EXPECT_NE(first, second);
  auto reuse = client_->Post(
      "/oauth/v2/token",
      absl::StrCat("client_id=1_test_client&grant_type=refresh_token&refresh_token=", first),
      "application/x-www-form-urlencoded");
  ASSERT_TRUE(reuse);
  EXPECT_EQ(reuse->status, 400);
  EXPECT_EQ(Json::parse(reuse->body)["error"], "invalid_grant");
  auto bad_client = client_->Post(
      "/oauth/v2/token",
      absl::StrCat("client_id=1_other&grant_type=refresh_token&refresh_token=", second),
      "application/x-www-form-urlencoded");
  EXPECT_EQ(Json::parse(bad_client->body)["error"], "invalid_client");
  auto bad_grant = client_->Post("/oauth/v2/token", "client_id=1_test_client&grant_type=magic",
                                 "application/x-www-form-urlencoded");
  EXPECT_EQ(Json::parse(bad_grant->body)["error"], "unsupported_grant_type");
  Login();
  EXPECT_EQ(emulator_->stats().token_refreshes, 2);
  EXPECT_EQ(emulator_->stats().token_refreshes_rejected, 3);
}

TEST_F(LoudlyTest, TokenLifetimeIsConfigurableAndEarlyRefreshesAreCounted) {
  Options o = FastOptions();
  o.access_token_ttl = absl::Seconds(4);
  SteppedClock clock;
  o.clock = clock.Function();
  StartEmulator(o);
  auto grant =
      client_->Post("/oauth/v2/token",
                    absl::StrCat("client_id=1_test_client&grant_type=refresh_token&refresh_token=",
                                 emulator_->current_refresh_token()),
                    "application/x-www-form-urlencoded");
  ASSERT_TRUE(grant);
  ASSERT_EQ(grant->status, 200);
  EXPECT_EQ(Json::parse(grant->body)["expires_in"], 4);
  const std::string token = Json::parse(grant->body)["access_token"];
  EXPECT_EQ(client_->Get("/users/limits", Bearer(token))->status, 200);
  // Three quarters through its life: a timely refresh.
  clock.Advance(absl::Seconds(3));
  EXPECT_EQ(client_->Get("/users/limits", Bearer(token))->status, 200);
  Login();
  EXPECT_EQ(emulator_->stats().token_refreshes_early, 0);
  // At once again, with the new token's whole life left: early.
  Login();
  EXPECT_EQ(emulator_->stats().token_refreshes_early, 1);
  clock.Advance(absl::Seconds(5));
  EXPECT_EQ(client_->Get("/users/limits", Bearer(token))->status, 401);
  EXPECT_EQ(emulator_->stats().token_refreshes, 3);
  EXPECT_EQ(emulator_->stats().token_refreshes_rejected, 0);
}

TEST_F(LoudlyTest, MissingInvalidAndExpiredBearerTokensGet401) {
  Options o = FastOptions();
  o.access_token_ttl = absl::Seconds(1);
  SteppedClock clock;
  o.clock = clock.Function();
  StartEmulator(o);
  auto none = client_->Get("/users/limits");
  ASSERT_TRUE(none);
  EXPECT_EQ(none->status, 401);
  EXPECT_EQ(Json::parse(none->body)["message"], "JWT Token not found");
  EXPECT_EQ(client_->Get("/users/limits", Bearer("eyJhbGciOi.forged.token"))->status, 401);
  const std::string token = Login();
  EXPECT_EQ(client_->Get("/users/limits", Bearer(token))->status, 200);
  clock.Advance(absl::Seconds(2));
  auto expired = client_->Get("/users/limits", Bearer(token));
  EXPECT_EQ(expired->status, 401);
  EXPECT_EQ(Json::parse(expired->body)["message"], "Expired JWT Token");
  EXPECT_EQ(client_
                ->Post("/ai/vega/bundles", Bearer(token), "bundle_type=ADVANCED&genre=Techno",
                       "application/x-www-form-urlencoded")
                ->status,
            401);
  EXPECT_EQ(client_->Get("/users/limits", Bearer(Login()))->status, 200) << "a fresh token works";
  EXPECT_EQ(emulator_->stats().unauthorized, 4);
}

// ---- Limits and downloads -------------------------------------------------------------------

TEST_F(LoudlyTest, UsageDataDecrementsAsSongsAreGeneratedAndDownloaded) {
  Options o = FastOptions();
  o.web_limits = {{"generate_vega_song", 2}};
  StartEmulator(o);
  const std::string token = Login();
  auto usage = [&](const char* key) {
    return Json::parse(client_->Get("/users/limits", Bearer(token))->body)["usage_data"][key];
  };
  EXPECT_EQ(usage("generate_vega_song")["available"], 2);
  auto created = client_->Post("/ai/vega/bundles", Bearer(token),
                               "bundle_type=ADVANCED&genre=Techno&duration=30&bpm=130",
                               "application/x-www-form-urlencoded");
  ASSERT_EQ(created->status, 200) << created->body;
  const Json ready = PollUntilSong(Json::parse(created->body)["id"], token);
  EXPECT_EQ(usage("generate_vega_song")["used"], 1);
  EXPECT_EQ(usage("generate_vega_song")["available"], 1);
  const std::string path = Download(ready["vega_songs"][0]["music_file_path"], "web.mp3");
  EXPECT_NEAR(ProbeDuration(path), 31.0, 1.0);
  EXPECT_EQ(usage("download_song")["used"], 1);
  EXPECT_EQ(usage("download_song")["available"], 499);
  // Use up the last song; the next bundle is refused with the limit message.
  created = client_->Post("/ai/vega/bundles", Bearer(token), "bundle_type=ADVANCED&genre=Techno",
                          "application/x-www-form-urlencoded");
  PollUntilSong(Json::parse(created->body)["id"], token);
  auto refused =
      client_->Post("/ai/vega/bundles", Bearer(token), "bundle_type=ADVANCED&genre=Techno",
                    "application/x-www-form-urlencoded");
  EXPECT_EQ(refused->status, 500);
  EXPECT_TRUE(
      absl::StrContains(refused->body, "External service calling limit exceeded: (service: "));
  const Stats stats = emulator_->stats();
  EXPECT_EQ(stats.bundles_created, 2);
  EXPECT_EQ(stats.songs_created, 2);
  EXPECT_EQ(stats.downloads, 1);
  EXPECT_EQ(stats.quota_rejections, 1);
}

TEST_F(LoudlyTest, BundleValidationAndUnknownBundles) {
  const std::string token = Login();
  auto post = [&](const std::string& body) {
    return client_->Post("/ai/vega/bundles", Bearer(token), body,
                         "application/x-www-form-urlencoded");
  };
  EXPECT_EQ(post("bundle_type=SOMETHING&genre=Techno")->status, 400);
  EXPECT_EQ(post("bundle_type=ADVANCED")->status, 400);
  EXPECT_EQ(post("bundle_type=TEXT2MUSIC")->status, 400);
  EXPECT_EQ(post("bundle_type=ADVANCED&genre=Techno&duration=10")->status, 400);
  auto r =
      client_->Get("/ai/vega/bundles/00000000-0000-4000-8000-000000000000?limit=10", Bearer(token));
  EXPECT_EQ(r->status, 404);
}

// ---- B2B ------------------------------------------------------------------------------------

TEST_F(LoudlyTest, B2BSongsAreSynchronousAiSongs) {
  Options o = FastOptions();
  o.sync_latency = absl::Milliseconds(400);
  StartEmulator(o);
  const absl::Time start = absl::Now();
  auto r = B2B("/api/ai/songs",
               {{"genre", "House"},
                {"duration", "60"},
                {"energy", "high"},
                {"bpm", "124"},
                {"key_root", "D"},
                {"key_quality", "minor"},
                {"structure_id", "2"},
                {"test", "false"}},
               /*multipart=*/true);
  ASSERT_TRUE(r);
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(390)) << "answers when the song is done";
  ASSERT_EQ(r->status, 200) << r->body;
  const Json song = Json::parse(r->body);
  EXPECT_TRUE(SameShape(Golden("loudly/b2b_ai_song.json"), song));
  EXPECT_EQ(song["duration"], 61000);
  EXPECT_EQ(song["bpm"], 124);
  EXPECT_EQ(song["key"]["name"], "D minor");
  EXPECT_TRUE(absl::StrContains(r->body, R"(:\/\/)"));
  const std::string path = Download(song["music_file_path"], "b2b.mp3");
  EXPECT_NEAR(ProbeDuration(path), 61.0, 1.0);

  auto prompt = B2B("/api/ai/prompt/songs", {{"prompt", "calm piano at 80 bpm in A minor"},
                                             {"duration", "30"},
                                             {"test", ""},
                                             {"structure_id", ""}});
  ASSERT_EQ(prompt->status, 200) << prompt->body;
  const Json p = Json::parse(prompt->body);
  EXPECT_TRUE(SameShape(Golden("loudly/b2b_ai_song.json"), p));
  EXPECT_EQ(p["bpm"], 80) << "the audio follows the prompt's tempo";
  EXPECT_EQ(p["key"]["name"], "A minor");
  const Stats stats = emulator_->stats();
  EXPECT_EQ(stats.b2b_songs, 2);
  EXPECT_EQ(stats.b2b_songs_by_account.at("b2b"), 2);
}

TEST_F(LoudlyTest, B2BAcceptsEveryInstrumentsWireForm) {
  const std::vector<httplib::Params> forms = {
      {{"genre", "Techno"}, {"instruments[]", "DRUMS"}, {"instruments[]", "bass"}},
      {{"genre", "Techno"}, {"instruments", "Drums,Bass"}},
      {{"genre", "Techno"}, {"instruments", "[drums, BASS]"}},
  };
  for (const auto& form : forms) {
    for (bool multipart : {false, true}) {
      auto r = B2B("/api/ai/songs", form, multipart);
      ASSERT_TRUE(r);
      EXPECT_EQ(r->status, 200) << r->body;
    }
  }
  auto bad = B2B("/api/ai/songs", {{"genre", "Techno"}, {"instruments", "Kazoo"}});
  EXPECT_EQ(bad->status, 400);
  EXPECT_EQ(Json::parse(bad->body)["error"], "invalid_instruments");
}

TEST_F(LoudlyTest, B2BValidationErrorsAre400WithErrorAndDescription) {
  const std::vector<httplib::Params> bad = {
      {},
      {{"genre", ""}},
      {{"genre", "Polka Step"}},
      {{"genre", "House"}, {"duration", "20"}},
      {{"genre", "House"}, {"duration", "421"}},
      {{"genre", "House"}, {"energy", "medium"}},
      {{"genre", "House"}, {"key_root", "H"}},
      {{"genre", "House"}, {"key_quality", "dorian"}},
      {{"genre", "House"}, {"model", "VEGA_9"}},
      {{"genre", "House"}, {"structure_id", "99"}},
      {{"genre", "House"}, {"bpm", "fast"}},
  };
  for (const auto& form : bad) {
    auto r = B2B("/api/ai/songs", form);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 400) << r->body;
    EXPECT_TRUE(SameShape(Golden("loudly/b2b_error_400.json"), Json::parse(r->body))) << r->body;
  }
  EXPECT_EQ(B2B("/api/ai/prompt/songs", {{"prompt", ""}})->status, 400);
  // Empty strings are absent, not invalid.
  EXPECT_EQ(B2B("/api/ai/songs", {{"genre", "House"}, {"duration", ""}, {"bpm", ""}, {"test", ""}})
                ->status,
            200);
  EXPECT_EQ(emulator_->stats().b2b_songs, 1);
}

TEST_F(LoudlyTest, B2BAuthAndCatalog) {
  auto r = B2B("/api/ai/songs", {{"genre", "House"}}, false, "");
  EXPECT_EQ(r->status, 401);
  EXPECT_EQ(Json::parse(r->body)["error"], "unauthorized");
  EXPECT_EQ(B2B("/api/ai/songs", {{"genre", "House"}}, false, "wrong")->status, 401);
  httplib::Headers key = {{"API-KEY", kApiKey}};
  auto genres = client_->Get("/api/ai/genres", key);
  ASSERT_EQ(genres->status, 200);
  EXPECT_TRUE(SameShape(Golden("loudly/b2b_genres.json"), Json::parse(genres->body)));
  EXPECT_TRUE(absl::StrContains(genres->body, "\"Deep House\""));
  EXPECT_TRUE(absl::StrContains(genres->body, "\"Alternative Hip Hop\""));
  auto structures = client_->Get("/api/ai/structures", key);
  EXPECT_TRUE(SameShape(Golden("loudly/b2b_structures.json"), Json::parse(structures->body)));
  auto random = client_->Get("/api/ai/prompt/random", key);
  EXPECT_TRUE(SameShape(Golden("loudly/b2b_random_prompt.json"), Json::parse(random->body)));
  EXPECT_EQ(client_->Get("/api/ai/genres")->status, 401);
}

TEST_F(LoudlyTest, B2BTestSongsSpendNoQuota) {
  auto r = B2B("/api/ai/songs", {{"genre", "House"}, {"test", "true"}});
  ASSERT_EQ(r->status, 200);
  EXPECT_TRUE(SameShape(Golden("loudly/b2b_ai_song.json"), Json::parse(r->body)));
  auto limits = Json::parse(client_->Get("/api/account/limits", {{"API-KEY", kApiKey}})->body);
  for (const Json& item : limits) EXPECT_EQ(item["used"], 0);
  auto again = B2B("/api/ai/songs", {{"genre", "Techno"}, {"test", "true"}});
  EXPECT_EQ(Json::parse(again->body)["music_file_path"], Json::parse(r->body)["music_file_path"])
      << "one canned dry-run file";
  EXPECT_EQ(emulator_->stats().b2b_test_songs, 2);
  EXPECT_EQ(emulator_->stats().b2b_songs, 0);
}

TEST_F(LoudlyTest, B2BQuotaExhaustionIsA500WithTheLimitMessage) {
  Options o = FastOptions();
  o.b2b_limits = {{"GENERATE_SONG_VEGA_1", 1}};
  StartEmulator(o);
  EXPECT_EQ(B2B("/api/ai/songs", {{"genre", "House"}})->status, 200);
  auto r = B2B("/api/ai/songs", {{"genre", "House"}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 500);
  EXPECT_TRUE(SameShape(Golden("loudly/b2b_quota_500.json"), Json::parse(r->body)));
  EXPECT_TRUE(std::regex_search(
      r->body,
      std::regex(
          R"(External service calling limit exceeded: \(service: GENERATE_SONG_VEGA_1, Timer seconds remaining: \d+, Attempts remaining: 0\))")))
      << r->body;
  // The prompt endpoint has its own request type.
  EXPECT_EQ(B2B("/api/ai/prompt/songs", {{"prompt", "x"}})->status, 200);
  const Json limits =
      Json::parse(client_->Get("/api/account/limits", {{"API-KEY", kApiKey}})->body);
  EXPECT_TRUE(SameShape(Golden("loudly/b2b_limits_array.json"), limits));
  for (const Json& item : limits) {
    if (item["request_type"] == "GENERATE_SONG_VEGA_1") {
      EXPECT_EQ(item["used"], 1);
      EXPECT_EQ(item["left"], 0);
    }
  }
}

TEST_F(LoudlyTest, B2BLimitsObjectShape) {
  Options o = FastOptions();
  o.limits_shape = LimitsShape::kObject;
  o.b2b_top_up = 1000;
  StartEmulator(o);
  auto r = client_->Get("/api/account/limits?date_from=2025-10-01&date_to=2025-10-31",
                        {{"API-KEY", kApiKey}});
  ASSERT_EQ(r->status, 200);
  const Json body = Json::parse(r->body);
  EXPECT_TRUE(SameShape(Golden("loudly/b2b_limits_object.json"), body));
  EXPECT_EQ(body["limits"][0]["date_from"], "2025-10-01");
  EXPECT_EQ(body["top_up"]["total"], 1000);
}

// ---- Faults ---------------------------------------------------------------------------------

TEST_F(LoudlyTest, FaultsOnBothDialects) {
  ASSERT_TRUE(emulator_
                  ->SetFaultPlan(R"([
      {"match":"POST /api/ai/songs","nth":[1],"action":"quota_exhausted"},
      {"match":"POST /api/ai/songs","nth":[2],"action":"fail_operation","error_code":"internal_error"},
      {"match":"POST /api/ai/songs","nth":[3],"action":"status","status":502},
      {"match":"POST /oauth/v2/token","nth":[1],"action":"status","status":503},
      {"match":"POST /ai/vega/bundles","nth":[1],"action":"fail_operation","error_message":"Generation failed"}])")
                  .ok());
  auto quota = B2B("/api/ai/songs", {{"genre", "House"}});
  EXPECT_EQ(quota->status, 500);
  EXPECT_TRUE(absl::StrContains(quota->body, "External service calling limit exceeded"));
  auto failed = B2B("/api/ai/songs", {{"genre", "House"}});
  EXPECT_EQ(failed->status, 500);
  EXPECT_EQ(Json::parse(failed->body)["error"], "internal_error");
  EXPECT_EQ(B2B("/api/ai/songs", {{"genre", "House"}})->status, 502);
  EXPECT_EQ(B2B("/api/ai/songs", {{"genre", "House"}})->status, 200);
  // The token endpoint's 503 does not rotate the token.
  const std::string before = emulator_->current_refresh_token();
  auto unavailable = client_->Post(
      "/oauth/v2/token",
      absl::StrCat("client_id=1_test_client&grant_type=refresh_token&refresh_token=", before),
      "application/x-www-form-urlencoded");
  EXPECT_EQ(unavailable->status, 503);
  EXPECT_EQ(emulator_->current_refresh_token(), before);
  const std::string token = Login();
  auto bundle =
      client_->Post("/ai/vega/bundles", Bearer(token), "bundle_type=ADVANCED&genre=Techno",
                    "application/x-www-form-urlencoded");
  ASSERT_EQ(bundle->status, 200);
  // The failure shows once the bundle's song would have appeared.
  const std::string bundle_path =
      absl::StrCat("/ai/vega/bundles/", Json::parse(bundle->body)["id"].get<std::string>());
  Json later;
  ASSERT_TRUE(WaitFor([&] {
    later = Json::parse(client_->Get(bundle_path, Bearer(token))->body);
    return !later["errors"].empty();
  }));
  EXPECT_TRUE(later["vega_songs"].empty());
  EXPECT_EQ(later["errors"], Json::array({"Generation failed"}));
  auto stats = Json::parse(client_->Get("/_emulator/stats")->body);
  EXPECT_EQ(stats["faults_injected"], 5);
}

TEST_F(LoudlyTest, ResetDownloadMidBodyAndResume) {
  const std::string token = Login();
  auto created = client_->Post("/ai/vega/bundles", Bearer(token),
                               "bundle_type=ADVANCED&genre=Techno&duration=30",
                               "application/x-www-form-urlencoded");
  const Json ready = PollUntilSong(Json::parse(created->body)["id"], token);
  const std::string url = ready["vega_songs"][0]["music_file_path"];
  const std::string path = url.substr(emulator_->base_url().size());
  ASSERT_TRUE(
      emulator_
          ->SetFaultPlan(R"([{"match":"GET /assets/music_file/*","nth":[1],"action":"reset"}])")
          .ok());
  std::string partial;
  auto broken = client_->Get(path.c_str(), [&](const char* data, size_t n) {
    partial.append(data, n);
    return true;
  });
  EXPECT_FALSE(broken) << "the connection drops mid-body";
  EXPECT_GT(partial.size(), 0u);
  // A ranged retry fetches the rest.
  auto rest = client_->Get(path.c_str(), {{"Range", absl::StrCat("bytes=", partial.size(), "-")}});
  ASSERT_TRUE(rest);
  EXPECT_EQ(rest->status, 206);
  auto whole = client_->Get(path.c_str());
  ASSERT_TRUE(whole);
  EXPECT_EQ(partial + rest->body, whole->body);
}

TEST_F(LoudlyTest, SyncLatencyBeyondAClientTimeout) {
  Options o = FastOptions();
  o.sync_latency = absl::Seconds(3);
  StartEmulator(o);
  client_->set_read_timeout(0, 500 * 1000);
  EXPECT_FALSE(B2B("/api/ai/songs", {{"genre", "House"}}));
}

}  // namespace
}  // namespace musicgw::emulators::loudly
