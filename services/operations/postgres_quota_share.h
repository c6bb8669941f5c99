// File: postgres_quota_share.h
// QuotaShare on the PostgreSQL ledger: the reader's lease is the named lease "quota-reader"
// (postgres_lease.h); figures live in the table provider_quota (ledger migration 2), one row
// per provider account, as JSON. Calls run on one thread of its own, never the caller's.
#pragma once

#include <memory>
#include <string>

#include "services/operations/postgres_store.h"
#include "services/operations/quota_monitor.h"

namespace musicgw::operations {

class PostgresQuotaShare final : public QuotaShare {
 public:
  // `owner`: this replica's id. Connects lazily; the tables come from the ledger's migrations.
  static std::unique_ptr<PostgresQuotaShare> Create(PostgresOptions options, std::string owner);
  ~PostgresQuotaShare() override;
  PostgresQuotaShare(const PostgresQuotaShare&) = delete;
  PostgresQuotaShare& operator=(const PostgresQuotaShare&) = delete;

  void ClaimReader(absl::Time now, absl::Time until,
                   absl::AnyInvocable<void(absl::StatusOr<bool>) &&> done) override;
  void Publish(AccountQuota quota) override;
  void Load(musicgw::v1::Provider provider, std::string account,
            absl::AnyInvocable<void(absl::StatusOr<AccountQuota>) &&> done) override;

  class Impl;

 private:
  explicit PostgresQuotaShare(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace musicgw::operations
