#include "adapters/soundpiece/soundpiece_wire.h"

#include <algorithm>
#include <array>
#include <map>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/errors.h"
#include "nlohmann/json.hpp"

namespace musicgw::adapters::soundpiece {
namespace {

using json = nlohmann::json;
using musicgw::v1::TaskKind;

constexpr size_t kMaxProviderText = 512;

// Output kinds are decided by the route; stems by each output's `kind`.
constexpr std::array<Route, 9> kRoutes = {{
    {musicgw::v1::TASK_KIND_SONG, "create.new_song", "song", "song", musicgw::v1::ASSET_KIND_MIX},
    {musicgw::v1::TASK_KIND_INSTRUMENTAL, "create.new_instrumental", "instrumental", "instrumental",
     musicgw::v1::ASSET_KIND_MIX},
    {musicgw::v1::TASK_KIND_TEXT_TO_MUSIC, "create.new_instrumental", "instrumental",
     "text_to_music", musicgw::v1::ASSET_KIND_MIX},
    {musicgw::v1::TASK_KIND_SAMPLE, "create.new_sample", "sample", "sample",
     musicgw::v1::ASSET_KIND_SAMPLE},
    {musicgw::v1::TASK_KIND_SOUND_EFFECT, "create.new_fx", "fx", "sound_effect",
     musicgw::v1::ASSET_KIND_SOUND_EFFECT},
    {musicgw::v1::TASK_KIND_REMIX_SONG, "create.remix_song", "remix_song", "remix_song",
     musicgw::v1::ASSET_KIND_MIX},
    {musicgw::v1::TASK_KIND_REMIX_INSTRUMENTAL, "create.remix_instrumental", "remix_instrumental",
     "remix_instrumental", musicgw::v1::ASSET_KIND_MIX},
    {musicgw::v1::TASK_KIND_SEPARATE_STEMS, "adapt.separate_stems", "stems", "separate_stems",
     musicgw::v1::ASSET_KIND_STEM_OTHER},
    {musicgw::v1::TASK_KIND_CUT_DOWN, "adapt.auto_cut_down", "auto_cut", "cut_down",
     musicgw::v1::ASSET_KIND_MIX},
}};

std::string Truncate(absl::string_view text, size_t max = kMaxProviderText) {
  if (text.size() <= max) return std::string(text);
  return absl::StrCat(text.substr(0, max), "…");
}

const json* Member(const json& object, const char* key) {
  if (!object.is_object()) return nullptr;
  auto it = object.find(key);
  if (it == object.end() || it->is_null()) return nullptr;
  return &*it;
}

std::string StringMember(const json& object, const char* key) {
  const json* value = Member(object, key);
  return value != nullptr && value->is_string() ? value->get<std::string>() : std::string();
}

json Source(const musicgw::v1::AudioSource& source) { return json{{"url", source.url()}}; }

musicgw::v1::AssetKind StemKind(absl::string_view kind) {
  const std::string lower = absl::AsciiStrToLower(kind);
  if (lower == "vocals" || lower == "vocal") return musicgw::v1::ASSET_KIND_STEM_VOCALS;
  if (lower == "drums" || lower == "drum") return musicgw::v1::ASSET_KIND_STEM_DRUMS;
  if (lower == "bass") return musicgw::v1::ASSET_KIND_STEM_BASS;
  return musicgw::v1::ASSET_KIND_STEM_OTHER;
}

absl::Time ParseTimestamp(const json& object, const char* key) {
  const std::string text = StringMember(object, key);
  absl::Time time;
  std::string error;
  if (text.empty() || !absl::ParseTime(absl::RFC3339_full, text, &time, &error)) {
    return absl::InfiniteFuture();
  }
  return time;
}

absl::StatusOr<ProviderOutput> ParseOutput(const json& entry, const Route& route) {
  if (!entry.is_object()) return absl::InvalidArgumentError("an output is not an object");
  ProviderOutput output;
  output.url = StringMember(entry, "url");
  if (output.url.empty()) return absl::InvalidArgumentError("an output has no url");
  output.url_expire_time = ParseTimestamp(entry, "expires_at");
  if (const json* duration = Member(entry, "duration");
      duration != nullptr && duration->is_number()) {
    output.duration_seconds = duration->get<double>();
  }
  output.kind = route.kind;
  const std::string kind = StringMember(entry, "kind");
  if (route.task == musicgw::v1::TASK_KIND_SEPARATE_STEMS) {
    output.kind = StemKind(kind);
    output.title = kind;
  }
  if (const std::string title = StringMember(entry, "title"); !title.empty()) output.title = title;
  // Every Soundpiece file is FLAC at 44.1 kHz; the DTO has no format field.
  output.format = musicgw::v1::AUDIO_FORMAT_FLAC;
  output.content_type = "audio/flac";
  return output;
}

// The DTO inside an answer: the route's wrapper, else the body itself when it carries `id` or
// `status`, else the only top-level object.
const json* FindDto(const json& body, absl::string_view wrapper) {
  if (!body.is_object()) return nullptr;
  if (const json* dto = Member(body, std::string(wrapper).c_str());
      dto != nullptr && dto->is_object()) {
    return dto;
  }
  if (body.contains("id") || body.contains("status")) return &body;
  const json* only = nullptr;
  for (const auto& [key, value] : body.items()) {
    if (!value.is_object()) continue;
    if (only != nullptr) return nullptr;  // ambiguous
    only = &value;
  }
  return only;
}

absl::StatusOr<UpstreamStatus> ParseDto(const json& dto, const Route& route) {
  UpstreamStatus status;
  status.upstream_id = StringMember(dto, "id");
  if (status.upstream_id.empty()) return absl::InvalidArgumentError("the operation has no id");
  const std::string state = absl::AsciiStrToLower(StringMember(dto, "status"));
  const json* error = Member(dto, "error");
  if (state == "ready") {
    status.phase = UpstreamStatus::Phase::kSucceeded;
    std::vector<const json*> entries;
    if (const json* outputs = Member(dto, "outputs"); outputs != nullptr) {
      if (outputs->is_array()) {
        for (const json& entry : *outputs) entries.push_back(&entry);
      } else {
        entries.push_back(outputs);  // a lone object where a list was expected
      }
    }
    if (const json* output = Member(dto, "output"); output != nullptr) {
      if (output->is_array()) {
        for (const json& entry : *output) entries.push_back(&entry);
      } else {
        entries.push_back(output);
      }
    }
    for (const json* entry : entries) {
      auto output = ParseOutput(*entry, route);
      if (!output.ok()) return output.status();
      status.outputs.push_back(std::move(*output));
    }
    if (status.outputs.empty()) {
      status.phase = UpstreamStatus::Phase::kFailed;
      status.error = WithErrorInfo(
          absl::InternalError("Soundpiece reported the operation ready without any output"),
          "PROVIDER_EMPTY_RESULT", kDomain, {{"route", route.name}});
    }
    return status;
  }
  if (state == "failed") {
    status.phase = UpstreamStatus::Phase::kFailed;
    std::string code = error != nullptr ? StringMember(*error, "code") : "";
    std::string message = error != nullptr ? StringMember(*error, "message") : "";
    if (code.empty()) code = "internal_error";
    if (message.empty()) message = "no message";
    status.error = OperationFailedError(code, message);
    return status;
  }
  // "processing" and any status a future API revision adds: not terminal.
  status.phase = UpstreamStatus::Phase::kRunning;
  return status;
}

std::map<std::string, std::string> Metadata(int http_status, const ErrorContext& context) {
  std::map<std::string, std::string> metadata = {{"account", context.account},
                                                 {"route", context.route}};
  if (http_status > 0) metadata["http_status"] = absl::StrCat(http_status);
  return metadata;
}

// FastAPI's `detail`: a string, or a list of {loc, msg, type}.
struct Detail {
  std::string text;  // joined, for messages
  struct Item {
    std::vector<std::string> loc;
    std::string msg;
    std::string type;
  };
  std::vector<Item> items;
};

Detail ReadDetail(absl::string_view body) {
  Detail detail;
  const json doc = json::parse(body, nullptr, /*allow_exceptions=*/false);
  const json* value = doc.is_discarded() ? nullptr : Member(doc, "detail");
  if (value == nullptr) {
    detail.text = Truncate(absl::StripAsciiWhitespace(body), 200);
    return detail;
  }
  if (value->is_string()) {
    detail.text = Truncate(value->get<std::string>());
    return detail;
  }
  if (!value->is_array()) return detail;
  std::vector<std::string> parts;
  for (const json& entry : *value) {
    Detail::Item item;
    if (const json* loc = Member(entry, "loc"); loc != nullptr && loc->is_array()) {
      for (const json& part : *loc) {
        item.loc.push_back(part.is_string() ? part.get<std::string>() : part.dump());
      }
    }
    item.msg = Truncate(StringMember(entry, "msg"), 200);
    item.type = StringMember(entry, "type");
    parts.push_back(absl::StrCat(absl::StrJoin(item.loc, "."), ": ", item.msg));
    detail.items.push_back(std::move(item));
    if (detail.items.size() >= 20) break;
  }
  detail.text = Truncate(absl::StrJoin(parts, "; "));
  return detail;
}

const char* TaskField(TaskKind task) {
  for (const Route& route : kRoutes) {
    if (route.task == task) return route.task_field;
  }
  return "";
}

bool InputRelated(absl::string_view code) {
  static constexpr std::array<const char*, 14> kWords = {
      "source", "reference", "input",  "invalid", "unsupported", "too_long",   "too_short",
      "decode", "format",    "lyrics", "prompt",  "duration",    "moderation", "policy"};
  return std::any_of(kWords.begin(), kWords.end(),
                     [&](const char* word) { return absl::StrContains(code, word); });
}

}  // namespace

const Route* RouteForTask(TaskKind task) {
  for (const Route& route : kRoutes) {
    if (route.task == task) return &route;
  }
  return nullptr;
}

const Route* RouteByName(absl::string_view name) {
  for (const Route& route : kRoutes) {
    if (name == route.name) return &route;
  }
  return nullptr;
}

absl::StatusOr<std::string> BuildSubmitBody(const musicgw::v1::GenerateRequest& request,
                                            absl::string_view idempotency_key,
                                            absl::string_view callback_url) {
  json body = json::object();
  body["idempotency_key"] = std::string(idempotency_key);
  using R = musicgw::v1::GenerateRequest;
  switch (request.task_case()) {
    case R::kTextToMusic:
      body["prompt"] = request.text_to_music().prompt();
      break;
    case R::kSong: {
      const auto& task = request.song();
      body["lyrics"] = task.lyrics();
      if (task.has_reference()) {
        body["reference"] = Source(task.reference());
      } else {
        body["prompt"] = task.prompt();
      }
      break;
    }
    case R::kInstrumental: {
      const auto& task = request.instrumental();
      if (task.has_reference()) {
        body["reference"] = Source(task.reference());
      } else {
        body["prompt"] = task.prompt();
      }
      break;
    }
    case R::kSample:
      body["prompt"] = request.sample().prompt();
      body["duration"] = request.sample().duration_seconds();
      body["loopable"] = request.sample().loopable();
      break;
    case R::kSoundEffect:
      body["prompt"] = request.sound_effect().prompt();
      body["duration"] = request.sound_effect().duration_seconds();
      // Not on the v1 page (the legacy one had it): sent only when asked for.
      if (request.sound_effect().loopable()) body["loopable"] = true;
      break;
    case R::kRemixSong: {
      const auto& task = request.remix_song();
      body["source"] = Source(task.source());
      body["lyrics"] = task.lyrics();
      body["prompt"] = task.prompt();
      if (task.has_variations()) body["n_variations"] = task.variations();
      break;
    }
    case R::kRemixInstrumental: {
      const auto& task = request.remix_instrumental();
      body["source"] = Source(task.source());
      if (task.has_variations()) body["n_variations"] = task.variations();
      break;
    }
    case R::kSeparateStems:
      body["source"] = Source(request.separate_stems().source());
      break;
    case R::kCutDown:
      body["source"] = Source(request.cut_down().source());
      body["target_duration"] = request.cut_down().target_duration_seconds();
      break;
    default:
      return InvalidFieldError("task", "Soundpiece cannot run this task");
  }
  if (!callback_url.empty()) body["callback_url"] = std::string(callback_url);
  return body.dump();
}

absl::StatusOr<UpstreamStatus> ParseOperation(absl::string_view body, const Route& route) {
  const json doc = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) return absl::InvalidArgumentError("the answer is not JSON");
  const json* dto = FindDto(doc, route.wrapper);
  if (dto == nullptr) return absl::InvalidArgumentError("the answer holds no operation");
  return ParseDto(*dto, route);
}

