#include "emulators/loudly/loudly_emulator.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
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

namespace musicgw::emulators::loudly {
namespace {

using Json = nlohmann::json;
using OJson = nlohmann::ordered_json;

// ---- Catalog ---------------------------------------------------------------------------------

struct Genre {
  int id;
  const char* name;
  const char* description;
  int bpm_low;
  int bpm_high;
  std::vector<const char*> micro;  // micro-genre names
};

const std::vector<Genre>& Genres() {
  static const auto* genres = new std::vector<Genre>{
      {1, "Ambient", "Slow, spacious textures", 60, 90, {"Dark Ambient"}},
      {2, "Downtempo", "Laid-back electronic grooves", 80, 110, {"Chillout"}},
      {3, "Drum 'n' Bass", "Fast breakbeats and deep bass", 160, 180, {"Liquid Drum 'n' Bass"}},
      {4, "EDM", "Big-room electronic dance music", 120, 130, {"Future Bass"}},
      {5, "Epic Score", "Cinematic orchestral builds", 70, 120, {"Trailer"}},
      {6, "Hip Hop", "Beats and boom bap", 80, 100, {"Alternative Hip Hop", "Boom Bap"}},
      {7, "House", "Four on the floor", 118, 130, {"Deep House", "Tech House"}},
      {8, "Lo Fi", "Dusty, mellow beats", 70, 90, {"Lo Fi Hip Hop"}},
      {9, "Reggaeton", "Dembow rhythms", 88, 100, {}},
      {10, "Rock", "Guitars and live drums", 100, 150, {"Indie Rock"}},
      {11, "Synthwave", "Retro 80s synths", 80, 118, {"Darkwave"}},
      {12, "Techno", "Driving, hypnotic electronic music", 125, 140, {"Minimal Techno"}},
      {13, "Trap Double Tempo", "Trap at full speed", 130, 160, {}},
      {14, "Trap Half Tempo", "Trap at half speed", 65, 80, {}},
      {15, "Zen", "Calm, meditative music", 50, 80, {}},
  };
  return *genres;
}

constexpr const char* kInstruments[] = {"DRUMS",     "BASS",  "PERCUSSION", "SYNTH",
                                        "STRINGS",   "PIANO", "GUITAR",     "BRASS",
                                        "WOODWINDS", "PADS",  "KEYS",       "FX"};

struct Structure {
  int id;
  const char* name;
  const char* description;
};
constexpr Structure kStructures[] = {
    {0, "Classic", "The genre's usual form"},
    {1, "Loop", "One section, loopable"},
    {2, "Intro-Verse-Chorus", "Builds to a chorus"},
    {3, "Build-Up-Drop", "A long build into a drop"},
    {4, "Short Form", "Intro, theme, outro"},
};

constexpr const char* kPrompts[] = {
    "A 90-second energetic house track with tropical vibes and flute",
    "Calm lo-fi beat for studying, soft piano and vinyl crackle",
    "Epic orchestral trailer music with huge drums",
    "Dark techno at 130 bpm with a hypnotic bassline",
    "Sunny acoustic guitar pop for a travel vlog",
};

constexpr const char* kKeyRoots[] = {"C",     "C#/Db", "D",     "D#/Eb", "E",     "F",
                                     "F#/Gb", "G",     "G#/Ab", "A",     "A#/Bb", "B"};
constexpr const char* kRootNames[] = {"C",  "C#", "D",  "D#", "E",  "F",
                                      "F#", "G",  "G#", "A",  "A#", "B"};

constexpr const char* kTitleA[] = {"Twilight", "Surreal", "Night",  "Island", "Golden",   "Neon",
                                   "Velvet",   "Distant", "Hidden", "Silver", "Electric", "Quiet"};
constexpr const char* kTitleB[] = {"Groove", "Symphony", "Drive",  "Pulse", "Horizon", "Dreams",
                                   "Echoes", "Skyline",  "Rhythm", "Waves", "Journey", "Motion"};

// Web usage_data keys in the captured order, with the captured totals and top_up shape.
struct UsageKey {
  const char* name;
  int64_t total;
  bool top_up_object;
};
constexpr UsageKey kUsageKeys[] = {
    {"download_song", 500, false},      {"download_stems", 20, true},
    {"download_sample_pack", 20, true}, {"generate_vega_song", 3000, false},
    {"export_studio_song", 80, false},  {"submit_release", 20, false},
    {"upload_audio", 100, false},
};

constexpr char kTestSongTitle[] = "Test Song";

constexpr const char* kB2BTypes[] = {"GENERATE_VEGA_SONG_WITH_PROMPT", "GENERATE_SONG_VEGA_1",
                                     "GET_SONGS"};

const Genre* FindGenre(absl::string_view name, std::string* canonical) {
  for (const Genre& g : Genres()) {
    if (absl::EqualsIgnoreCase(name, g.name)) {
      *canonical = g.name;
      return &g;
    }
    for (const char* micro : g.micro) {
      if (absl::EqualsIgnoreCase(name, micro)) {
        *canonical = micro;
        return &g;
      }
    }
  }
  return nullptr;
}

// ---- Request fields --------------------------------------------------------------------------

// Multipart parts and urlencoded fields alike; empty values count as absent.
class Form {
 public:
  explicit Form(const httplib::Request& req) {
    for (const auto& [name, part] : req.files) {
      if (!part.content.empty()) fields_.emplace_back(name, part.content);
    }
    for (const auto& [name, value] : req.params) {
      if (!value.empty()) fields_.emplace_back(name, value);
    }
  }
  std::optional<std::string> Get(absl::string_view name) const {
    for (const auto& [n, v] : fields_) {
      if (n == name) return v;
    }
    return std::nullopt;
  }
  std::vector<std::string> All(absl::string_view name) const {
    std::vector<std::string> out;
    for (const auto& [n, v] : fields_) {
      if (n == name) out.push_back(v);
    }
    return out;
  }

