#include "emulators/soundpiece/soundpiece_emulator.h"

#include <algorithm>
#include <cmath>
#include <deque>
#include <optional>
#include <queue>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "emulators/common/audio.h"
#include "emulators/common/fault_plan.h"
#include "emulators/common/http_server.h"
#include "emulators/common/util.h"
#include "emulators/common/validation.h"

namespace musicgw::emulators::soundpiece {
namespace {

using Json = nlohmann::json;
using OJson = nlohmann::ordered_json;

enum class Input {
  kSong,
  kInstrumental,
  kSample,
  kFx,
  kRemixSong,
  kRemixInstrumental,
  kStems,
  kCut
};

struct RouteSpec {
  const char* name;
  const char* wrapper;
  bool multi;  // `outputs` (true) or `output`
  Input input;
};

constexpr RouteSpec kRoutes[] = {
    {"create.new_song", "song", true, Input::kSong},
    {"create.new_instrumental", "instrumental", true, Input::kInstrumental},
    {"create.new_sample", "sample", false, Input::kSample},
    {"create.new_fx", "fx", false, Input::kFx},
    {"create.remix_song", "remix_song", true, Input::kRemixSong},
    {"create.remix_instrumental", "remix_instrumental", true, Input::kRemixInstrumental},
    {"adapt.separate_stems", "stems", true, Input::kStems},
    {"adapt.auto_cut_down", "auto_cut", false, Input::kCut},
};

const RouteSpec* FindRoute(absl::string_view name) {
  for (const RouteSpec& r : kRoutes) {
    if (name == r.name) return &r;
  }
  return nullptr;
}

const char* StatusText(int status) {
  switch (status) {
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 409:
      return "Conflict";
    case 429:
      return "Too Many Requests";
    case 500:
      return "Internal Server Error";
    case 502:
      return "Bad Gateway";
    case 503:
      return "Service Unavailable";
    case 504:
      return "Gateway Timeout";
    default:
      return "Error";
  }
}

void SendJson(httplib::Response& res, int status, const std::string& body) {
  res.status = status;
  res.set_content(body, "application/json");
}

void SendDetail(httplib::Response& res, int status, absl::string_view detail) {
  SendJson(res, status, Json{{"detail", detail}}.dump());
}

// Collects Pydantic-v2 style errors: {type, loc, msg, input[, ctx]}.
class Errors {
 public:
  void Add(const char* type, const Json& loc, std::string msg, const Json& input,
           const Json& ctx = nullptr) {
    // Pydantic's key order: type, loc, msg, input, ctx.
    OJson e;
    e["type"] = type;
    e["loc"] = OJson::parse(loc.dump());
    e["msg"] = std::move(msg);
    e["input"] = OJson::parse(input.dump());
    if (!ctx.is_null()) e["ctx"] = OJson::parse(ctx.dump());
    list_.push_back(std::move(e));
  }
  bool empty() const { return list_.empty(); }
  std::string Body() const {
    OJson body;
    body["detail"] = list_;
    return body.dump();
  }

