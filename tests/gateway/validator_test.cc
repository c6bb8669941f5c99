#include "services/gateway/validator.h"

#include <cmath>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "adapters/capabilities.h"
#include "common/errors.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/reflection.h"
#include "gtest/gtest.h"
#include "services/operations/ids.h"

namespace musicgw::gateway {
namespace {

using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using musicgw::v1::GenerateRequest;
using musicgw::v1::Provider;

constexpr char kRequestId[] = "123e4567-e89b-12d3-a456-426614174000";
const std::vector<Provider> kBoth = {musicgw::v1::PROVIDER_LOUDLY,
                                     musicgw::v1::PROVIDER_SOUNDPIECE};

// The smallest valid request for each task.
GenerateRequest Minimal(musicgw::v1::TaskKind task) {
  GenerateRequest request;
  request.set_request_id(kRequestId);
  switch (task) {
    case musicgw::v1::TASK_KIND_PARAMETRIC_MUSIC:
      request.mutable_parametric_music()->set_genre("House");
      break;
    case musicgw::v1::TASK_KIND_TEXT_TO_MUSIC:
      request.mutable_text_to_music()->set_prompt("calm piano");
      break;
    case musicgw::v1::TASK_KIND_SONG:
      request.mutable_song()->set_lyrics("[Verse]\nNeon rain");
      request.mutable_song()->set_prompt("synthwave");
      break;
    case musicgw::v1::TASK_KIND_INSTRUMENTAL:
      request.mutable_instrumental()->set_prompt("lofi beat");
      break;
    case musicgw::v1::TASK_KIND_SAMPLE:
      request.mutable_sample()->set_prompt("rock guitar");
      request.mutable_sample()->set_duration_seconds(8);
      break;
    case musicgw::v1::TASK_KIND_SOUND_EFFECT:
      request.mutable_sound_effect()->set_prompt("typing");
      request.mutable_sound_effect()->set_duration_seconds(3.5);
      break;
    case musicgw::v1::TASK_KIND_REMIX_SONG:
      request.mutable_remix_song()->mutable_source()->set_url("https://files.example.com/a.wav");
      request.mutable_remix_song()->set_lyrics("[Chorus]\nla");
      request.mutable_remix_song()->set_prompt("acoustic");
      break;
    case musicgw::v1::TASK_KIND_REMIX_INSTRUMENTAL:
      request.mutable_remix_instrumental()->mutable_source()->set_url("https://x.example/b.flac");
      break;
    case musicgw::v1::TASK_KIND_SEPARATE_STEMS:
      request.mutable_separate_stems()->mutable_source()->set_url("https://x.example/mix.wav");
      break;
    case musicgw::v1::TASK_KIND_CUT_DOWN:
      request.mutable_cut_down()->mutable_source()->set_url("https://x.example/t.wav");
      request.mutable_cut_down()->set_target_duration_seconds(30);
      break;
    default:
      break;
  }
  return request;
}

// Sets the scalar at `path` ("sample.duration_seconds") from a number or a string.
void SetPath(Message* message, const std::string& path, double number, const std::string& text) {
  std::vector<std::string> parts = absl::StrSplit(path, '.');
  for (size_t i = 0; i < parts.size(); ++i) {
    const FieldDescriptor* field = message->GetDescriptor()->FindFieldByName(parts[i]);
    ASSERT_NE(field, nullptr) << path;
    const auto* reflection = message->GetReflection();
    if (i + 1 < parts.size()) {
      message = reflection->MutableMessage(message, field);
      continue;
    }
    switch (field->cpp_type()) {
      case FieldDescriptor::CPPTYPE_INT32:
        reflection->SetInt32(message, field, static_cast<int32_t>(number));
        break;
      case FieldDescriptor::CPPTYPE_DOUBLE:
        reflection->SetDouble(message, field, number);
        break;
      case FieldDescriptor::CPPTYPE_STRING:
        reflection->SetString(message, field, text);
        break;
      default:
        FAIL() << "unsupported field type at " << path;
    }
  }
}

std::string ViolationField(const absl::Status& status) {
  google::rpc::BadRequest bad;
  if (!GetBadRequest(status, &bad) || bad.field_violations_size() == 0) return "";
  return bad.field_violations(0).field();
}

TEST(ValidatorTest, EveryMinimalRequestIsValidForItsProviders) {
  for (int t = 1; t <= 10; ++t) {
    const auto task = static_cast<musicgw::v1::TaskKind>(t);
    for (Provider provider : adapters::ProvidersFor(task)) {
      GenerateRequest request = Minimal(task);
      request.set_provider(provider);
      const absl::Status result = ValidateGenerate(request);
      EXPECT_TRUE(result.ok()) << musicgw::v1::TaskKind_Name(task) << " on "
                               << musicgw::v1::Provider_Name(provider) << ": " << result;
    }
  }
}

// Both sides of every numeric and length bound in the capability table, for every provider.
TEST(ValidatorTest, BothSidesOfEveryBoundInTheTable) {
  int checked = 0;
  for (Provider provider : kBoth) {
    for (const auto& capability : adapters::Capabilities(provider)) {
      for (const auto& spec : capability.parameters()) {
        const std::string& path = spec.field();
        if (spec.unit() == "enum" || spec.unit() == "bool" || spec.unit() == "items") continue;
        const bool text = spec.unit() == "characters" || spec.unit() == "url";
        auto attempt = [&](double number, const std::string& value) {
          GenerateRequest request = Minimal(capability.task());
          request.set_provider(provider);
          // A reference replaces the prompt: exactly one of the two may be set.
          if (absl::StrContains(path, ".reference.")) {
            if (request.has_song()) request.mutable_song()->clear_prompt();
            if (request.has_instrumental()) request.mutable_instrumental()->clear_prompt();
          }
          SetPath(&request, path, number, value);
          return ValidateGenerate(request);
        };
        auto text_of = [&](int chars) {
          if (spec.unit() == "url") {
            const std::string base = "https://x.example/";
            return chars < static_cast<int>(base.size()) + 1
                       ? base + "a"
                       : base + std::string(chars - base.size(), 'a');
          }
          return std::string(chars, 'a');
        };
        const std::string where = absl::StrCat(musicgw::v1::Provider_Name(provider), " ", path);
        if (text) {
          if (spec.unit() != "url") {
            EXPECT_TRUE(attempt(0, text_of(static_cast<int>(spec.min()))).ok()) << where;
          }
          EXPECT_TRUE(attempt(0, text_of(static_cast<int>(spec.max()))).ok()) << where;
          absl::Status over = attempt(0, text_of(static_cast<int>(spec.max()) + 1));
          EXPECT_EQ(over.code(), absl::StatusCode::kInvalidArgument) << where;
          EXPECT_EQ(ViolationField(over), path) << where;
        } else {
          const GenerateRequest probe = Minimal(capability.task());
          const Message* owner = &probe;
          const FieldDescriptor* leaf = nullptr;
          for (const auto& part : std::vector<std::string>(absl::StrSplit(path, '.'))) {
            if (leaf != nullptr) owner = &owner->GetReflection()->GetMessage(*owner, leaf);
            leaf = owner->GetDescriptor()->FindFieldByName(part);
          }
          const double step = leaf->cpp_type() == FieldDescriptor::CPPTYPE_DOUBLE ? 0.001 : 1;
          EXPECT_EQ(attempt(spec.min(), "").ok(), !spec.min_exclusive()) << where;
          EXPECT_TRUE(attempt(spec.min() + step, "").ok()) << where;
          EXPECT_TRUE(attempt(spec.max(), "").ok()) << where;
          absl::Status over = attempt(spec.max() + step, "");
          EXPECT_EQ(over.code(), absl::StatusCode::kInvalidArgument) << where;
          EXPECT_EQ(ViolationField(over), path) << where;
          if (spec.min() > 0 || spec.min_exclusive()) {
            absl::Status under = attempt(spec.min() - (spec.min_exclusive() ? 0 : step), "");
            EXPECT_EQ(ViolationField(under), path) << where;
          }
        }
        ++checked;
      }
    }
  }
  EXPECT_GT(checked, 20);
}

struct Rejection {
  std::string name;
  std::function<void(GenerateRequest&)> mutate;
  musicgw::v1::TaskKind task;
  std::string field;
};

TEST(ValidatorTest, RejectsEachBadInputNamingTheField) {
  using musicgw::v1::TaskKind;
  const std::vector<Rejection> cases = {
      {"missing request_id", [](GenerateRequest& r) { r.clear_request_id(); },
       musicgw::v1::TASK_KIND_SAMPLE, "request_id"},
      {"malformed request_id", [](GenerateRequest& r) { r.set_request_id("abc"); },
       musicgw::v1::TASK_KIND_SAMPLE, "request_id"},
      {"no task", [](GenerateRequest& r) { r.clear_task(); }, musicgw::v1::TASK_KIND_SAMPLE,
       "task"},
      {"unknown provider", [](GenerateRequest& r) { r.set_provider(static_cast<Provider>(9)); },
       musicgw::v1::TASK_KIND_SAMPLE, "provider"},
      {"provider cannot do the task",
       [](GenerateRequest& r) { r.set_provider(musicgw::v1::PROVIDER_LOUDLY); },
       musicgw::v1::TASK_KIND_SAMPLE, "sample"},
      {"soundpiece cannot honour a duration on text-to-music",
       [](GenerateRequest& r) {
         r.set_provider(musicgw::v1::PROVIDER_SOUNDPIECE);
         r.mutable_text_to_music()->set_duration_seconds(60);
       },
       musicgw::v1::TASK_KIND_TEXT_TO_MUSIC, "text_to_music.duration_seconds"},
      {"duration below Loudly's 30 s",
       [](GenerateRequest& r) { r.mutable_parametric_music()->set_duration_seconds(29); },
       musicgw::v1::TASK_KIND_PARAMETRIC_MUSIC, "parametric_music.duration_seconds"},
      {"missing genre", [](GenerateRequest& r) { r.mutable_parametric_music()->clear_genre(); },
       musicgw::v1::TASK_KIND_PARAMETRIC_MUSIC, "parametric_music.genre"},
      {"blank genre", [](GenerateRequest& r) { r.mutable_parametric_music()->set_genre("  "); },
       musicgw::v1::TASK_KIND_PARAMETRIC_MUSIC, "parametric_music.genre"},
      {"unknown instrument",
       [](GenerateRequest& r) { r.mutable_parametric_music()->add_instruments("kazoo"); },
       musicgw::v1::TASK_KIND_PARAMETRIC_MUSIC, "parametric_music.instruments[0]"},
      {"duplicate instrument",
       [](GenerateRequest& r) {
         r.mutable_parametric_music()->add_instruments("drums");
         r.mutable_parametric_music()->add_instruments("DRUMS");
       },
       musicgw::v1::TASK_KIND_PARAMETRIC_MUSIC, "parametric_music.instruments[1]"},
      {"too many instruments",
       [](GenerateRequest& r) {
         for (int i = 0; i < 11; ++i) r.mutable_parametric_music()->add_instruments("drums");
       },
       musicgw::v1::TASK_KIND_PARAMETRIC_MUSIC, "parametric_music.instruments"},
      {"unknown key root",
       [](GenerateRequest& r) {
         r.mutable_parametric_music()->set_key_root(static_cast<musicgw::v1::KeyRoot>(40));
       },
       musicgw::v1::TASK_KIND_PARAMETRIC_MUSIC, "parametric_music.key_root"},
      {"unknown key quality",
       [](GenerateRequest& r) {
         r.mutable_parametric_music()->set_key_quality(static_cast<musicgw::v1::KeyQuality>(7));
       },
       musicgw::v1::TASK_KIND_PARAMETRIC_MUSIC, "parametric_music.key_quality"},
      {"unknown energy",
       [](GenerateRequest& r) {
         r.mutable_parametric_music()->set_energy(static_cast<musicgw::v1::Energy>(9));
       },
       musicgw::v1::TASK_KIND_PARAMETRIC_MUSIC, "parametric_music.energy"},
      {"bpm too high", [](GenerateRequest& r) { r.mutable_parametric_music()->set_bpm(241); },
       musicgw::v1::TASK_KIND_PARAMETRIC_MUSIC, "parametric_music.bpm"},
      {"song with prompt and reference",
       [](GenerateRequest& r) { r.mutable_song()->mutable_reference()->set_url("https://a.b/c"); },
       musicgw::v1::TASK_KIND_SONG, "song.reference"},
      {"song with neither", [](GenerateRequest& r) { r.mutable_song()->clear_prompt(); },
       musicgw::v1::TASK_KIND_SONG, "song.prompt"},
      {"song without lyrics", [](GenerateRequest& r) { r.mutable_song()->clear_lyrics(); },
       musicgw::v1::TASK_KIND_SONG, "song.lyrics"},
      {"lyrics too long",
       [](GenerateRequest& r) { r.mutable_song()->set_lyrics(std::string(3001, 'l')); },
       musicgw::v1::TASK_KIND_SONG, "song.lyrics"},
      {"reference without url",
       [](GenerateRequest& r) {
         r.mutable_instrumental()->clear_prompt();
         r.mutable_instrumental()->mutable_reference();
       },
       musicgw::v1::TASK_KIND_INSTRUMENTAL, "instrumental.reference.url"},
      {"reference not http",
       [](GenerateRequest& r) {
         r.mutable_instrumental()->clear_prompt();
         r.mutable_instrumental()->mutable_reference()->set_url("file:///etc/passwd");
       },
       musicgw::v1::TASK_KIND_INSTRUMENTAL, "instrumental.reference.url"},
      {"sample without duration",
       [](GenerateRequest& r) { r.mutable_sample()->clear_duration_seconds(); },
       musicgw::v1::TASK_KIND_SAMPLE, "sample.duration_seconds"},
      {"negative sample duration",
       [](GenerateRequest& r) { r.mutable_sample()->set_duration_seconds(-1); },
       musicgw::v1::TASK_KIND_SAMPLE, "sample.duration_seconds"},
      {"effect shorter than 0.5 s",
       [](GenerateRequest& r) { r.mutable_sound_effect()->set_duration_seconds(0.4); },
       musicgw::v1::TASK_KIND_SOUND_EFFECT, "sound_effect.duration_seconds"},
      {"four variations",
       [](GenerateRequest& r) { r.mutable_remix_instrumental()->set_variations(4); },
       musicgw::v1::TASK_KIND_REMIX_INSTRUMENTAL, "remix_instrumental.variations"},
      {"zero variations", [](GenerateRequest& r) { r.mutable_remix_song()->set_variations(0); },
       musicgw::v1::TASK_KIND_REMIX_SONG, "remix_song.variations"},
      {"stems without source",
       [](GenerateRequest& r) { r.mutable_separate_stems()->clear_source(); },
       musicgw::v1::TASK_KIND_SEPARATE_STEMS, "separate_stems.source.url"},
      {"cut-down to zero",
       [](GenerateRequest& r) { r.mutable_cut_down()->set_target_duration_seconds(0); },
       musicgw::v1::TASK_KIND_CUT_DOWN, "cut_down.target_duration_seconds"},
      {"prompt too long",
       [](GenerateRequest& r) { r.mutable_sample()->set_prompt(std::string(1025, 'p')); },
       musicgw::v1::TASK_KIND_SAMPLE, "sample.prompt"},
  };
  for (const auto& c : cases) {
    GenerateRequest request = Minimal(c.task);
    c.mutate(request);
    const absl::Status result = ValidateGenerate(request);
    ASSERT_FALSE(result.ok()) << c.name;
    EXPECT_EQ(result.code(), absl::StatusCode::kInvalidArgument) << c.name;
    EXPECT_EQ(ViolationField(result), c.field) << c.name << ": " << result;
  }
}

TEST(ValidatorTest, LengthsCountCharactersNotBytes) {
  GenerateRequest request = Minimal(musicgw::v1::TASK_KIND_SAMPLE);
  std::string prompt;
  for (int i = 0; i < 1024; ++i) prompt += "\xC3\xA9";  // é: 2 bytes, 1 character
  request.mutable_sample()->set_prompt(prompt);
  EXPECT_TRUE(ValidateGenerate(request).ok());
}

// The validator checks shape against the capability table only; which configured account
// serves a request (or that none does) is the router's decision (tests/operations/router_test).
TEST(ValidatorTest, ShapeComesFromTheCapabilityTableNotFromConfiguration) {
  GenerateRequest text = Minimal(musicgw::v1::TASK_KIND_TEXT_TO_MUSIC);
  EXPECT_TRUE(ValidateGenerate(text).ok());
  text.mutable_text_to_music()->set_duration_seconds(60);
  EXPECT_TRUE(ValidateGenerate(text).ok()) << "some provider of the table takes 60 seconds";

  GenerateRequest sample = Minimal(musicgw::v1::TASK_KIND_SAMPLE);
  EXPECT_TRUE(ValidateGenerate(sample).ok());
  sample.set_provider(musicgw::v1::PROVIDER_SOUNDPIECE);
  EXPECT_TRUE(ValidateGenerate(sample).ok());
  sample.set_provider(musicgw::v1::PROVIDER_LOUDLY);
  EXPECT_EQ(ViolationField(ValidateGenerate(sample)), "sample")
      << "the requested provider's table row refuses the task";

  GenerateRequest parametric = Minimal(musicgw::v1::TASK_KIND_PARAMETRIC_MUSIC);
  parametric.set_provider(musicgw::v1::PROVIDER_LOUDLY);
  parametric.set_allow_fallback(true);
  EXPECT_TRUE(ValidateGenerate(parametric).ok());
}

// One operation-id alphabet: the generator's.
TEST(ValidatorTest, OperationIdsAreTheGeneratorsAlphabet) {
  const std::string generated = operations::NewOperationId(absl::Now());
  EXPECT_TRUE(ValidateOperationName("name", "operations/" + generated).ok());
  for (char excluded : {'i', 'l', 'o', 'u'}) {
    const std::string id = std::string(25, 'a') + excluded;
    EXPECT_FALSE(operations::IsOperationId(id)) << excluded;
    EXPECT_EQ(ViolationField(ValidateOperationName("name", "operations/" + id)), "name")
        << excluded;
  }
}

TEST(ValidatorTest, NamesAndOtherRequests) {
  const std::string id(26, 'a');
  EXPECT_TRUE(ValidateOperationName("name", "operations/" + id).ok());
  for (const std::string& bad : std::vector<std::string>{
           "", "operations/", "operations/" + std::string(25, 'a'),
           "operations/" + std::string(26, 'A'), "ops/" + id, "operations/" + id + "/x"}) {
    EXPECT_EQ(ViolationField(ValidateOperationName("name", bad)), "name") << bad;
  }
  EXPECT_TRUE(ValidateAssetName("asset", "operations/" + id + "/assets/0").ok());
  EXPECT_TRUE(ValidateAssetName("asset", "operations/" + id + "/assets/12").ok());
  for (const std::string& bad : std::vector<std::string>{
           "operations/" + id, "operations/" + id + "/assets/", "operations/" + id + "/assets/-1",
           "operations/" + id + "/assets/01", "operations/x/assets/0"}) {
    EXPECT_EQ(ViolationField(ValidateAssetName("asset", bad)), "asset") << bad;
  }

  musicgw::v1::ListOperationsRequest list;
  list.set_page_size(1000);
  EXPECT_TRUE(ValidateList(list).ok());
  list.set_page_size(1001);
  EXPECT_EQ(ViolationField(ValidateList(list)), "page_size");
  list.set_page_size(-1);
  EXPECT_EQ(ViolationField(ValidateList(list)), "page_size");
  list.set_page_size(10);
  list.add_states(musicgw::v1::OPERATION_STATE_UNSPECIFIED);
  EXPECT_EQ(ViolationField(ValidateList(list)), "states[0]");
  // A hostile filter (thousands of repeated states) is refused before any ledger work.
  list.clear_states();
  for (int i = 0; i < 16; ++i) list.add_states(musicgw::v1::OPERATION_STATE_RUNNING);
  EXPECT_TRUE(ValidateList(list).ok());
  list.add_states(musicgw::v1::OPERATION_STATE_RUNNING);
  EXPECT_EQ(ViolationField(ValidateList(list)), "states");
  list.clear_states();
  list.set_page_token(std::string(1025, 'A'));
  EXPECT_EQ(ViolationField(ValidateList(list)), "page_token");
  list.clear_page_token();

  musicgw::v1::WatchOperationRequest watch;
  watch.set_name("operations/" + id);
  watch.set_after_sequence(-1);
  EXPECT_EQ(ViolationField(ValidateWatch(watch)), "after_sequence");

  musicgw::v1::WaitOperationRequest wait;
  wait.set_name("operations/" + id);
  wait.mutable_timeout()->set_seconds(600);
  EXPECT_TRUE(ValidateWait(wait).ok());
  wait.mutable_timeout()->set_seconds(601);
  EXPECT_EQ(ViolationField(ValidateWait(wait)), "timeout");

  musicgw::v1::CancelOperationRequest cancel;
  cancel.set_name("operations/" + id);
  cancel.set_reason(std::string(512, 'r'));
  EXPECT_TRUE(ValidateCancel(cancel).ok());
  cancel.set_reason(std::string(513, 'r'));
  EXPECT_EQ(ViolationField(ValidateCancel(cancel)), "reason");
  cancel.set_reason(std::string("stop\0now", 8));
  EXPECT_EQ(ViolationField(ValidateCancel(cancel)), "reason");

  musicgw::v1::DownloadRequest download;
  download.set_asset("operations/" + id + "/assets/0");
  download.set_offset(-5);
  EXPECT_EQ(ViolationField(ValidateDownload(download)), "offset");

  musicgw::v1::GetQuotaRequest quota;
  quota.set_provider(static_cast<Provider>(77));
  EXPECT_EQ(ViolationField(ValidateGetQuota(quota)), "provider");
}

}  // namespace
}  // namespace musicgw::gateway
