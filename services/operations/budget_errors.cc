#include "services/operations/budget_errors.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/errors.h"

namespace musicgw::operations {

absl::Status BudgetRefusal(const std::string& tenant, const BudgetCheck& budget, int64_t used,
                           absl::Time now) {
  if (budget.live_only) {
    absl::Status status = absl::ResourceExhaustedError(
        absl::StrCat("tenant ", tenant, " has ", used, " operations still running, its limit (",
                     budget.limit, "); retry when some are done"));
    status = WithErrorInfo(std::move(status), "TENANT_RATE_LIMITED", kGatewayDomain,
                           {{"tenant", tenant}, {"limit", budget.name}});
    status = WithQuotaViolation(
        std::move(status), absl::StrCat("tenant:", tenant, "/limit:", budget.name),
        absl::StrCat("at most ", budget.limit, " operations not yet done at once"));
    // Operations take seconds to minutes; a second is a fair first backoff.
    return WithRetryInfo(std::move(status), absl::Seconds(1));
  }
  absl::Status status = absl::ResourceExhaustedError(absl::StrCat(
      "tenant budget ", budget.name, " is exhausted (", used, " of ", budget.limit, " used)"));
  status = WithErrorInfo(std::move(status), "TENANT_BUDGET_EXHAUSTED", kGatewayDomain,
                         {{"budget", budget.name}, {"limit", absl::StrCat(budget.limit)}});
  status = WithQuotaViolation(
      std::move(status), absl::StrCat("tenant:", tenant),
      absl::StrCat("budget ", budget.name, " allows ", budget.limit, " per period"));
  if (budget.period_end != absl::InfiniteFuture()) {
    status =
        WithRetryInfo(std::move(status), std::max(absl::ZeroDuration(), budget.period_end - now));
  }
  return status;
}

}  // namespace musicgw::operations
