// File: loudly_emulator.h
// An in-process HTTP server that speaks both Loudly dialects as
// /work/shared/providers/loudly.md describes, on one port:
//
// Web-app dialect (Bearer JWT):
//   POST /oauth/v2/token           refresh_token grant; rotates the refresh token (the old one
//                                  is rejected with 400 invalid_grant afterwards).
//   POST /ai/vega/bundles          multipart or urlencoded; ADVANCED or TEXT2MUSIC.
//   GET  /ai/vega/bundles/{id}     one song appears Options::bundle_song_delay after creation.
//   GET  /users/limits             usage_data; generate_vega_song and download_song decrement.
//   Missing, unknown or expired Bearer token -> 401 {"code":401,"message":"..."}.
// Public B2B dialect (API-KEY header; missing/unknown -> 401 {"error":"unauthorized",...}):
//   POST /api/ai/songs, POST /api/ai/prompt/songs   synchronous, after Options::sync_latency.
//   GET  /api/ai/genres, /api/ai/structures, /api/ai/prompt/random, /api/account/limits.
// Files (no auth, as CloudFront):
//   GET  /assets/music_file/<id>.mp3?cb=...   the MP3, rendered on first download and cached.
//   GET  /assets/song_wav/<id>.json, /assets/song_xml/<id>.xml, /assets/wave_form/<id>.json.
//
// Test hooks (outside the dialect paths):
//   POST /_emulator/faults  (fault plan JSON, see emulators/common/fault_plan.h), GET to read.
//   GET  /_emulator/stats   Stats as JSON.
//   POST /_emulator/reset   forgets bundles, songs, tokens issued after start, faults and stats;
//                           restores limits and the initial refresh token.
//
// Songs run 1 s longer than requested (the capture: 128 s -> 129000 ms). Audio follows bpm and
// key root/quality when given; otherwise values derived deterministically from the request.
//
// Thread-safe. Handlers run on the server's pool.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace musicgw::emulators::loudly {

// The two contested shapes of `GET /api/account/limits` (loudly.md §2.5).
enum class LimitsShape {
  kArray,   // [{request_type, limit, used, left, date_from, date_to}]
  kObject,  // {"limits":[...], "top_up":{"total", "available"}}
};

struct Options {
  std::string host = "127.0.0.1";
  int port = 0;  // 0 = pick a free port
  // "Now" for everything that expires (tokens, signed URLs, songs appearing): tests move it
  // forward instead of sleeping. Waits (latency, long-polls, webhook retries) use real time.
  std::function<absl::Time()> clock = [] { return absl::Now(); };
  int threads = 256;
  // B2B `API-KEY` value -> account name.
  std::map<std::string, std::string> api_keys = {{"loudly_test_key", "b2b"}};
  // Web OAuth client and the refresh token the session starts with.
  std::string client_id = "1_test_client";
  std::string refresh_token = "test-refresh-token";
  absl::Duration access_token_ttl = absl::Hours(1);
  // Delay between bundle creation and its first (only) song appearing in GETs.
  absl::Duration bundle_song_delay = absl::Seconds(8);
  // How long a B2B generation POST takes before it answers.
  absl::Duration sync_latency = absl::Seconds(2);
  // Length (seconds) of a song whose request has no duration; 0 = 120–200 s chosen from the
  // request, as the service does.
  int default_duration_seconds = 0;
  // Web usage_data totals (key -> total); keys not listed use the captured totals.
  std::map<std::string, int64_t> web_limits;
  // B2B per-request_type monthly limits, per account; types not listed default to 1000.
  std::map<std::string, int64_t> b2b_limits;
  // Top-up credits reported by the object shape of /api/account/limits.
  int64_t b2b_top_up = 0;
  LimitsShape limits_shape = LimitsShape::kArray;
  // Seeds fault probabilities (ids also mix in the start time, so they never repeat across runs).
  uint64_t seed = 1;
  std::string fault_plan_json;
  // Audio cache directory; empty = a private temporary directory removed on Stop().
  std::string data_dir;
  // Base of file URLs in responses; empty = base_url().
  std::string public_url;
};

struct Stats {
  int64_t token_refreshes = 0;           // successful grants
  int64_t token_refreshes_rejected = 0;  // bad client, unknown or rotated-out refresh token
  // Grants made while the previous grant's access token still had more than half of its
  // lifetime (access_token_ttl) left: zero when clients refresh once per expiry.
  int64_t token_refreshes_early = 0;
  int64_t unauthorized = 0;  // 401s on either dialect
  int64_t bundles_created = 0;
  std::map<std::string, int64_t> bundles_by_type;  // ADVANCED / TEXT2MUSIC
  int64_t bundle_polls = 0;
  int64_t songs_created = 0;  // web songs that appeared plus B2B songs (test songs excluded)
  // B2B generation POSTs accepted (counted on arrival, before the synchronous latency): what
  // "never re-sent" tests look at.
  int64_t b2b_song_requests = 0;
  int64_t b2b_songs = 0;  // B2B songs answered
  int64_t b2b_test_songs = 0;
  std::map<std::string, int64_t> b2b_songs_by_account;
  int64_t quota_rejections = 0;   // "External service calling limit exceeded" answers
  int64_t validation_errors = 0;  // 400s
  int64_t downloads = 0;          // MP3 files served
  int64_t download_bytes = 0;
  int64_t limits_requests = 0;
  std::map<int, int64_t> responses_by_status;
  int64_t faults_injected = 0;
};

class Emulator {
 public:
  static absl::StatusOr<std::unique_ptr<Emulator>> Start(Options options);
  ~Emulator();  // stops
  Emulator(const Emulator&) = delete;
  Emulator& operator=(const Emulator&) = delete;

  int port() const;
  std::string base_url() const;  // "http://127.0.0.1:PORT"

  absl::Status SetFaultPlan(absl::string_view json);
  void Reset();
  // The refresh token currently valid (it rotates on every grant).
  std::string current_refresh_token() const;
  Stats stats() const;
  // Blocks until `condition` holds for the counters (re-checked on every change) or `timeout`
  // passes; false on timeout. faults_injected is not maintained here: read stats() for it.
  bool AwaitStats(const std::function<bool(const Stats&)>& condition, absl::Duration timeout) const;
  std::string StatsJson() const;
  void Stop();

 private:
  class Impl;
  explicit Emulator(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace musicgw::emulators::loudly