 private:
  OJson list_ = OJson::array();
};

Json Loc(std::initializer_list<const char*> parts) {
  Json loc = Json::array();
  for (const char* p : parts) loc.push_back(p);
  return loc;
}

// Validates one optional string field with length bounds. Returns the value when valid.
std::optional<std::string> CheckString(const Json& body, const char* field, bool required,
                                       size_t max_len, Errors& errors, bool* present = nullptr) {
  if (present != nullptr) *present = false;
  if (!body.contains(field) || body[field].is_null()) {
    if (required) errors.Add("missing", Loc({"body", field}), "Field required", body);
    return std::nullopt;
  }
  if (present != nullptr) *present = true;
  const Json& v = body[field];
  if (!v.is_string()) {
    errors.Add("string_type", Loc({"body", field}), "Input should be a valid string", v);
    return std::nullopt;
  }
  const std::string s = v.get<std::string>();
  if (s.empty()) {
    errors.Add("string_too_short", Loc({"body", field}), "String should have at least 1 character",
               v, {{"min_length", 1}});
    return std::nullopt;
  }
  if (s.size() > max_len) {
    errors.Add("string_too_long", Loc({"body", field}),
               absl::StrCat("String should have at most ", max_len, " characters"), v,
               {{"max_length", max_len}});
    return std::nullopt;
  }
  return s;
}

// Numbers: JSON numbers, or strings holding one (Pydantic lax mode).
std::optional<double> CheckNumber(const Json& body, const char* field, bool required,
                                  Errors& errors) {
  if (!body.contains(field) || body[field].is_null()) {
    if (required) errors.Add("missing", Loc({"body", field}), "Field required", body);
    return std::nullopt;
  }
  const Json& v = body[field];
  double d = 0;
  if (v.is_number()) {
    d = v.get<double>();
  } else if (v.is_string()) {
    if (!absl::SimpleAtod(v.get<std::string>(), &d) || !std::isfinite(d)) {
      errors.Add("float_parsing", Loc({"body", field}),
                 "Input should be a valid number, unable to parse string as a number", v);
      return std::nullopt;
    }
  } else {
    errors.Add("float_type", Loc({"body", field}), "Input should be a valid number", v);
    return std::nullopt;
  }
  return d;
}

bool CheckBounds(double value, const char* field, const Json& input, double min, bool min_inclusive,
                 double max, Errors& errors) {
  if (min_inclusive ? value < min : value <= min) {
    const std::string n = absl::StrCat(min);
    if (min_inclusive) {
      errors.Add("greater_than_equal", Loc({"body", field}),
                 absl::StrCat("Input should be greater than or equal to ", n), input,
                 {{"ge", min}});
    } else {
      errors.Add("greater_than", Loc({"body", field}),
                 absl::StrCat("Input should be greater than ", n), input, {{"gt", min}});
    }
    return false;
  }
  if (value > max) {
    errors.Add("less_than_equal", Loc({"body", field}),
               absl::StrCat("Input should be less than or equal to ", absl::StrCat(max)), input,
               {{"le", max}});
    return false;
  }
  return true;
}

bool IsUuid(absl::string_view s) {
  std::string hex;
  for (char c : s) {
    if (c != '-') hex += c;
  }
  if (absl::StartsWith(s, "urn:uuid:")) return IsUuid(s.substr(9));
  if (hex.size() != 32) return false;
  for (char c : hex) {
    if (!std::isxdigit(static_cast<unsigned char>(c))) return false;
  }
  if (s.size() == 36) {
    return s[8] == '-' && s[13] == '-' && s[18] == '-' && s[23] == '-';
  }
  return s.size() == 32;
}

bool IsOpId(absl::string_view id) {
  if (id.size() != 29 || !absl::StartsWith(id, "op_")) return false;
  for (char c : id.substr(3)) {
    if (!std::isdigit(static_cast<unsigned char>(c)) && !(c >= 'a' && c <= 'z')) return false;
  }
  return true;
}

// A validated AudioSource ({url}) at body[field].
std::optional<std::string> CheckSource(const Json& body, const char* field, bool required,
                                       Errors& errors) {
  if (!body.contains(field) || body[field].is_null()) {
    if (required) errors.Add("missing", Loc({"body", field}), "Field required", body);
    return std::nullopt;
  }
  const Json& v = body[field];
  if (!v.is_object()) {
    errors.Add("model_attributes_type", Loc({"body", field}),
               "Input should be a valid dictionary or object to extract fields from", v);
    return std::nullopt;
  }
  if (!v.contains("url") || v["url"].is_null()) {
    errors.Add("missing", Loc({"body", field, "url"}), "Field required", v);
    return std::nullopt;
  }
  if (!v["url"].is_string()) {
    errors.Add("url_type", Loc({"body", field, "url"}), "URL input should be a string or URL",
               v["url"]);
    return std::nullopt;
  }
  const std::string url = v["url"].get<std::string>();
  const auto parsed = ParseUrl(url);
  if (url.empty()) {
    errors.Add("url_parsing", Loc({"body", field, "url"}),
               "Input should be a valid URL, input is empty", v["url"],
               {{"error", "input is empty"}});
    return std::nullopt;
  }
  if (!parsed.has_value()) {
    errors.Add("url_parsing", Loc({"body", field, "url"}),
               "Input should be a valid URL, relative URL without a base", v["url"],
               {{"error", "relative URL without a base"}});
    return std::nullopt;
  }
  if (parsed->scheme != "http" && parsed->scheme != "https") {
    errors.Add("url_scheme", Loc({"body", field, "url"}), "URL scheme should be 'http' or 'https'",
               v["url"], {{"expected_schemes", "'http' or 'https'"}});
    return std::nullopt;
  }
  return url;
}

struct OutputSpec {
  std::string kind;  // stems only
  AudioSpec audio;
};

struct Operation {
  std::string id;
  const RouteSpec* route = nullptr;
  std::string account;
  std::string idempotency_key;
  std::string fingerprint;  // canonical request body, for strict idempotency
  OJson echo;               // request fields as the DTO echoes them, in order
  absl::Time created_at;
  absl::Time ready_at;
  bool fail = false;
  std::string error_code;
  std::string error_message;
  std::vector<OutputSpec> outputs;
  std::string callback_url;  // empty: no webhook
};

struct Bucket {
  double tokens = 0;
  absl::Time last;
};

// Something the background workers do at a time: finish an operation, or try a webhook.
struct Task {
  absl::Time due;
  uint64_t seq = 0;
  std::string op_id;
  bool webhook = false;
  int attempt = 0;  // webhook attempts made so far
  std::string webhook_id;
  int64_t webhook_timestamp = 0;
  std::string body;  // fixed at the first attempt, so retries carry the same signed bytes
  bool operator>(const Task& o) const { return due != o.due ? due > o.due : seq > o.seq; }
};

constexpr int kWebhookWorkers = 4;

}  // namespace

class Emulator::Impl {
 public:
  explicit Impl(Options options)
      : options_(std::move(options)),
        plan_(options_.seed),
        // Ids differ between runs (a restarted emulator must not reuse the ids a gateway may have
        // persisted); faults and audio stay deterministic (their own seeds).
        ids_(options_.seed ^ static_cast<uint64_t>(absl::ToUnixNanos(absl::Now()))),
        server_(HttpServerOptions{options_.host, options_.port, options_.threads}, &plan_,
                DialectErrors{[](int status) {
                                return Json{{"detail", StatusText(status)}}.dump();
                              },
                              [](absl::Duration after) {
                                return Json{{"detail",
                                             absl::StrCat("Rate limit exceeded; retry in ",
                                                          absl::ToInt64Seconds(after), " seconds")}}
                                    .dump();
                              },
                              [] {
                                return std::pair<int, std::string>(
                                    402, Json{{"detail", "Insufficient credits"}}.dump());
                              }}) {
    url_secret_ = ids_.Hex(32);
  }

  ~Impl() { Stop(); }

