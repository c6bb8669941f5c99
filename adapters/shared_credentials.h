// File: shared_credentials.h
// A provider credential shared by every replica of the gateway (kept in the PostgreSQL ledger),
// for OAuth refresh tokens that the provider rotates on every use: one replica at a time
// exchanges the stored refresh token, stores the rotated one, and every replica uses the access
// token that exchange returned. The refresh token is never spent twice.
#pragma once

#include <string>

#include "absl/functional/any_invocable.h"
#include "absl/time/time.h"
#include "adapters/provider.h"

namespace musicgw::adapters {

// Secrets: never logged.
struct SharedCredential {
  std::string refresh_token;
  std::string access_token;  // empty: none issued yet
  absl::Time access_expiry = absl::InfinitePast();
};

class SharedCredentialStore {
 public:
  virtual ~SharedCredentialStore() = default;

  // Given the stored credential, answers the one to keep: the same one (nothing to do, e.g.
  // another replica refreshed already) or a new one from an exchange with the provider. An
  // error stores nothing.
  using Update =
      absl::AnyInvocable<void(const SharedCredential& current, Callback<SharedCredential> done) &&>;

  // Holds `key`'s lock across every replica while `update` runs, stores its answer, releases
  // the lock, then answers `done` with it. `seed` is the credential when none is stored yet.
  // Errors: the store's own (UNAVAILABLE when the ledger cannot be reached) or `update`'s.
  // `update` and `done` run on the store's thread, never inline.
  virtual void UpdateLocked(const std::string& key, SharedCredential seed, Update update,
                            Callback<SharedCredential> done) = 0;
};

}  // namespace musicgw::adapters
