// File: provider.h
// The ProviderAdapter interface: one implementation per provider folder (loudly/, soundpiece/).
// Adapters translate the normalized musicgw.v1 requests into one provider's HTTP dialect and its
// answers back into UpstreamStatus. They hold no operation state of their own: the operations
// engine owns the ledger and drives Submit and Poll from its per-operation trackers.
//
// Threading: thread-safe. Callbacks run on the HTTP client's loop thread (never inline in the
// calling function) and must not block.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "musicgw/v1/musicgw.pb.h"

namespace musicgw::adapters {

template <typename T>
using Callback = absl::AnyInvocable<void(absl::StatusOr<T>) &&>;

// One output file as the provider reports it.
struct ProviderOutput {
  musicgw::v1::AssetKind kind = musicgw::v1::ASSET_KIND_MIX;
  std::string title;
  double duration_seconds = 0;
  musicgw::v1::AudioFormat format = musicgw::v1::AUDIO_FORMAT_UNSPECIFIED;
  std::string content_type;
  // Where to fetch the bytes; may be signed and expiring (see url_expire_time).
  std::string url;
  absl::Time url_expire_time = absl::InfiniteFuture();
  int bpm = 0;
  std::string key;
};

// The provider's view of one piece of work.
struct UpstreamStatus {
  enum class Phase { kRunning, kSucceeded, kFailed };
  Phase phase = Phase::kRunning;
  // The provider's id for the work (Soundpiece "op_…", Loudly bundle id or song id).
  std::string upstream_id;
  // Set when kSucceeded.
  std::vector<ProviderOutput> outputs;
  // Set when kFailed: a code chosen for the client, ErrorInfo with the provider's own code and
  // message (domain "soundpiece.co" / "loudly.com").
  absl::Status error;
  // When the tracker should poll next; zero right away (after a long-poll returned).
  absl::Duration next_poll_after = absl::ZeroDuration();
};

struct SubmitRequest {
  std::string operation_id;  // the gateway's id, for logs
  std::string request_id;    // the client's idempotency key
  // Stable key derived from tenant + request_id; Soundpiece gets it as idempotency_key.
  std::string idempotency_key;
  musicgw::v1::GenerateRequest request;
  absl::Time deadline = absl::InfiniteFuture();
  // Dry run (Loudly B2B test=true); the result is not stored.
  bool validate_only = false;
};

struct PollRequest {
  std::string operation_id;
  std::string upstream_id;
  musicgw::v1::TaskKind task = musicgw::v1::TASK_KIND_UNSPECIFIED;
  absl::Time deadline = absl::InfiniteFuture();
  // Long-poll where the provider supports it (Soundpiece wait=true); false for a quick read,
  // e.g. to mint fresh output URLs before a download.
  bool wait = true;
};

// One quota figure as read from the provider.
struct QuotaFigure {
  std::string resource;  // e.g. "generate_vega_song", "GENERATE_SONG_VEGA_1", "credits"
  int64_t limit = -1;
  int64_t used = -1;
  int64_t remaining = -1;
  absl::Time reset_time = absl::InfinitePast();  // InfinitePast: unknown
};

// Reference data a provider publishes (Loudly genres and structures), cached by the adapter.
struct ProviderCatalog {
  std::vector<std::string> genres;
  std::vector<musicgw::v1::SongStructure> structures;
  std::string example_prompt;
  absl::Time read_time = absl::InfinitePast();
};

// Monotonic counts of one account's webhook deliveries, by verification outcome.
struct WebhookCounters {
  int64_t verified = 0;
  int64_t bad_signature = 0;
  int64_t stale = 0;
  int64_t duplicate = 0;
  int64_t malformed = 0;
  int64_t too_large = 0;  // refused with 413 before any verification
};

// One HTTP request a provider made to the gateway's webhook endpoint.
struct WebhookDelivery {
  // A request header by lower-case name; empty when absent.
  std::function<std::string(const std::string& name)> header;
  absl::string_view body;
  // The Content-Length of a body the HTTP layer refused to read (too large); 0 otherwise.
  size_t refused_body_bytes = 0;
};

// Receives one provider account's callbacks (webhooks): checks each delivery with that
// account's secrets and turns a verified one into an UpstreamStatus. Thread-safe.
class WebhookHandler {
 public:
  using Sink = std::function<void(const UpstreamStatus&)>;
  virtual ~WebhookHandler() = default;

