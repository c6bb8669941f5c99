#include "services/notify/webhook_deliverer.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/thread_priority.h"
#include "services/notify/webhook_signer.h"

namespace musicgw::notify {

namespace ops = musicgw::operations;

absl::Duration RetryDelay(int attempts_made, const DeliveryOptions& options, double jitter) {
  const int exponent = std::clamp(attempts_made - 1, 0, 30);
  absl::Duration delay = options.first_retry * std::pow(2.0, exponent);
  delay = std::min(delay, options.max_retry);
  return delay * (0.5 + 0.5 * std::clamp(jitter, 0.0, 1.0));
}

namespace {

std::string OutcomeOf(const SendResult& result) {
  if (result.status_code >= 200 && result.status_code < 300) return "delivered";
  if (result.status_code >= 300 && result.status_code < 400) return "redirect";
  if (result.status_code != 0) return "http_error";
  if (result.error == "timeout" || result.error == "connect" || result.error == "refused_target" ||
      result.error == "bad_target") {
    return result.error;
  }
  return "other";
}

double Jitter() {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  return std::uniform_real_distribution<double>(0.0, 1.0)(rng);
}

}  // namespace

WebhookDeliverer::WebhookDeliverer(ops::OperationStore& store, WebhookSender& sender,
                                   SecretsLookup secrets, const Clock& clock,
                                   DeliveryOptions options, DeliveryOutcomeHook outcome)
    : store_(store),
      sender_(sender),
      secrets_(std::move(secrets)),
      clock_(clock),
      options_(options),
      outcome_(std::move(outcome)) {}

WebhookDeliverer::~WebhookDeliverer() { Stop(); }

void WebhookDeliverer::Start() {
  absl::MutexLock lock(&mu_);
  if (loop_.joinable()) return;
  stop_ = false;
  // Threads inherit their creator's nice value, so the delivery workers run at it too.
  loop_ = std::thread([this] {
    LowerCurrentThreadPriorityOrWarn(options_.thread_nice, "webhook delivery");
    Loop();
  });
}

void WebhookDeliverer::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
    cv_.SignalAll();
  }
  if (loop_.joinable()) loop_.join();
}

void WebhookDeliverer::Wake() {
  absl::MutexLock lock(&mu_);
  woken_ = true;
  cv_.SignalAll();
}

void WebhookDeliverer::Loop() {
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      if (stop_) return;
    }
    const int sent = RunOnce();
    absl::MutexLock lock(&mu_);
    if (stop_) return;
    if (sent > 0) continue;  // more may be due
    const absl::Time deadline = clock_.Now() + options_.poll_interval;
    while (!stop_ && !woken_) {
      if (clock_.WaitUntil(cv_, mu_, deadline)) break;
    }
    woken_ = false;
  }
}

int WebhookDeliverer::RunOnce() {
  const absl::Time now = clock_.Now();
  auto due = store_.ClaimDueDeliveries(now, now + options_.claim, options_.batch);
  if (!due.ok() || due->empty()) return 0;
  // One thread per delivery, at most `threads` at a time, and at most
  // per_endpoint_concurrency per endpoint URL.
  std::vector<std::thread> workers;
  size_t next = 0;
  std::atomic<int> running{0};
  absl::Mutex done_mu;
  while (next < due->size()) {
    const ops::OutboxDelivery& delivery = (*due)[next];
    {
      absl::MutexLock lock(&mu_);
      auto can_start = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return running.load() < options_.threads &&
               in_flight_[delivery.message.url] < options_.per_endpoint_concurrency;
      };
      mu_.Await(absl::Condition(&can_start));
      ++in_flight_[delivery.message.url];
      ++running;
    }
    workers.emplace_back([this, &delivery, &running] {
      Deliver(delivery);
      absl::MutexLock lock(&mu_);
      --in_flight_[delivery.message.url];
      --running;
    });
    ++next;
  }
  for (auto& worker : workers) worker.join();
  return static_cast<int>(due->size());
}

void WebhookDeliverer::Deliver(const ops::OutboxDelivery& delivery) {
  const ops::OutboxMessage& message = delivery.message;
  const absl::Time now = clock_.Now();
  ops::DeliveryAttempt attempt;
  attempt.delivery_id = message.delivery_id;
  attempt.attempt = delivery.attempts + 1;
  attempt.time = now;
  std::string outcome;
  auto headers = SignWebhook(secrets_ ? secrets_(message.tenant) : std::vector<std::string>{},
                             message.event_id, now, message.body);
  if (!headers.ok()) {
    attempt.error = "no usable secret";
    outcome = "no_secret";
  } else {
    const SendResult result = sender_.Send(message.url,
                                           {{"webhook-id", headers->id},
                                            {"webhook-timestamp", headers->timestamp},
                                            {"webhook-signature", headers->signature}},
                                           message.body, options_.timeout);
    attempt.status_code = result.status_code;
    attempt.latency = result.latency;
    outcome = OutcomeOf(result);
    if (outcome != "delivered") {
      attempt.error =
          result.status_code != 0 ? absl::StrCat("HTTP ", result.status_code) : result.error;
    }
  }
  ops::DeliveryStatus status = ops::DeliveryStatus::kDelivered;
  absl::Time next_attempt = now;
  bool gave_up = false;
  if (outcome != "delivered") {
    next_attempt = now + RetryDelay(attempt.attempt, options_, Jitter());
    if (next_attempt - message.create_time > options_.retry_for) {
      status = ops::DeliveryStatus::kFailed;
      gave_up = true;
    } else {
      status = ops::DeliveryStatus::kPending;
    }
  }
  // If this write fails the claim lapses and the delivery is tried again: at least once.
  store_.RecordDeliveryAttempt(attempt, status, next_attempt).IgnoreError();
  if (outcome_) outcome_(outcome, gave_up);
}

}  // namespace musicgw::notify
