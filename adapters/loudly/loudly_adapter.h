// File: loudly_adapter.h
// The Loudly ProviderAdapter, in either of Loudly's two HTTP dialects (options.dialect):
//
// Web app ("vega bundles", dialect "loudly-web"): OAuth2 refresh-token grant to a Bearer JWT
// (loudly_token.h), `POST /ai/vega/bundles` (ADVANCED or TEXT2MUSIC, multipart), then
// `GET /ai/vega/bundles/{id}?limit=10` until a song has its file. Asynchronous: Submit returns
// kRunning with the bundle id; Poll suggests adaptive intervals (1 s early, growing with the
// bundle's age toward max_poll_interval). Quota: `GET /users/limits`.
//
// Public B2B API (dialect "loudly-b2b"): `API-KEY` header, `POST /api/ai/songs` or
// `/api/ai/prompt/songs`, which block until the song exists. synchronous() is true: Submit's
// result is terminal (the POST runs with sync_timeout, capped by the request's deadline);
// validate_only sends test=true (a dry run that spends no credits). Poll cannot ask the
// provider (it has no GET by id): it returns the result Submit produced in this process (kept
// for the last 1024 songs), else FAILED_PRECONDITION (reason PROVIDER_NO_LOOKUP). Genres,
// structures and an example prompt (`/api/ai/genres`, `/api/ai/structures`,
// `/api/ai/prompt/random`) feed catalog(), refreshed at Start() and then every
// catalog_refresh_interval until Stop(); until the first read, options.catalog (empty unless
// configured). The web dialect publishes no catalog: its catalog() is options.catalog, by
// default the one shipped with the gateway (loudly_catalog.h). Quota: `GET /api/account/limits` for
// the current UTC month (both documented response shapes).
//
// Idempotency: Loudly takes no idempotency key, so idempotent_submit() is false and the engine
// never re-submits blindly. Neither dialect can look a submission up by the request that made
// it (the web dialect only by bundle id, which a crash before the POST's answer never learned),
// so after a crash mid-submission there is nothing to reconcile with: the engine must fail such
// an operation with reason SUBMISSION_OUTCOME_UNKNOWN.
//
// Errors (loudly_wire.h MapHttpError): 400 INVALID_ARGUMENT PROVIDER_REJECTED; 401 (after one
// token refresh and retry in the web dialect) UNAUTHENTICATED PROVIDER_AUTH_FAILED, a gateway
// configuration fault; the quota 500 RESOURCE_EXHAUSTED PROVIDER_QUOTA_EXHAUSTED with
// QuotaFailure and RetryInfo, never retried; for reads, other 5xx and transport errors are
// retried with full-jitter backoff under the HTTP client's retry budget, then
// UNAVAILABLE/DEADLINE_EXCEEDED. Generation POSTs are re-sent only when the request provably
// never reached processing; an answer that cannot be read after it may have been processed
// (timeout, reset, 5xx, a 200 with an unreadable body) is an outcome-unknown error
// (adapters/submit_outcome.h; see loudly_call.h).
// Secrets (API key, tokens) never appear in logs or errors.
//
// Threading: thread-safe. Every callback runs on the HTTP client's loop thread, never inline.
// The client must outlive the adapter and every callback of it.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "adapters/http/http_client.h"
#include "adapters/loudly/loudly_wire.h"
#include "adapters/provider.h"
#include "adapters/shared_credentials.h"
#include "common/config.h"

