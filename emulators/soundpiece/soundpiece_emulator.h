// File: soundpiece_emulator.h
// An in-process HTTP server that speaks the Soundpiece v1 dialect as
// /work/shared/providers/soundpiece.md §12 describes: the eight `PUT|GET /v1/<route>` routes,
// Bearer `spk_` keys, Pydantic-v2 style 422 lists, idempotency by (account, route, key),
// long-poll GETs, signed expiring FLAC URLs under /cdn/, Standard Webhooks deliveries, credits
// (402) and a per-account token bucket (429 + Retry-After).
//
// Test hooks outside the dialect (never under /v1):
//   POST /_emulator/faults   body = fault plan JSON (see emulators/common/fault_plan.h); replaces
//                            the plan and its counters. GET returns the current plan.
//   GET  /_emulator/stats    Stats as JSON.
//   POST /_emulator/reset    forgets operations, idempotency keys, faults and stats; restores
//                            credits and rate-limit buckets.
//   POST /_emulator/credits  {"account":"acct","credits":5} sets a balance.
//
// Dialect choices the docs leave open (all [I] in soundpiece.md): unknown or foreign operation
// id -> 422 with a `not_found` entry at ["query","id"]; 402 {"detail":"Insufficient credits"};
// stems are vocals/drums/bass/other; new_song and new_instrumental yield 2 variations.
// Source audio (`source`/`reference` URLs) is never fetched: its length is taken from a
// `duration=<seconds>` query parameter on the URL when present, else Options::source_seconds. A
// source URL containing "__fail__" makes the operation fail with code `source_unreadable`.
//
// Thread-safe. Handlers run on the server's pool; long-polls wait on condition variables.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace musicgw::emulators::soundpiece {

struct Options {
  std::string host = "127.0.0.1";
  int port = 0;  // 0 = pick a free port
  // "Now" for everything that expires (tokens, signed URLs, songs appearing): tests move it
  // forward instead of sleeping. Waits (latency, long-polls, webhook retries) use real time.
  std::function<absl::Time()> clock = [] { return absl::Now(); };
  // Worker threads of the HTTP server: one per open connection, long-polls included.
  int threads = 256;
  // Bearer key -> account name.
  std::map<std::string, std::string> api_keys = {{"spk_test_key", "acct"}};
  // Account -> "whsec_<base64>" (several, space-separated, during a rotation: each signs, and
  // webhook-signature carries one "v1,<sig>" per secret). No secret = no webhooks.
  std::map<std::string, std::string> webhook_secrets;
  // How long an operation stays `processing`.
  absl::Duration processing_time = absl::Seconds(2);
  // Longest wait of a `wait=true` GET (the docs say 20 s).
  absl::Duration long_poll = absl::Seconds(20);
  // Lifetime of a signed download URL, counted from the GET that minted it.
  absl::Duration url_ttl = absl::Minutes(15);
  // false: a reused key with another body returns the original DTO (200); true: 409.
  bool strict_idempotency = false;
  int64_t initial_credits = 1000;
  // Route -> credits charged on accept; routes not listed cost 1.
  std::map<std::string, int64_t> route_cost;
  // Per-account token bucket over every authenticated request.
  double rate_limit_per_second = 50;
  int rate_limit_burst = 100;
  // Allows http:// and loopback/private callback URLs (test mode); otherwise 422.
  bool allow_loopback_callbacks = true;
  // Webhook retry schedule (scaled down from Standard Webhooks' 5 s, 5 min, 30 min, ...).
  std::vector<absl::Duration> webhook_retry_delays = {absl::Milliseconds(200), absl::Seconds(1),
                                                      absl::Seconds(5)};
  absl::Duration webhook_timeout = absl::Seconds(10);
  // Seeds fault probabilities (ids also mix in the start time, so they never repeat across runs).
  uint64_t seed = 1;
  // Initial fault plan (JSON, see fault_plan.h); empty = none.
  std::string fault_plan_json;
  // Audio cache directory; empty = a private temporary directory removed on Stop().
  std::string data_dir;
  // Assumed length of a source/reference track whose URL carries no `duration=` parameter.
  double source_seconds = 120;
  // Upper bound for a source length taken from its URL (the 200 MB download benchmark uses a
  // long remix output).
  double max_source_seconds = 3600;
  // Bounds of `duration` for create.new_sample (fx is 0.5–30 as the legacy docs say).
  double max_sample_seconds = 30;
  // Base of the minted download URLs; empty = base_url().
  std::string public_url;
};

struct Stats {
  int64_t operations_created = 0;
  std::map<std::string, int64_t> operations_by_route;    // route -> created
  std::map<std::string, int64_t> operations_by_account;  // account -> created
  // "account route" -> created (what "exactly one upstream operation" tests look at).
  std::map<std::string, int64_t> operations_by_account_route;
  int64_t operations_ready = 0;
  int64_t operations_failed = 0;
  int64_t puts = 0;                            // every PUT on a /v1 route
  int64_t gets = 0;                            // every GET on a /v1 route
  int64_t polls = 0;                           // GETs with wait=true
  int64_t idempotent_replays = 0;              // PUTs answered from the idempotency store
  int64_t idempotency_conflicts = 0;           // 409s in strict mode
  std::map<int, int64_t> responses_by_status;  // over /v1 and /cdn
  int64_t webhook_attempts = 0;
  int64_t webhook_successes = 0;
  int64_t webhook_failures = 0;
  int64_t webhooks_dropped = 0;  // "webhook_lost" faults
  int64_t downloads = 0;         // /cdn GETs that served a file
  int64_t downloads_denied = 0;  // 403: expired or bad signature
  int64_t download_bytes = 0;
  int64_t faults_injected = 0;
  std::map<std::string, int64_t> credits;  // account -> balance
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
  // Drops operations, idempotency keys, faults and stats; restores credits and buckets.
  void Reset();
  void SetCredits(const std::string& account, int64_t credits);
  Stats stats() const;
  std::string StatsJson() const;
  // Stops the server; wakes long-polls and stops webhook retries. Idempotent.
  void Stop();

 private:
  class Impl;
  explicit Emulator(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace musicgw::emulators::soundpiece
