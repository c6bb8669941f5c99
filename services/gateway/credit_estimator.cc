#include "services/gateway/credit_estimator.h"

#include <algorithm>
#include <utility>

#include "common/log.h"

namespace musicgw::gateway {

CreditEstimator::CreditEstimator(const std::vector<config::ProviderConfig>& providers,
                                 ChargedOperations charged)
    : charged_(std::move(charged)) {
  for (const config::ProviderConfig& provider : providers) {
    if (provider.credit_balance <= 0) continue;
    balances_[{provider.type, provider.name}] =
        Balance{provider.credit_balance, provider.credits_since, provider.credit_costs};
  }
}

void CreditEstimator::Complete(musicgw::v1::Provider provider, const std::string& account,
                               std::vector<adapters::QuotaFigure>* figures) const {
  auto it = balances_.find({provider, account});
  if (it == balances_.end()) return;
  const Balance& balance = it->second;
  auto charged = charged_(provider, account, balance.since);
  if (!charged.ok()) {
    log::Warning("credit estimate failed",
                 {{"account", account}, {"error", std::string(charged.status().message())}});
    return;
  }
  int64_t spent = 0;
  for (const auto& [task, count] : *charged) {
    auto cost = balance.costs.find(task);
    spent += count * (cost == balance.costs.end() ? 1 : cost->second);
  }
  for (adapters::QuotaFigure& figure : *figures) {
    if (figure.resource != "credits") continue;
    figure.limit = balance.bought;
    figure.used = spent;
    if (figure.remaining != 0) figure.remaining = std::max<int64_t>(0, figure.limit - spent);
  }
}

}  // namespace musicgw::gateway