  absl::Status Init() {
    auto cache = AudioCache::Create(options_.data_dir);
    if (!cache.ok()) return cache.status();
    cache_ = *std::move(cache);
    if (absl::Status s = plan_.Set(options_.fault_plan_json); !s.ok()) return s;
    for (const auto& [account, secrets] : options_.webhook_secrets) {
      // Several space-separated secrets = a rotation in progress: every one signs.
      for (absl::string_view secret : absl::StrSplit(secrets, ' ', absl::SkipEmpty())) {
        std::string key;
        if (!absl::ConsumePrefix(&secret, "whsec_") || !absl::Base64Unescape(secret, &key) ||
            key.empty()) {
          return absl::InvalidArgumentError(
              absl::StrCat("webhook secret for ", account, " is not whsec_<base64>"));
        }
        webhook_keys_[account].push_back(std::move(key));
      }
    }
    ResetAccounts();
    RegisterRoutes();
    server_.set_status_observer([this](const httplib::Request& req, int status) {
      if (absl::StartsWith(req.path, "/v1/") || absl::StartsWith(req.path, "/cdn/")) {
        absl::MutexLock lock(&mu_);
        ++stats_.responses_by_status[status];
      }
    });
    if (absl::Status s = server_.Start(); !s.ok()) return s;
    for (int i = 0; i < kWebhookWorkers; ++i) workers_.emplace_back([this] { WorkerLoop(); });
    return absl::OkStatus();
  }

  void Stop() {
    {
      absl::MutexLock lock(&mu_);
      if (stopped_) return;
      stopped_ = true;
      polls_wake_.SignalAll();
      tasks_wake_.SignalAll();
    }
    server_.Stop();
    for (auto& w : workers_) w.join();
    workers_.clear();
  }

  int port() const { return server_.port(); }
  std::string base_url() const { return server_.base_url(); }
  absl::Status SetFaultPlan(absl::string_view json) { return plan_.Set(json); }

  void Reset() {
    plan_.Clear();
    absl::MutexLock lock(&mu_);
    ops_.clear();
    idempotency_.clear();
    tasks_ = {};
    stats_ = Stats{};
    ResetAccountsLocked();
    polls_wake_.SignalAll();  // their operations are gone
  }

  void SetCredits(const std::string& account, int64_t credits) {
    absl::MutexLock lock(&mu_);
    credits_[account] = credits;
  }

  Stats stats() const {
    absl::MutexLock lock(&mu_);
    Stats s = stats_;
    s.credits = credits_;
    s.faults_injected = plan_.fired();
    return s;
  }

  std::string StatsJson() const {
    const Stats s = stats();
    Json by_status = Json::object();
    for (const auto& [status, n] : s.responses_by_status) by_status[std::to_string(status)] = n;
    return Json{{"operations_created", s.operations_created},
                {"operations_by_route", s.operations_by_route},
                {"operations_by_account", s.operations_by_account},
                {"operations_by_account_route", s.operations_by_account_route},
                {"operations_ready", s.operations_ready},
                {"operations_failed", s.operations_failed},
                {"puts", s.puts},
                {"gets", s.gets},
                {"polls", s.polls},
                {"idempotent_replays", s.idempotent_replays},
                {"idempotency_conflicts", s.idempotency_conflicts},
                {"responses_by_status", by_status},
                {"webhook_attempts", s.webhook_attempts},
                {"webhook_successes", s.webhook_successes},
                {"webhook_failures", s.webhook_failures},
                {"webhooks_dropped", s.webhooks_dropped},
                {"downloads", s.downloads},
                {"downloads_denied", s.downloads_denied},
                {"download_bytes", s.download_bytes},
                {"faults_injected", s.faults_injected},
                {"credits", s.credits}}
        .dump();
  }

 private:
  std::string PublicUrl() const {
    return options_.public_url.empty() ? server_.base_url() : options_.public_url;
  }

  void ResetAccounts() {
    absl::MutexLock lock(&mu_);
    ResetAccountsLocked();
  }
  void ResetAccountsLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    credits_.clear();
    buckets_.clear();
    for (const auto& [key, account] : options_.api_keys)
      credits_[account] = options_.initial_credits;
  }

  void RegisterRoutes() {
    server_.RawRoute("POST", "/_emulator/faults", [this](const auto& req, auto& res) {
      const absl::Status s = plan_.Set(req.body);
      if (!s.ok()) return SendDetail(res, 400, s.message());
      SendJson(res, 200, plan_.ToJson());
    });
    server_.RawRoute("GET", "/_emulator/faults",
                     [this](const auto&, auto& res) { SendJson(res, 200, plan_.ToJson()); });
    server_.RawRoute("GET", "/_emulator/stats",
                     [this](const auto&, auto& res) { SendJson(res, 200, StatsJson()); });
    server_.RawRoute("POST", "/_emulator/reset", [this](const auto&, auto& res) {
      Reset();
      SendJson(res, 200, "{}");
    });
    server_.RawRoute("POST", "/_emulator/credits", [this](const auto& req, auto& res) {
      const Json body = ParseJson(req.body);
      if (!body.is_object() || !body.contains("account") || !body["account"].is_string() ||
          !body.contains("credits") || !body["credits"].is_number_integer()) {
        return SendDetail(res, 400, "expected {\"account\": string, \"credits\": integer}");
      }
      SetCredits(body["account"].get<std::string>(), body["credits"].get<int64_t>());
      SendJson(res, 200, "{}");
    });
    server_.Route(
        "PUT", R"(/v1/([a-z_]+\.[a-z_]+))",
        [this](const auto& req, auto& res, const auto& faults) { HandlePut(req, res, faults); });
    server_.Route(
        "GET", R"(/v1/([a-z_]+\.[a-z_]+))",
        [this](const auto& req, auto& res, const auto& faults) { HandleGet(req, res, faults); });
    server_.Route("GET", R"(/cdn/([A-Za-z0-9_]+)\.flac)",
                  [this](const auto& req, auto& res, const auto&) { HandleDownload(req, res); });
    // FastAPI answers unknown paths with 404 and known paths with another method with 405.
    for (const char* method : {"GET", "PUT", "POST", "DELETE", "PATCH", "OPTIONS"}) {
      server_.RawRoute(method, ".*", [](const httplib::Request& req, httplib::Response& res) {
        const bool known = absl::StartsWith(req.path, "/v1/") &&
                           FindRoute(absl::string_view(req.path).substr(4)) != nullptr;
        if (known) {
          res.set_header("Allow", "GET, PUT");
          return SendDetail(res, 405, "Method Not Allowed");
        }
        SendDetail(res, 404, "Not Found");
      });
    }
  }

