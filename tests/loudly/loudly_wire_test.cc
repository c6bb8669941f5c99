// The Loudly wire layer against the captured web-app exchanges (seeds/) and the documented B2B
// shapes: encoding, parsing and error mapping, field for field.
#include "adapters/loudly/loudly_wire.h"

#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/crypto.h"
#include "common/errors.h"
#include "gtest/gtest.h"
#include "tests/loudly/test_util.h"

namespace musicgw::adapters::loudly {
namespace {

using musicgw::v1::GenerateRequest;
using testing::CapturedAdvancedRequest;
using testing::Reason;

std::string ReadTestdata(const std::string& name) {
  std::ifstream in(std::string(LOUDLY_TESTDATA_DIR) + "/" + name, std::ios::binary);
  EXPECT_TRUE(in.good()) << name;
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

// A minimal multipart/form-data reader: the (name, value) parts in order.
Form ParseMultipart(const std::string& body) {
  Form form;
  const size_t first_break = body.find("\r\n");
  if (first_break == std::string::npos) return form;
  const std::string delimiter = body.substr(0, first_break);  // "--<boundary>"
  std::vector<std::string> parts = absl::StrSplit(body, delimiter);
  for (const std::string& part : parts) {
    if (part.empty() || absl::StartsWith(part, "--")) continue;
    const size_t header_end = part.find("\r\n\r\n");
    if (header_end == std::string::npos) continue;
    const std::string headers = part.substr(0, header_end);
    const size_t name_at = headers.find("name=\"");
    if (name_at == std::string::npos) continue;
    const size_t name_end = headers.find('"', name_at + 6);
    std::string value = part.substr(header_end + 4);
    if (absl::EndsWith(value, "\r\n")) value.resize(value.size() - 2);
    form.push_back({headers.substr(name_at + 6, name_end - name_at - 6), value});
  }
  return form;
}

TEST(LoudlyEncodeTest, AdvancedBundleMatchesCaptureFieldForField) {
  const Form captured = ParseMultipart(ReadTestdata("web_bundle_advanced_request.multipart"));
  ASSERT_EQ(captured.size(), 14u);
  auto form = EncodeWebBundle(CapturedAdvancedRequest());
  ASSERT_TRUE(form.ok()) << form.status();
  EXPECT_EQ(*form, captured);
  // And the multipart encoding round-trips through the same reader.
  const EncodedBody body = EncodeMultipart(*form, "----musicgwtestboundary");
  EXPECT_EQ(body.content_type, "multipart/form-data; boundary=----musicgwtestboundary");
  EXPECT_EQ(ParseMultipart(body.body), captured);
  EXPECT_TRUE(absl::EndsWith(body.body, "------musicgwtestboundary--\r\n"));
}

TEST(LoudlyEncodeTest, MinimalAndTextBundlesMatchCapture) {
  GenerateRequest minimal;
  minimal.mutable_parametric_music()->set_genre("Techno");
  auto form = EncodeWebBundle(minimal);
  ASSERT_TRUE(form.ok());
  EXPECT_EQ(*form, ParseMultipart(ReadTestdata("web_bundle_minimal_request.multipart")));

  GenerateRequest text;
  text.mutable_text_to_music()->set_prompt("Michael Jordan sign Russian anthem");
  form = EncodeWebBundle(text);
  ASSERT_TRUE(form.ok());
  EXPECT_EQ(*form, ParseMultipart(ReadTestdata("web_bundle_t2m_request.multipart")));
}

TEST(LoudlyEncodeTest, TextBundleCarriesDurationStructureAndModel) {
  GenerateRequest text;
  text.mutable_text_to_music()->set_prompt("calm piano");
  text.mutable_text_to_music()->set_duration_seconds(90);
  text.mutable_text_to_music()->set_structure_id(0);
  text.mutable_text_to_music()->set_model(musicgw::v1::LOUDLY_MODEL_VEGA_2);
  auto form = EncodeWebBundle(text);
  ASSERT_TRUE(form.ok());
  EXPECT_EQ(*form, (Form{{"bundle_type", "TEXT2MUSIC"},
                         {"prompt", "calm piano"},
                         {"duration", "90"},
                         {"structure_id", "0"},
                         {"model", "VEGA_2"}}));
}

TEST(LoudlyEncodeTest, B2BSongsOmitEmptyFieldsAndMapValidateOnlyToTest) {
  GenerateRequest request;
  request.mutable_parametric_music()->set_genre("House");
  request.mutable_parametric_music()->set_key_root(musicgw::v1::KEY_ROOT_C_SHARP);
  request.mutable_parametric_music()->add_instruments("synth");
  request.mutable_parametric_music()->add_instruments("drums");
  EXPECT_EQ(B2BSongPath(request), "/api/ai/songs");
  auto form = EncodeB2BSong(request, /*test=*/true);
  ASSERT_TRUE(form.ok());
  EXPECT_EQ(*form, (Form{{"genre", "House"},
                         {"instruments[]", "SYNTH"},
                         {"instruments[]", "DRUMS"},
                         {"key_root", "C#/Db"},
                         {"test", "true"}}));
  form = EncodeB2BSong(request, /*test=*/false, InstrumentsForm::kCommaJoined);
  ASSERT_TRUE(form.ok());
  EXPECT_EQ(*form,
            (Form{{"genre", "House"}, {"instruments", "SYNTH,DRUMS"}, {"key_root", "C#/Db"}}));

  GenerateRequest text;
  text.mutable_text_to_music()->set_prompt("lo-fi beats");
  EXPECT_EQ(B2BSongPath(text), "/api/ai/prompt/songs");
  form = EncodeB2BSong(text, false);
  ASSERT_TRUE(form.ok());
  EXPECT_EQ(*form, (Form{{"prompt", "lo-fi beats"}}));
}

TEST(LoudlyEncodeTest, RejectsOtherTasks) {
  GenerateRequest request;
  request.mutable_song()->set_lyrics("la la");
  EXPECT_EQ(EncodeWebBundle(request).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(EncodeB2BSong(request, false).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(B2BSongPath(request), "");
}

TEST(LoudlyEncodeTest, KeyRootsUseEnharmonicPairsForSharps) {
  EXPECT_EQ(KeyRootWire(musicgw::v1::KEY_ROOT_E), "E");
  EXPECT_EQ(KeyRootWire(musicgw::v1::KEY_ROOT_A_SHARP), "A#/Bb");
  EXPECT_EQ(KeyRootWire(musicgw::v1::KEY_ROOT_UNSPECIFIED), "");
}

TEST(LoudlyEncodeTest, FormUrlencodedEscapes) {
  const EncodedBody body = EncodeFormUrlencoded(
      {{"client_id", "1_abc"}, {"grant_type", "refresh_token"}, {"refresh_token", "a+b/c= d"}});
  EXPECT_EQ(body.content_type, "application/x-www-form-urlencoded");
  EXPECT_EQ(body.body, "client_id=1_abc&grant_type=refresh_token&refresh_token=a%2Bb%2Fc%3D+d");
}

TEST(LoudlyParseTest, CreatedBundleIsRunning) {
  auto bundle = ParseBundle(ReadTestdata("web_bundle_advanced_created.json"));
  ASSERT_TRUE(bundle.ok()) << bundle.status();
  EXPECT_EQ(bundle->status.phase, UpstreamStatus::Phase::kRunning);
  EXPECT_EQ(bundle->status.upstream_id, "eaaae012-1ea7-49f2-9b89-fbb9040d0bca");
  EXPECT_TRUE(bundle->status.outputs.empty());
  ASSERT_TRUE(bundle->created_at.has_value());
  // 11:04:42 at +02:00 is 09:04:42 UTC.
  EXPECT_EQ(absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", *bundle->created_at, absl::UTCTimeZone()),
            "2025-04-03T09:04:42Z");

  bundle = ParseBundle(ReadTestdata("web_bundle_minimal_pending.json"));
  ASSERT_TRUE(bundle.ok());
  EXPECT_EQ(bundle->status.phase, UpstreamStatus::Phase::kRunning);
}

TEST(LoudlyParseTest, ReadyAdvancedBundleBecomesOneMp3Asset) {
  auto bundle = ParseBundle(ReadTestdata("web_bundle_advanced_ready.json"));
  ASSERT_TRUE(bundle.ok()) << bundle.status();
  const UpstreamStatus& status = bundle->status;
  // is_finished is still false in the capture: a song with a file is what counts.
  EXPECT_EQ(status.phase, UpstreamStatus::Phase::kSucceeded);
  EXPECT_EQ(status.upstream_id, "eaaae012-1ea7-49f2-9b89-fbb9040d0bca");
  ASSERT_EQ(status.outputs.size(), 1u);
  const ProviderOutput& song = status.outputs[0];
  EXPECT_EQ(song.kind, musicgw::v1::ASSET_KIND_MIX);
  EXPECT_EQ(song.title, "Twilight Groove");
  EXPECT_DOUBLE_EQ(song.duration_seconds, 129.0);
  EXPECT_EQ(song.format, musicgw::v1::AUDIO_FORMAT_MP3);
  EXPECT_EQ(song.content_type, "audio/mpeg");
  EXPECT_EQ(song.url,
            "https://d28l47h1uhvbhl.cloudfront.net/assets/music_file/"
            "01d5134d-ad76-4508-ba21-58d2db63b457.mp3?cb=20250403110454");
  EXPECT_EQ(song.url_expire_time, absl::InfiniteFuture());
  EXPECT_EQ(song.bpm, 125);
  EXPECT_EQ(song.key, "E-minor");
}

TEST(LoudlyParseTest, ReadyTextBundleHasNoBpmOrKey) {
  auto bundle = ParseBundle(ReadTestdata("web_bundle_t2m_ready.json"));
  ASSERT_TRUE(bundle.ok());
  ASSERT_EQ(bundle->status.outputs.size(), 1u);
  const ProviderOutput& song = bundle->status.outputs[0];
  EXPECT_EQ(song.title, "Surreal Symphony");
  EXPECT_DOUBLE_EQ(song.duration_seconds, 191.0);
  EXPECT_EQ(song.url,
            "https://d28l47h1uhvbhl.cloudfront.net/assets/music_file/"
            "6b9297e2-0ba3-42f9-b552-5edcb1301202.mp3?cb=20250403120444");
  EXPECT_EQ(song.bpm, 0);
  EXPECT_EQ(song.key, "");
}

TEST(LoudlyParseTest, SongWithoutFileIsNotReadyAndErrorsFail) {
  auto bundle = ParseBundle(
      R"({"id":"b1","vega_songs":[{"id":"s1","title":"x","duration":1000,"music_file_path":""}],
          "errors":[]})");
  ASSERT_TRUE(bundle.ok());
  EXPECT_EQ(bundle->status.phase, UpstreamStatus::Phase::kRunning);

  bundle = ParseBundle(R"({"id":"b1","vega_songs":[],"errors":["model crashed"]})");
  ASSERT_TRUE(bundle.ok());
  EXPECT_EQ(bundle->status.phase, UpstreamStatus::Phase::kFailed);
  EXPECT_EQ(Reason(bundle->status.error), "PROVIDER_GENERATION_FAILED");
  EXPECT_TRUE(absl::StrContains(bundle->status.error.message(), "model crashed"));

  EXPECT_FALSE(ParseBundle("{\"id\":").ok());
  EXPECT_FALSE(ParseBundle("{}").ok());
}

TEST(LoudlyParseTest, B2BSongAndEmptyResult) {
  auto song = ParseAiSong(ReadTestdata("b2b_ai_song.json"));
  ASSERT_TRUE(song.ok()) << song.status();
  EXPECT_EQ(song->phase, UpstreamStatus::Phase::kSucceeded);
  EXPECT_EQ(song->upstream_id, "6f1c2a9e-0b7d-4c55-9d1e-3f6f8a0c1b2d");
  ASSERT_EQ(song->outputs.size(), 1u);
  EXPECT_EQ(song->outputs[0].title, "Night Drive");
  EXPECT_DOUBLE_EQ(song->outputs[0].duration_seconds, 61.0);
  EXPECT_EQ(song->outputs[0].url, "https://cdn.example/assets/music_file/6f1c.mp3");
  EXPECT_EQ(song->outputs[0].bpm, 124);
  EXPECT_EQ(song->outputs[0].key, "D-minor");

  song = ParseAiSong(ReadTestdata("b2b_ai_song_empty_path.json"));
  ASSERT_TRUE(song.ok());
  EXPECT_EQ(song->phase, UpstreamStatus::Phase::kFailed);
  EXPECT_EQ(Reason(song->error), "PROVIDER_EMPTY_RESULT");
}

TEST(LoudlyParseTest, KeyNames) {
  EXPECT_EQ(NormalizeKeyName("D minor"), "D-minor");
  EXPECT_EQ(NormalizeKeyName("D Minor"), "D-minor");
  EXPECT_EQ(NormalizeKeyName("E-minor"), "E-minor");
  EXPECT_EQ(NormalizeKeyName("Ab/G# Major"), "Ab/G#-major");
  EXPECT_EQ(NormalizeKeyName(""), "");
}

std::string MakeJwt(const std::string& payload) {
  return absl::StrCat(Base64UrlEncode(R"({"alg":"RS256","typ":"JWT"})"), ".",
                      Base64UrlEncode(payload), ".c2ln");
}

TEST(LoudlyTokenTest, ExpiryComesFromJwtThenExpiresIn) {
  const absl::Time now = absl::FromUnixSeconds(1743670000);
  const std::string jwt =
      MakeJwt(R"({"aud":"Core","jti":"j","iat":1743670000,"nbf":1743670000,"exp":1743673600,)"
              R"("sub":"9b1deb4d-3b7d-4bad-9bdd-2b0d7b3dcb6d","scopes":[]})");
  EXPECT_EQ(JwtExpiry(jwt), absl::FromUnixSeconds(1743673600));
  auto grant =
      ParseTokenResponse(absl::StrCat(R"({"token_type":"Bearer","expires_in":60,"access_token":")",
                                      jwt, R"(","refresh_token":"r2"})"),
                         now);
  ASSERT_TRUE(grant.ok());
  EXPECT_EQ(grant->expiry, absl::FromUnixSeconds(1743673600));  // exp wins over expires_in
  EXPECT_EQ(grant->refresh_token, "r2");

  // The capture's redacted token is no JWT: fall back to expires_in.
  grant = ParseTokenResponse(ReadTestdata("web_token_response.json"), now);
  ASSERT_TRUE(grant.ok());
  EXPECT_EQ(grant->expiry, now + absl::Seconds(3600));
  EXPECT_EQ(grant->refresh_token, "<NEW_REFRESH_TOKEN>");

  EXPECT_FALSE(ParseTokenResponse(R"({"token_type":"Bearer"})", now).ok());
  EXPECT_EQ(JwtExpiry("not.a.jwt"), std::nullopt);
}

TEST(LoudlyLimitsTest, WebUsageMapBecomesFigures) {
  auto figures = ParseWebLimits(ReadTestdata("web_users_limits.json"));
  ASSERT_TRUE(figures.ok()) << figures.status();
  ASSERT_EQ(figures->size(), 7u);
  const absl::Time reset = absl::FromCivil(absl::CivilDay(2025, 4, 30), absl::UTCTimeZone());
  bool found = false;
  for (const auto& figure : *figures) {
    EXPECT_EQ(figure.reset_time, reset);
    if (figure.resource == "generate_vega_song") {
      found = true;
      EXPECT_EQ(figure.limit, 3000);
      EXPECT_EQ(figure.used, 9);
      EXPECT_EQ(figure.remaining, 2991);
    }
  }
  EXPECT_TRUE(found);

  figures =
      ParseWebLimits(R"({"usage_data":{"generate_vega_song":{"total":10,"used":4,"available":6,)"
                     R"("top_up":{"total":5,"used":1,"available":4}}}})");
  ASSERT_TRUE(figures.ok());
  ASSERT_EQ(figures->size(), 1u);
  EXPECT_EQ((*figures)[0].limit, 15);
  EXPECT_EQ((*figures)[0].used, 5);
  EXPECT_EQ((*figures)[0].remaining, 10);
  EXPECT_EQ((*figures)[0].reset_time, absl::InfinitePast());
}

TEST(LoudlyLimitsTest, B2BBothShapes) {
  auto figures = ParseB2BLimits(ReadTestdata("b2b_limits_array.json"));
  ASSERT_TRUE(figures.ok()) << figures.status();
  ASSERT_EQ(figures->size(), 2u);
  EXPECT_EQ((*figures)[0].resource, "GENERATE_VEGA_SONG_WITH_PROMPT");
  EXPECT_EQ((*figures)[0].limit, 15);
  EXPECT_EQ((*figures)[0].used, 3);
  EXPECT_EQ((*figures)[0].remaining, 12);
  EXPECT_EQ((*figures)[0].reset_time,
            absl::FromCivil(absl::CivilDay(2025, 11, 1), absl::UTCTimeZone()));

  figures = ParseB2BLimits(ReadTestdata("b2b_limits_object.json"));
  ASSERT_TRUE(figures.ok());
  ASSERT_EQ(figures->size(), 3u);
  EXPECT_EQ((*figures)[1].resource, "GET_SONGS");
  EXPECT_EQ((*figures)[1].remaining, 90);
  EXPECT_EQ((*figures)[2].resource, "top_up");
  EXPECT_EQ((*figures)[2].limit, 1000);
  EXPECT_EQ((*figures)[2].used, 50);
  EXPECT_EQ((*figures)[2].remaining, 950);

  EXPECT_FALSE(ParseB2BLimits(R"({"nope":1})").ok());
}

TEST(LoudlyCatalogTest, GenresStructuresPrompt) {
  auto genres = ParseGenres(ReadTestdata("b2b_genres.json"));
  ASSERT_TRUE(genres.ok());
  EXPECT_EQ(*genres, (std::vector<std::string>{"House", "Deep House", "Tech House", "Techno"}));
  auto structures = ParseStructures(ReadTestdata("b2b_structures.json"));
  ASSERT_TRUE(structures.ok());
  ASSERT_EQ(structures->size(), 2u);
  EXPECT_EQ((*structures)[1].id(), 2);
  EXPECT_EQ((*structures)[1].name(), "Intro-Verse-Chorus");
  auto prompt = ParseRandomPrompt(ReadTestdata("b2b_random_prompt.json"));
  ASSERT_TRUE(prompt.ok());
  EXPECT_TRUE(absl::StartsWith(*prompt, "A 90-second"));
}

TEST(LoudlyCatalogTest, CheckAgainstCatalogIsExactAndNamesTheField) {
  ProviderCatalog catalog;
  catalog.genres = {"House", "Deep House", "Techno"};
  musicgw::v1::SongStructure structure;
  structure.set_id(2);
  catalog.structures.push_back(structure);

  GenerateRequest request;
  request.mutable_parametric_music()->set_genre("Deep House");
  request.mutable_parametric_music()->set_genre_blend("Techno");
  request.mutable_parametric_music()->set_structure_id(2);
  EXPECT_TRUE(CheckAgainstCatalog(request, catalog).ok());

  request.mutable_parametric_music()->set_genre("deep house");
  absl::Status status = CheckAgainstCatalog(request, catalog);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  google::rpc::BadRequest bad;
  ASSERT_TRUE(GetBadRequest(status, &bad));
  ASSERT_EQ(bad.field_violations_size(), 1);
  EXPECT_EQ(bad.field_violations(0).field(), "parametric_music.genre");
  EXPECT_TRUE(absl::StrContains(status.message(), "did you mean \"Deep House\""));

  request.mutable_parametric_music()->set_genre("House");
  request.mutable_parametric_music()->set_genre_blend("Polka");
  ASSERT_TRUE(GetBadRequest(CheckAgainstCatalog(request, catalog), &bad));
  EXPECT_EQ(bad.field_violations(0).field(), "parametric_music.genre_blend");

  request.mutable_parametric_music()->clear_genre_blend();
  request.mutable_parametric_music()->set_structure_id(7);
  ASSERT_TRUE(GetBadRequest(CheckAgainstCatalog(request, catalog), &bad));
  EXPECT_EQ(bad.field_violations(0).field(), "parametric_music.structure_id");

  // No catalog: the provider judges.
  request.mutable_parametric_music()->set_genre("Anything");
  EXPECT_TRUE(CheckAgainstCatalog(request, ProviderCatalog{}).ok());
}

// The quota message's service name is provider text: a secret inside it is redacted wherever
// the name is repeated (message, ErrorInfo, QuotaFailure). Found by fuzz_loudly_wire.
TEST(LoudlyErrorTest, AQuotaServiceNameNeverCarriesASecret) {
  const std::string secret = "loudly-secret-0123456789";
  const ErrorContext context{"acct-1", {secret}};
  const absl::Status status = MapHttpError(
      500,
      absl::StrCat("{\"error\":\"External service calling limit exceeded: (service: ", secret,
                   "e, Timer seconds remaining: 5)\"}"),
      std::nullopt, context);
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_FALSE(absl::StrContains(status.ToString(), secret)) << status;
  google::rpc::ErrorInfo info;
  ASSERT_TRUE(GetErrorInfo(status, &info));
  EXPECT_EQ(info.metadata().at("service"), "[redacted]e");
}

TEST(LoudlyErrorTest, QuotaFiveHundredIsResourceExhaustedWithRetryInfo) {
  ASSERT_TRUE(ParseQuotaMessage("nope") == std::nullopt);
  const ErrorContext context{"acct-1", {}};
  const absl::Status status =
      MapHttpError(500, ReadTestdata("b2b_quota_500.json"), std::nullopt, context);
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  google::rpc::ErrorInfo info;
  ASSERT_TRUE(GetErrorInfo(status, &info));
  EXPECT_EQ(info.reason(), "PROVIDER_QUOTA_EXHAUSTED");
  EXPECT_EQ(info.domain(), "loudly.com");
  EXPECT_EQ(info.metadata().at("service"), "GENERATE_SONG_VEGA_1");
  EXPECT_EQ(info.metadata().at("attempts_remaining"), "0");
  google::rpc::RetryInfo retry;
  ASSERT_TRUE(GetRetryInfo(status, &retry));
  EXPECT_EQ(retry.retry_delay().seconds(), 3600);
  google::rpc::QuotaFailure quota;
  ASSERT_TRUE(GetQuotaFailure(status, &quota));
  ASSERT_EQ(quota.violations_size(), 1);
  EXPECT_EQ(quota.violations(0).subject(),
            "provider:loudly/account:acct-1/resource:GENERATE_SONG_VEGA_1");

  // Raw text body too.
  const absl::Status raw = MapHttpError(
      500,
      "External service calling limit exceeded: (service: generate_vega_song, Timer seconds "
      "remaining: 42, Attempts remaining: 1)",
      std::nullopt, context);
  ASSERT_TRUE(GetRetryInfo(raw, &retry));
  EXPECT_EQ(retry.retry_delay().seconds(), 42);
}

TEST(LoudlyErrorTest, BadRequestCarriesProviderError) {
  const absl::Status status =
      MapHttpError(400, ReadTestdata("b2b_error_400.json"), std::nullopt, {"acct", {}});
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  google::rpc::ErrorInfo info;
  ASSERT_TRUE(GetErrorInfo(status, &info));
  EXPECT_EQ(info.reason(), "PROVIDER_REJECTED");
  EXPECT_EQ(info.domain(), "loudly.com");
  EXPECT_EQ(info.metadata().at("error"), "invalid_genre");
  EXPECT_EQ(info.metadata().at("error_description"), "Genre \"Polka Step\" does not exist");
  EXPECT_EQ(info.metadata().at("http_status"), "400");
}

TEST(LoudlyErrorTest, ErrorTextFallsBackToMessageThenRawAndRedacts) {
  EXPECT_EQ(ReadErrorText(R"({"message":"bad thing"})", {}).error, "bad thing");
  const std::string long_text(1000, 'x');
  EXPECT_LE(ReadErrorText(long_text, {}).error.size(), 210u);
  const ErrorText text =
      ReadErrorText(R"({"error":"key sk_live_SECRET123 invalid, Bearer abcdefghijklmnop"})",
                    {"sk_live_SECRET123"});
  EXPECT_FALSE(absl::StrContains(text.error, "SECRET123"));
  EXPECT_FALSE(absl::StrContains(text.error, "abcdefghijklmnop"));
  EXPECT_EQ(Redact("token eyJhbGciOiJSUzI1NiJ9.eyJleHAiOjF9.sig end", {}), "token [redacted] end");
}

TEST(LoudlyErrorTest, AuthFailureBlamesTheGatewayConfiguration) {
  const absl::Status status =
      MapHttpError(401, R"({"error":"unauthorized"})", std::nullopt, {"acct", {"the-key-value"}});
  EXPECT_EQ(status.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(Reason(status), "PROVIDER_AUTH_FAILED");
  EXPECT_TRUE(absl::StrContains(status.message(), "not at fault"));
  EXPECT_FALSE(absl::StrContains(status.message(), "the-key-value"));
}

TEST(LoudlyErrorTest, OtherStatuses) {
  EXPECT_EQ(MapHttpError(503, "oops", std::nullopt, {}).code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(Reason(MapHttpError(503, "oops", std::nullopt, {})), "PROVIDER_UNAVAILABLE");
  EXPECT_EQ(MapHttpError(500, R"({"error":"internal"})", std::nullopt, {}).code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(MapHttpError(404, "", std::nullopt, {}).code(), absl::StatusCode::kNotFound);
  const absl::Status limited = MapHttpError(429, "", absl::Seconds(7), {});
  EXPECT_EQ(limited.code(), absl::StatusCode::kResourceExhausted);
  google::rpc::RetryInfo retry;
  ASSERT_TRUE(GetRetryInfo(limited, &retry));
  EXPECT_EQ(retry.retry_delay().seconds(), 7);
  EXPECT_EQ(MapTransportError(absl::DeadlineExceededError("t"), {}).code(),
            absl::StatusCode::kDeadlineExceeded);
}

TEST(LoudlyPollTest, IntervalsGrowFromMinToMax) {
  const absl::Duration min = absl::Seconds(1), max = absl::Seconds(8);
  EXPECT_EQ(NextPollInterval(absl::ZeroDuration(), min, max), min);
  EXPECT_EQ(NextPollInterval(absl::Seconds(-30), min, max), min);
  EXPECT_EQ(NextPollInterval(absl::Seconds(20), min, max), absl::Seconds(4));
  EXPECT_EQ(NextPollInterval(absl::Minutes(10), min, max), max);
  EXPECT_LE(NextPollInterval(absl::Seconds(10), min, max),
            NextPollInterval(absl::Seconds(30), min, max));
}

TEST(LoudlyTimeTest, ParsesOffsetsWithAndWithoutColon) {
  const auto a = ParseLoudlyTime("2025-04-03T11:04:42+0200");
  const auto b = ParseLoudlyTime("2025-04-03T11:04:42+02:00");
  const auto c = ParseLoudlyTime("2025-04-03T09:04:42Z");
  ASSERT_TRUE(a.has_value() && b.has_value() && c.has_value());
  EXPECT_EQ(*a, *b);
  EXPECT_EQ(*a, *c);
  EXPECT_EQ(ParseLoudlyTime("yesterday"), std::nullopt);
}

}  // namespace
}  // namespace musicgw::adapters::loudly
