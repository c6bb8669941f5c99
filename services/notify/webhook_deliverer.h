// File: webhook_deliverer.h
// Sends the ledger's webhook outbox (services/operations/outbox.h), at least once: it claims
// due deliveries (a claim lapses, so a crash mid-send means another try, with the same
// webhook-id), signs each with the tenant's active secrets at send time, and records every
// attempt. A 2xx delivers; anything else (a 3xx included: redirects are not followed) is
// retried with exponential backoff and jitter until `retry_for` after the event, then the
// delivery is marked failed. At most `per_endpoint_concurrency` sends run per endpoint URL.
//
// Thread-safe. Its own threads do the sending; RunOnce() is one pass for tests and tools.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "services/notify/webhook_sender.h"
#include "services/operations/operation_store.h"

namespace musicgw::notify {

struct DeliveryOptions {
  // Backoff before retry n (from 1): first_retry * 2^(n-1), capped at max_retry, times a
  // random factor in [0.5, 1].
  absl::Duration first_retry = absl::Seconds(5);
  absl::Duration max_retry = absl::Hours(1);
  // Retries stop this long after the event was written (at least 24 hours in production).
  absl::Duration retry_for = absl::Hours(25);
  // Per attempt, whole request.
  absl::Duration timeout = absl::Seconds(10);
  int per_endpoint_concurrency = 4;
  int threads = 4;
  // How often the outbox is read when nothing woke the deliverer.
  absl::Duration poll_interval = absl::Seconds(1);
  // How long a claimed delivery is reserved for this deliverer.
  absl::Duration claim = absl::Minutes(2);
  int batch = 32;
  // The nice value of the delivery threads (see common/thread_priority.h); 0: the process's.
  int thread_nice = 0;
};

// The wait before retry `attempts_made + 1`, `jitter` in [0, 1].
absl::Duration RetryDelay(int attempts_made, const DeliveryOptions& options, double jitter);

// What happened to one attempt, as a bounded metrics label: "delivered", "http_error",
// "redirect", "timeout", "connect", "refused_target", "bad_target", "no_secret", "other".
using DeliveryOutcomeHook = std::function<void(absl::string_view outcome, bool gave_up)>;
// A tenant's active secrets (several during a rotation); empty: the tenant has none.
using SecretsLookup = std::function<std::vector<std::string>(const std::string& tenant)>;

class WebhookDeliverer {
 public:
  // `store`, `sender` and `clock` must outlive the deliverer.
  WebhookDeliverer(operations::OperationStore& store, WebhookSender& sender, SecretsLookup secrets,
                   const Clock& clock, DeliveryOptions options, DeliveryOutcomeHook outcome = {});
  ~WebhookDeliverer();  // Stop()

  void Start();
  void Stop();
  // Something was just written to the outbox: look now rather than at the next poll.
  void Wake();
  // Claims and sends what is due now, waiting for those sends; returns how many were tried.
  int RunOnce();

 private:
  void Loop();
  void Deliver(const operations::OutboxDelivery& delivery);

  operations::OperationStore& store_;
  WebhookSender& sender_;
  const SecretsLookup secrets_;
  const Clock& clock_;
  const DeliveryOptions options_;
  const DeliveryOutcomeHook outcome_;

  absl::Mutex mu_;
  absl::CondVar cv_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool woken_ ABSL_GUARDED_BY(mu_) = false;
  absl::flat_hash_map<std::string, int> in_flight_ ABSL_GUARDED_BY(mu_);  // per endpoint URL
  std::thread loop_;
};

}  // namespace musicgw::notify
