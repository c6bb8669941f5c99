#include "adapters/soundpiece/soundpiece_wire.h"

#include <fstream>
#include <sstream>
#include <string>

#include "absl/strings/match.h"
#include "common/errors.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace musicgw::adapters::soundpiece {
namespace {

using json = nlohmann::json;
using Phase = UpstreamStatus::Phase;
namespace v1 = musicgw::v1;

constexpr char kKey[] = "550e8400-e29b-41d4-a716-446655440000";
constexpr char kOp[] = "op_01hx7k3m9q2w5e8r4t6y1u0p3a";

std::string Testdata(const std::string& name) {
  std::ifstream in(std::string(MUSICGW_SOUNDPIECE_TESTDATA) + "/" + name);
  EXPECT_TRUE(in.good()) << name;
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

const Route& RouteOf(v1::TaskKind task) {
  const Route* route = RouteForTask(task);
  EXPECT_NE(route, nullptr);
  return *route;
}

// ---- Request bodies: one per §10 example ----

void ExpectBody(const v1::GenerateRequest& request, const std::string& file) {
  auto body = BuildSubmitBody(request, kKey, "");
  ASSERT_TRUE(body.ok()) << body.status();
  EXPECT_EQ(json::parse(*body), json::parse(Testdata(file))) << *body;
}

TEST(SoundpieceBodyTest, NewSong) {
  v1::GenerateRequest request;
  request.mutable_song()->set_lyrics("[Verse]\nNeon rain");
  request.mutable_song()->set_prompt("synthwave, melancholic");
  ExpectBody(request, "new_song.request.json");
}

TEST(SoundpieceBodyTest, NewInstrumentalWithReference) {
  v1::GenerateRequest request;
  request.mutable_instrumental()->mutable_reference()->set_url("https://files.example.com/ref.mp3");
  ExpectBody(request, "new_instrumental.request.json");
}

TEST(SoundpieceBodyTest, NewSample) {
  v1::GenerateRequest request;
  request.mutable_sample()->set_prompt("rock, guitar, energetic, no drums");
  request.mutable_sample()->set_duration_seconds(8);
  request.mutable_sample()->set_loopable(true);
  ExpectBody(request, "new_sample.request.json");
}

TEST(SoundpieceBodyTest, NewFx) {
  v1::GenerateRequest request;
  request.mutable_sound_effect()->set_prompt("someone typing on a keyboard");
  request.mutable_sound_effect()->set_duration_seconds(3.5);
  ExpectBody(request, "new_fx.request.json");
}

TEST(SoundpieceBodyTest, RemixSong) {
  v1::GenerateRequest request;
  auto* task = request.mutable_remix_song();
  task->mutable_source()->set_url("https://files.example.com/song.wav");
  task->set_lyrics("[Chorus]\nHold on");
  task->set_prompt("acoustic, intimate");
  task->set_variations(2);
  ExpectBody(request, "remix_song.request.json");
}

TEST(SoundpieceBodyTest, RemixInstrumental) {
  v1::GenerateRequest request;
  request.mutable_remix_instrumental()->mutable_source()->set_url(
      "https://files.example.com/beat.flac");
  ExpectBody(request, "remix_instrumental.request.json");
}

TEST(SoundpieceBodyTest, SeparateStems) {
  v1::GenerateRequest request;
  request.mutable_separate_stems()->mutable_source()->set_url("https://files.example.com/mix.wav");
  ExpectBody(request, "separate_stems.request.json");
}

TEST(SoundpieceBodyTest, AutoCutDown) {
  v1::GenerateRequest request;
  request.mutable_cut_down()->mutable_source()->set_url("https://files.example.com/track.wav");
  request.mutable_cut_down()->set_target_duration_seconds(30);
  ExpectBody(request, "auto_cut_down.request.json");
}

TEST(SoundpieceBodyTest, TextToMusicIsAnInstrumentalWithPromptAndCallbackUrl) {
  v1::GenerateRequest request;
  request.mutable_text_to_music()->set_prompt("lofi beats");
  auto body = BuildSubmitBody(request, kKey, "https://gw.example.com/webhooks/soundpiece");
  ASSERT_TRUE(body.ok());
  EXPECT_EQ(json::parse(*body),
            (json{{"idempotency_key", kKey},
                  {"prompt", "lofi beats"},
                  {"callback_url", "https://gw.example.com/webhooks/soundpiece"}}));
  EXPECT_STREQ(RouteOf(v1::TASK_KIND_TEXT_TO_MUSIC).name, "create.new_instrumental");
}

TEST(SoundpieceBodyTest, LoudlyTasksHaveNoRoute) {
  EXPECT_EQ(RouteForTask(v1::TASK_KIND_PARAMETRIC_MUSIC), nullptr);
  v1::GenerateRequest request;
  request.mutable_parametric_music()->set_genre("House");
  EXPECT_EQ(BuildSubmitBody(request, kKey, "").status().code(), absl::StatusCode::kInvalidArgument);
}

// ---- Answers: every §10 example ----

TEST(SoundpieceParseTest, PutAnswersAreRunning) {
  for (const auto& [file, task] :
       {std::pair{"new_song.put.json", v1::TASK_KIND_SONG},
        std::pair{"new_instrumental.put.json", v1::TASK_KIND_INSTRUMENTAL}}) {
    auto status = ParseOperation(Testdata(file), RouteOf(task));
    ASSERT_TRUE(status.ok()) << file << ": " << status.status();
    EXPECT_EQ(status->phase, Phase::kRunning) << file;
    EXPECT_EQ(status->upstream_id, kOp);
    EXPECT_TRUE(status->outputs.empty());
  }
}

struct ReadyCase {
  const char* file;
  v1::TaskKind task;
  std::vector<v1::AssetKind> kinds;
  double first_duration;
};

TEST(SoundpieceParseTest, ReadyAnswersOfEveryRoute) {
  const std::vector<ReadyCase> cases = {
      {"new_song.ready.json", v1::TASK_KIND_SONG, {v1::ASSET_KIND_MIX, v1::ASSET_KIND_MIX}, 87.4},
      {"new_sample.ready.json", v1::TASK_KIND_SAMPLE, {v1::ASSET_KIND_SAMPLE}, 8.0},
      {"new_fx.ready.json", v1::TASK_KIND_SOUND_EFFECT, {v1::ASSET_KIND_SOUND_EFFECT}, 3.5},
      {"remix_song.ready.json",
       v1::TASK_KIND_REMIX_SONG,
       {v1::ASSET_KIND_MIX, v1::ASSET_KIND_MIX},
       180.0},
      {"remix_instrumental.ready.json",
       v1::TASK_KIND_REMIX_INSTRUMENTAL,
       {v1::ASSET_KIND_MIX},
       120.0},
      {"separate_stems.ready.json",
       v1::TASK_KIND_SEPARATE_STEMS,
       {v1::ASSET_KIND_STEM_VOCALS, v1::ASSET_KIND_STEM_DRUMS, v1::ASSET_KIND_STEM_BASS,
        v1::ASSET_KIND_STEM_OTHER},
       201.3},
      {"auto_cut_down.ready.json", v1::TASK_KIND_CUT_DOWN, {v1::ASSET_KIND_MIX}, 30.6},
  };
  absl::Time expires;
  std::string error;
  ASSERT_TRUE(absl::ParseTime(absl::RFC3339_full, "2026-05-20T12:50:21Z", &expires, &error));
  for (const ReadyCase& c : cases) {
    SCOPED_TRACE(c.file);
    auto status = ParseOperation(Testdata(c.file), RouteOf(c.task));
    ASSERT_TRUE(status.ok()) << status.status();
    EXPECT_EQ(status->phase, Phase::kSucceeded);
    EXPECT_EQ(status->upstream_id, kOp);
    ASSERT_EQ(status->outputs.size(), c.kinds.size());
    for (size_t i = 0; i < c.kinds.size(); ++i) {
      const ProviderOutput& output = status->outputs[i];
      EXPECT_EQ(output.kind, c.kinds[i]) << i;
      EXPECT_EQ(output.format, v1::AUDIO_FORMAT_FLAC);
      EXPECT_EQ(output.content_type, "audio/flac");
      EXPECT_TRUE(absl::StartsWith(output.url, "https://cdn.soundpiece.co/"));
      EXPECT_EQ(output.url_expire_time, expires);
    }
    EXPECT_DOUBLE_EQ(status->outputs[0].duration_seconds, c.first_duration);
  }
}

TEST(SoundpieceParseTest, FailedAnswer) {
  auto status = ParseOperation(Testdata("new_sample.failed.json"), RouteOf(v1::TASK_KIND_SAMPLE));
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_EQ(status->phase, Phase::kFailed);
  EXPECT_EQ(status->error.code(), absl::StatusCode::kInternal);
  google::rpc::ErrorInfo info;
  ASSERT_TRUE(GetErrorInfo(status->error, &info));
  EXPECT_EQ(info.reason(), "PROVIDER_OPERATION_FAILED");
  EXPECT_EQ(info.domain(), "soundpiece.co");
  EXPECT_EQ(info.metadata().at("provider_code"), "internal_error");
  EXPECT_EQ(info.metadata().at("provider_message"), "Generation failed");
}

TEST(SoundpieceParseTest, Webhooks) {
  auto failed = ParseWebhookEvent(Testdata("webhook.new_sample.failed.json"));
  ASSERT_TRUE(failed.ok()) << failed.status();
  EXPECT_EQ(failed->phase, Phase::kFailed);
  EXPECT_EQ(failed->upstream_id, kOp);
  auto ready = ParseWebhookEvent(Testdata("webhook.new_song.ready.json"));
  ASSERT_TRUE(ready.ok()) << ready.status();
  EXPECT_EQ(ready->phase, Phase::kSucceeded);
  EXPECT_EQ(ready->outputs.size(), 2u);
  // The type names the outcome when the DTO lacks a status; stems keep their kinds.
  auto stems = ParseWebhookEvent(R"({"type":"adapt.separate_stems.ready","data":{"id":"op_x",
      "outputs":[{"kind":"drums","url":"https://c/x","expires_at":"2026-05-20T12:50:21Z"}]}})");
  ASSERT_TRUE(stems.ok()) << stems.status();
  EXPECT_EQ(stems->phase, Phase::kSucceeded);
  EXPECT_EQ(stems->outputs[0].kind, v1::ASSET_KIND_STEM_DRUMS);
  for (const char* bad : {"", "[]", R"({"type":"x"})", R"({"type":"create.nope.ready","data":{}})",
                          R"({"type":"create.new_song.ready"})",
                          R"({"type":"create.new_song.ready","data":{"status":"ready"}})"}) {
    EXPECT_EQ(ParseWebhookEvent(bad).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

// ---- Leniency ----

TEST(SoundpieceLeniencyTest, UnknownFieldsAreIgnored) {
  auto status = ParseOperation(
      R"({"sample":{"id":"op_a","status":"ready","new_field":{"x":[1,2]},"priority":3,
          "output":{"url":"https://c/a","expires_at":"2026-05-20T12:50:21Z","duration":8,
                    "bitrate":1411,"sha":"abc"}},"request_id":"r-1"})",
      RouteOf(v1::TASK_KIND_SAMPLE));
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_EQ(status->phase, Phase::kSucceeded);
  ASSERT_EQ(status->outputs.size(), 1u);
}

