#include "adapters/loudly/loudly_wire.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/crypto.h"
#include "common/errors.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace musicgw::adapters::loudly {
namespace {

using json = nlohmann::json;
using musicgw::v1::GenerateRequest;

constexpr size_t kMaxErrorTextBytes = 200;
constexpr size_t kMaxServiceNameBytes = 128;

// nlohmann parse without exceptions.
absl::StatusOr<json> ParseJson(absl::string_view body) {
  json doc = json::parse(body.begin(), body.end(), nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) return absl::InvalidArgumentError("body is not JSON");
  return doc;
}

std::string StringField(const json& object, const char* name) {
  if (!object.is_object()) return "";
  auto it = object.find(name);
  if (it == object.end() || !it->is_string()) return "";
  return it->get<std::string>();
}

// A number field that may arrive as an int, a float or a numeric string; nullopt otherwise.
std::optional<double> NumberField(const json& object, const char* name) {
  if (!object.is_object()) return std::nullopt;
  auto it = object.find(name);
  if (it == object.end()) return std::nullopt;
  if (it->is_number()) return it->get<double>();
  if (it->is_string()) {
    double value = 0;
    if (absl::SimpleAtod(it->get<std::string>(), &value)) return value;
  }
  return std::nullopt;
}

int64_t IntField(const json& object, const char* name, int64_t fallback) {
  auto value = NumberField(object, name);
  if (!value.has_value() || !std::isfinite(*value)) return fallback;
  return static_cast<int64_t>(std::llround(*value));
}

// "YYYY-MM-DD" -> 00:00 UTC of that day.
std::optional<absl::Time> ParseDate(absl::string_view text) {
  absl::Time time;
  std::string error;
  if (!absl::ParseTime("%Y-%m-%d", text, absl::UTCTimeZone(), &time, &error)) return std::nullopt;
  return time;
}

std::string Upper(absl::string_view text) { return absl::AsciiStrToUpper(text); }

void Add(Form& form, const char* name, std::string value) {
  if (!value.empty()) form.push_back({name, std::move(value)});
}

std::string Instruments(const google::protobuf::RepeatedPtrField<std::string>& items, Form& form,
                        InstrumentsForm style) {
  std::vector<std::string> upper;
  for (const auto& item : items) {
    std::string value = Upper(absl::StripAsciiWhitespace(item));
    if (!value.empty()) upper.push_back(std::move(value));
  }
  if (style == InstrumentsForm::kCommaJoined) return absl::StrJoin(upper, ",");
  for (auto& value : upper) form.push_back({"instruments[]", std::move(value)});
  return "";
}

// The parametric fields after `genre`, in the captured web-app order.
void AddParametric(const musicgw::v1::ParametricMusicTask& task, Form& form,
                   InstrumentsForm style) {
  if (task.has_duration_seconds()) Add(form, "duration", absl::StrCat(task.duration_seconds()));
  Add(form, "instruments", Instruments(task.instruments(), form, style));
  Add(form, "genre_blend", task.genre_blend());
  Add(form, "energy", EnergyWire(task.energy()));
  if (task.has_structure_id()) Add(form, "structure_id", absl::StrCat(task.structure_id()));
  if (task.has_bpm()) Add(form, "bpm", absl::StrCat(task.bpm()));
  Add(form, "key_root", KeyRootWire(task.key_root()));
  Add(form, "key_quality", KeyQualityWire(task.key_quality()));
  Add(form, "model", ModelWire(task.model()));
}

void AddText(const musicgw::v1::TextToMusicTask& task, Form& form) {
  if (task.has_duration_seconds()) Add(form, "duration", absl::StrCat(task.duration_seconds()));
  if (task.has_structure_id()) Add(form, "structure_id", absl::StrCat(task.structure_id()));
  Add(form, "model", ModelWire(task.model()));
}

absl::Status UnsupportedTask() {
  return InvalidFieldError("task", "Loudly generates parametric_music and text_to_music only");
}

std::string JsonToText(const json& value) {
  if (value.is_string()) return value.get<std::string>();
  if (value.is_null()) return "";
  return value.dump(-1, ' ', false, json::error_handler_t::replace);
}

ProviderOutput SongOutput(const json& song, const json& bundle_formula) {
  ProviderOutput output;
  output.kind = musicgw::v1::ASSET_KIND_MIX;
  output.title = StringField(song, "title");
  if (auto ms = NumberField(song, "duration"); ms.has_value() && std::isfinite(*ms)) {
    output.duration_seconds = *ms / 1000.0;
  }
  output.format = musicgw::v1::AUDIO_FORMAT_MP3;
  output.content_type = "audio/mpeg";
  output.url = StringField(song, "music_file_path");
  const json* formula = &bundle_formula;
  if (song.contains("formula") && song["formula"].is_object()) formula = &song["formula"];
  for (const json* source : {&song, formula, &bundle_formula}) {
    if (output.bpm == 0) output.bpm = static_cast<int>(IntField(*source, "bpm", 0));
    if (output.key.empty()) output.key = NormalizeKeyName(StringField(*source, "key"));
  }
  return output;
}

std::map<std::string, std::string> BaseMetadata(int http_status, const ErrorContext& context) {
  std::map<std::string, std::string> metadata;
  if (http_status > 0) metadata["http_status"] = absl::StrCat(http_status);
  if (!context.account.empty()) metadata["account"] = context.account;
  return metadata;
}

// Collapses runs of whitespace to one space.
std::string Collapse(absl::string_view text) {
  std::string out;
  bool space = false;
  for (char c : text) {
    if (absl::ascii_isspace(static_cast<unsigned char>(c))) {
      space = !out.empty();
      continue;
    }
    if (space) out.push_back(' ');
    space = false;
    out.push_back(c);
  }
  return out;
}

// Cuts at `max` bytes without splitting a UTF-8 sequence.
std::string Truncate(std::string text, size_t max) {
  if (text.size() <= max) return text;
  size_t end = max;
  while (end > 0 && (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80) --end;
  text.resize(end);
  return absl::StrCat(text, "…");
}

bool IsTokenChar(char c) {
  return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.' ||
         c == '~' || c == '+' || c == '/' || c == '=';
}

}  // namespace

const char* DialectName(Dialect dialect) {
  return dialect == Dialect::kWeb ? "loudly-web" : "loudly-b2b";
}

std::string KeyRootWire(musicgw::v1::KeyRoot root) {
  switch (root) {
    case musicgw::v1::KEY_ROOT_C:
      return "C";
    case musicgw::v1::KEY_ROOT_C_SHARP:
      return "C#/Db";
    case musicgw::v1::KEY_ROOT_D:
      return "D";
    case musicgw::v1::KEY_ROOT_D_SHARP:
      return "D#/Eb";
    case musicgw::v1::KEY_ROOT_E:
      return "E";
    case musicgw::v1::KEY_ROOT_F:
      return "F";
    case musicgw::v1::KEY_ROOT_F_SHARP:
      return "F#/Gb";
    case musicgw::v1::KEY_ROOT_G:
      return "G";
    case musicgw::v1::KEY_ROOT_G_SHARP:
      return "G#/Ab";
    case musicgw::v1::KEY_ROOT_A:
      return "A";
    case musicgw::v1::KEY_ROOT_A_SHARP:
      return "A#/Bb";
    case musicgw::v1::KEY_ROOT_B:
      return "B";
    default:
      return "";
  }
}

std::string KeyQualityWire(musicgw::v1::KeyQuality quality) {
  switch (quality) {
    case musicgw::v1::KEY_QUALITY_MAJOR:
      return "major";
    case musicgw::v1::KEY_QUALITY_MINOR:
      return "minor";
    default:
      return "";
  }
}

std::string EnergyWire(musicgw::v1::Energy energy) {
  switch (energy) {
    case musicgw::v1::ENERGY_LOW:
      return "low";
    case musicgw::v1::ENERGY_HIGH:
      return "high";
    case musicgw::v1::ENERGY_ORIGINAL:
      return "original";
    default:
      return "";
  }
}

std::string ModelWire(musicgw::v1::LoudlyModel model) {
  switch (model) {
    case musicgw::v1::LOUDLY_MODEL_VEGA_1:
      return "VEGA_1";
    case musicgw::v1::LOUDLY_MODEL_VEGA_2:
      return "VEGA_2";
    default:
      return "";
  }
}

absl::StatusOr<Form> EncodeWebBundle(const GenerateRequest& request) {
  Form form;
  if (request.has_parametric_music()) {
    const auto& task = request.parametric_music();
    if (task.genre().empty()) return InvalidFieldError("parametric_music.genre", "required");
    form.push_back({"bundle_type", "ADVANCED"});
    form.push_back({"genre", task.genre()});
    AddParametric(task, form, InstrumentsForm::kRepeated);
    return form;
  }
  if (request.has_text_to_music()) {
    const auto& task = request.text_to_music();
    if (task.prompt().empty()) return InvalidFieldError("text_to_music.prompt", "required");
    form.push_back({"bundle_type", "TEXT2MUSIC"});
    form.push_back({"prompt", task.prompt()});
    AddText(task, form);
    return form;
  }
  return UnsupportedTask();
}

absl::StatusOr<Form> EncodeB2BSong(const GenerateRequest& request, bool test,
                                   InstrumentsForm instruments) {
  Form form;
  if (request.has_parametric_music()) {
    const auto& task = request.parametric_music();
    if (task.genre().empty()) return InvalidFieldError("parametric_music.genre", "required");
    form.push_back({"genre", task.genre()});
    AddParametric(task, form, instruments);
  } else if (request.has_text_to_music()) {
    const auto& task = request.text_to_music();
    if (task.prompt().empty()) return InvalidFieldError("text_to_music.prompt", "required");
    form.push_back({"prompt", task.prompt()});
    AddText(task, form);
  } else {
    return UnsupportedTask();
  }
  if (test) form.push_back({"test", "true"});
  return form;
}

std::string B2BSongPath(const GenerateRequest& request) {
  if (request.has_parametric_music()) return "/api/ai/songs";
  if (request.has_text_to_music()) return "/api/ai/prompt/songs";
  return "";
}

EncodedBody EncodeMultipart(const Form& form, absl::string_view boundary) {
  EncodedBody out;
  out.content_type = absl::StrCat("multipart/form-data; boundary=", boundary);
  for (const auto& field : form) {
    // Names are fixed ASCII; quotes and line breaks cannot occur in them.
    absl::StrAppend(&out.body, "--", boundary, "\r\nContent-Disposition: form-data; name=\"",
                    field.name, "\"\r\n\r\n", field.value, "\r\n");
  }
  absl::StrAppend(&out.body, "--", boundary, "--\r\n");
  return out;
}

EncodedBody EncodeFormUrlencoded(const Form& form) {
  auto escape = [](absl::string_view text) {
    std::string out;
    for (unsigned char c : text) {
      if (absl::ascii_isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
        out.push_back(static_cast<char>(c));
      } else if (c == ' ') {
        out.push_back('+');
      } else {
        absl::StrAppend(&out, "%",
                        absl::AsciiStrToUpper(absl::StrCat(absl::Hex(c, absl::kZeroPad2))));
      }
    }
    return out;
  };
  EncodedBody out;
  out.content_type = "application/x-www-form-urlencoded";
  std::vector<std::string> parts;
  for (const auto& field : form) {
    parts.push_back(absl::StrCat(escape(field.name), "=", escape(field.value)));
  }
  out.body = absl::StrJoin(parts, "&");
  return out;
}

std::optional<absl::Time> ParseLoudlyTime(absl::string_view text) {
  absl::Time time;
  std::string error;
  // %Ez accepts "+02:00" and "Z"; %z accepts "+0200".
  for (const char* format : {"%Y-%m-%dT%H:%M:%E*S%z", "%Y-%m-%dT%H:%M:%E*S%Ez"}) {
    if (absl::ParseTime(format, text, &time, &error)) return time;
  }
  return std::nullopt;
}

absl::StatusOr<Bundle> ParseBundle(absl::string_view body) {
  auto parsed = ParseJson(body);
  if (!parsed.ok()) return parsed.status();
  const json& doc = *parsed;
  if (!doc.is_object()) return absl::InvalidArgumentError("bundle is not a JSON object");
  Bundle bundle;
  bundle.status.upstream_id = StringField(doc, "id");
  if (bundle.status.upstream_id.empty()) return absl::InvalidArgumentError("bundle has no id");
  bundle.created_at = ParseLoudlyTime(StringField(doc, "created_at"));
  static const json kNull;
  const json& formula = doc.contains("formula") ? doc["formula"] : kNull;
  if (auto it = doc.find("vega_songs"); it != doc.end() && it->is_array()) {
    for (const json& song : *it) {
      if (!song.is_object()) continue;
      // A song without its file is not ready yet: keep waiting for it.
      if (StringField(song, "music_file_path").empty()) continue;
      bundle.status.outputs.push_back(SongOutput(song, formula));
    }
  }
  if (!bundle.status.outputs.empty()) {
    bundle.status.phase = UpstreamStatus::Phase::kSucceeded;
    return bundle;
  }
  if (auto it = doc.find("errors"); it != doc.end() && it->is_array() && !it->empty()) {
    std::vector<std::string> errors;
    for (const json& error : *it) errors.push_back(Truncate(Collapse(JsonToText(error)), 200));
    const std::string joined = absl::StrJoin(errors, "; ");
    bundle.status.phase = UpstreamStatus::Phase::kFailed;
    bundle.status.error = WithErrorInfo(
        absl::InternalError(absl::StrCat("Loudly failed to generate the bundle: ", joined)),
        "PROVIDER_GENERATION_FAILED", kDomain, {{"errors", joined}});
  }
  return bundle;
}

absl::StatusOr<UpstreamStatus> ParseAiSong(absl::string_view body) {
  auto parsed = ParseJson(body);
  if (!parsed.ok()) return parsed.status();
  const json& song = *parsed;
  if (!song.is_object()) return absl::InvalidArgumentError("ai_song is not a JSON object");
  UpstreamStatus status;
  status.upstream_id = JsonToText(song.value("id", json()));
  if (StringField(song, "music_file_path").empty()) {
    status.phase = UpstreamStatus::Phase::kFailed;
    status.error =
        WithErrorInfo(absl::UnavailableError("Loudly returned a song without an audio file "
                                             "(empty music_file_path); try again"),
                      "PROVIDER_EMPTY_RESULT", kDomain, {{"song_id", status.upstream_id}});
    return status;
  }
  ProviderOutput output = SongOutput(song, json());
  // B2B reports the key as an object {id, name, active}.
  if (auto it = song.find("key"); it != song.end() && it->is_object()) {
    output.key = NormalizeKeyName(StringField(*it, "name"));
  }
  status.phase = UpstreamStatus::Phase::kSucceeded;
  status.outputs.push_back(std::move(output));
  return status;
}

std::string NormalizeKeyName(absl::string_view name) {
  name = absl::StripAsciiWhitespace(name);
  if (name.empty()) return "";
  const size_t cut = name.find_last_of(" -");
  if (cut == absl::string_view::npos) return std::string(name);
  absl::string_view root = absl::StripAsciiWhitespace(name.substr(0, cut));
  absl::string_view quality = name.substr(cut + 1);
  return absl::StrCat(root, "-", absl::AsciiStrToLower(quality));
}

absl::StatusOr<std::string> Base64UrlDecode(absl::string_view text) {
  std::string standard(text);
  for (char& c : standard) {
    if (c == '-') c = '+';
    if (c == '_') c = '/';
  }
  while (standard.size() % 4 != 0) standard.push_back('=');
  return Base64Decode(standard);
}

std::string Base64UrlEncode(absl::string_view data) {
  std::string text = Base64Encode(data);
  for (char& c : text) {
    if (c == '+') c = '-';
    if (c == '/') c = '_';
  }
  while (!text.empty() && text.back() == '=') text.pop_back();
  return text;
}

std::optional<absl::Time> JwtExpiry(absl::string_view jwt) {
  std::vector<absl::string_view> parts = absl::StrSplit(jwt, '.');
  if (parts.size() != 3) return std::nullopt;
  auto payload = Base64UrlDecode(parts[1]);
  if (!payload.ok()) return std::nullopt;
  auto claims = ParseJson(*payload);
  if (!claims.ok() || !claims->is_object()) return std::nullopt;
  auto exp = NumberField(*claims, "exp");
  if (!exp.has_value() || !std::isfinite(*exp) || *exp <= 0) return std::nullopt;
  return absl::FromUnixSeconds(static_cast<int64_t>(*exp));
}

absl::StatusOr<TokenGrant> ParseTokenResponse(absl::string_view body, absl::Time now) {
  auto parsed = ParseJson(body);
  if (!parsed.ok()) return parsed.status();
  TokenGrant grant;
  grant.access_token = StringField(*parsed, "access_token");
  grant.refresh_token = StringField(*parsed, "refresh_token");
  if (grant.access_token.empty()) return absl::InvalidArgumentError("no access_token");
  if (auto exp = JwtExpiry(grant.access_token); exp.has_value()) {
    grant.expiry = *exp;
  } else if (auto expires_in = NumberField(*parsed, "expires_in"); expires_in.has_value()) {
    grant.expiry = now + absl::Seconds(*expires_in);
  } else {
    // Neither: assume the documented hour rather than refreshing on every call.
    grant.expiry = now + absl::Hours(1);
  }
  return grant;
}

absl::StatusOr<std::vector<QuotaFigure>> ParseWebLimits(absl::string_view body) {
  auto parsed = ParseJson(body);
  if (!parsed.ok()) return parsed.status();
  const json& doc = *parsed;
  auto usage = doc.is_object() ? doc.find("usage_data") : doc.end();
  if (!doc.is_object() || usage == doc.end() || !usage->is_object()) {
    return absl::InvalidArgumentError("limits have no usage_data object");
  }
  absl::Time reset = absl::InfinitePast();
  if (doc.contains("reset_data")) {
    if (auto date = ParseDate(StringField(doc["reset_data"], "next_reset_date"))) reset = *date;
  }
  std::vector<QuotaFigure> figures;
  for (const auto& [name, value] : usage->items()) {
    if (!value.is_object()) continue;
    QuotaFigure figure;
    figure.resource = name;
    figure.limit = IntField(value, "total", -1);
    figure.used = IntField(value, "used", -1);
    figure.remaining = IntField(value, "available", -1);
    figure.reset_time = reset;
    if (auto top_up = value.find("top_up"); top_up != value.end() && top_up->is_object()) {
      auto add = [](int64_t& field, int64_t extra) {
        if (field >= 0 && extra > 0) field += extra;
      };
      add(figure.limit, IntField(*top_up, "total", 0));
      add(figure.used, IntField(*top_up, "used", 0));
      add(figure.remaining, IntField(*top_up, "available", 0));
    }
    figures.push_back(std::move(figure));
  }
  return figures;
}

absl::StatusOr<std::vector<QuotaFigure>> ParseB2BLimits(absl::string_view body) {
  auto parsed = ParseJson(body);
  if (!parsed.ok()) return parsed.status();
  const json& doc = *parsed;
  const json* items = nullptr;
  if (doc.is_array()) {
    items = &doc;
  } else if (doc.is_object() && doc.contains("limits") && doc["limits"].is_array()) {
    items = &doc["limits"];
  } else {
    return absl::InvalidArgumentError("limits are neither an array nor {limits:[…]}");
  }
  std::vector<QuotaFigure> figures;
  for (const json& item : *items) {
    if (!item.is_object()) continue;
    QuotaFigure figure;
    figure.resource = StringField(item, "request_type");
    if (figure.resource.empty()) continue;
    figure.limit = IntField(item, "limit", -1);
    figure.used = IntField(item, "used", -1);
    figure.remaining = IntField(item, "left", -1);
    if (figure.remaining < 0 && figure.limit >= 0 && figure.used >= 0) {
      figure.remaining = std::max<int64_t>(0, figure.limit - figure.used);
    }
    if (auto date_to = ParseDate(StringField(item, "date_to"))) {
      figure.reset_time = *date_to + absl::Hours(24);
    }
    figures.push_back(std::move(figure));
  }
  if (doc.is_object() && doc.contains("top_up") && doc["top_up"].is_object()) {
    const json& top_up = doc["top_up"];
    QuotaFigure figure;
    figure.resource = "top_up";
    figure.limit = IntField(top_up, "total", -1);
    figure.remaining = IntField(top_up, "available", -1);
    if (figure.limit >= 0 && figure.remaining >= 0) figure.used = figure.limit - figure.remaining;
    figures.push_back(std::move(figure));
  }
  return figures;
}

absl::StatusOr<std::vector<std::string>> ParseGenres(absl::string_view body) {
  auto parsed = ParseJson(body);
  if (!parsed.ok()) return parsed.status();
  const json* list = &*parsed;
  // Tolerate an {items:[…]} envelope.
  if (list->is_object() && list->contains("items")) list = &(*list)["items"];
  if (!list->is_array()) return absl::InvalidArgumentError("genres are not an array");
  std::vector<std::string> names;
  auto add = [&names](const json& entry) {
    std::string name = entry.is_string() ? entry.get<std::string>() : StringField(entry, "name");
    if (!name.empty() && std::find(names.begin(), names.end(), name) == names.end()) {
      names.push_back(std::move(name));
    }
  };
  for (const json& genre : *list) {
    add(genre);
    if (genre.is_object() && genre.contains("micro_genres") && genre["micro_genres"].is_array()) {
      for (const json& micro : genre["micro_genres"]) add(micro);
    }
  }
  return names;
}

absl::StatusOr<std::vector<musicgw::v1::SongStructure>> ParseStructures(absl::string_view body) {
  auto parsed = ParseJson(body);
  if (!parsed.ok()) return parsed.status();
  const json* list = &*parsed;
  if (list->is_object() && list->contains("items")) list = &(*list)["items"];
  if (!list->is_array()) return absl::InvalidArgumentError("structures are not an array");
  std::vector<musicgw::v1::SongStructure> structures;
  for (const json& entry : *list) {
    auto id = NumberField(entry, "id");
    if (!id.has_value() || !std::isfinite(*id)) continue;
    musicgw::v1::SongStructure structure;
    structure.set_id(static_cast<int32_t>(*id));
    structure.set_name(StringField(entry, "name"));
    structure.set_description(StringField(entry, "description"));
    structures.push_back(std::move(structure));
  }
  return structures;
}

absl::StatusOr<std::string> ParseRandomPrompt(absl::string_view body) {
  auto parsed = ParseJson(body);
  if (!parsed.ok()) return parsed.status();
  std::string prompt = StringField(*parsed, "prompt");
  if (prompt.empty()) return absl::InvalidArgumentError("no prompt");
  return prompt;
}

std::optional<QuotaMessage> ParseQuotaMessage(absl::string_view text) {
  const size_t start = text.find("External service calling limit exceeded");
  if (start == absl::string_view::npos) return std::nullopt;
  absl::string_view rest = text.substr(start);
  const size_t open = rest.find('(');
  const size_t close = rest.find(')', open == absl::string_view::npos ? 0 : open);
  if (open == absl::string_view::npos || close == absl::string_view::npos) return std::nullopt;
  QuotaMessage message;
  bool have_timer = false;
  for (absl::string_view part : absl::StrSplit(rest.substr(open + 1, close - open - 1), ',')) {
    std::pair<absl::string_view, absl::string_view> kv =
        absl::StrSplit(part, absl::MaxSplits(':', 1));
    const absl::string_view key = absl::StripAsciiWhitespace(kv.first);
    const absl::string_view value = absl::StripAsciiWhitespace(kv.second);
    if (absl::EqualsIgnoreCase(key, "service")) {
      message.service = std::string(value);
    } else if (absl::EqualsIgnoreCase(key, "Timer seconds remaining")) {
      have_timer = absl::SimpleAtoi(value, &message.timer_seconds_remaining);
    } else if (absl::EqualsIgnoreCase(key, "Attempts remaining")) {
      if (!absl::SimpleAtoi(value, &message.attempts_remaining)) message.attempts_remaining = 0;
    }
  }
  if (!have_timer || message.timer_seconds_remaining < 0) message.timer_seconds_remaining = 0;
  return message;
}

std::optional<QuotaMessage> FindQuotaMessage(absl::string_view body) {
  auto parsed = ParseJson(body);
  if (parsed.ok() && parsed->is_object()) {
    for (const char* name : {"error", "message", "error_description", "detail"}) {
      if (auto found = ParseQuotaMessage(StringField(*parsed, name))) return found;
    }
  }
  return ParseQuotaMessage(body);
}

std::string Redact(absl::string_view text, const std::vector<std::string>& secrets) {
  std::string out(text);
  for (const auto& secret : secrets) {
    // Very short values would redact ordinary words; configured secrets are never that short.
    if (secret.size() < 4) continue;
    absl::StrReplaceAll({{secret, "[redacted]"}}, &out);
  }
  // Anything shaped like a JWT ("eyJ…") or following "Bearer ".
  for (absl::string_view marker : {"eyJ", "Bearer ", "bearer "}) {
    size_t pos = 0;
    while ((pos = out.find(marker.data(), pos, marker.size())) != std::string::npos) {
      const size_t start = marker[0] == 'e' ? pos : pos + marker.size();
      size_t end = start;
      while (end < out.size() && IsTokenChar(out[end])) ++end;
      if (end - start >= 8) {
        out.replace(start, end - start, "[redacted]");
        pos = start + 10;
      } else {
        pos = end > pos ? end : pos + 1;
      }
    }
  }
  return out;
}

ErrorText ReadErrorText(absl::string_view body, const std::vector<std::string>& secrets) {
  ErrorText text;
  auto parsed = ParseJson(body);
  if (parsed.ok() && parsed->is_object()) {
    const json& doc = *parsed;
    for (const char* name : {"error", "message"}) {
      if (doc.contains(name) && !doc[name].is_null()) {
        text.error = JsonToText(doc[name]);
        break;
      }
    }
    if (doc.contains("error_description")) text.description = JsonToText(doc["error_description"]);
  }
  if (text.error.empty() && text.description.empty()) text.error = std::string(body);
  text.error = Truncate(Collapse(Redact(text.error, secrets)), kMaxErrorTextBytes);
  text.description = Truncate(Collapse(Redact(text.description, secrets)), kMaxErrorTextBytes);
  return text;
}

absl::Status MapHttpError(int http_status, absl::string_view body,
                          std::optional<absl::Duration> retry_after, const ErrorContext& context) {
  const ErrorText text = ReadErrorText(body, context.secrets);
  auto metadata = BaseMetadata(http_status, context);
  if (!text.error.empty()) metadata["error"] = text.error;
  if (!text.description.empty()) metadata["error_description"] = text.description;
  const std::string detail = text.description.empty() ? text.error
                             : text.error.empty()
                                 ? text.description
                                 : absl::StrCat(text.error, ": ", text.description);

  if (http_status >= 500) {
    if (auto quota = FindQuotaMessage(body); quota.has_value() && http_status == 500) {
      // The service name is the provider's free text: redacted and bounded like any error text.
      const std::string service =
          quota->service.empty()
              ? "unknown"
              : Truncate(Collapse(Redact(quota->service, context.secrets)), kMaxServiceNameBytes);
      metadata["service"] = service;
      metadata["timer_seconds_remaining"] = absl::StrCat(quota->timer_seconds_remaining);
      metadata["attempts_remaining"] = absl::StrCat(quota->attempts_remaining);
      absl::Status status = absl::ResourceExhaustedError(
          absl::StrCat("Loudly quota exhausted for account '", context.account, "' (service ",
                       service, "); retry in ", quota->timer_seconds_remaining, " s"));
      status = WithErrorInfo(std::move(status), "PROVIDER_QUOTA_EXHAUSTED", kDomain, metadata);
      status = WithQuotaViolation(
          std::move(status),
          absl::StrCat("provider:loudly/account:", context.account, "/resource:", service),
          absl::StrCat("External service calling limit exceeded; attempts remaining: ",
                       quota->attempts_remaining));
      return WithRetryInfo(std::move(status), absl::Seconds(quota->timer_seconds_remaining));
    }
    return WithErrorInfo(absl::UnavailableError(absl::StrCat("Loudly is unavailable (HTTP ",
                                                             http_status, "): ", detail)),
                         "PROVIDER_UNAVAILABLE", kDomain, metadata);
  }
  switch (http_status) {
    case 401:
    case 403:
      return WithErrorInfo(
          absl::UnauthenticatedError(absl::StrCat(
              "Loudly rejected the gateway's own credentials for provider account '",
              context.account,
              "' (a gateway configuration problem for its operator; the caller's API key is "
              "not at fault)")),
          "PROVIDER_AUTH_FAILED", kDomain, metadata);
    case 404:
      return WithErrorInfo(absl::NotFoundError(absl::StrCat("Loudly does not know it: ", detail)),
                           "PROVIDER_NOT_FOUND", kDomain, metadata);
    case 429: {
      const absl::Duration delay = retry_after.value_or(absl::Seconds(1));
      absl::Status status = WithErrorInfo(
          absl::ResourceExhaustedError(absl::StrCat("Loudly rate-limited the request: ", detail)),
          "PROVIDER_RATE_LIMITED", kDomain, metadata);
      return WithRetryInfo(std::move(status), delay);
    }
    default:
      break;
  }
  if (http_status >= 400) {
    return WithErrorInfo(
        absl::InvalidArgumentError(absl::StrCat("Loudly rejected the request: ", detail)),
        "PROVIDER_REJECTED", kDomain, metadata);
  }
  return WithErrorInfo(
      absl::InternalError(absl::StrCat("Loudly answered with unexpected HTTP ", http_status)),
      "PROVIDER_UNEXPECTED_STATUS", kDomain, metadata);
}

absl::Status MapTransportError(const absl::Status& status, const ErrorContext& context) {
  const bool timeout = status.code() == absl::StatusCode::kDeadlineExceeded;
  const std::string message = Redact(status.message(), context.secrets);
  return WithErrorInfo(
      absl::Status(status.code(), absl::StrCat(timeout ? "Loudly did not answer in time: "
                                                       : "Loudly could not be reached: ",
                                               message)),
      timeout ? "PROVIDER_TIMEOUT" : "PROVIDER_UNREACHABLE", kDomain, BaseMetadata(0, context));
}

absl::Status BadResponseError(absl::string_view what, const absl::Status& parse_error,
                              const ErrorContext& context) {
  return WithErrorInfo(absl::UnavailableError(absl::StrCat("Loudly sent an unreadable ", what, ": ",
                                                           parse_error.message())),
                       "PROVIDER_BAD_RESPONSE", kDomain, BaseMetadata(0, context));
}

absl::Duration NextPollInterval(absl::Duration elapsed, absl::Duration min, absl::Duration max) {
  if (max < min) max = min;
  if (elapsed < absl::ZeroDuration()) return min;
  return std::clamp(elapsed / 5, min, max);
}

absl::Status CheckAgainstCatalog(const GenerateRequest& request, const ProviderCatalog& catalog) {
  auto check_genre = [&](const std::string& field, const std::string& name) -> absl::Status {
    if (name.empty() || catalog.genres.empty()) return absl::OkStatus();
    if (std::find(catalog.genres.begin(), catalog.genres.end(), name) != catalog.genres.end()) {
      return absl::OkStatus();
    }
    std::string hint;
    for (const auto& genre : catalog.genres) {
      if (absl::EqualsIgnoreCase(genre, name)) {
        hint = absl::StrCat("; did you mean \"", genre, "\"?");
        break;
      }
    }
    return InvalidFieldError(
        field,
        absl::StrCat("unknown Loudly genre \"", name, "\" (names are exact and case-sensitive",
                     hint.empty() ? "; ListProviders lists them)" : ")", hint));
  };
  auto check_structure = [&](const std::string& field, bool has, int32_t id) -> absl::Status {
    if (!has || catalog.structures.empty()) return absl::OkStatus();
    for (const auto& structure : catalog.structures) {
      if (structure.id() == id) return absl::OkStatus();
    }
    std::vector<std::string> ids;
    for (const auto& structure : catalog.structures) ids.push_back(absl::StrCat(structure.id()));
    return InvalidFieldError(field, absl::StrCat("unknown Loudly structure id ", id, "; one of ",
                                                 absl::StrJoin(ids, ", ")));
  };
  if (request.has_parametric_music()) {
    const auto& task = request.parametric_music();
    MUSICGW_RETURN_IF_ERROR(check_genre("parametric_music.genre", task.genre()));
    MUSICGW_RETURN_IF_ERROR(check_genre("parametric_music.genre_blend", task.genre_blend()));
    return check_structure("parametric_music.structure_id", task.has_structure_id(),
                           task.structure_id());
  }
  if (request.has_text_to_music()) {
    const auto& task = request.text_to_music();
    return check_structure("text_to_music.structure_id", task.has_structure_id(),
                           task.structure_id());
  }
  return absl::OkStatus();
}

}  // namespace musicgw::adapters::loudly
