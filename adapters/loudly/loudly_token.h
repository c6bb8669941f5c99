// File: loudly_token.h
// The Loudly web dialect's OAuth2 access token: a refresh-token grant
// (`POST /oauth/v2/token`, form-urlencoded client_id, grant_type=refresh_token, refresh_token)
// yields a Bearer JWT (about an hour) and a rotated refresh token.
//
// - The access token lives in memory only; it is refreshed when a caller needs one and it
//   expires within `refresh_margin` (at most a quarter of its lifetime; expiry from the JWT's
//   `exp`, else expires_in), and after a 401 (Renew).
// - Single flight: however many callers need a token at once, one refresh is in flight; the
//   others queue on it and all get its result.
// - The rotated refresh token is persisted to `state_file` (temp file + fsync + rename, mode
//   0600) before anyone is told about the new access token, so a restart can authenticate. At
//   creation a persisted token is preferred over the configured one. When the provider rejects
//   the current refresh token and it is not the configured one, the configured one is tried
//   once before failing (an operator may have put a new token in the configuration).
// - One state file per account and process: two gateways sharing a file would each rotate the
//   other's token away. Replicas sharing a ledger use the shared store instead (options.shared):
//   a refresh runs under the store's lock, checks whether another replica already replaced the
//   token this one found stale (then takes that one), else exchanges the stored refresh token
//   and stores the rotated one and the new access token before releasing the lock. So each
//   expiry costs one refresh across all replicas, and no refresh token is spent twice.
//
// Thread-safe. Callbacks run either inline in Get/Renew (a cached token) or on the HTTP client's
// loop thread (after a refresh).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "adapters/http/http_client.h"
#include "adapters/loudly/loudly_wire.h"
#include "adapters/provider.h"
#include "adapters/shared_credentials.h"

namespace musicgw::adapters::loudly {

struct TokenSourceOptions {
  std::string base_url;  // e.g. "https://soundtracks.loudly.com"
  std::string account;   // for errors and logs
  std::string client_id;
  std::string refresh_token;  // the configured (initial) refresh token; a secret
  std::string state_file;     // empty: rotation is kept in memory only
  // Refresh when the token expires within this margin.
  absl::Duration refresh_margin = absl::Seconds(60);
  absl::Duration request_timeout = absl::Seconds(30);
  http::RetryPolicy retry;
  // Replicas sharing a ledger: the refresh token and the current access token live in this
  // store (not in state_file), and one replica at a time refreshes under its lock; the others
  // take the token it stored. Must outlive the source. Null: this process alone.
  adapters::SharedCredentialStore* shared = nullptr;
};

class TokenSource : public std::enable_shared_from_this<TokenSource> {
 public:
  // Reads the state file (a missing file is fine; an unreadable one is logged and ignored).
  // INVALID_ARGUMENT when neither the file nor the options hold a refresh token, or client_id
  // is empty. `client` must outlive the source and every callback.
  static absl::StatusOr<std::shared_ptr<TokenSource>> Create(http::Client* client,
                                                             TokenSourceOptions options);

  // A valid access token, refreshing first when there is none or it is about to expire.
  // Errors: UNAUTHENTICATED (PROVIDER_AUTH_FAILED: the provider rejected the refresh token),
  // UNAVAILABLE / DEADLINE_EXCEEDED (the token endpoint could not be reached).
  void Get(Callback<std::string> done) ABSL_LOCKS_EXCLUDED(mu_);
  // After a call was answered 401 with `rejected`: a fresh token. Refreshes unless another
  // caller already replaced `rejected` (then returns the newer token at once).
  void Renew(const std::string& rejected, Callback<std::string> done) ABSL_LOCKS_EXCLUDED(mu_);

  // Refresh exchanges that returned a token so far.
  int64_t refreshes() const ABSL_LOCKS_EXCLUDED(mu_);
  // The token values in use (for redaction from error texts).
  std::vector<std::string> Secrets() const ABSL_LOCKS_EXCLUDED(mu_);

  TokenSource(http::Client* client, TokenSourceOptions options, std::string refresh_token);

 private:
  using Waiters = std::vector<Callback<std::string>>;
  // The grant's result and the refresh token it spent.
  using Exchanged = absl::AnyInvocable<void(absl::StatusOr<TokenGrant>, const std::string&) &&>;
  // Queues `done` and starts a refresh unless one is in flight.
  void Refresh(Callback<std::string> done) ABSL_LOCKS_EXCLUDED(mu_);
  // The refresh under the shared store's lock; `stale` is the token this replica gave up on.
  void RefreshShared(std::string refresh_token, std::string stale) ABSL_LOCKS_EXCLUDED(mu_);
  // One refresh-token grant (then the configured token once, if the provider refuses it).
  void Exchange(std::string refresh_token, Exchanged done) ABSL_LOCKS_EXCLUDED(mu_);
  void OnExchanged(const std::string& used_token, absl::StatusOr<http::Response> result,
                   Exchanged done) ABSL_LOCKS_EXCLUDED(mu_);
  void Install(const std::string& refresh_token, const std::string& access_token, absl::Time expiry)
      ABSL_LOCKS_EXCLUDED(mu_);
  void Finish(const absl::StatusOr<std::string>& result) ABSL_LOCKS_EXCLUDED(mu_);

  http::Client* const client_;
  const TokenSourceOptions options_;

  mutable absl::Mutex mu_;
  std::string refresh_token_ ABSL_GUARDED_BY(mu_);
  std::string access_token_ ABSL_GUARDED_BY(mu_);
  // The access token a 401 answered to (never taken back from the shared store).
  std::string rejected_ ABSL_GUARDED_BY(mu_);
  // expiry - min(refresh_margin, lifetime / 4): after it, Get refreshes first.
  absl::Time refresh_at_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  bool refreshing_ ABSL_GUARDED_BY(mu_) = false;
  bool tried_configured_ ABSL_GUARDED_BY(mu_) = false;
  Waiters waiters_ ABSL_GUARDED_BY(mu_);
  int64_t refreshes_ ABSL_GUARDED_BY(mu_) = 0;
};

// The state file: {"refresh_token": "...", "client_id": "...", "saved_at": "..."}.
// NOT_FOUND when the file does not exist.
absl::StatusOr<std::string> ReadTokenState(const std::string& path, const std::string& client_id);
// Atomic replace: a temp file beside `path` (mode 0600), fsync, rename, fsync of the folder.
absl::Status WriteTokenState(const std::string& path, const std::string& client_id,
                             const std::string& refresh_token);

}  // namespace musicgw::adapters::loudly