  // The route named by the path (counted in `counter`), the Bearer key's account, and the
  // account's token bucket. nullptr when `res` holds the answer (404, 401 or 429).
  const RouteSpec* Admit(const httplib::Request& req, httplib::Response& res,
                         int64_t Stats::*counter, std::string* account) {
    const RouteSpec* route = FindRoute(req.matches[1].str());
    if (route == nullptr) {
      SendDetail(res, 404, "Not Found");
      return nullptr;
    }
    {
      absl::MutexLock lock(&mu_);
      ++(stats_.*counter);
    }
    const std::string auth = req.get_header_value("Authorization");
    const auto it = absl::StartsWith(auth, "Bearer ") ? options_.api_keys.find(auth.substr(7))
                                                      : options_.api_keys.end();
    if (it == options_.api_keys.end()) {
      SendDetail(res, 401, "Missing or invalid Authorization header");
      return nullptr;
    }
    *account = it->second;
    const absl::Time now = absl::Now();
    absl::MutexLock lock(&mu_);
    auto [bucket, fresh] = buckets_.try_emplace(*account);
    if (fresh) bucket->second = Bucket{static_cast<double>(options_.rate_limit_burst), now};
    Bucket& b = bucket->second;
    b.tokens =
        std::min<double>(options_.rate_limit_burst, b.tokens + absl::ToDoubleSeconds(now - b.last) *
                                                                   options_.rate_limit_per_second);
    b.last = now;
    if (b.tokens < 1.0) {
      const int64_t wait = std::max<int64_t>(
          1, static_cast<int64_t>(std::ceil((1.0 - b.tokens) / options_.rate_limit_per_second)));
      res.set_header("Retry-After", std::to_string(wait));
      SendDetail(res, 429, absl::StrCat("Rate limit exceeded; retry in ", wait, " seconds"));
      return nullptr;
    }
    b.tokens -= 1.0;
    return route;
  }

