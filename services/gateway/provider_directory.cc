#include "services/gateway/provider_directory.h"

#include <string>
#include <utility>

#include "adapters/capabilities.h"
#include "common/time_util.h"

namespace musicgw::gateway {
namespace {

const operations::ProviderState* StateOf(const std::vector<operations::ProviderState>& states,
                                         musicgw::v1::Provider provider,
                                         const std::string& account) {
  for (const auto& state : states) {
    if (state.provider == provider && state.account == account) return &state;
  }
  return nullptr;
}

}  // namespace

AccountDirectory::AccountDirectory(AccountDirectorySources sources)
    : sources_(std::move(sources)) {}

std::vector<musicgw::v1::ProviderInfo> AccountDirectory::Providers() const {
  std::vector<musicgw::v1::ProviderInfo> providers;
  const std::vector<operations::ProviderState> states = sources_.states();
  for (const auto* adapter : sources_.adapters) {
    musicgw::v1::ProviderInfo info;
    info.set_provider(adapter->provider());
    info.set_account(adapter->account());
    info.set_dialect(adapter->dialect());
    for (const auto& task : adapters::Capabilities(adapter->provider())) {
      *info.add_tasks() = task;
    }
    if (const auto* state = StateOf(states, adapter->provider(), adapter->account())) {
      info.set_health(state->health);
      info.set_health_detail(state->health_detail);
      info.set_quota_exhausted(state->quota_exhausted);
    }
    const adapters::ProviderCatalog catalog = adapter->catalog();
    for (const auto& genre : catalog.genres) info.add_genres(genre);
    for (const auto& structure : catalog.structures) *info.add_structures() = structure;
    info.set_example_prompt(catalog.example_prompt);
    providers.push_back(std::move(info));
  }
  return providers;
}

std::vector<musicgw::v1::ProviderQuota> AccountDirectory::Quotas(
    musicgw::v1::Provider filter) const {
  std::vector<musicgw::v1::ProviderQuota> quotas;
  const std::vector<operations::ProviderState> states = sources_.states();
  for (const auto& account : sources_.quotas()) {
    if (filter != musicgw::v1::PROVIDER_UNSPECIFIED && filter != account.provider) continue;
    const auto* state = StateOf(states, account.provider, account.account);
    const bool exhausted = state != nullptr && state->quota_exhausted;
    for (const auto& figure : account.figures) {
      musicgw::v1::ProviderQuota quota;
      quota.set_provider(account.provider);
      quota.set_account(account.account);
      quota.set_resource(figure.resource);
      quota.set_limit(figure.limit);
      quota.set_used(figure.used);
      quota.set_remaining(figure.remaining);
      if (figure.reset_time != absl::InfinitePast()) {
        *quota.mutable_reset_time() = ToProtoTimestamp(figure.reset_time);
      }
      if (account.read_time != absl::InfinitePast()) {
        *quota.mutable_read_time() = ToProtoTimestamp(account.read_time);
      }
      quota.set_exhausted(exhausted || figure.remaining == 0);
      quotas.push_back(std::move(quota));
    }
  }
  return quotas;
}

std::vector<musicgw::v1::TenantBudget> AccountDirectory::Budgets(
    const config::TenantConfig& tenant) const {
  return sources_.budgets(tenant);
}

}  // namespace musicgw::gateway