TEST(SoundpieceLeniencyTest, OutputsOrOutputWhicheverIsThere) {
  auto list = ParseOperation(
      R"({"sample":{"id":"op_a","status":"ready","outputs":[{"url":"https://c/a"},{"url":"https://c/b"}]}})",
      RouteOf(v1::TASK_KIND_SAMPLE));
  ASSERT_TRUE(list.ok()) << list.status();
  EXPECT_EQ(list->outputs.size(), 2u);
  auto single =
      ParseOperation(R"({"song":{"id":"op_a","status":"ready","output":{"url":"https://c/a"}}})",
                     RouteOf(v1::TASK_KIND_SONG));
  ASSERT_TRUE(single.ok()) << single.status();
  ASSERT_EQ(single->outputs.size(), 1u);
  EXPECT_EQ(single->outputs[0].url_expire_time, absl::InfiniteFuture());  // no expires_at
}

TEST(SoundpieceLeniencyTest, UnexpectedWrapperTakesTheSingleObject) {
  auto wrapped =
      ParseOperation(R"({"new_instrumental":{"id":"op_a","status":"processing"},"meta":"x","n":1})",
                     RouteOf(v1::TASK_KIND_INSTRUMENTAL));
  ASSERT_TRUE(wrapped.ok()) << wrapped.status();
  EXPECT_EQ(wrapped->upstream_id, "op_a");
  auto bare = ParseOperation(R"({"id":"op_b","status":"processing","outputs":null})",
                             RouteOf(v1::TASK_KIND_INSTRUMENTAL));
  ASSERT_TRUE(bare.ok()) << bare.status();
  EXPECT_EQ(bare->upstream_id, "op_b");
  EXPECT_FALSE(ParseOperation(R"({"a":{"id":"op_a"},"b":{"id":"op_b"}})",
                              RouteOf(v1::TASK_KIND_INSTRUMENTAL))
                   .ok());
}