  // The route's fields: validated into `op` (echo, outputs) or reported in `errors`.
  void ValidateBody(const RouteSpec& route, const Json& body, Errors& errors, Operation& op) {
    if (!body.contains("idempotency_key") || body["idempotency_key"].is_null()) {
      errors.Add("missing", Loc({"body", "idempotency_key"}), "Field required", body);
    } else if (!body["idempotency_key"].is_string()) {
      errors.Add("uuid_type", Loc({"body", "idempotency_key"}),
                 "UUID input should be a string, bytes or UUID object", body["idempotency_key"]);
    } else if (!IsUuid(body["idempotency_key"].get<std::string>())) {
      errors.Add("uuid_parsing", Loc({"body", "idempotency_key"}),
                 "Input should be a valid UUID, invalid length or character",
                 body["idempotency_key"]);
    } else {
      op.idempotency_key = body["idempotency_key"].get<std::string>();
    }
    bool has_callback = false;
    if (auto cb = CheckString(body, "callback_url", false, 2048, errors, &has_callback)) {
      const auto parsed = ParseUrl(*cb);
      if (!parsed.has_value()) {
        errors.Add("url_parsing", Loc({"body", "callback_url"}),
                   "Input should be a valid URL, relative URL without a base", body["callback_url"],
                   {{"error", "relative URL without a base"}});
      } else if (parsed->scheme != "https" &&
                 !(options_.allow_loopback_callbacks && parsed->scheme == "http")) {
        errors.Add("url_scheme", Loc({"body", "callback_url"}), "URL scheme should be 'https'",
                   body["callback_url"], {{"expected_schemes", "'https'"}});
      } else if (!options_.allow_loopback_callbacks && IsPrivateHost(parsed->host)) {
        errors.Add("value_error", Loc({"body", "callback_url"}),
                   "Value error, callback_url must resolve to a public address",
                   body["callback_url"], {{"error", "private address"}});
      } else {
        op.callback_url = *cb;
      }
    }

    const uint64_t seed = StableHash(route.name) ^ StableHash(RequestFingerprint(body));
    auto echo_value = [&](const char* field, const Json& fallback) {
      op.echo[field] =
          body.contains(field) && !body[field].is_null() ? OJson(body[field]) : OJson(fallback);
    };
    std::string text;  // prompt/lyrics: the audio follows bpm and key hints in them
    double source_len = 0;
    std::string source_url;
    auto take_source = [&](const char* field, bool required) {
      if (auto url = CheckSource(body, field, required, errors)) {
        source_url = *url;
        source_len = SourceSeconds(*url);
      }
    };
    switch (route.input) {
      case Input::kSong: {
        auto lyrics = CheckString(body, "lyrics", true, 3000, errors);
        bool has_prompt = false;
        bool has_ref = body.contains("reference") && !body["reference"].is_null();
        auto prompt = CheckString(body, "prompt", false, 1024, errors, &has_prompt);
        if (has_ref) take_source("reference", true);
        if (has_prompt && has_ref) {
          errors.Add("value_error", Loc({"body"}),
                     "Value error, give either prompt or reference, not both", body);
        } else if (!has_prompt && !has_ref) {
          errors.Add("missing", Loc({"body", "prompt"}), "Field required", body);
        }
        text = prompt.value_or("") + " " + lyrics.value_or("");
        echo_value("lyrics", nullptr);
        echo_value("prompt", nullptr);
        echo_value("reference", nullptr);
        break;
      }
      case Input::kInstrumental: {
        bool has_prompt = false;
        bool has_ref = body.contains("reference") && !body["reference"].is_null();
        auto prompt = CheckString(body, "prompt", false, 1024, errors, &has_prompt);
        if (has_ref) take_source("reference", true);
        if (has_prompt && has_ref) {
          errors.Add("value_error", Loc({"body"}),
                     "Value error, give either prompt or reference, not both", body);
        } else if (!has_prompt && !has_ref) {
          errors.Add("missing", Loc({"body", "prompt"}), "Field required", body);
        }
        text = prompt.value_or("");
        echo_value("prompt", nullptr);
        echo_value("reference", nullptr);
        break;
      }
      case Input::kSample:
      case Input::kFx: {
        auto prompt = CheckString(body, "prompt", true, 1024, errors);
        auto duration = CheckNumber(body, "duration", true, errors);
        if (duration.has_value()) {
          if (route.input == Input::kSample) {
            CheckBounds(*duration, "duration", body["duration"], 0, false,
                        options_.max_sample_seconds, errors);
          } else {
            CheckBounds(*duration, "duration", body["duration"], 0.5, true, 30, errors);
          }
        }
        if (body.contains("loopable") && !body["loopable"].is_null() &&
            !body["loopable"].is_boolean()) {
          errors.Add("bool_type", Loc({"body", "loopable"}), "Input should be a valid boolean",
                     body["loopable"]);
        }
        text = prompt.value_or("");
        echo_value("prompt", nullptr);
        echo_value("duration", nullptr);
        if (route.input == Input::kSample || body.contains("loopable"))
          echo_value("loopable", false);
        source_len = duration.value_or(1);
        break;
      }
      case Input::kRemixSong:
      case Input::kRemixInstrumental: {
        take_source("source", true);
        if (route.input == Input::kRemixSong) {
          auto lyrics = CheckString(body, "lyrics", true, 3000, errors);
          auto prompt = CheckString(body, "prompt", true, 1024, errors);
          text = prompt.value_or("") + " " + lyrics.value_or("");
        }
        if (body.contains("n_variations") && !body["n_variations"].is_null()) {
          const Json& n = body["n_variations"];
          if (!n.is_number_integer()) {
            errors.Add("int_type", Loc({"body", "n_variations"}), "Input should be a valid integer",
                       n);
          } else {
            CheckBounds(n.get<double>(), "n_variations", n, 1, true, 3, errors);
          }
        }
        echo_value("source", nullptr);
        if (route.input == Input::kRemixSong) {
          echo_value("lyrics", nullptr);
          echo_value("prompt", nullptr);
        }
        echo_value("n_variations", 1);
        break;
      }
      case Input::kStems:
        take_source("source", true);
        echo_value("source", nullptr);
        break;
      case Input::kCut: {
        take_source("source", true);
        auto target = CheckNumber(body, "target_duration", true, errors);
        if (target.has_value()) {
          CheckBounds(*target, "target_duration", body["target_duration"], 0, false, 1e9, errors);
        }
        echo_value("source", nullptr);
        echo_value("target_duration", nullptr);
        if (errors.empty() && target.has_value() && *target > source_len) {
          op.fail = true;
          op.error_code = "invalid_target_duration";
          op.error_message = absl::StrFormat(
              "target_duration %.1f s exceeds the source length %.1f s", *target, source_len);
        }
        if (target.has_value()) {
          // The cut lands on a natural point, a little off the target (the docs: 30 -> 30.6).
          const double drift = static_cast<double>(seed % 15) / 10.0 - 0.4;
          source_len = std::clamp(*target + drift, 0.5, std::max(0.5, source_len));
        }
        break;
      }
    }
    if (!errors.empty()) return;
    if (absl::StrContains(source_url, "__fail__")) {
      op.fail = true;
      op.error_code = "source_unreadable";
      op.error_message = "The source audio could not be fetched or decoded";
    }

    AudioSpec base;
    base.seed = seed;
    base.bpm = BpmFromText(text).value_or(static_cast<int>(88 + seed % 48));
    if (auto key = KeyFromText(text)) {
      base.key_root = key->root;
      base.minor = key->minor;
    } else {
      base.key_root = static_cast<int>((seed >> 8) % 12);
      base.minor = ((seed >> 16) & 1) != 0;
    }
    auto add = [&](double seconds, const std::string& kind, uint64_t variation) {
      OutputSpec out;
      out.kind = kind;
      out.audio = base;
      out.audio.seconds = std::round(seconds * 10) / 10;
      out.audio.stem = kind;
      out.audio.seed = base.seed + variation;
      op.outputs.push_back(std::move(out));
    };
    int variations = 1;
    if (body.contains("n_variations") && body["n_variations"].is_number_integer()) {
      variations = body["n_variations"].get<int>();
    }
    const bool has_reference = !source_url.empty();
    switch (route.input) {
      case Input::kSong:
      case Input::kInstrumental:
        for (int i = 0; i < 2; ++i) {
          // A prompt-driven song runs 45–120 s; a reference-driven one follows the reference.
          const double len = has_reference
                                 ? source_len
                                 : 45.0 + static_cast<double>((seed >> (8 * i)) % 750) / 10.0;
          add(len, "", static_cast<uint64_t>(i));
        }
        break;
      case Input::kRemixSong:
      case Input::kRemixInstrumental:
        for (int i = 0; i < variations; ++i) add(source_len, "", static_cast<uint64_t>(i));
        break;
      case Input::kStems:
        for (const char* kind : {"vocals", "drums", "bass", "other"}) add(source_len, kind, 0);
        break;
      case Input::kSample:
      case Input::kFx:
      case Input::kCut:
        add(source_len, "", 0);
        break;
    }
  }