 private:
  std::vector<std::pair<std::string, std::string>> fields_;
};

struct Params {
  std::string genre;  // canonical name; empty when absent
  std::optional<std::string> genre_blend;
  std::optional<int> bpm;
  std::optional<int> key_root;
  std::optional<bool> minor;
  std::optional<std::vector<std::string>> instruments;
  std::optional<int> duration;
  std::optional<std::string> energy;
  std::optional<int> structure_id;
  std::optional<std::string> prompt;
  std::optional<std::string> model;
  bool test = false;
};

struct Invalid {
  std::string error;
  std::string description;
};

std::optional<Invalid> ParseInt(const Form& form, const char* field, int min, int max,
                                std::optional<int>* out) {
  auto v = form.Get(field);
  if (!v.has_value()) return std::nullopt;
  int n = 0;
  if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(*v), &n) || n < min || n > max) {
    return Invalid{absl::StrCat("invalid_", field),
                   absl::StrCat(field, " must be an integer between ", min, " and ", max)};
  }
  *out = n;
  return std::nullopt;
}

// The three instrument wire forms: repeated `instruments[]`, "a,b", "[a,b]" (any case).
std::optional<Invalid> ParseInstruments(const Form& form, Params* p) {
  std::vector<std::string> raw = form.All("instruments[]");
  for (const std::string& v : form.All("instruments")) raw.push_back(v);
  if (raw.empty()) return std::nullopt;
  std::vector<std::string> out;
  for (const std::string& value : raw) {
    absl::string_view v = absl::StripAsciiWhitespace(value);
    if (absl::ConsumePrefix(&v, "[")) absl::ConsumeSuffix(&v, "]");
    for (absl::string_view item : absl::StrSplit(v, ',', absl::SkipWhitespace())) {
      item = absl::StripAsciiWhitespace(item);
      item = absl::StripPrefix(absl::StripSuffix(item, "\""), "\"");
      const std::string upper = absl::AsciiStrToUpper(item);
      if (std::find_if(std::begin(kInstruments), std::end(kInstruments),
                       [&](const char* k) { return upper == k; }) == std::end(kInstruments)) {
        return Invalid{"invalid_instruments", absl::StrCat("Unknown instrument \"", item, "\"")};
      }
      out.push_back(upper);
    }
  }
  if (!out.empty()) p->instruments = std::move(out);
  return std::nullopt;
}

// Shared by both dialects: the generation fields of loudly.md §2.3/§2.4.
std::optional<Invalid> ParseParams(const Form& form, bool need_genre, bool need_prompt, Params* p) {
  if (auto prompt = form.Get("prompt")) p->prompt = *prompt;
  if (need_prompt && !p->prompt.has_value()) {
    return Invalid{"missing_parameter", "The \"prompt\" field is required"};
  }
  if (auto genre = form.Get("genre")) {
    if (FindGenre(*genre, &p->genre) == nullptr) {
      return Invalid{"invalid_genre", absl::StrCat("Genre \"", *genre, "\" does not exist")};
    }
  } else if (need_genre) {
    return Invalid{"missing_parameter", "The \"genre\" field is required"};
  }
  if (auto blend = form.Get("genre_blend")) {
    std::string canonical;
    if (FindGenre(*blend, &canonical) == nullptr) {
      return Invalid{"invalid_genre_blend", absl::StrCat("Genre \"", *blend, "\" does not exist")};
    }
    p->genre_blend = canonical;
  }
  if (auto e = ParseInt(form, "duration", 30, 420, &p->duration)) return e;
  if (auto e = ParseInt(form, "bpm", 40, 250, &p->bpm)) return e;
  std::optional<int> structure;
  if (auto e = ParseInt(form, "structure_id", 0, 1000, &structure)) return e;
  if (structure.has_value()) {
    if (std::none_of(std::begin(kStructures), std::end(kStructures),
                     [&](const Structure& s) { return s.id == *structure; })) {
      return Invalid{"invalid_structure_id",
                     absl::StrCat("Structure ", *structure, " does not exist")};
    }
    p->structure_id = structure;
  }
  if (auto energy = form.Get("energy")) {
    const std::string e = absl::AsciiStrToLower(*energy);
    if (e != "low" && e != "high" && e != "original") {
      return Invalid{"invalid_energy", "energy must be one of low, high, original"};
    }
    p->energy = e;
  }
  if (auto root = form.Get("key_root")) {
    p->key_root = ParseKeyRoot(*root);
    if (!p->key_root.has_value()) {
      return Invalid{
          "invalid_key_root",
          "key_root must be one of C, C#/Db, D, D#/Eb, E, F, F#/Gb, G, G#/Ab, A, A#/Bb, B"};
    }
  }
  if (auto quality = form.Get("key_quality")) {
    const std::string q = absl::AsciiStrToLower(*quality);
    if (q != "major" && q != "minor") {
      return Invalid{"invalid_key_quality", "key_quality must be major or minor"};
    }
    p->minor = q == "minor";
  }
  if (auto model = form.Get("model")) {
    const std::string m = absl::AsciiStrToUpper(*model);
    if (m != "VEGA_1" && m != "VEGA_2")
      return Invalid{"invalid_model", "model must be VEGA_1 or VEGA_2"};
    p->model = m;
  }
  if (auto test = form.Get("test")) {
    auto b = ParseBoolText(*test);
    if (!b.has_value()) return Invalid{"invalid_test", "test must be true or false"};
    p->test = *b;
  }
  return ParseInstruments(form, p);
}

