#include "adapters/http/retry.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <utility>

#include "absl/random/random.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "adapters/http/observer.h"

namespace musicgw::http {

std::optional<absl::Duration> ParseRetryAfter(absl::string_view value, absl::Time now) {
  value = absl::StripAsciiWhitespace(value);
  if (value.empty()) return std::nullopt;
  int64_t seconds = 0;
  if (absl::SimpleAtoi(value, &seconds)) {
    if (seconds < 0) return std::nullopt;
    return absl::Seconds(seconds);
  }
  // HTTP-date (RFC 9110 §5.6.7): the IMF-fixdate form is the one servers send.
  absl::Time when;
  std::string error;
  if (!absl::ParseTime("%a, %d %b %Y %H:%M:%S GMT", value, absl::UTCTimeZone(), &when, &error)) {
    return std::nullopt;
  }
  return std::max(absl::ZeroDuration(), when - now);
}

Classifier DefaultClassifier() {
  return [](const absl::StatusOr<Response>& result) -> RetryDecision {
    RetryDecision decision;
    if (!result.ok()) {
      switch (result.status().code()) {
        case absl::StatusCode::kUnavailable:
          return {true, "unavailable", std::nullopt};
        case absl::StatusCode::kDeadlineExceeded:
          return {true, "timeout", std::nullopt};
        default:
          return decision;
      }
    }
    const int status = result->status;
    if (status == 429 || status == 500 || status == 502 || status == 503 || status == 504) {
      decision.retry = true;
      decision.reason = status == 429 ? "http_429" : "http_5xx";
      if (auto header = result->Header("Retry-After")) {
        decision.server_delay = ParseRetryAfter(*header);
      }
    }
    return decision;
  };
}

absl::Duration BackoffDelay(const RetryPolicy& policy, int attempt,
                            std::optional<absl::Duration> floor) {
  // initial * 2^attempt, computed in floating point so large attempts cannot overflow.
  const double ceiling_s = std::min(
      absl::ToDoubleSeconds(policy.max_backoff),
      absl::ToDoubleSeconds(policy.initial_backoff) * std::ldexp(1.0, std::min(attempt, 62)));
  thread_local absl::BitGen gen;
  const double sleep_s =
      ceiling_s > 0 ? absl::Uniform(absl::IntervalClosed, gen, 0.0, ceiling_s) : 0.0;
  absl::Duration delay = absl::Seconds(sleep_s);
  if (floor.has_value()) delay = std::max(delay, *floor);
  return delay;
}

RetryBudget::RetryBudget(RetryBudgetOptions options, absl::AnyInvocable<absl::Time() const> clock)
    : options_(options), clock_(std::move(clock)) {}

RetryBudget::Bucket& RetryBudget::Refill(absl::string_view provider) {
  const absl::Time now = clock_();
  auto [it, inserted] = buckets_.try_emplace(std::string(provider));
  Bucket& bucket = it->second;
  if (inserted) {
    bucket.tokens = options_.max_tokens;
  } else if (now > bucket.updated) {
    bucket.tokens =
        std::min(options_.max_tokens, bucket.tokens + absl::ToDoubleSeconds(now - bucket.updated) *
                                                          options_.min_retries_per_second);
  }
  bucket.updated = now;
  return bucket;
}

void RetryBudget::OnRequest(absl::string_view provider) {
  absl::MutexLock lock(&mu_);
  Bucket& bucket = Refill(provider);
  bucket.tokens = std::min(options_.max_tokens, bucket.tokens + options_.retry_ratio);
}

bool RetryBudget::TryRetry(absl::string_view provider) {
  absl::MutexLock lock(&mu_);
  Bucket& bucket = Refill(provider);
  if (bucket.tokens < 1.0) return false;
  bucket.tokens -= 1.0;
  return true;
}

double RetryBudget::Tokens(absl::string_view provider) {
  absl::MutexLock lock(&mu_);
  return Refill(provider).tokens;
}

namespace {

// State of one logical call; owned by whichever callback is pending.
struct RetryCall {
  Client* client;
  Request request;
  RetryPolicy policy;
  Classifier classify;
  ResponseCallback done;
  absl::Time start;
  absl::Duration attempt_timeout;  // the caller's per-attempt timeout
  int attempt = 0;                 // attempts sent so far
};

void Attempt(std::unique_ptr<RetryCall> call);

void OnResult(std::unique_ptr<RetryCall> call, absl::StatusOr<Response> result) {
  RetryDecision decision = call->classify(result);
  if (!decision.retry) {
    std::move(call->done)(std::move(result));
    return;
  }
  HttpObserver* observer = call->client->observer();
  const Request& request = call->request;
  auto abandon = [&](absl::string_view why) {
    if (observer != nullptr) {
      observer->OnRetryAbandoned(request.provider, request.endpoint, decision.reason, why);
    }
    std::move(call->done)(std::move(result));
  };
  if (call->attempt >= call->policy.max_attempts) return abandon("attempts");
  const absl::Duration delay = BackoffDelay(call->policy, call->attempt - 1, decision.server_delay);
  // Give up when the next attempt could not even start within the total budget of time.
  if ((absl::Now() + delay) - call->start >= call->policy.max_total) return abandon("deadline");
  RetryBudget* budget = call->client->retry_budget();
  if (budget != nullptr && !budget->TryRetry(request.provider)) return abandon("budget");
  if (observer != nullptr) {
    observer->OnRetry(request.provider, request.endpoint, decision.reason, delay);
  }
  Client* client = call->client;
  client->RunAfter(delay, [call = std::move(call)]() mutable { Attempt(std::move(call)); });
}

void Attempt(std::unique_ptr<RetryCall> call) {
  ++call->attempt;
  Request request = call->request;
  const absl::Duration left = call->policy.max_total - (absl::Now() - call->start);
  request.timeout = std::max(absl::Milliseconds(1), std::min(call->attempt_timeout, left));
  Client* client = call->client;
  client->Send(std::move(request),
               [call = std::move(call)](absl::StatusOr<Response> result) mutable {
                 OnResult(std::move(call), std::move(result));
               });
}

}  // namespace

void SendWithRetry(Client& client, Request request, RetryPolicy policy, Classifier classify,
                   ResponseCallback done) {
  if (RetryBudget* budget = client.retry_budget(); budget != nullptr) {
    budget->OnRequest(request.provider);
  }
  auto call = std::make_unique<RetryCall>();
  call->client = &client;
  call->attempt_timeout = request.timeout;
  call->request = std::move(request);
  call->policy = policy;
  call->policy.max_attempts = std::max(1, policy.max_attempts);
  call->classify = std::move(classify);
  call->done = std::move(done);
  call->start = absl::Now();
  Attempt(std::move(call));
}

}  // namespace musicgw::http
