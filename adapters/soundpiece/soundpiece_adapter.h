// File: soundpiece_adapter.h
// The Soundpiece ProviderAdapter (dialect "soundpiece-v1", /work/shared/providers/soundpiece.md).
//
// Submit: `PUT /v1/<route>` with the JSON body of soundpiece_wire.h, `Authorization: Bearer
// spk_…`, `idempotency_key` = SubmitRequest::idempotency_key (the engine derives it from tenant
// + request_id, so it is stable across retries and restarts) and `callback_url` when
// configured. Every retry of the PUT (5xx, 429 after Retry-After, connection errors, timeouts,
// unreadable 2xx) carries the same key, so the provider returns the first operation instead
// of starting a second one: idempotent_submit() is true.
//
// Poll: `GET /v1/<route>?id=<op>&wait=true`, a long-poll the provider holds up to 20 s, with a
// 35 s read timeout (long_poll_timeout), capped by PollRequest::deadline; wait=false (or too
// little time left for a long-poll) reads the current state at once, which also mints fresh
// signed output URLs. Errors are retried with full-jitter backoff under the HTTP client's retry
// budget, then mapped as soundpiece_wire.h documents.
//
// ReadQuota: Soundpiece publishes no balance. One figure, resource "credits", limit/used -1 and
// remaining 0 when a 402 was seen within quota_memory and no PUT has succeeded since, else -1
// (unknown).
//
// Cancel: Soundpiece cannot cancel; answers false.
//
// Threading: thread-safe; callbacks run on the HTTP client's loop thread, never inline. The
// client must outlive the adapter and its callbacks. The API key never appears in logs or
// errors.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "adapters/http/http_client.h"
#include "adapters/provider.h"
#include "common/config.h"

namespace musicgw::adapters::soundpiece {

struct SoundpieceOptions {
  // Configured account name (metrics label, QuotaFailure subject).
  std::string account = "soundpiece";
  std::string base_url = "https://api.soundpiece.co";
  // The "spk_…" key (a secret).
  std::string api_key;
  // Where the provider should POST completion webhooks; empty = none requested.
  std::string callback_url;
  // "whsec_…" secrets this account's webhooks are signed with (secrets); none = no webhooks.
  std::vector<std::string> webhook_secrets;
  // Per-attempt timeout of PUTs and quick GETs.
  absl::Duration request_timeout = absl::Seconds(30);
  // Read timeout of a wait=true GET (the provider holds it up to 20 s).
  absl::Duration long_poll_timeout = absl::Seconds(35);
  absl::Duration connect_timeout = absl::Seconds(5);
  // Retries of one call; max_total is further capped by the request's deadline.
  http::RetryPolicy retry;
  // Deadline of a Submit or Poll whose request carries none.
  absl::Duration default_deadline = absl::Minutes(10);
  // How long a 402 keeps ReadQuota reporting the credits as exhausted.
  absl::Duration quota_memory = absl::Minutes(10);
};

// From the gateway configuration (type Soundpiece, dialect "v1"/"soundpiece-v1"/empty).
absl::StatusOr<SoundpieceOptions> SoundpieceOptionsFromConfig(const config::ProviderConfig& config);

class SoundpieceAdapter final : public ProviderAdapter {
 public:
  // INVALID_ARGUMENT for an empty api_key or a base_url/callback_url that is not http(s).
  static absl::StatusOr<std::unique_ptr<SoundpieceAdapter>> Create(SoundpieceOptions options,
                                                                   http::Client* client);
  ~SoundpieceAdapter() override;
  SoundpieceAdapter(const SoundpieceAdapter&) = delete;
  SoundpieceAdapter& operator=(const SoundpieceAdapter&) = delete;

  musicgw::v1::Provider provider() const override { return musicgw::v1::PROVIDER_SOUNDPIECE; }
  const std::string& account() const override;
  std::string dialect() const override { return "soundpiece-v1"; }
  bool idempotent_submit() const override { return true; }
  bool synchronous() const override { return false; }

  // The shared capability table for Soundpiece (adapters/capabilities.h) plus a route for the
  // task; nothing Soundpiece-specific is left beyond it today.
  absl::Status CheckRequest(const musicgw::v1::GenerateRequest& request) const override;

  // validate_only: Soundpiece has no dry run; the request is checked and encoded locally and
  // nothing is sent (kRunning, empty upstream_id).
  void Submit(SubmitRequest request, Callback<UpstreamStatus> done) override;
  void Poll(PollRequest request, Callback<UpstreamStatus> done) override;
  void Cancel(PollRequest request, Callback<bool> done) override;
  void ReadQuota(Callback<std::vector<QuotaFigure>> done) override;
  // Every route is paid in "credits".
  std::vector<std::string> QuotaResources(
      const musicgw::v1::GenerateRequest& request) const override {
    return {"credits"};
  }

  // Webhook capability, when webhook_secrets are set: "/webhooks/soundpiece/<account>", then
  // the shared "/webhooks/soundpiece" (where each account's secrets are tried in order).
  std::vector<std::string> webhook_paths() const override;
  absl::StatusOr<std::unique_ptr<WebhookHandler>> CreateWebhookHandler(
      const WebhookSettings& settings) override;

  // When the last 402 was seen (InfinitePast: never).
  absl::Time last_quota_exhausted() const;

  class Impl;  // public only so the .cc file can name it

 private:
  explicit SoundpieceAdapter(std::shared_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;
};

}  // namespace musicgw::adapters::soundpiece