// What the song sounds like: the request where it says, the seed where it does not.
AudioSpec SpecFor(const Params& p, uint64_t seed, int seconds) {
  AudioSpec spec;
  spec.seconds = seconds;
  spec.seed = seed;
  const std::string text = p.prompt.value_or("");
  std::string canonical;
  const Genre* genre = p.genre.empty() ? nullptr : FindGenre(p.genre, &canonical);
  if (p.bpm.has_value()) {
    spec.bpm = *p.bpm;
  } else if (auto bpm = BpmFromText(text)) {
    spec.bpm = *bpm;
  } else if (genre != nullptr) {
    spec.bpm = (genre->bpm_low + genre->bpm_high) / 2;
  } else {
    spec.bpm = static_cast<int>(85 + seed % 50);
  }
  const auto hint = KeyFromText(text);
  spec.key_root = p.key_root.value_or(hint ? hint->root : static_cast<int>((seed >> 8) % 12));
  spec.minor = p.minor.value_or(hint ? hint->minor : ((seed >> 16) & 1) != 0);
  return spec;
}

std::string Title(uint64_t seed) {
  return absl::StrCat(kTitleA[seed % std::size(kTitleA)], " ",
                      kTitleB[(seed >> 20) % std::size(kTitleB)]);
}

// A nullable JSON value from an optional.
template <typename T>
OJson OrNull(const std::optional<T>& v) {
  return v.has_value() ? OJson(*v) : OJson(nullptr);
}

// Key order of a formula: as created (the POST answer), or as stored by PostgreSQL jsonb, which
// sorts keys by length, then bytes (what every GET answer shows).
OJson Formula(const Params& p, bool jsonb_order) {
  OJson f;
  const auto set = [&f](const char* k, OJson v) { f[k] = std::move(v); };
  std::vector<std::pair<std::string, OJson>> items = {
      {"genre", p.genre.empty() ? OJson(nullptr) : OJson(p.genre)},
      {"genre_blend", OrNull(p.genre_blend)},
      {"bpm", OrNull(p.bpm)},
      {"key", p.key_root.has_value()
                  ? OJson(absl::StrCat(kRootNames[*p.key_root], "-",
                                       p.minor.value_or(false) ? "minor" : "major"))
                  : OJson(nullptr)},
      {"instruments", OrNull(p.instruments)},
      {"duration", OrNull(p.duration)},
      {"energy", OrNull(p.energy)},
      {"structure_id", OrNull(p.structure_id)},
      {"prompt", OrNull(p.prompt)},
      {"extra_params", nullptr},
      {"user_audio", nullptr},
      {"entropy", nullptr},
  };
  if (jsonb_order) {
    std::stable_sort(items.begin(), items.end(), [](const auto& a, const auto& b) {
      return a.first.size() != b.first.size() ? a.first.size() < b.first.size() : a.first < b.first;
    });
  }
  for (auto& [k, v] : items) set(k.c_str(), std::move(v));
  return f;
}

struct Song {
  std::string id;
  std::string title;
  int64_t duration_ms = 0;
  std::string file_id;  // music_file/<file_id>.mp3
  std::string wav_id;
  std::string xml_id;
  absl::Time created_at;
  AudioSpec audio;
};

struct Bundle {
  std::string id;
  std::string type;
  absl::Time created_at;
  Params params;
  absl::Time song_at;
  bool failed = false;
  std::string error_message;
  std::optional<Song> song;  // set once materialized
  uint64_t seed = 0;
};

struct Usage {
  int64_t total = 0;
  int64_t used = 0;
};

absl::Time MonthStart(absl::Time now, int add_months) {
  const absl::CivilSecond cs = absl::ToCivilSecond(now, absl::UTCTimeZone());
  const absl::CivilMonth month = absl::CivilMonth(cs) + add_months;
  return absl::FromCivil(absl::CivilDay(month), absl::UTCTimeZone());
}

void SendJson(httplib::Response& res, int status, const OJson& body) {
  res.status = status;
  res.set_content(EscapeJsonSlashes(body.dump()), "application/json");
}

