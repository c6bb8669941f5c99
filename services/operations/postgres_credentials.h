// File: postgres_credentials.h
// SharedCredentialStore on the PostgreSQL ledger (table provider_credentials, ledger migration
// 2): UpdateLocked holds the credential's row lock (SELECT ... FOR UPDATE) while its update
// runs, so one replica at a time exchanges a rotating refresh token and the others wait, then
// find the new token. A replica that dies mid-exchange drops its connection and with it the
// lock; what the provider answered it is lost, and the next replica retries with the stored
// token (the adapter falls back to the configured one if the provider refuses it).
//
// Updates run on one thread of the store's own, which blocks while the row is locked (never an
// HTTP loop thread). Thread-safe.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "adapters/shared_credentials.h"
#include "services/operations/postgres_store.h"

namespace musicgw::operations {

class PostgresCredentialStore final : public adapters::SharedCredentialStore {
 public:
  // Connects lazily; the table comes from the ledger's migrations (open the ledger first).
  // `update_timeout` bounds how long an update may hold the lock.
  static std::unique_ptr<PostgresCredentialStore> Create(
      PostgresOptions options, absl::Duration update_timeout = absl::Minutes(2));
  ~PostgresCredentialStore() override;
  PostgresCredentialStore(const PostgresCredentialStore&) = delete;
  PostgresCredentialStore& operator=(const PostgresCredentialStore&) = delete;

  void UpdateLocked(const std::string& key, adapters::SharedCredential seed, Update update,
                    adapters::Callback<adapters::SharedCredential> done) override;

  class Impl;

 private:
  explicit PostgresCredentialStore(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace musicgw::operations