TEST(SoundpieceLeniencyTest, UnknownStatusIsStillRunning) {
  for (const char* state : {"queued", "rendering", "QUEUED_FOR_GPU", ""}) {
    auto status =
        ParseOperation(absl::StrCat(R"({"song":{"id":"op_a","status":")", state, R"("}})"),
                       RouteOf(v1::TASK_KIND_SONG));
    ASSERT_TRUE(status.ok()) << state << ": " << status.status();
    EXPECT_EQ(status->phase, Phase::kRunning) << state;
  }
}

TEST(SoundpieceLeniencyTest, ErrorCodesMapToInternalUnlessInputRelated) {
  auto parse = [](const std::string& error) {
    return ParseOperation(
        absl::StrCat(R"({"song":{"id":"op_a","status":"failed","error":)", error, "}}"),
        RouteOf(v1::TASK_KIND_SONG));
  };
  EXPECT_EQ(parse(R"({"code":"gpu_on_fire","message":"?"})")->error.code(),
            absl::StatusCode::kInternal);
  EXPECT_EQ(parse(R"({"message":"only a message"})")->error.code(), absl::StatusCode::kInternal);
  EXPECT_EQ(parse("null")->error.code(), absl::StatusCode::kInternal);
  EXPECT_EQ(parse(R"({"code":"source_unreadable","message":"cannot fetch"})")->error.code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(parse(R"({"code":"content_policy_violation","message":"no"})")->error.code(),
            absl::StatusCode::kInvalidArgument);
  google::rpc::ErrorInfo info;
  ASSERT_TRUE(GetErrorInfo(parse(R"({"message":"m"})")->error, &info));
  EXPECT_EQ(info.metadata().at("provider_code"), "internal_error");
}

TEST(SoundpieceLeniencyTest, UnreadableAnswers) {
  const Route& route = RouteOf(v1::TASK_KIND_SONG);
  EXPECT_FALSE(ParseOperation("<html>502</html>", route).ok());
  EXPECT_FALSE(ParseOperation(R"({"song":{"id":"op_a","status":"pro)", route).ok());
  EXPECT_FALSE(ParseOperation(R"({"song":{"status":"ready"}})", route).ok());  // no id
  EXPECT_FALSE(
      ParseOperation(R"({"song":{"id":"op_a","status":"ready","outputs":[{"duration":1}]}})",
                     route)
          .ok());  // an output without url
  auto empty = ParseOperation(R"({"song":{"id":"op_a","status":"ready","outputs":[]}})", route);
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(empty->phase, Phase::kFailed);
}

// ---- HTTP error mapping ----

ErrorContext Put(v1::TaskKind task = v1::TASK_KIND_SONG) {
  return {"acct", RouteOf(task).name, /*is_submit=*/true, task};
}
ErrorContext Get(v1::TaskKind task = v1::TASK_KIND_SONG) {
  return {"acct", RouteOf(task).name, /*is_submit=*/false, task};
}
std::string Reason(const absl::Status& status) {
  google::rpc::ErrorInfo info;
  return GetErrorInfo(status, &info) ? info.reason() : "";
}

TEST(SoundpieceErrorTest, ValidationErrorsBecomeFieldViolations) {
  const std::string body = R"({"detail":[
      {"loc":["body","lyrics"],"msg":"String should have at least 1 character","type":"string_too_short"},
      {"loc":["body","reference","url"],"msg":"Input should be a valid URL","type":"url_parsing"},
      {"loc":["body","callback_url"],"msg":"bad","type":"url_parsing"}]})";
  const absl::Status status = MapHttpError(422, body, std::nullopt, Put());
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Reason(status), "PROVIDER_REJECTED");
  google::rpc::BadRequest bad;
  ASSERT_TRUE(GetBadRequest(status, &bad));
  ASSERT_EQ(bad.field_violations_size(), 3);
  EXPECT_EQ(bad.field_violations(0).field(), "song.lyrics");
  EXPECT_TRUE(absl::StrContains(bad.field_violations(0).description(), "string_too_short"));
  EXPECT_EQ(bad.field_violations(1).field(), "song.reference.url");
  EXPECT_EQ(bad.field_violations(2).field(), "song");  // nothing of the caller's
  EXPECT_EQ(FieldPathForLoc(v1::TASK_KIND_SAMPLE, {"body", "duration"}), "sample.duration_seconds");
  EXPECT_EQ(FieldPathForLoc(v1::TASK_KIND_REMIX_SONG, {"body", "n_variations"}),
            "remix_song.variations");
  EXPECT_EQ(FieldPathForLoc(v1::TASK_KIND_CUT_DOWN, {"body", "target_duration"}),
            "cut_down.target_duration_seconds");
  EXPECT_EQ(FieldPathForLoc(v1::TASK_KIND_TEXT_TO_MUSIC, {"body", "prompt"}),
            "text_to_music.prompt");
  EXPECT_EQ(FieldPathForLoc(v1::TASK_KIND_SEPARATE_STEMS, {"body", "source"}),
            "separate_stems.source.url");
}