namespace musicgw::adapters::loudly {

struct LoudlyOptions {
  // Configured account name (metrics label, QuotaFailure subject).
  std::string account = "loudly";
  Dialect dialect = Dialect::kB2B;
  std::string base_url = "https://soundtracks.loudly.com";
  // B2B: the API-KEY value (a secret).
  std::string api_key;
  // Web: OAuth client id ("1_…", not a secret), the initial refresh token (a secret) and the
  // file the rotated refresh token is kept in (preferred over refresh_token at start).
  std::string client_id;
  std::string refresh_token;
  std::string token_state_file;
  // Web, replicas sharing a ledger: where the tokens live instead (loudly_token.h). Must
  // outlive the adapter; null for a single node.
  SharedCredentialStore* shared_credentials = nullptr;
  // Web: the account's catalog (empty: ShippedCatalog()). B2B: the catalog until the account's
  // own is read.
  ProviderCatalog catalog;
  // B2B catalog refresh period; zero disables the timer (catalog read once at Start()).
  absl::Duration catalog_refresh_interval = absl::Hours(1);
  // B2B: how long one synchronous generation may take.
  absl::Duration sync_timeout = absl::Seconds(180);
  // Per-attempt timeout of every other call.
  absl::Duration request_timeout = absl::Seconds(30);
  http::RetryPolicy retry;
  // Web polling: next_poll_after grows from min to max with the bundle's age.
  absl::Duration min_poll_interval = absl::Seconds(1);
  absl::Duration max_poll_interval = absl::Seconds(10);
  // Web: refresh the access token this long before it expires.
  absl::Duration token_refresh_margin = absl::Seconds(60);
  // B2B wire form of `instruments` (unsettled upstream; see loudly_wire.h).
  InstrumentsForm b2b_instruments = InstrumentsForm::kRepeated;
  // Generation bodies: multipart/form-data (what the web app and the spec use) or
  // application/x-www-form-urlencoded (what the official Python client sends).
  bool form_urlencoded = false;
};

// From the gateway configuration: dialect "web" or "b2b" (also "loudly-web"/"loudly-b2b").
absl::StatusOr<LoudlyOptions> LoudlyOptionsFromConfig(const config::ProviderConfig& config);

class LoudlyAdapter final : public ProviderAdapter {
 public:
  // INVALID_ARGUMENT for incomplete options (B2B without api_key; web without client_id or any
  // refresh token; a base_url that is not http(s)). `client` must outlive the adapter.
  static absl::StatusOr<std::unique_ptr<LoudlyAdapter>> Create(LoudlyOptions options,
                                                               http::Client* client);
  ~LoudlyAdapter() override;
  LoudlyAdapter(const LoudlyAdapter&) = delete;
  LoudlyAdapter& operator=(const LoudlyAdapter&) = delete;

  musicgw::v1::Provider provider() const override { return musicgw::v1::PROVIDER_LOUDLY; }
  const std::string& account() const override;
  std::string dialect() const override;
  bool idempotent_submit() const override { return false; }
  bool synchronous() const override;

  // B2B: reads the catalog now and starts the refresh timer. Web: nothing to start (the token
  // is refreshed on demand).
  void Start() override;
  void Stop() override;

  // parametric_music / text_to_music only; genre and genre_blend must be exact catalog names
  // and structure ids catalog ids, while a catalog is known (a B2B account before its first
  // read has none unless configured: then the provider judges).
  absl::Status CheckRequest(const musicgw::v1::GenerateRequest& request) const override;

  void Submit(SubmitRequest request, Callback<UpstreamStatus> done) override;
  void Poll(PollRequest request, Callback<UpstreamStatus> done) override;
  // Loudly cannot cancel: always false.
  void Cancel(PollRequest request, Callback<bool> done) override;
  void ReadQuota(Callback<std::vector<QuotaFigure>> done) override;
  // Web: "generate_vega_song" (its top-up is already in the figure). B2B: the request type the
  // endpoint is metered by, GENERATE_SONG_VEGA_1 or GENERATE_VEGA_SONG_WITH_PROMPT.
  std::vector<std::string> QuotaResources(
      const musicgw::v1::GenerateRequest& request) const override;
  ProviderCatalog catalog() const override;

  // Reads genres, structures and an example prompt now (B2B; the web dialect has no catalog
  // endpoint and answers UNIMPLEMENTED). Parts that fail keep their cached value; an error only
  // when the genres could not be read.
  void RefreshCatalog(Callback<ProviderCatalog> done);
  // Completed OAuth token refreshes (web dialect; 0 for B2B).
  int64_t token_refreshes() const;
  // The token store capability: the same count.
  std::optional<int64_t> credential_refreshes() const override { return token_refreshes(); }

  class Impl;  // public only so the .cc file can name it

 private:
  LoudlyAdapter(LoudlyOptions options, std::shared_ptr<Impl> impl);

  const LoudlyOptions options_;
  std::shared_ptr<Impl> impl_;
};

}  // namespace musicgw::adapters::loudly
