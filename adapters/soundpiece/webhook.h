// File: webhook.h
// Receiving Soundpiece completion webhooks (Standard Webhooks signing):
//
// - WebhookVerifier checks one delivery: `webhook-signature` (space-separated "v1,<base64>"
//   entries, several during a secret rotation) must hold HMAC-SHA256 over
//   "<webhook-id>.<webhook-timestamp>.<raw body>" under one of the configured `whsec_` secrets
//   (key bytes = base64 of what follows "whsec_"), compared in constant time; the timestamp
//   must be within the tolerance of now; a webhook-id already accepted is a duplicate (ids are
//   remembered in a bounded set that forgets them after `remember_for`).
// - WebhookReceiver is the HTTP endpoint (cpp-httplib, own host/port/path): it answers at once
//   (204 verified, 200 duplicate, 401 bad signature, 400 stale or malformed, 413 too large,
//   whether the HTTP layer or Handle refuses it), counts outcomes, logs without the body, and hands
//   each verified update to a sink (the gateway wires it to OperationsEngine::OnProviderUpdate).
//   Webhooks only speed trackers up; polling stays the source of truth, so a rejected or lost
//   delivery costs latency, not data.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "adapters/provider.h"

namespace musicgw::adapters::soundpiece {

enum class WebhookOutcome { kVerified, kBadSignature, kStale, kDuplicate, kMalformed, kTooLarge };

// Bounded metrics label: "verified", "bad_signature", "stale", "duplicate", "malformed",
// "too_large".
const char* WebhookOutcomeName(WebhookOutcome outcome);

struct WebhookVerifierOptions {
  // "whsec_<base64>" values (secrets: never logged). Several while rotating.
  std::vector<std::string> secrets;
  // Largest accepted |now - webhook-timestamp|.
  absl::Duration tolerance = absl::Minutes(5);
  // How long an accepted webhook-id is remembered (at least twice the tolerance: beyond it a
  // replay is stale anyway), and how many at most (oldest forgotten first).
  absl::Duration remember_for = absl::Minutes(15);
  size_t max_remembered_ids = 100000;
};

class WebhookVerifier {
 public:
  // INVALID_ARGUMENT when there is no secret or one is not "whsec_" + non-empty base64 (the
  // message never contains the secret).
  static absl::StatusOr<std::unique_ptr<WebhookVerifier>> Create(
      WebhookVerifierOptions options, absl::AnyInvocable<absl::Time() const> clock = &absl::Now);

  // Checks one delivery. kVerified records the id (later deliveries with it are kDuplicate).
  // Checks in order: headers present and well-formed, timestamp within tolerance, signature,
  // duplicate; so an unsigned request can never mark an id as seen. Thread-safe.
  WebhookOutcome Verify(absl::string_view webhook_id, absl::string_view webhook_timestamp,
                        absl::string_view webhook_signature, absl::string_view body)
      ABSL_LOCKS_EXCLUDED(mu_);

  // Forgets `webhook_id` (the receiver calls it when a verified delivery could not be used, so
  // the provider's retry is not dropped as a duplicate).
  void Forget(absl::string_view webhook_id) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  WebhookVerifier(WebhookVerifierOptions options, std::vector<std::string> keys,
                  absl::AnyInvocable<absl::Time() const> clock);
  bool SignatureMatches(absl::string_view signed_content, absl::string_view header) const;
  void ExpireLocked(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const WebhookVerifierOptions options_;
  const std::vector<std::string> keys_;  // decoded key bytes
  const absl::AnyInvocable<absl::Time() const> clock_;
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, absl::Time> seen_ ABSL_GUARDED_BY(mu_);  // id -> forget at
  std::deque<std::pair<absl::Time, std::string>> order_ ABSL_GUARDED_BY(mu_);
};

// Outcome counters (monotonic).
struct WebhookCounters {
  int64_t verified = 0;
  int64_t bad_signature = 0;
  int64_t stale = 0;
  int64_t duplicate = 0;
  int64_t malformed = 0;
  int64_t too_large = 0;  // refused with 413 before any verification
};

// Hook for the metrics module (e.g. a counter labelled by provider and outcome).
class WebhookObserver {
 public:
  virtual ~WebhookObserver() = default;
  virtual void OnWebhook(absl::string_view provider, WebhookOutcome outcome) = 0;
};

struct WebhookReceiverOptions {
  std::string host = "0.0.0.0";
  int port = 0;  // 0 = any free port
  std::string path = "/webhooks/soundpiece";
  WebhookVerifierOptions verifier;
  size_t max_body_bytes = 1 << 20;
  int threads = 8;
  std::shared_ptr<WebhookObserver> observer;  // may be null
};

class WebhookReceiver {
 public:
  // Receives verified updates. Runs on a receiver thread (calls are serialized) and must be
  // quick: post real work elsewhere.
  using Sink = absl::AnyInvocable<void(const UpstreamStatus&)>;

  // Binds and starts serving. INVALID_ARGUMENT for bad secrets, UNAVAILABLE when the address
  // cannot be bound.
  static absl::StatusOr<std::unique_ptr<WebhookReceiver>> Start(WebhookReceiverOptions options,
                                                                Sink sink);
  ~WebhookReceiver();  // stops
  WebhookReceiver(const WebhookReceiver&) = delete;
  WebhookReceiver& operator=(const WebhookReceiver&) = delete;

  int port() const;
  // "http://<host>:<port><path>" (host 0.0.0.0 shown as 127.0.0.1).
  std::string url() const;
  WebhookCounters counters() const;

  // The endpoint's logic without HTTP, for embedding in another server: the HTTP status to
  // answer. Thread-safe.
  int Handle(absl::string_view webhook_id, absl::string_view webhook_timestamp,
             absl::string_view webhook_signature, absl::string_view body);

  // Stops serving; no sink calls after it returns. Idempotent.
  void Stop();

  class Impl;

 private:
  explicit WebhookReceiver(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace musicgw::adapters::soundpiece