  double SourceSeconds(const std::string& url) const {
    double seconds = options_.source_seconds;
    if (auto d = QueryParam(url, "duration")) {
      double parsed = 0;
      if (absl::SimpleAtod(*d, &parsed) && parsed > 0) seconds = parsed;
    }
    return std::min(seconds, options_.max_source_seconds);
  }

  // The body without the fields that do not change the work, dumped with sorted keys.
  static std::string RequestFingerprint(const Json& body) {
    Json copy = body;
    if (copy.is_object()) {
      copy.erase("idempotency_key");
      copy.erase("callback_url");
    }
    return copy.dump();
  }

  void HandlePut(const httplib::Request& req, httplib::Response& res,
                 const std::vector<Fault>& faults) {
    std::string account;
    const RouteSpec* route = Admit(req, res, &Stats::puts, &account);
    if (route == nullptr) return;
    const Json body = ParseJson(req.body);
    if (body.is_discarded()) return SendDetail(res, 400, "Malformed JSON body");
    Errors errors;
    if (!body.is_object()) {
      errors.Add("model_attributes_type", Loc({"body"}),
                 "Input should be a valid dictionary or object to extract fields from", body);
      return SendJson(res, 422, errors.Body());
    }
    Operation op;
    ValidateBody(*route, body, errors, op);
    if (!errors.empty()) return SendJson(res, 422, errors.Body());

    op.route = route;
    op.account = account;
    op.fingerprint = RequestFingerprint(body);
    const std::string idem_key = absl::StrCat(account, "\n", route->name, "\n", op.idempotency_key);
    const absl::Time now = options_.clock();
    absl::MutexLock lock(&mu_);
    if (auto it = idempotency_.find(idem_key); it != idempotency_.end()) {
      const Operation& original = ops_.at(it->second);
      if (options_.strict_idempotency && original.fingerprint != op.fingerprint) {
        ++stats_.idempotency_conflicts;
        return SendDetail(res, 409, "idempotency_key reused with a different request");
      }
      ++stats_.idempotent_replays;
      return SendJson(res, 200, Wrap(original, now, nullptr));
    }
    const int64_t cost =
        options_.route_cost.count(route->name) ? options_.route_cost.at(route->name) : 1;
    int64_t& balance = credits_[account];
    if (balance < cost) return SendDetail(res, 402, "Insufficient credits");
    balance -= cost;

    op.id = absl::StrCat("op_", ids_.Ulid(now));
    op.created_at = now;
    op.ready_at = now + options_.processing_time;
    if (const Fault* f = FaultPlan::Find(faults, FaultAction::kFailOperation)) {
      op.fail = true;
      op.error_code = f->error_code;
      op.error_message = f->error_message;
    }
    if (webhook_keys_.count(account) == 0) op.callback_url.clear();  // no secret, no webhooks
    ++stats_.operations_created;
    ++stats_.operations_by_route[route->name];
    ++stats_.operations_by_account[account];
    ++stats_.operations_by_account_route[absl::StrCat(account, " ", route->name)];
    idempotency_[idem_key] = op.id;
    Schedule(Task{op.ready_at, 0, op.id});
    const std::string answer = Wrap(op, now, nullptr);
    ops_.emplace(op.id, std::move(op));
    SendJson(res, 200, answer);
  }

  void HandleGet(const httplib::Request& req, httplib::Response& res,
                 const std::vector<Fault>& faults) {
    std::string account;
    const RouteSpec* route = Admit(req, res, &Stats::gets, &account);
    if (route == nullptr) return;
    Errors errors;
    const std::string id = req.get_param_value("id");
    if (!req.has_param("id")) {
      errors.Add("missing", Loc({"query", "id"}), "Field required", nullptr);
    } else if (!IsOpId(id)) {
      errors.Add("string_pattern_mismatch", Loc({"query", "id"}),
                 "String should match pattern '^op_[0-9a-z]{26}$'", id,
                 {{"pattern", "^op_[0-9a-z]{26}$"}});
    }
    bool wait = false;
    if (req.has_param("wait")) {
      const auto parsed = ParseBoolText(req.get_param_value("wait"));
      if (!parsed.has_value()) {
        errors.Add("bool_parsing", Loc({"query", "wait"}),
                   "Input should be a valid boolean, unable to interpret input",
                   req.get_param_value("wait"));
      }
      wait = parsed.value_or(false);
    }
    if (!errors.empty()) return SendJson(res, 422, errors.Body());

    const Fault* expire = FaultPlan::Find(faults, FaultAction::kExpireUrl);
    std::optional<Operation> snapshot;
    {
      absl::MutexLock lock(&mu_);
      snapshot = FindForPollLocked(id, account, route, wait);
    }
    if (!snapshot.has_value()) {
      errors.Add("not_found", Loc({"query", "id"}), "Operation not found", id);
      return SendJson(res, 422, errors.Body());
    }
    // Serialized outside the lock: thousands of long-polls finishing together must not queue on it.
    SendJson(res, 200, Wrap(*snapshot, options_.clock(), expire));
  }