absl::StatusOr<UpstreamStatus> ParseWebhookEvent(absl::string_view body) {
  const json doc = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded() || !doc.is_object()) {
    return absl::InvalidArgumentError("the webhook body is not a JSON object");
  }
  const std::string type = StringMember(doc, "type");
  const size_t dot = type.rfind('.');
  if (dot == std::string::npos) return absl::InvalidArgumentError("the webhook has no type");
  const Route* route = RouteByName(absl::string_view(type).substr(0, dot));
  if (route == nullptr) return absl::InvalidArgumentError("the webhook names an unknown route");
  const json* data = Member(doc, "data");
  if (data == nullptr || !data->is_object()) {
    return absl::InvalidArgumentError("the webhook has no data object");
  }
  // `data` is the unwrapped DTO; accept a wrapped one too.
  const json* dto = FindDto(*data, route->wrapper);
  if (dto == nullptr) return absl::InvalidArgumentError("the webhook holds no operation");
  json copy = *dto;
  // The type names the outcome when the DTO lacks a status.
  if (!copy.contains("status") || !copy["status"].is_string()) {
    copy["status"] = type.substr(dot + 1);
  }
  return ParseDto(copy, *route);
}

std::string FieldPathForLoc(TaskKind task, const std::vector<std::string>& loc) {
  const std::string prefix = TaskField(task);
  std::vector<std::string> parts = loc;
  if (!parts.empty() && (parts.front() == "body" || parts.front() == "query")) {
    parts.erase(parts.begin());
  }
  if (parts.empty() || prefix.empty()) return "";
  const std::string& field = parts.front();
  if (field == "idempotency_key") return "request_id";
  if (field == "prompt" || field == "lyrics" || field == "loopable") {
    return absl::StrCat(prefix, ".", field);
  }
  if (field == "reference" || field == "source") return absl::StrCat(prefix, ".", field, ".url");
  if (field == "duration") return absl::StrCat(prefix, ".duration_seconds");
  if (field == "n_variations") return absl::StrCat(prefix, ".variations");
  if (field == "target_duration") return absl::StrCat(prefix, ".target_duration_seconds");
  return "";
}

