// File: fault_plan.h
// Faults on demand for the emulators: a list of rules, each matched by method + path, firing on
// exact occurrences or with a seeded probability, so a test can script "the 2nd poll gets a 503".
//
// JSON format (POST /_emulator/faults, --fault_plan=<file>, Options::fault_plan_json):
//   {"seed": 7,                       // optional; default: the emulator's seed
//    "rules": [                       // a bare array of rules is accepted too
//      {"match": "PUT /v1/create.new_sample",  // "<METHOD|*> <path>", path exact or "prefix*";
//                                              // a bare "<path>" matches any method
//       "nth": [2, 3],                // 1-based occurrences among requests matching this rule;
//                                     // omitted = every occurrence
//       "probability": 0.5,           // chance per matching occurrence (default 1)
//       "times": 1,                   // fire at most this often (default unlimited)
//       "action": "status",           // see below
//       "status": 503, "body": "...", "content_type": "application/json",
//       "delay_ms": 250,              // latency added before the action (any action)
//       "retry_after": 2,             // seconds, for status/rate_limit
//       "error_code": "internal_error", "error_message": "Generation failed",
//       "url_ttl_ms": 0}]}            // for expire_url
//
// Actions:
//   latency            only delay_ms, then the normal answer.
//   status             answer `status` with `body` (default: the dialect's error body) and no
//                      processing; Retry-After when retry_after is set.
//   rate_limit         429 with Retry-After (default 1 s) and the dialect's rate-limit body.
//   quota_exhausted    Loudly: 500 "External service calling limit exceeded..."; Soundpiece: 402.
//   reset              the request is processed, then the connection is dropped half-way
//                      through the response body. "before": true drops it before processing.
//   hang               no answer for `delay_ms` (default 60 s, cut short by Stop()), then the
//                      connection is dropped: the client's read timeout fires.
//   truncate           the normal answer cut to half its bytes (Content-Length matches).
//   malformed          the normal status with a body that is not JSON (`body` overrides).
//   fail_operation     Soundpiece PUT: the created operation ends `failed` with error_code /
//                      error_message. Loudly bundle POST: the bundle reports `errors` and no
//                      song; Loudly B2B POST: 500 {error, error_description}.
//   expire_url         Soundpiece GET: the URLs minted in this answer expire after url_ttl_ms.
//   webhook_lost       match "WEBHOOK <route>": the delivery is never sent (no retries).
//   webhook_duplicate  the delivery is sent twice with the same webhook-id.
//   webhook_bad_signature  the delivery is signed with a wrong key (the receiver should reject
//                      it; the emulator then retries with the right one).
// Webhook deliveries are matched as method "WEBHOOK" and path = the route name, e.g.
// {"match": "WEBHOOK create.new_sample", "action": "webhook_lost"}.
//
// Thread-safe.
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace musicgw::emulators {

enum class FaultAction {
  kLatency,
  kStatus,
  kRateLimit,
  kQuotaExhausted,
  kReset,
  kHang,
  kTruncate,
  kMalformed,
  kFailOperation,
  kExpireUrl,
  kWebhookLost,
  kWebhookDuplicate,
  kWebhookBadSignature,
};

const char* FaultActionName(FaultAction action);

struct FaultRule {
  std::string method;  // "*" = any
  std::string path;    // exact, or a prefix when ending in '*'
  std::vector<int64_t> nth;
  double probability = 1.0;
  int64_t times = -1;  // -1 = unlimited
  FaultAction action = FaultAction::kStatus;
  int status = 503;
  std::string body;  // empty = the dialect's default
  std::string content_type = "application/json";
  absl::Duration delay = absl::ZeroDuration();
  absl::Duration retry_after = absl::ZeroDuration();
  bool before = false;  // reset: drop before processing
  std::string error_code = "internal_error";
  std::string error_message = "Generation failed";
  absl::Duration url_ttl = absl::ZeroDuration();
  std::string source;  // the rule as written, for GET /_emulator/faults
};

// One rule that fired for a request.
using Fault = FaultRule;

class FaultPlan {
 public:
  explicit FaultPlan(uint64_t default_seed) : default_seed_(default_seed), rng_(default_seed) {}

  // Replaces the rules and resets every counter and the random stream. Empty text = no faults.
  absl::Status Set(absl::string_view json);
  void Clear();
  // Counts this request against every rule that matches it and returns the rules that fire,
  // in plan order.
  std::vector<Fault> Evaluate(absl::string_view method, absl::string_view path);
  // The first firing fault of `action`, if any.
  static const Fault* Find(const std::vector<Fault>& faults, FaultAction action);
  std::string ToJson() const;
  int64_t fired() const;

 private:
  struct State {
    FaultRule rule;
    int64_t seen = 0;
    int64_t fired = 0;
  };
  const uint64_t default_seed_;
  mutable absl::Mutex mu_;
  std::vector<State> rules_ ABSL_GUARDED_BY(mu_);
  std::mt19937_64 rng_ ABSL_GUARDED_BY(mu_);
  int64_t fired_total_ ABSL_GUARDED_BY(mu_) = 0;
};

// Parses one plan without installing it (used by Set and by the binaries' flag checks).
absl::StatusOr<std::vector<FaultRule>> ParseFaultRules(absl::string_view json, uint64_t* seed);

}  // namespace musicgw::emulators
