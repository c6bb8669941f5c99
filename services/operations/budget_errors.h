// File: budget_errors.h
// The errors both ledgers answer when Create refuses a new operation for a tenant's limits.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "services/operations/operation_store.h"

namespace musicgw::operations {

// RESOURCE_EXHAUSTED: TENANT_BUDGET_EXHAUSTED (a period budget) or TENANT_RATE_LIMITED (the
// concurrent live operations limit), with QuotaFailure and RetryInfo.
absl::Status BudgetRefusal(const std::string& tenant, const BudgetCheck& budget, int64_t used,
                           absl::Time now);

}  // namespace musicgw::operations