absl::Status MapHttpError(int http_status, absl::string_view body,
                          std::optional<absl::Duration> retry_after, const ErrorContext& context) {
  const Detail detail = ReadDetail(body);
  auto metadata = Metadata(http_status, context);
  if (!detail.text.empty()) metadata["detail"] = detail.text;
  const std::string suffix = detail.text.empty() ? "" : absl::StrCat(": ", detail.text);

  if (http_status >= 500) {
    return WithErrorInfo(absl::UnavailableError(absl::StrCat("Soundpiece is unavailable (HTTP ",
                                                             http_status, ")", suffix)),
                         "PROVIDER_UNAVAILABLE", kDomain, metadata);
  }
  switch (http_status) {
    case 401:
      return WithErrorInfo(
          absl::UnauthenticatedError(absl::StrCat(
              "Soundpiece rejected the gateway's own credentials for provider account '",
              context.account,
              "' (a gateway configuration problem for its operator; the caller's API key is "
              "not at fault)")),
          "PROVIDER_AUTH_FAILED", kDomain, metadata);
    case 402: {
      absl::Status status =
          WithErrorInfo(absl::ResourceExhaustedError(
                            absl::StrCat("Soundpiece account '", context.account,
                                         "' has run out of credits; the operator must top it up")),
                        "PROVIDER_QUOTA_EXHAUSTED", kDomain, metadata);
      return WithQuotaViolation(
          std::move(status),
          absl::StrCat("provider:soundpiece/account:", context.account, "/resource:credits"),
          "Insufficient credits");
    }
    case 404:
    case 405:
      return WithErrorInfo(
          absl::FailedPreconditionError(
              absl::StrCat("Soundpiece has no endpoint ", context.route, " (HTTP ", http_status,
                           "): the gateway's provider base URL or API version is misconfigured")),
          "PROVIDER_ENDPOINT_MISSING", kDomain, metadata);
    case 429: {
      absl::Status status = WithErrorInfo(
          absl::ResourceExhaustedError(absl::StrCat("Soundpiece rate-limited the request", suffix)),
          "PROVIDER_RATE_LIMITED", kDomain, metadata);
      return WithRetryInfo(std::move(status), retry_after.value_or(absl::Seconds(1)));
    }
    default:
      break;
  }
  if (!context.is_submit && http_status >= 400) {
    return WithErrorInfo(
        absl::NotFoundError(absl::StrCat("Soundpiece does not know the upstream operation (HTTP ",
                                         http_status, ")", suffix)),
        "PROVIDER_OPERATION_UNKNOWN", kDomain, metadata);
  }
  if (http_status == 409) {
    return WithErrorInfo(
        absl::AlreadyExistsError(absl::StrCat(
            "Soundpiece refused the idempotency key: it was used with another request", suffix)),
        "PROVIDER_IDEMPOTENCY_CONFLICT", kDomain, metadata);
  }
  if (http_status >= 400) {
    absl::Status status = WithErrorInfo(
        absl::InvalidArgumentError(absl::StrCat("Soundpiece rejected the request", suffix)),
        "PROVIDER_REJECTED", kDomain, metadata);
    for (const Detail::Item& item : detail.items) {
      std::string field = FieldPathForLoc(context.task, item.loc);
      if (field.empty()) field = TaskField(context.task);
      if (field.empty()) field = "task";
      std::string description = item.msg.empty() ? item.type : item.msg;
      if (!item.type.empty() && !item.msg.empty())
        absl::StrAppend(&description, " (", item.type, ")");
      status = WithFieldViolation(std::move(status), field, description);
    }
    return status;
  }
  return WithErrorInfo(
      absl::InternalError(absl::StrCat("Soundpiece answered with unexpected HTTP ", http_status)),
      "PROVIDER_UNEXPECTED_STATUS", kDomain, metadata);
}