TEST(SoundpieceErrorTest, AuthFailureIsTheGatewaysOwnConfiguration) {
  const absl::Status status = MapHttpError(
      401, R"({"detail":"Missing or invalid Authorization header"})", std::nullopt, Put());
  EXPECT_EQ(status.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(Reason(status), "PROVIDER_AUTH_FAILED");
  EXPECT_TRUE(absl::StrContains(status.message(), "not at fault"));
  EXPECT_FALSE(absl::StrContains(status.message(), "your API key"));
}

TEST(SoundpieceErrorTest, OutOfCreditsIsQuota) {
  const absl::Status status =
      MapHttpError(402, R"({"detail":"Insufficient credits"})", std::nullopt, Put());
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(Reason(status), "PROVIDER_QUOTA_EXHAUSTED");
  google::rpc::QuotaFailure quota;
  ASSERT_TRUE(GetQuotaFailure(status, &quota));
  ASSERT_EQ(quota.violations_size(), 1);
  EXPECT_EQ(quota.violations(0).subject(), "provider:soundpiece/account:acct/resource:credits");
}

TEST(SoundpieceErrorTest, EveryOtherStatus) {
  struct Case {
    int http;
    bool submit;
    absl::StatusCode code;
    const char* reason;
  };
  for (const Case& c : std::vector<Case>{
           {400, true, absl::StatusCode::kInvalidArgument, "PROVIDER_REJECTED"},
           {404, true, absl::StatusCode::kFailedPrecondition, "PROVIDER_ENDPOINT_MISSING"},
           {405, true, absl::StatusCode::kFailedPrecondition, "PROVIDER_ENDPOINT_MISSING"},
           {404, false, absl::StatusCode::kFailedPrecondition, "PROVIDER_ENDPOINT_MISSING"},
           {409, true, absl::StatusCode::kAlreadyExists, "PROVIDER_IDEMPOTENCY_CONFLICT"},
           {429, true, absl::StatusCode::kResourceExhausted, "PROVIDER_RATE_LIMITED"},
           {500, true, absl::StatusCode::kUnavailable, "PROVIDER_UNAVAILABLE"},
           {503, false, absl::StatusCode::kUnavailable, "PROVIDER_UNAVAILABLE"},
           {422, false, absl::StatusCode::kNotFound, "PROVIDER_OPERATION_UNKNOWN"},
           {400, false, absl::StatusCode::kNotFound, "PROVIDER_OPERATION_UNKNOWN"},
           {401, false, absl::StatusCode::kUnauthenticated, "PROVIDER_AUTH_FAILED"},
           {402, false, absl::StatusCode::kResourceExhausted, "PROVIDER_QUOTA_EXHAUSTED"},
           {302, true, absl::StatusCode::kInternal, "PROVIDER_UNEXPECTED_STATUS"},
       }) {
    const absl::Status status =
        MapHttpError(c.http, R"({"detail":"x"})", absl::Seconds(7), c.submit ? Put() : Get());
    EXPECT_EQ(status.code(), c.code) << c.http << (c.submit ? " PUT" : " GET");
    EXPECT_EQ(Reason(status), c.reason) << c.http;
  }
  google::rpc::RetryInfo retry;
  ASSERT_TRUE(GetRetryInfo(MapHttpError(429, "", absl::Seconds(7), Put()), &retry));
  EXPECT_EQ(retry.retry_delay().seconds(), 7);
}

TEST(SoundpieceErrorTest, TransportErrorsKeepTheirCode) {
  const absl::Status timeout = MapTransportError(absl::DeadlineExceededError("t"), Put());
  EXPECT_EQ(timeout.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(Reason(timeout), "PROVIDER_TIMEOUT");
  const absl::Status refused = MapTransportError(absl::UnavailableError("r"), Put());
  EXPECT_EQ(refused.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(Reason(refused), "PROVIDER_UNREACHABLE");
  EXPECT_EQ(Reason(BadResponseError(absl::InvalidArgumentError("x"), Put())),
            "PROVIDER_BAD_RESPONSE");
}

}  // namespace
}  // namespace musicgw::adapters::soundpiece
