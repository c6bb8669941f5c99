// File: provider_directory.h
// What ListProviders and GetQuota report, per provider account: capabilities from the shared
// table, catalogs from the adapters, health and quota exhaustion from routing's view, quota
// figures from the quota monitor, budgets from the ledger. Every account is matched by provider
// *and* account name, so two accounts of one provider never show each other's state.
//
// Thread-safe when its sources are.
#pragma once

#include <functional>
#include <vector>

#include "adapters/provider.h"
#include "common/config.h"
#include "musicgw/v1/musicgw.pb.h"
#include "services/gateway/gateway_service.h"
#include "services/operations/engine.h"
#include "services/operations/quota_monitor.h"

namespace musicgw::gateway {

struct AccountDirectorySources {
  // Configured adapters in routing order (not owned; must outlive the directory).
  std::vector<adapters::ProviderAdapter*> adapters;
  // Routing's view of each account (OperationsEngine::ProviderStates).
  std::function<std::vector<operations::ProviderState>()> states;
  // The latest quota reads (QuotaMonitor::Snapshot).
  std::function<std::vector<operations::AccountQuota>()> quotas;
  // A tenant's budgets as GetQuota reports them.
  std::function<std::vector<musicgw::v1::TenantBudget>(const config::TenantConfig&)> budgets;
};

class AccountDirectory final : public ProviderDirectory {
 public:
  explicit AccountDirectory(AccountDirectorySources sources);

  std::vector<musicgw::v1::ProviderInfo> Providers() const override;
  std::vector<musicgw::v1::ProviderQuota> Quotas(musicgw::v1::Provider filter) const override;
  std::vector<musicgw::v1::TenantBudget> Budgets(const config::TenantConfig& tenant) const override;

 private:
  AccountDirectorySources sources_;
};

}  // namespace musicgw::gateway
