// File: budgets.h
// Tenant budgets from the config: the periods they count over (UTC calendar hours, days,
// ISO weeks and months) and the checks the engine runs atomically when it stores a new
// operation.
#pragma once

#include <utility>
#include <vector>

#include "absl/time/time.h"
#include "common/config.h"
#include "services/operations/engine.h"

namespace musicgw::gateway {

// [start, end) of the period containing `now`.
std::pair<absl::Time, absl::Time> PeriodBounds(config::BudgetPeriod period, absl::Time now);

// Budget checks for the engine's Create transaction.
operations::BudgetResolver MakeBudgetResolver(std::vector<config::TenantConfig> tenants);

// The tenant's budgets as GetQuota reports them.
std::vector<musicgw::v1::TenantBudget> ReportBudgets(operations::OperationsEngine& engine,
                                                     const config::TenantConfig& tenant,
                                                     absl::Time now);

}  // namespace musicgw::gateway