  // True when this account's secrets signed `delivery` (no other check, no side effect): lets a
  // route shared by several accounts pick the account a delivery belongs to.
  virtual bool SignedForThisAccount(const WebhookDelivery& delivery) const = 0;
  // Checks and counts one delivery; hands a verified update to `sink` before returning. Returns
  // the HTTP status to answer.
  virtual int Handle(const WebhookDelivery& delivery, const Sink& sink) = 0;
  virtual WebhookCounters counters() const = 0;
};

// What the gateway's webhook endpoint tells every handler.
struct WebhookSettings {
  // Largest accepted difference between a delivery's timestamp and now.
  absl::Duration tolerance = absl::Minutes(5);
};

class ProviderAdapter {
 public:
  virtual ~ProviderAdapter() = default;

  virtual musicgw::v1::Provider provider() const = 0;
  // Configured account name (a bounded metrics label).
  virtual const std::string& account() const = 0;
  // e.g. "loudly-web", "loudly-b2b", "soundpiece-v1".
  virtual std::string dialect() const = 0;
  // True when re-submitting after a crash cannot create a second upstream operation (the
  // provider honours an idempotency key). False: the engine never re-submits blindly.
  virtual bool idempotent_submit() const = 0;
  // True when Submit's result is already terminal (Loudly B2B: the POST blocks until the song
  // exists); the engine then runs Submit with a generous deadline and never polls.
  virtual bool synchronous() const = 0;

  // Starts background work (token refresh, catalog and quota timers). Called once.
  virtual void Start() {}
  // Stops background work; no callbacks after it returns.
  virtual void Stop() {}

  // Rejects what this provider cannot honour beyond the shared capability table (e.g. a genre
  // not in its catalog): INVALID_ARGUMENT with a BadRequest naming the field.
  virtual absl::Status CheckRequest(const musicgw::v1::GenerateRequest& request) const = 0;

  // Submits the work. Result: kRunning with upstream_id (asynchronous providers), or terminal
  // (synchronous ones). Errors say whether the provider may have processed the request
  // (submit_outcome.h): OutcomeUnknownError() when it may have (a timeout, a reset mid-answer,
  // an unreadable 2xx, a 5xx), anything else only when it provably did not: INVALID_ARGUMENT
  // (provider rejected the request), RESOURCE_EXHAUSTED (+RetryInfo, QuotaFailure),
  // FAILED_PRECONDITION/UNAUTHENTICATED (provider configuration fault), UNAVAILABLE (the
  // connection was never established). Retries of a call that may create paid work happen here
  // only where they cannot pay twice (an idempotency key, or a request that never reached
  // processing).
  virtual void Submit(SubmitRequest request, Callback<UpstreamStatus> done) = 0;

  // Reads the work's current state (long-polling where asked and possible). Output URLs in the
  // result are fresh.
  virtual void Poll(PollRequest request, Callback<UpstreamStatus> done) = 0;

  // Asks the provider to stop; returns whether it was told (neither provider supports it today).
  // The engine calls it on cancel once the upstream id is known, including when the submission's
  // answer arrives after the operation was cancelled.
  virtual void Cancel(PollRequest request, Callback<bool> done) = 0;

  // Reads quota figures from the provider.
  virtual void ReadQuota(Callback<std::vector<QuotaFigure>> done) = 0;

  // The ReadQuota resources `request` would be charged to, any one of which can pay for it
  // (empty: unknown). Routing skips this account while all of them read zero.
  virtual std::vector<std::string> QuotaResources(
      const musicgw::v1::GenerateRequest& request) const {
    return {};
  }

  // The latest cached catalog (empty when the provider publishes none).
  virtual ProviderCatalog catalog() const { return {}; }

  // ---- What the adapter needs from the process hosting it (none by default) ----

  // Webhooks: the route paths this account's provider calls back on, most specific first
  // (e.g. "/webhooks/soundpiece/<account>", then the provider's shared "/webhooks/soundpiece"),
  // and a handler checking deliveries with this account's secrets. Empty / nullptr when the
  // account receives no webhooks. INVALID_ARGUMENT for unusable secrets (never quoted).
  virtual std::vector<std::string> webhook_paths() const { return {}; }
  virtual absl::StatusOr<std::unique_ptr<WebhookHandler>> CreateWebhookHandler(
      const WebhookSettings& settings) {
    return nullptr;
  }

  // Token store: a monotonic count of completed credential refreshes (OAuth), or nullopt when
  // the account authenticates with a static key.
  virtual std::optional<int64_t> credential_refreshes() const { return std::nullopt; }
};

using ProviderAdapterPtr = std::unique_ptr<ProviderAdapter>;

}  // namespace musicgw::adapters
