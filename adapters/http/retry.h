// File: retry.h
// Retries for one logical HTTP call: full-jitter exponential backoff, a server-requested delay
// (Retry-After) as a floor, caps on attempts and total time, and a retry budget shared by every
// call through one client so that a provider outage never turns into a retry storm.
//
// Example:
//   SendWithRetry(client, std::move(request), policy, DefaultClassifier(),
//                 [](absl::StatusOr<Response> result) { ... });
#pragma once

#include <optional>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "adapters/http/http_client.h"

namespace musicgw::http {

// What to do after one attempt.
struct RetryDecision {
  bool retry = false;
  // Bounded label for metrics ("http_429", "http_5xx", "unavailable", "timeout", ...).
  std::string reason;
  // Delay the server asked for (Retry-After); the backoff never sleeps less than this.
  std::optional<absl::Duration> server_delay;
};

// Decides per attempt result (a response of any status, or a transport error). May be called
// once per attempt, on the client's loop thread.
using Classifier = absl::AnyInvocable<RetryDecision(const absl::StatusOr<Response>& result)>;

// Retries 429 (Retry-After honoured), 500, 502, 503 and 504 (Retry-After honoured when sent),
// and transport errors UNAVAILABLE and DEADLINE_EXCEEDED. Never 4xx other than 429, never
// CANCELLED.
Classifier DefaultClassifier();

// Parses a Retry-After value: delta-seconds ("120") or an HTTP date
// ("Wed, 21 Oct 2015 07:28:00 GMT", relative to `now`; a past date is zero). nullopt when
// malformed.
std::optional<absl::Duration> ParseRetryAfter(absl::string_view value,
                                              absl::Time now = absl::Now());

// The wait before retry number `attempt` (0 for the first retry): uniformly random in
// [0, min(max_backoff, initial_backoff * 2^attempt)] ("full jitter"), raised to `floor`.
absl::Duration BackoffDelay(const RetryPolicy& policy, int attempt,
                            std::optional<absl::Duration> floor);

struct RetryBudgetOptions {
  // Every first attempt earns this fraction of a retry: retries stay below ~20% of requests.
  double retry_ratio = 0.2;
  // Retries earned per second regardless of traffic, so a quiet client can still retry.
  double min_retries_per_second = 1.0;
  // Most retries that can be saved up (and the starting balance).
  double max_tokens = 20;
};

// A token bucket per provider label: first attempts deposit retry_ratio, each retry withdraws
// one token, time deposits min_retries_per_second. Thread-safe.
class RetryBudget {
 public:
  explicit RetryBudget(RetryBudgetOptions options = {},
                       absl::AnyInvocable<absl::Time() const> clock = &absl::Now);

  // A first attempt of a logical call to `provider` is about to be sent.
  void OnRequest(absl::string_view provider) ABSL_LOCKS_EXCLUDED(mu_);
  // Takes one retry token; false when the budget is spent.
  bool TryRetry(absl::string_view provider) ABSL_LOCKS_EXCLUDED(mu_);
  // Current balance (tests, debugging).
  double Tokens(absl::string_view provider) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Bucket {
    double tokens = 0;
    absl::Time updated;
  };
  Bucket& Refill(absl::string_view provider) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const RetryBudgetOptions options_;
  const absl::AnyInvocable<absl::Time() const> clock_;
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, Bucket> buckets_ ABSL_GUARDED_BY(mu_);
};

// Sends `request` through `client`, retrying as `classify` and `policy` allow and as the
// client's retry budget permits. Each attempt's timeout is capped by the time left of
// policy.max_total. `done` runs once, on the client's loop thread, with the last attempt's
// result (a response of any status, or a transport error).
void SendWithRetry(Client& client, Request request, RetryPolicy policy, Classifier classify,
                   ResponseCallback done);

}  // namespace musicgw::http
