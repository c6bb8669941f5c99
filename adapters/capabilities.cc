#include "adapters/capabilities.h"

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/errors.h"
#include "common/status_macros.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/reflection.h"

namespace musicgw::adapters {
namespace {

using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using musicgw::v1::ParameterSpec;
using musicgw::v1::TaskCapability;
using musicgw::v1::TaskKind;

// Instrument names the gateway accepts (case-insensitive). Loudly's web app sends upper-case
// DRUMS, BASS, PERCUSSION, SYNTH, STRINGS; the rest are common names in its genre lists.
constexpr std::initializer_list<const char*> kInstruments = {
    "DRUMS",  "BASS",  "PERCUSSION", "SYNTH", "STRINGS", "PIANO",
    "GUITAR", "BRASS", "WOODWINDS",  "PADS",  "KEYS",    "FX"};

ParameterSpec Number(const std::string& field, double min, double max, const std::string& unit,
                     bool required = false, bool min_exclusive = false) {
  ParameterSpec spec;
  spec.set_field(field);
  spec.set_min(min);
  spec.set_max(max);
  spec.set_unit(unit);
  spec.set_required(required);
  spec.set_min_exclusive(min_exclusive);
  return spec;
}

ParameterSpec Text(const std::string& field, int min_chars, int max_chars, bool required) {
  return Number(field, min_chars, max_chars, "characters", required);
}

ParameterSpec Url(const std::string& field, bool required) {
  ParameterSpec spec = Number(field, 1, 2048, "url", required);
  return spec;
}

ParameterSpec Flag(const std::string& field) {
  ParameterSpec spec;
  spec.set_field(field);
  spec.set_unit("bool");
  return spec;
}

ParameterSpec Enum(const std::string& field, std::initializer_list<const char*> values) {
  ParameterSpec spec;
  spec.set_field(field);
  spec.set_unit("enum");
  for (const char* value : values) spec.add_allowed_values(value);
  return spec;
}

ParameterSpec List(const std::string& field, int max_items,
                   std::initializer_list<const char*> values) {
  ParameterSpec spec = Number(field, 0, max_items, "items");
  for (const char* value : values) spec.add_allowed_values(value);
  return spec;
}

TaskCapability Task(TaskKind task, musicgw::v1::AudioFormat format,
                    std::initializer_list<ParameterSpec> specs) {
  TaskCapability capability;
  capability.set_task(task);
  capability.set_output_format(format);
  for (const auto& spec : specs) *capability.add_parameters() = spec;
  return capability;
}

constexpr std::initializer_list<const char*> kKeyRoots = {
    "KEY_ROOT_C",       "KEY_ROOT_C_SHARP", "KEY_ROOT_D",       "KEY_ROOT_D_SHARP",
    "KEY_ROOT_E",       "KEY_ROOT_F",       "KEY_ROOT_F_SHARP", "KEY_ROOT_G",
    "KEY_ROOT_G_SHARP", "KEY_ROOT_A",       "KEY_ROOT_A_SHARP", "KEY_ROOT_B"};
constexpr std::initializer_list<const char*> kModels = {"LOUDLY_MODEL_VEGA_1",
                                                        "LOUDLY_MODEL_VEGA_2"};

std::vector<TaskCapability> LoudlyTable() {
  using musicgw::v1::AUDIO_FORMAT_MP3;
  return {
      Task(musicgw::v1::TASK_KIND_PARAMETRIC_MUSIC, AUDIO_FORMAT_MP3,
           {Text("parametric_music.genre", 1, 100, true),
            Text("parametric_music.genre_blend", 1, 100, false),
            Number("parametric_music.duration_seconds", 30, 420, "s"),
            Enum("parametric_music.energy", {"ENERGY_LOW", "ENERGY_HIGH", "ENERGY_ORIGINAL"}),
            Number("parametric_music.bpm", 40, 240, "bpm"),
            Enum("parametric_music.key_root", kKeyRoots),
            Enum("parametric_music.key_quality", {"KEY_QUALITY_MAJOR", "KEY_QUALITY_MINOR"}),
            List("parametric_music.instruments", 10, kInstruments),
            Number("parametric_music.structure_id", 0, 1000, "id"),
            Enum("parametric_music.model", kModels)}),
      Task(musicgw::v1::TASK_KIND_TEXT_TO_MUSIC, AUDIO_FORMAT_MP3,
           {Text("text_to_music.prompt", 1, 1024, true),
            Number("text_to_music.duration_seconds", 30, 420, "s"),
            Number("text_to_music.structure_id", 0, 1000, "id"),
            Enum("text_to_music.model", kModels)}),
  };
}

std::vector<TaskCapability> SoundpieceTable() {
  using musicgw::v1::AUDIO_FORMAT_FLAC;
  return {
      Task(musicgw::v1::TASK_KIND_TEXT_TO_MUSIC, AUDIO_FORMAT_FLAC,
           {Text("text_to_music.prompt", 1, 1024, true)}),
      Task(musicgw::v1::TASK_KIND_SONG, AUDIO_FORMAT_FLAC,
           {Text("song.lyrics", 1, 3000, true), Text("song.prompt", 1, 1024, false),
            Url("song.reference.url", false)}),
      Task(musicgw::v1::TASK_KIND_INSTRUMENTAL, AUDIO_FORMAT_FLAC,
           {Text("instrumental.prompt", 1, 1024, false), Url("instrumental.reference.url", false)}),
      Task(musicgw::v1::TASK_KIND_SAMPLE, AUDIO_FORMAT_FLAC,
           {Text("sample.prompt", 1, 1024, true),
            Number("sample.duration_seconds", 0, 30, "s", true, /*min_exclusive=*/true),
            Flag("sample.loopable")}),
      Task(musicgw::v1::TASK_KIND_SOUND_EFFECT, AUDIO_FORMAT_FLAC,
           {Text("sound_effect.prompt", 1, 1024, true),
            Number("sound_effect.duration_seconds", 0.5, 30, "s", true),
            Flag("sound_effect.loopable")}),
      Task(musicgw::v1::TASK_KIND_REMIX_SONG, AUDIO_FORMAT_FLAC,
           {Url("remix_song.source.url", true), Text("remix_song.lyrics", 1, 3000, true),
            Text("remix_song.prompt", 1, 1024, true),
            Number("remix_song.variations", 1, 3, "variations")}),
      Task(musicgw::v1::TASK_KIND_REMIX_INSTRUMENTAL, AUDIO_FORMAT_FLAC,
           {Url("remix_instrumental.source.url", true),
            Number("remix_instrumental.variations", 1, 3, "variations")}),
      Task(musicgw::v1::TASK_KIND_SEPARATE_STEMS, AUDIO_FORMAT_FLAC,
           {Url("separate_stems.source.url", true)}),
      Task(musicgw::v1::TASK_KIND_CUT_DOWN, AUDIO_FORMAT_FLAC,
           {Url("cut_down.source.url", true),
            Number("cut_down.target_duration_seconds", 0, 3600, "s", true,
                   /*min_exclusive=*/true)}),
  };
}

const TaskCapability* FindTask(musicgw::v1::Provider provider, TaskKind task) {
  for (const auto& capability : Capabilities(provider)) {
    if (capability.task() == task) return &capability;
  }
  return nullptr;
}

const ParameterSpec* FindSpec(const TaskCapability& capability, const std::string& path) {
  for (const auto& spec : capability.parameters()) {
    if (spec.field() == path) return &spec;
  }
  return nullptr;
}

std::string ProviderLabel(musicgw::v1::Provider provider) {
  switch (provider) {
    case musicgw::v1::PROVIDER_LOUDLY:
      return "Loudly";
    case musicgw::v1::PROVIDER_SOUNDPIECE:
      return "Soundpiece";
    default:
      return "the provider";
  }
}

std::string FormatNumber(double value) {
  if (value == std::floor(value)) return absl::StrCat(static_cast<int64_t>(value));
  return absl::StrCat(value);
}

std::string RangeText(const ParameterSpec& spec) {
  std::string low =
      absl::StrCat(spec.min_exclusive() ? "greater than " : "", FormatNumber(spec.min()));
  return absl::StrCat(spec.min_exclusive() ? "must be " : "must be between ", low,
                      spec.min_exclusive() ? " and at most " : " and ", FormatNumber(spec.max()),
                      spec.unit().empty() ? "" : " ", spec.unit());
}

bool AllowedValue(const ParameterSpec& spec, const std::string& value) {
  return std::any_of(
      spec.allowed_values().begin(), spec.allowed_values().end(),
      [&](const std::string& allowed) { return absl::EqualsIgnoreCase(allowed, value); });
}

absl::Status CheckNumber(const ParameterSpec& spec, double value) {
  const bool below = spec.min_exclusive() ? value <= spec.min() : value < spec.min();
  if (below || value > spec.max() || std::isnan(value)) {
    return InvalidFieldError(spec.field(),
                             absl::StrCat(RangeText(spec), " (got ", FormatNumber(value), ")"));
  }
  return absl::OkStatus();
}

absl::Status CheckUrl(const ParameterSpec& spec, const std::string& url) {
  if (url.size() > static_cast<size_t>(spec.max())) {
    return InvalidFieldError(
        spec.field(), absl::StrCat("must be at most ", FormatNumber(spec.max()), " characters"));
  }
  const bool http =
      absl::StartsWithIgnoreCase(url, "http://") || absl::StartsWithIgnoreCase(url, "https://");
  const size_t host_start = url.find("://");
  if (!http || host_start == std::string::npos || url.size() <= host_start + 3 ||
      url.find_first_of(" \t\r\n") != std::string::npos) {
    return InvalidFieldError(spec.field(), "must be an absolute http or https URL");
  }
  return absl::OkStatus();
}

absl::Status CheckString(const ParameterSpec& spec, const std::string& value) {
  if (spec.unit() == "url") return CheckUrl(spec, value);
  // Length in characters (UTF-8 code points), not bytes.
  const int64_t chars = std::count_if(value.begin(), value.end(), [](char c) {
    return (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  });
  if (chars < spec.min() || chars > spec.max()) {
    return InvalidFieldError(
        spec.field(), absl::StrCat("must be ", FormatNumber(spec.min()), " to ",
                                   FormatNumber(spec.max()), " characters (got ", chars, ")"));
  }
  if (absl::StripAsciiWhitespace(value).empty()) {
    return InvalidFieldError(spec.field(), "must not be blank");
  }
  return absl::OkStatus();
}

absl::Status CheckField(musicgw::v1::Provider provider, const TaskCapability& capability,
                        const Message& message, const FieldDescriptor* field,
                        const std::string& path);

// Checks every set field of `message` (reached at `prefix`) against the capability.
absl::Status CheckMessage(musicgw::v1::Provider provider, const TaskCapability& capability,
                          const Message& message, const std::string& prefix) {
  std::vector<const FieldDescriptor*> fields;
  message.GetReflection()->ListFields(message, &fields);
  for (const FieldDescriptor* field : fields) {
    const std::string path = absl::StrCat(prefix, ".", field->name());
    absl::Status status = CheckField(provider, capability, message, field, path);
    if (!status.ok()) return status;
  }
  return absl::OkStatus();
}

absl::Status NotHonoured(musicgw::v1::Provider provider, const std::string& path) {
  return InvalidFieldError(path, absl::StrCat(ProviderLabel(provider),
                                              " cannot honour this field; leave it unset or "
                                              "choose another provider"));
}

absl::Status CheckField(musicgw::v1::Provider provider, const TaskCapability& capability,
                        const Message& message, const FieldDescriptor* field,
                        const std::string& path) {
  const auto* reflection = message.GetReflection();
  if (field->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE && !field->is_repeated()) {
    return CheckMessage(provider, capability, reflection->GetMessage(message, field), path);
  }
  const ParameterSpec* spec = FindSpec(capability, path);
  if (spec == nullptr) return NotHonoured(provider, path);
  if (field->is_repeated()) {
    const int size = reflection->FieldSize(message, field);
    if (size > spec->max()) {
      return InvalidFieldError(
          path, absl::StrCat("at most ", FormatNumber(spec->max()), " items (got ", size, ")"));
    }
    std::vector<std::string> seen;
    for (int i = 0; i < size; ++i) {
      const std::string item_path = absl::StrCat(path, "[", i, "]");
      std::string value = reflection->GetRepeatedString(message, field, i);
      if (!AllowedValue(*spec, value)) {
        return InvalidFieldError(item_path,
                                 absl::StrCat("unknown value \"", value, "\"; one of ",
                                              absl::StrJoin(spec->allowed_values(), ", ")));
      }
      value = absl::AsciiStrToUpper(value);
      if (std::find(seen.begin(), seen.end(), value) != seen.end()) {
        return InvalidFieldError(item_path, absl::StrCat("duplicate value \"", value, "\""));
      }
      seen.push_back(value);
    }
    return absl::OkStatus();
  }
  switch (field->cpp_type()) {
    case FieldDescriptor::CPPTYPE_INT32:
      return CheckNumber(*spec, reflection->GetInt32(message, field));
    case FieldDescriptor::CPPTYPE_DOUBLE:
      return CheckNumber(*spec, reflection->GetDouble(message, field));
    case FieldDescriptor::CPPTYPE_STRING:
      return CheckString(*spec, reflection->GetString(message, field));
    case FieldDescriptor::CPPTYPE_BOOL:
      return absl::OkStatus();
    case FieldDescriptor::CPPTYPE_ENUM: {
      const auto* value =
          field->enum_type()->FindValueByNumber(reflection->GetEnumValue(message, field));
      if (value == nullptr || !AllowedValue(*spec, value->name())) {
        return InvalidFieldError(path, absl::StrCat("unknown value; one of ",
                                                    absl::StrJoin(spec->allowed_values(), ", ")));
      }
      return absl::OkStatus();
    }
    default:
      return NotHonoured(provider, path);
  }
}

// True when the field at `path` (task.field or task.field.subfield) is set in the task message.
bool IsSet(const Message& task, const std::string& task_name, const std::string& path) {
  std::string rest = path.substr(task_name.size() + 1);
  const Message* message = &task;
  while (true) {
    const size_t dot = rest.find('.');
    const std::string name = rest.substr(0, dot);
    const FieldDescriptor* field = message->GetDescriptor()->FindFieldByName(name);
    if (field == nullptr) return false;
    const auto* reflection = message->GetReflection();
    if (field->is_repeated()) return reflection->FieldSize(*message, field) > 0;
    if (!reflection->HasField(*message, field)) return false;
    if (dot == std::string::npos) return true;
    message = &reflection->GetMessage(*message, field);
    rest = rest.substr(dot + 1);
  }
}

// Song and instrumental take a style from exactly one of a prompt or a reference track.
absl::Status CheckExactlyOneSource(const musicgw::v1::GenerateRequest& request) {
  auto check = [](const std::string& task, bool has_prompt, bool has_reference,
                  const std::string& reference_url) -> absl::Status {
    if (has_prompt && has_reference) {
      return InvalidFieldError(absl::StrCat(task, ".reference"),
                               "set either prompt or reference, not both");
    }
    if (!has_prompt && !has_reference) {
      return InvalidFieldError(absl::StrCat(task, ".prompt"), "required: set prompt or reference");
    }
    if (has_reference && reference_url.empty()) {
      return InvalidFieldError(absl::StrCat(task, ".reference.url"), "required");
    }
    return absl::OkStatus();
  };
  if (request.has_song()) {
    const auto& song = request.song();
    return check("song", !song.prompt().empty(), song.has_reference(), song.reference().url());
  }
  if (request.has_instrumental()) {
    const auto& task = request.instrumental();
    return check("instrumental", !task.prompt().empty(), task.has_reference(),
                 task.reference().url());
  }
  return absl::OkStatus();
}

}  // namespace

const std::vector<TaskCapability>& Capabilities(musicgw::v1::Provider provider) {
  static const auto* const kLoudly = new std::vector<TaskCapability>(LoudlyTable());
  static const auto* const kSoundpiece = new std::vector<TaskCapability>(SoundpieceTable());
  static const auto* const kNone = new std::vector<TaskCapability>();
  switch (provider) {
    case musicgw::v1::PROVIDER_LOUDLY:
      return *kLoudly;
    case musicgw::v1::PROVIDER_SOUNDPIECE:
      return *kSoundpiece;
    default:
      return *kNone;
  }
}

TaskKind TaskKindOf(const musicgw::v1::GenerateRequest& request) {
  using R = musicgw::v1::GenerateRequest;
  switch (request.task_case()) {
    case R::kParametricMusic:
      return musicgw::v1::TASK_KIND_PARAMETRIC_MUSIC;
    case R::kTextToMusic:
      return musicgw::v1::TASK_KIND_TEXT_TO_MUSIC;
    case R::kSong:
      return musicgw::v1::TASK_KIND_SONG;
    case R::kInstrumental:
      return musicgw::v1::TASK_KIND_INSTRUMENTAL;
    case R::kSample:
      return musicgw::v1::TASK_KIND_SAMPLE;
    case R::kSoundEffect:
      return musicgw::v1::TASK_KIND_SOUND_EFFECT;
    case R::kRemixSong:
      return musicgw::v1::TASK_KIND_REMIX_SONG;
    case R::kRemixInstrumental:
      return musicgw::v1::TASK_KIND_REMIX_INSTRUMENTAL;
    case R::kSeparateStems:
      return musicgw::v1::TASK_KIND_SEPARATE_STEMS;
    case R::kCutDown:
      return musicgw::v1::TASK_KIND_CUT_DOWN;
    case R::TASK_NOT_SET:
      break;
  }
  return musicgw::v1::TASK_KIND_UNSPECIFIED;
}

absl::Status CheckCapabilities(musicgw::v1::Provider provider,
                               const musicgw::v1::GenerateRequest& request) {
  const TaskKind task = TaskKindOf(request);
  if (task == musicgw::v1::TASK_KIND_UNSPECIFIED) {
    return InvalidFieldError("task", "required: set one task message, e.g. parametric_music");
  }
  const auto* descriptor = request.GetDescriptor();
  const FieldDescriptor* task_field = descriptor->FindFieldByNumber(request.task_case());
  const std::string task_name = task_field->name();
  const TaskCapability* capability = FindTask(provider, task);
  if (capability == nullptr) {
    return InvalidFieldError(task_name,
                             absl::StrCat(ProviderLabel(provider), " does not support this task"));
  }
  const Message& task_message = request.GetReflection()->GetMessage(request, task_field);
  for (const auto& spec : capability->parameters()) {
    if (spec.required() && !IsSet(task_message, task_name, spec.field())) {
      return InvalidFieldError(spec.field(), "required");
    }
  }
  MUSICGW_RETURN_IF_ERROR(CheckMessage(provider, *capability, task_message, task_name));
  return CheckExactlyOneSource(request);
}

std::vector<musicgw::v1::Provider> ProvidersFor(TaskKind task) {
  std::vector<musicgw::v1::Provider> providers;
  for (auto provider : {musicgw::v1::PROVIDER_LOUDLY, musicgw::v1::PROVIDER_SOUNDPIECE}) {
    if (FindTask(provider, task) != nullptr) providers.push_back(provider);
  }
  return providers;
}

}  // namespace musicgw::adapters