void SendError(httplib::Response& res, int status, const std::string& error,
               const std::string& description) {
  OJson body;
  body["error"] = error;
  body["error_description"] = description;
  SendJson(res, status, body);
}

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
                DialectErrors{
                    [](int status) {
                      return Json{{"error", status >= 500 ? "internal_error" : "error"},
                                  {"error_description", absl::StrCat("HTTP ", status)}}
                          .dump();
                    },
                    [](absl::Duration after) {
                      return Json{
                          {"error", "too_many_requests"},
                          {"error_description",
                           absl::StrCat("Retry in ", absl::ToInt64Seconds(after), " seconds")}}
                          .dump();
                    },
                    [this] {
                      return std::pair<int, std::string>(
                          500, Json{{"error", QuotaMessage("GENERATE_SONG_VEGA_1", 0)}}.dump());
                    }}) {}

  ~Impl() { Stop(); }

  absl::Status Init() {
    auto cache = AudioCache::Create(options_.data_dir);
    if (!cache.ok()) return cache.status();
    cache_ = *std::move(cache);
    if (absl::Status s = plan_.Set(options_.fault_plan_json); !s.ok()) return s;
    ResetState();
    RegisterRoutes();
    server_.set_status_observer([this](const httplib::Request& req, int status) {
      if (absl::StartsWith(req.path, "/_emulator/")) return;
      absl::MutexLock lock(&mu_);
      ++stats_.responses_by_status[status];
    });
    return server_.Start();
  }

  void Stop() { server_.Stop(); }
  int port() const { return server_.port(); }
  std::string base_url() const { return server_.base_url(); }
  absl::Status SetFaultPlan(absl::string_view json) { return plan_.Set(json); }

  void Reset() {
    plan_.Clear();
    ResetState();
  }

  std::string current_refresh_token() const {
    absl::MutexLock lock(&mu_);
    return refresh_token_;
  }

  Stats stats() const {
    absl::MutexLock lock(&mu_);
    Stats s = stats_;
    s.faults_injected = plan_.fired();
    return s;
  }

  bool AwaitStats(const std::function<bool(const Stats&)>& condition,
                  absl::Duration timeout) const {
    absl::MutexLock lock(&mu_);
    const auto holds = [this, &condition]()
                           ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return condition(stats_); };
    return mu_.AwaitWithTimeout(absl::Condition(&holds), timeout);
  }

  std::string StatsJson() const {
    const Stats s = stats();
    Json by_status = Json::object();
    for (const auto& [status, n] : s.responses_by_status) by_status[std::to_string(status)] = n;
    return Json{{"token_refreshes", s.token_refreshes},
                {"token_refreshes_rejected", s.token_refreshes_rejected},
                {"token_refreshes_early", s.token_refreshes_early},
                {"unauthorized", s.unauthorized},
                {"bundles_created", s.bundles_created},
                {"bundles_by_type", s.bundles_by_type},
                {"bundle_polls", s.bundle_polls},
                {"songs_created", s.songs_created},
                {"b2b_song_requests", s.b2b_song_requests},
                {"b2b_songs", s.b2b_songs},
                {"b2b_test_songs", s.b2b_test_songs},
                {"b2b_songs_by_account", s.b2b_songs_by_account},
                {"quota_rejections", s.quota_rejections},
                {"validation_errors", s.validation_errors},
                {"downloads", s.downloads},
                {"download_bytes", s.download_bytes},
                {"limits_requests", s.limits_requests},
                {"responses_by_status", by_status},
                {"faults_injected", s.faults_injected}}
        .dump();
  }

 private:
  std::string PublicUrl() const {
    return options_.public_url.empty() ? server_.base_url() : options_.public_url;
  }

  void ResetState() {
    absl::MutexLock lock(&mu_);
    refresh_token_ = options_.refresh_token;
    latest_expiry_ = absl::InfinitePast();
    access_tokens_.clear();
    bundles_.clear();
    files_.clear();
    stats_ = Stats{};
    web_usage_.clear();
    for (const UsageKey& k : kUsageKeys) {
      auto it = options_.web_limits.find(k.name);
      web_usage_[k.name] = Usage{it == options_.web_limits.end() ? k.total : it->second, 0};
    }
    b2b_used_.clear();
    prompt_counter_ = 0;
    test_file_id_.clear();
  }

  std::string QuotaMessage(absl::string_view service, int64_t attempts_left) const {
    const absl::Time now = options_.clock();
    return absl::StrCat(
        "External service calling limit exceeded: (service: ", service,
        ", Timer seconds remaining: ", absl::ToInt64Seconds(MonthStart(now, 1) - now),
        ", Attempts remaining: ", attempts_left, ")");
  }

  void RegisterRoutes() {
    server_.RawRoute("POST", "/_emulator/faults", [this](const auto& req, auto& res) {
      const absl::Status s = plan_.Set(req.body);
      if (!s.ok()) return SendError(res, 400, "invalid_fault_plan", std::string(s.message()));
      res.set_content(plan_.ToJson(), "application/json");
    });
    server_.RawRoute("GET", "/_emulator/faults", [this](const auto&, auto& res) {
      res.set_content(plan_.ToJson(), "application/json");
    });
    server_.RawRoute("GET", "/_emulator/stats", [this](const auto&, auto& res) {
      res.set_content(StatsJson(), "application/json");
    });
    server_.RawRoute("POST", "/_emulator/reset", [this](const auto&, auto& res) {
      Reset();
      res.set_content("{}", "application/json");
    });

    // Web-app dialect.
    server_.Route("POST", "/oauth/v2/token",
                  [this](const auto& req, auto& res, const auto&) { HandleToken(req, res); });
    server_.Route("POST", "/ai/vega/bundles", [this](const auto& req, auto& res, const auto& f) {
      HandleCreateBundle(req, res, f);
    });
    server_.Route("GET", R"(/ai/vega/bundles/([0-9a-fA-F-]+))",
                  [this](const auto& req, auto& res, const auto&) { HandleGetBundle(req, res); });
    server_.Route("GET", "/users/limits",
                  [this](const auto& req, auto& res, const auto&) { HandleWebLimits(req, res); });

    // Public B2B dialect.
    server_.Route("POST", "/api/ai/songs", [this](const auto& req, auto& res, const auto& f) {
      HandleB2BSong(req, res, f, /*prompt=*/false);
    });
    server_.Route("POST", "/api/ai/prompt/songs",
                  [this](const auto& req, auto& res, const auto& f) {
                    HandleB2BSong(req, res, f, /*prompt=*/true);
                  });
    server_.Route("GET", "/api/ai/genres", [this](const auto& req, auto& res, const auto&) {
      if (B2BAccount(req, res).has_value()) SendJson(res, 200, GenresJson());
    });
    server_.Route("GET", "/api/ai/structures", [this](const auto& req, auto& res, const auto&) {
      if (!B2BAccount(req, res).has_value()) return;
      OJson out = OJson::array();
      for (const Structure& s : kStructures) {
        out.push_back({{"id", s.id}, {"name", s.name}, {"description", s.description}});
      }
      SendJson(res, 200, out);
    });
    server_.Route("GET", "/api/ai/prompt/random", [this](const auto& req, auto& res, const auto&) {
      if (!B2BAccount(req, res).has_value()) return;
      absl::MutexLock lock(&mu_);
      SendJson(res, 200, {{"prompt", kPrompts[prompt_counter_++ % std::size(kPrompts)]}});
    });
    server_.Route("GET", "/api/account/limits",
                  [this](const auto& req, auto& res, const auto&) { HandleB2BLimits(req, res); });

    // Files, unauthenticated as on the CDN.
    server_.Route("GET", R"(/assets/music_file/([0-9a-f-]+)\.mp3)",
                  [this](const auto& req, auto& res, const auto&) { HandleMp3(req, res); });
    server_.Route("GET", R"(/assets/(song_wav|wave_form)/([0-9a-f-]+)\.json)",
                  [](const auto&, auto& res, const auto&) {
                    OJson wave;
                    wave["version"] = 2;
                    wave["channels"] = 1;
                    wave["sample_rate"] = kSampleRate;
                    wave["samples_per_pixel"] = 44100;
                    wave["bits"] = 8;
                    wave["data"] = std::vector<int>{0, 12, -14, 30, -28, 22, -20, 8, -6, 0};
                    SendJson(res, 200, wave);
                  });
    server_.Route("GET", R"(/assets/song_xml/([0-9a-f-]+)\.xml)",
                  [](const auto&, auto& res, const auto&) {
                    res.set_content("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<song/>\n",
                                    "application/xml");
                  });
  }

  // ---- Web auth --------------------------------------------------------------------------

  void HandleToken(const httplib::Request& req, httplib::Response& res) {
    const Form form(req);
    const std::string grant = form.Get("grant_type").value_or("");
    absl::MutexLock lock(&mu_);
    if (grant != "refresh_token") {
      ++stats_.token_refreshes_rejected;
      return SendError(res, 400, "unsupported_grant_type",
                       "Invalid grant_type parameter or parameter missing");
    }
    if (form.Get("client_id").value_or("") != options_.client_id) {
      ++stats_.token_refreshes_rejected;
      return SendError(res, 400, "invalid_client", "The client credentials are invalid");
    }
    if (form.Get("refresh_token").value_or("") != refresh_token_) {
      ++stats_.token_refreshes_rejected;
      return SendError(res, 400, "invalid_grant", "Invalid refresh token");
    }
    const absl::Time now = options_.clock();
    const absl::Time expiry = now + options_.access_token_ttl;
    OJson header;
    header["typ"] = "JWT";
    header["alg"] = "RS256";
    OJson claims;
    claims["aud"] = "Core";
    claims["jti"] = ids_.Hex(40);
    claims["iat"] = absl::ToUnixSeconds(now);
    claims["nbf"] = absl::ToUnixSeconds(now);
    claims["exp"] = absl::ToUnixSeconds(expiry);
    claims["sub"] = "5d1f0c52-7c3e-4c0a-9a51-6b1c0e0f2a11";
    claims["scopes"] = OJson::array();
    // Not a real RS256 signature (no key pair): clients only read the claims.
    const std::string signing_input = absl::StrCat(absl::WebSafeBase64Escape(header.dump()), ".",
                                                   absl::WebSafeBase64Escape(claims.dump()));
    const std::string token = absl::StrCat(
        signing_input, ".", absl::WebSafeBase64Escape(HmacSha256(ids_.Hex(16), signing_input)));
    access_tokens_[token] = expiry;
    refresh_token_ = ids_.Hex(40);
    ++stats_.token_refreshes;
    // The previous grant's token had more than half its life left: a client refreshed although
    // it (or another client of the same account) held a good token.
    if (latest_expiry_ - now > options_.access_token_ttl / 2) ++stats_.token_refreshes_early;
    latest_expiry_ = expiry;
    OJson body;
    body["token_type"] = "Bearer";
    body["expires_in"] = std::max<int64_t>(1, absl::ToInt64Seconds(options_.access_token_ttl));
    body["access_token"] = token;
    body["refresh_token"] = refresh_token_;
    SendJson(res, 200, body);
  }

  // LexikJWT-style 401s (the service is Symfony: FOSOAuthServer's `1_<random>` client ids).
  bool WebAuthorized(const httplib::Request& req, httplib::Response& res) {
    const std::string auth = req.get_header_value("Authorization");
    absl::MutexLock lock(&mu_);
    const char* message = nullptr;
    if (!absl::StartsWith(auth, "Bearer ") || auth.size() <= 7) {
      message = "JWT Token not found";
    } else if (auto it = access_tokens_.find(auth.substr(7)); it == access_tokens_.end()) {
      message = "Invalid JWT Token";
    } else if (options_.clock() >= it->second) {
      message = "Expired JWT Token";
    }
    if (message == nullptr) return true;
    ++stats_.unauthorized;
    OJson body;
    body["code"] = 401;
    body["message"] = message;
    SendJson(res, 401, body);
    return false;
  }

  // ---- Web bundles -----------------------------------------------------------------------

  void HandleCreateBundle(const httplib::Request& req, httplib::Response& res,
                          const std::vector<Fault>& faults) {
    if (!WebAuthorized(req, res)) return;
    const Form form(req);
    const std::string type = absl::AsciiStrToUpper(form.Get("bundle_type").value_or(""));
    if (type != "ADVANCED" && type != "TEXT2MUSIC") {
      return Reject(res, {"invalid_bundle_type", "bundle_type must be ADVANCED or TEXT2MUSIC"});
    }
    Params params;
    if (auto invalid = ParseParams(form, type == "ADVANCED", type == "TEXT2MUSIC", &params)) {
      return Reject(res, *invalid);
    }
    Bundle bundle;
    bundle.type = type;
    bundle.seed = StableHash(absl::StrCat(type, "|", req.body));
    if (type == "TEXT2MUSIC" && params.genre.empty()) {
      // The service picks the genre for a text prompt (the capture: "Alternative Hip Hop").
      std::vector<std::string> names;
      for (const Genre& g : Genres()) {
        names.push_back(g.name);
        for (const char* m : g.micro) names.push_back(m);
      }
      params.genre = names[StableHash(*params.prompt) % names.size()];
    }
    const absl::Time now = options_.clock();
    absl::MutexLock lock(&mu_);
    Usage& usage = web_usage_["generate_vega_song"];
    if (usage.used >= usage.total) {
      ++stats_.quota_rejections;
      OJson body;
      body["error"] = QuotaMessage("generate_vega_song", 0);
      return SendJson(res, 500, body);
    }
    bundle.id = ids_.UuidV4();
    bundle.created_at = now;
    bundle.song_at = now + options_.bundle_song_delay;
    bundle.params = std::move(params);
    if (const Fault* f = FaultPlan::Find(faults, FaultAction::kFailOperation)) {
      bundle.failed = true;
      bundle.error_message = f->error_message;
    }
    ++stats_.bundles_created;
    ++stats_.bundles_by_type[type];
    const OJson body = BundleJson(bundle, /*jsonb_order=*/false);
    bundles_.emplace(bundle.id, std::move(bundle));
    SendJson(res, 200, body);
  }

  void HandleGetBundle(const httplib::Request& req, httplib::Response& res) {
    if (!WebAuthorized(req, res)) return;
    const std::string id = req.matches[1];
    absl::MutexLock lock(&mu_);
    ++stats_.bundle_polls;
    auto it = bundles_.find(id);
    if (it == bundles_.end()) {
      OJson body;
      body["code"] = 404;
      body["message"] = "Bundle not found";
      return SendJson(res, 404, body);
    }
    MaterializeLocked(it->second, options_.clock());
    SendJson(res, 200, BundleJson(it->second, /*jsonb_order=*/true));
  }

  // The song appears once its time has come; it is counted against generate_vega_song then.
  void MaterializeLocked(Bundle& bundle, absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (bundle.failed || bundle.song.has_value() || now < bundle.song_at) return;
    const int seconds =
        bundle.params.duration.value_or(DefaultDuration(bundle.seed)) + 1;  // 128 s -> 129000 ms
    Song song;
    song.id = ids_.UuidV1(bundle.song_at);
    song.title = Title(bundle.seed);
    song.duration_ms = int64_t{seconds} * 1000;
    song.file_id = ids_.UuidV4();
    song.wav_id = ids_.UuidV4();
    song.xml_id = ids_.UuidV4();
    song.created_at = bundle.song_at;
    song.audio = SpecFor(bundle.params, bundle.seed, seconds);
    files_[song.file_id] = FileEntry{song.audio, /*web=*/true};
    bundle.song = std::move(song);
    ++web_usage_["generate_vega_song"].used;
    ++stats_.songs_created;
  }

  int DefaultDuration(uint64_t seed) const {
    return options_.default_duration_seconds > 0 ? options_.default_duration_seconds
                                                 : static_cast<int>(120 + seed % 81);
  }

  OJson BundleJson(const Bundle& b, bool jsonb_order) const {
    OJson out;
    out["id"] = b.id;
    out["created_at"] = FormatLoudlyTime(b.created_at);
    out["formula"] = Formula(b.params, jsonb_order);
    out["type"] = b.type;
    out["capacity"] = 3;
    out["is_finished"] = false;  // stays false in the captures even with a song
    OJson songs = OJson::array();
    if (b.song.has_value()) {
      const Song& s = *b.song;
      const std::string cb =
          absl::StrCat("?cb=", FormatCacheBuster(s.created_at + absl::Seconds(5)));
      OJson song;
      song["id"] = s.id;
      song["title"] = s.title;
      song["duration"] = s.duration_ms;
      song["music_file_path"] =
          absl::StrCat(PublicUrl(), "/assets/music_file/", s.file_id, ".mp3", cb);
      song["wav_file_path"] = absl::StrCat(PublicUrl(), "/assets/song_wav/", s.wav_id, ".json", cb);
      song["created_at"] = FormatLoudlyTime(s.created_at);
      song["is_in_library"] = false;
      song["xml_file_path"] = absl::StrCat(PublicUrl(), "/assets/song_xml/", s.xml_id, ".xml", cb);
      song["formula"] = Formula(b.params, /*jsonb_order=*/true);
      song["is_preview"] = false;
      songs.push_back(std::move(song));
    }
    out["vega_songs"] = std::move(songs);
    out["is_preview"] = false;
    out["errors"] = b.failed ? OJson::array({b.error_message}) : OJson::array();
    return out;
  }

  void HandleWebLimits(const httplib::Request& req, httplib::Response& res) {
    if (!WebAuthorized(req, res)) return;
    const absl::Time now = options_.clock();
    absl::MutexLock lock(&mu_);
    ++stats_.limits_requests;
    for (auto& [id, bundle] : bundles_) MaterializeLocked(bundle, now);
    OJson reset;
    reset["current_reset_date"] = FormatDate(MonthStart(now, 0));
    reset["next_reset_date"] = FormatDate(MonthStart(now, 1));
    reset["reset_in_days"] = absl::ToInt64Hours(MonthStart(now, 1) - now) / 24;
    OJson usage;
    for (const UsageKey& k : kUsageKeys) {
      const Usage& u = web_usage_.at(k.name);
      OJson item;
      item["total"] = u.total;
      item["used"] = u.used;
      item["available"] = std::max<int64_t>(0, u.total - u.used);
      item["top_up"] =
          k.top_up_object ? OJson{{"total", 0}, {"used", 0}, {"available", 0}} : OJson(nullptr);
      usage[k.name] = std::move(item);
    }
    OJson body;
    body["reset_data"] = std::move(reset);
    body["usage_data"] = std::move(usage);
    SendJson(res, 200, body);
  }

  // ---- B2B -------------------------------------------------------------------------------

  std::optional<std::string> B2BAccount(const httplib::Request& req, httplib::Response& res) {
    auto it = options_.api_keys.find(req.get_header_value("API-KEY"));
    if (it != options_.api_keys.end()) return it->second;
    {
      absl::MutexLock lock(&mu_);
      ++stats_.unauthorized;
    }
    SendError(res, 401, "unauthorized", "Missing or invalid API-KEY header");
    return std::nullopt;
  }

  void Reject(httplib::Response& res, const Invalid& invalid) {
    {
      absl::MutexLock lock(&mu_);
      ++stats_.validation_errors;
    }
    SendError(res, 400, invalid.error, invalid.description);
  }

  int64_t B2BLimit(const std::string& type) const {
    auto it = options_.b2b_limits.find(type);
    return it == options_.b2b_limits.end() ? 1000 : it->second;
  }

  void HandleB2BSong(const httplib::Request& req, httplib::Response& res,
                     const std::vector<Fault>& faults, bool prompt) {
    const auto account = B2BAccount(req, res);
    if (!account.has_value()) return;
    const Form form(req);
    Params params;
    if (auto invalid = ParseParams(form, !prompt, prompt, &params)) return Reject(res, *invalid);
    const absl::Time now = options_.clock();
    const uint64_t seed = StableHash(absl::StrCat(prompt ? "prompt|" : "songs|", req.body));
    if (params.test) {
      // A canned dry-run song: no latency, no quota.
      Params dummy;
      dummy.bpm = 120;
      dummy.key_root = 9;
      dummy.minor = true;
      absl::MutexLock lock(&mu_);
      ++stats_.b2b_test_songs;
      return SendJson(res, 200,
                      NewB2BSongLocked(dummy, 0, 31, now, kTestSongTitle, /*canned=*/true));
    }
    const std::string type = prompt ? "GENERATE_VEGA_SONG_WITH_PROMPT" : "GENERATE_SONG_VEGA_1";
    {
      absl::MutexLock lock(&mu_);
      int64_t& used = b2b_used_[*account][type];
      if (used >= B2BLimit(type)) {
        ++stats_.quota_rejections;
        OJson body;
        body["error"] = QuotaMessage(type, 0);
        return SendJson(res, 500, body);
      }
      ++used;  // charged on accept, as a metered API does
      ++stats_.b2b_song_requests;
    }
    // Synchronous generation: the answer arrives when the song is done.
    if (!server_.SleepUnlessStopped(options_.sync_latency)) return;
    if (const Fault* f = FaultPlan::Find(faults, FaultAction::kFailOperation)) {
      return SendError(res, 500, f->error_code, f->error_message);
    }
    const int seconds = params.duration.value_or(DefaultDuration(seed)) + 1;
    absl::MutexLock lock(&mu_);
    ++stats_.b2b_songs;
    ++stats_.songs_created;
    ++stats_.b2b_songs_by_account[*account];
    SendJson(
        res, 200,
        NewB2BSongLocked(params, seed, seconds, options_.clock(), Title(seed), /*canned=*/false));
  }

  OJson NewB2BSongLocked(const Params& params, uint64_t seed, int seconds, absl::Time now,
                         const std::string& title, bool canned) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const AudioSpec audio = SpecFor(params, seed, seconds);
    // Every dry-run song is the same canned file: test=true traffic must not grow the file table.
    std::string file_id;
    if (canned && !test_file_id_.empty()) {
      file_id = test_file_id_;
    } else {
      file_id = ids_.UuidV4();
      files_[file_id] = FileEntry{audio, /*web=*/false};
      if (canned) test_file_id_ = file_id;
    }
    OJson song;
    song["id"] = ids_.UuidV4();
    song["title"] = title;
    song["duration"] = int64_t{seconds} * 1000;
    song["music_file_path"] = absl::StrCat(PublicUrl(), "/assets/music_file/", file_id, ".mp3");
    song["wave_form_file_path"] = absl::StrCat(PublicUrl(), "/assets/wave_form/", file_id, ".json");
    song["created_at"] = FormatLoudlyTime(now);
    song["bpm"] = audio.bpm;
    OJson key;
    key["id"] = audio.key_root * 2 + (audio.minor ? 2 : 1);
    key["name"] = absl::StrCat(kRootNames[audio.key_root], audio.minor ? " minor" : " major");
    key["active"] = true;
    song["key"] = std::move(key);
    return song;
  }

  OJson GenresJson() const {
    OJson out = OJson::array();
    for (const Genre& g : Genres()) {
      OJson genre;
      genre["id"] = g.id;
      genre["name"] = g.name;
      genre["description"] = g.description;
      genre["image_url"] = absl::StrCat(PublicUrl(), "/assets/genres/", g.id, ".png");
      genre["instruments"] =
          std::vector<std::string>(std::begin(kInstruments), std::end(kInstruments));
      genre["bpm"] = {{"low", g.bpm_low}, {"high", g.bpm_high}};
      genre["suggested_instruments"] = {"DRUMS", "BASS", "SYNTH"};
      OJson micro = OJson::array();
      int n = 0;
      for (const char* m : g.micro) micro.push_back({{"id", g.id * 10 + ++n}, {"name", m}});
      genre["micro_genres"] = std::move(micro);
      out.push_back(std::move(genre));
    }
    return out;
  }

  void HandleB2BLimits(const httplib::Request& req, httplib::Response& res) {
    const auto account = B2BAccount(req, res);
    if (!account.has_value()) return;
    const absl::Time now = options_.clock();
    const std::string from = req.has_param("date_from") ? req.get_param_value("date_from")
                                                        : FormatDate(MonthStart(now, 0));
    const std::string to = req.has_param("date_to")
                               ? req.get_param_value("date_to")
                               : FormatDate(MonthStart(now, 1) - absl::Hours(24));
    absl::MutexLock lock(&mu_);
    ++stats_.limits_requests;
    OJson items = OJson::array();
    for (const char* type : kB2BTypes) {
      const int64_t limit = B2BLimit(type);
      const auto acc = b2b_used_.find(*account);
      int64_t used = 0;
      if (acc != b2b_used_.end()) {
        if (auto t = acc->second.find(type); t != acc->second.end()) used = t->second;
      }
      OJson item;
      item["request_type"] = type;
      item["limit"] = limit;
      item["used"] = used;
      item["left"] = std::max<int64_t>(0, limit - used);
      item["date_from"] = from;
      item["date_to"] = to;
      items.push_back(std::move(item));
    }
    if (options_.limits_shape == LimitsShape::kArray) return SendJson(res, 200, items);
    OJson body;
    body["limits"] = std::move(items);
    body["top_up"] = {{"total", options_.b2b_top_up}, {"available", options_.b2b_top_up}};
    SendJson(res, 200, body);
  }

  // ---- Files -----------------------------------------------------------------------------

  void HandleMp3(const httplib::Request& req, httplib::Response& res) {
    const std::string file_id = req.matches[1];
    FileEntry entry;
    {
      absl::MutexLock lock(&mu_);
      auto it = files_.find(file_id);
      if (it == files_.end()) {
        res.status = 404;
        res.set_content(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>NoSuchKey</Code></Error>",
            "application/xml");
        return;
      }
      entry = it->second;
    }
    auto path = cache_->Get(entry.audio, AudioFormat::kMp3);
    if (!path.ok())
      return SendError(res, 500, "internal_error", std::string(path.status().message()));
    if (absl::Status s = ServeFile(*path, "audio/mpeg", res); !s.ok()) {
      return SendError(res, 500, "internal_error", std::string(s.message()));
    }
    absl::MutexLock lock(&mu_);
    ++stats_.downloads;
    stats_.download_bytes += static_cast<int64_t>(res.content_length_);
    // A range request resuming a download is the same download: count whole-file GETs only.
    if (entry.web && !req.has_header("Range")) {
      Usage& u = web_usage_["download_song"];
      u.used = std::min(u.total, u.used + 1);
    }
  }

  struct FileEntry {
    AudioSpec audio;
    bool web = false;
  };

  const Options options_;
  FaultPlan plan_;
  IdGenerator ids_;
  HttpServer server_;
  std::unique_ptr<AudioCache> cache_;

  mutable absl::Mutex mu_;
  std::string refresh_token_ ABSL_GUARDED_BY(mu_);
  // Expiry of the access token the latest grant issued.
  absl::Time latest_expiry_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  std::map<std::string, absl::Time> access_tokens_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, Bundle> bundles_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, FileEntry> files_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, Usage> web_usage_ ABSL_GUARDED_BY(mu_);
  // account -> request_type -> used
  std::map<std::string, std::map<std::string, int64_t>> b2b_used_ ABSL_GUARDED_BY(mu_);
  size_t prompt_counter_ ABSL_GUARDED_BY(mu_) = 0;
  std::string test_file_id_ ABSL_GUARDED_BY(mu_);  // the canned test=true song's file
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
std::string Emulator::current_refresh_token() const { return impl_->current_refresh_token(); }
Stats Emulator::stats() const { return impl_->stats(); }
bool Emulator::AwaitStats(const std::function<bool(const Stats&)>& condition,
                          absl::Duration timeout) const {
  return impl_->AwaitStats(condition, timeout);
}
std::string Emulator::StatsJson() const { return impl_->StatsJson(); }
void Emulator::Stop() { impl_->Stop(); }

}  // namespace musicgw::emulators::loudly