  // The operation `id` of `account` on `route`, after waiting for it (wait=true) until it is
  // terminal or the long-poll ends; nullopt when unknown (or gone by a Reset meanwhile).
  std::optional<Operation> FindForPollLocked(const std::string& id, const std::string& account,
                                             const RouteSpec* route, bool wait)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto it = ops_.find(id);
    if (it == ops_.end() || it->second.account != account || it->second.route != route) {
      return std::nullopt;
    }
    if (wait) {
      ++stats_.polls;
      const absl::Time deadline = absl::Now() + options_.long_poll;
      // Wakes early at the terminal status (ready_at), on Reset (the op vanishes) or on Stop.
      while (!stopped_) {
        auto op = ops_.find(id);
        if (op == ops_.end()) break;
        const absl::Time now = absl::Now();
        if (now >= op->second.ready_at || now >= deadline) break;
        polls_wake_.WaitWithDeadline(&mu_, std::min(op->second.ready_at, deadline));
      }
      it = ops_.find(id);
      if (it == ops_.end()) return std::nullopt;
    }
    return it->second;
  }

  void HandleDownload(const httplib::Request& req, httplib::Response& res) {
    const std::string file_id = req.matches[1];
    int64_t exp = 0;
    const std::string sig = req.get_param_value("sig");
    const bool signed_ok =
        absl::SimpleAtoi(req.get_param_value("exp"), &exp) && sig == Sign(file_id, exp);
    const bool expired = exp < absl::ToUnixSeconds(options_.clock());
    if (!signed_ok || expired) {
      {
        absl::MutexLock lock(&mu_);
        ++stats_.downloads_denied;
      }
      res.status = 403;
      res.set_content(
          absl::StrCat("<?xml version=\"1.0\" "
                       "encoding=\"UTF-8\"?>\n<Error><Code>AccessDenied</Code><Message>",
                       signed_ok ? "Request has expired" : "Invalid signature",
                       "</Message></Error>"),
          "application/xml");
      return;
    }
    // file_id = <op id>_<output index>
    const size_t sep = file_id.rfind('_');
    AudioSpec spec;
    {
      absl::MutexLock lock(&mu_);
      size_t index = 0;
      auto op = sep == std::string::npos ? ops_.end() : ops_.find(file_id.substr(0, sep));
      if (op == ops_.end() || !absl::SimpleAtoi(file_id.substr(sep + 1), &index) ||
          index >= op->second.outputs.size()) {
        return SendDetail(res, 404, "Not Found");
      }
      spec = op->second.outputs[index].audio;
    }
    auto path = cache_->Get(spec, AudioFormat::kFlac);
    if (!path.ok()) return SendDetail(res, 500, path.status().message());
    if (absl::Status s = ServeFile(*path, "audio/flac", res); !s.ok()) {
      return SendDetail(res, 500, s.message());
    }
    absl::MutexLock lock(&mu_);
    ++stats_.downloads;
    stats_.download_bytes += static_cast<int64_t>(res.content_length_);
  }

  std::string Sign(const std::string& file_id, int64_t exp) const {
    return absl::BytesToHexString(HmacSha256(url_secret_, absl::StrCat(file_id, ".", exp)));
  }

  // The operation DTO at `now`, with freshly signed URLs.
  OJson Dto(const Operation& op, absl::Time now, const Fault* expire) const {
    const bool done = now >= op.ready_at;
    OJson dto;
    dto["id"] = op.id;
    dto["status"] = !done ? "processing" : (op.fail ? "failed" : "ready");
    dto["created_at"] = FormatRfc3339(op.created_at);
    dto["idempotency_key"] = op.idempotency_key;
    for (const auto& [k, v] : op.echo.items()) dto[k] = v;
    OJson outputs = nullptr;
    if (done && !op.fail) {
      outputs = OJson::array();
      const absl::Time exp_time = now + (expire != nullptr ? expire->url_ttl : options_.url_ttl);
      const int64_t exp = absl::ToUnixSeconds(exp_time);
      for (size_t i = 0; i < op.outputs.size(); ++i) {
        const std::string file_id = absl::StrCat(op.id, "_", i);
        OJson out;
        if (!op.outputs[i].kind.empty()) out["kind"] = op.outputs[i].kind;
        out["url"] = absl::StrCat(PublicUrl(), "/cdn/", file_id, ".flac?exp=", exp,
                                  "&sig=", Sign(file_id, exp));
        out["expires_at"] = FormatRfc3339(absl::FromUnixSeconds(exp));
        out["duration"] = op.outputs[i].audio.seconds;
        outputs.push_back(std::move(out));
      }
    }
    if (op.route->multi) {
      dto["outputs"] = outputs;
    } else {
      dto["output"] = outputs.is_array() && !outputs.empty() ? outputs[0] : OJson(nullptr);
    }
    dto["error"] = done && op.fail ? OJson{{"code", op.error_code}, {"message", op.error_message}}
                                   : OJson(nullptr);
    return dto;
  }

  std::string Wrap(const Operation& op, absl::Time now, const Fault* expire) const {
    OJson wrapped;
    wrapped[op.route->wrapper] = Dto(op, now, expire);
    return wrapped.dump();
  }

  void Schedule(Task task) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    task.seq = ++task_seq_;
    tasks_.push(std::move(task));
    tasks_wake_.Signal();
  }

  // Background: completes operations (stats, long-poll wake-ups) and delivers webhooks.
  void WorkerLoop() {
    absl::MutexLock lock(&mu_);
    while (!stopped_) {
      if (tasks_.empty()) {
        tasks_wake_.WaitWithTimeout(&mu_, absl::Seconds(1));
        continue;
      }
      const absl::Time due = tasks_.top().due;
      if (absl::Now() < due) {
        tasks_wake_.WaitWithDeadline(&mu_, due);
        continue;
      }
      Task task = tasks_.top();
      tasks_.pop();
      auto it = ops_.find(task.op_id);
      if (it == ops_.end()) continue;  // reset meanwhile
      if (!task.webhook) {
        ++(it->second.fail ? stats_.operations_failed : stats_.operations_ready);
        if (!it->second.callback_url.empty()) {
          Task hook{absl::Now(), 0, task.op_id, /*webhook=*/true};
          Schedule(std::move(hook));
        }
        continue;
      }
      DeliverLocked(std::move(task), it->second);
    }
  }

  void DeliverLocked(Task task, const Operation& op) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const absl::Time now = absl::Now();
    if (task.attempt == 0) {
      task.webhook_id = absl::StrCat("msg_", ids_.Ulid(now));
      task.webhook_timestamp = absl::ToUnixSeconds(now);
      OJson payload;
      payload["type"] = absl::StrCat(op.route->name, ".", op.fail ? "failed" : "ready");
      payload["data"] = Dto(op, now, nullptr);
      task.body = payload.dump();
    }
    ++task.attempt;
    const std::vector<Fault> faults = plan_.Evaluate("WEBHOOK", op.route->name);
    ++stats_.webhook_attempts;
    if (FaultPlan::Find(faults, FaultAction::kWebhookLost) != nullptr) {
      ++stats_.webhooks_dropped;
      return;
    }
    std::vector<std::string> keys = webhook_keys_.at(op.account);
    if (FaultPlan::Find(faults, FaultAction::kWebhookBadSignature) != nullptr)
      keys = {"not-the-key"};
    const int copies = FaultPlan::Find(faults, FaultAction::kWebhookDuplicate) != nullptr ? 2 : 1;
    const std::string signed_content =
        absl::StrCat(task.webhook_id, ".", task.webhook_timestamp, ".", task.body);
    std::vector<std::string> signatures;
    signatures.reserve(keys.size());
    for (const std::string& key : keys) {
      signatures.push_back(
          absl::StrCat("v1,", absl::Base64Escape(HmacSha256(key, signed_content))));
    }
    const std::string signature = absl::StrJoin(signatures, " ");
    const std::string url = op.callback_url;
    bool ok = false;
    {
      // The HTTP call runs unlocked: a slow receiver must not stall the emulator.
      mu_.Unlock();
      for (int i = 0; i < copies; ++i) {
        const bool delivered =
            Post(url, task.webhook_id, task.webhook_timestamp, signature, task.body);
        ok = ok || delivered;
      }
      mu_.Lock();
    }
    if (ok) {
      ++stats_.webhook_successes;
      return;
    }
    ++stats_.webhook_failures;
    const size_t retry = static_cast<size_t>(task.attempt - 1);
    if (retry < options_.webhook_retry_delays.size() && !stopped_ && ops_.count(task.op_id)) {
      task.due = absl::Now() + options_.webhook_retry_delays[retry];
      Schedule(std::move(task));
    }
  }

  bool Post(const std::string& url, const std::string& id, int64_t timestamp,
            const std::string& signature, const std::string& body) {
    const auto parsed = ParseUrl(url);
    if (!parsed.has_value()) return false;
    httplib::Client client(parsed->origin());
    const int64_t timeout_ms = absl::ToInt64Milliseconds(options_.webhook_timeout);
    client.set_connection_timeout(timeout_ms / 1000, (timeout_ms % 1000) * 1000);
    client.set_read_timeout(timeout_ms / 1000, (timeout_ms % 1000) * 1000);
    httplib::Headers headers = {{"webhook-id", id},
                                {"webhook-timestamp", std::to_string(timestamp)},
                                {"webhook-signature", signature},
                                {"User-Agent", "soundpiece-emulator-webhooks/1"}};
    auto result = client.Post(parsed->path_and_query, headers, body, "application/json");
    return result && result->status >= 200 && result->status < 300;
  }

  const Options options_;
  FaultPlan plan_;
  IdGenerator ids_;
  HttpServer server_;
  std::unique_ptr<AudioCache> cache_;
  std::string url_secret_;
  std::map<std::string, std::vector<std::string>> webhook_keys_;  // account -> key bytes
  std::vector<std::thread> workers_;

  mutable absl::Mutex mu_;
  // Long-polls wake on their own deadline (ready_at), so completions need not signal them: one
  // SignalAll per completion would wake every waiting poll (quadratic with thousands of polls).
  absl::CondVar polls_wake_;  // Reset and Stop only
  absl::CondVar tasks_wake_;  // a new task for the workers
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  std::map<std::string, Operation> ops_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::string> idempotency_ ABSL_GUARDED_BY(mu_);  // key -> op id
  std::map<std::string, int64_t> credits_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, Bucket> buckets_ ABSL_GUARDED_BY(mu_);
  std::priority_queue<Task, std::vector<Task>, std::greater<Task>> tasks_ ABSL_GUARDED_BY(mu_);
  uint64_t task_seq_ ABSL_GUARDED_BY(mu_) = 0;
  Stats stats_ ABSL_GUARDED_BY(mu_);
};

absl::StatusOr<std::unique_ptr<Emulator>> Emulator::Start(Options options) {
  auto impl = std::make_unique<Impl>(std::move(options));
  if (absl::Status s = impl->Init(); !s.ok()) return s;
  return std::unique_ptr<Emulator>(new Emulator(std::move(impl)));
}

Emulator::Emulator(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Emulator::~Emulator() { Stop(); }
int Emulator::port() const { return impl_->port(); }
std::string Emulator::base_url() const { return impl_->base_url(); }
absl::Status Emulator::SetFaultPlan(absl::string_view json) { return impl_->SetFaultPlan(json); }
void Emulator::Reset() { impl_->Reset(); }
void Emulator::SetCredits(const std::string& account, int64_t credits) {
  impl_->SetCredits(account, credits);
}
Stats Emulator::stats() const { return impl_->stats(); }
std::string Emulator::StatsJson() const { return impl_->StatsJson(); }
void Emulator::Stop() { impl_->Stop(); }

}  // namespace musicgw::emulators::soundpiece