absl::Status MapTransportError(const absl::Status& status, const ErrorContext& context) {
  const bool timeout = status.code() == absl::StatusCode::kDeadlineExceeded;
  return WithErrorInfo(
      absl::Status(status.code(), absl::StrCat(timeout ? "Soundpiece did not answer in time: "
                                                       : "Soundpiece could not be reached: ",
                                               status.message())),
      timeout ? "PROVIDER_TIMEOUT" : "PROVIDER_UNREACHABLE", kDomain, Metadata(0, context));
}

absl::Status BadResponseError(const absl::Status& parse_error, const ErrorContext& context) {
  return WithErrorInfo(absl::UnavailableError(absl::StrCat("Soundpiece sent an unreadable answer: ",
                                                           parse_error.message())),
                       "PROVIDER_BAD_RESPONSE", kDomain, Metadata(0, context));
}

absl::Status OperationFailedError(absl::string_view provider_code,
                                  absl::string_view provider_message) {
  const std::string code = absl::AsciiStrToLower(provider_code);
  const std::string message = Truncate(provider_message);
  const absl::StatusCode status_code =
      InputRelated(code) ? absl::StatusCode::kInvalidArgument : absl::StatusCode::kInternal;
  return WithErrorInfo(
      absl::Status(status_code, absl::StrCat("Soundpiece could not complete the operation: ",
                                             message, " (", Truncate(code, 64), ")")),
      "PROVIDER_OPERATION_FAILED", kDomain,
      {{"provider_code", Truncate(code, 64)}, {"provider_message", message}});
}

}  // namespace musicgw::adapters::soundpiece
