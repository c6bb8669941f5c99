#include "services/gateway/budgets.h"

#include <map>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/time_util.h"
#include "google/protobuf/util/time_util.h"

namespace musicgw::gateway {
namespace {

std::string BudgetName(const config::BudgetConfig& budget) {
  std::string task = musicgw::v1::TaskKind_Name(budget.task);
  task = task.substr(std::string("TASK_KIND_").size());
  return absl::StrCat("task:", task, "/", config::BudgetPeriodName(budget.period));
}

}  // namespace

std::pair<absl::Time, absl::Time> PeriodBounds(config::BudgetPeriod period, absl::Time now) {
  const absl::TimeZone utc = absl::UTCTimeZone();
  const absl::CivilSecond civil = absl::ToCivilSecond(now, utc);
  switch (period) {
    case config::BudgetPeriod::kHour: {
      const absl::CivilHour hour(civil);
      return {absl::FromCivil(hour, utc), absl::FromCivil(hour + 1, utc)};
    }
    case config::BudgetPeriod::kDay: {
      const absl::CivilDay day(civil);
      return {absl::FromCivil(day, utc), absl::FromCivil(day + 1, utc)};
    }
    case config::BudgetPeriod::kWeek: {
      // ISO weeks start on Monday.
      const absl::CivilDay day(civil);
      const absl::CivilDay monday = absl::PrevWeekday(day + 1, absl::Weekday::monday);
      return {absl::FromCivil(monday, utc), absl::FromCivil(monday + 7, utc)};
    }
    case config::BudgetPeriod::kMonth: {
      const absl::CivilMonth month(civil);
      return {absl::FromCivil(month, utc), absl::FromCivil(month + 1, utc)};
    }
  }
  return {absl::InfinitePast(), absl::InfiniteFuture()};
}

operations::BudgetResolver MakeBudgetResolver(std::vector<config::TenantConfig> tenants) {
  std::map<std::string, std::vector<config::BudgetConfig>> by_tenant;
  std::map<std::string, int64_t> max_live;
  for (auto& tenant : tenants) {
    by_tenant[tenant.name] = std::move(tenant.budgets);
    max_live[tenant.name] = tenant.limits.max_live_operations;
  }
  return [by_tenant = std::move(by_tenant), max_live = std::move(max_live)](
             const std::string& tenant, musicgw::v1::TaskKind task, absl::Time now) {
    std::vector<operations::BudgetCheck> checks;
    auto it = by_tenant.find(tenant);
    if (it == by_tenant.end()) return checks;
    // Concurrent live operations guard money: the ledger counts them in the same transaction,
    // so the limit is exact across replicas.
    operations::BudgetCheck live;
    live.name = "max_live_operations";
    live.live_only = true;
    live.limit = max_live.at(tenant);
    checks.push_back(std::move(live));
    for (const auto& budget : it->second) {
      if (budget.task != task) continue;
      auto [start, end] = PeriodBounds(budget.period, now);
      operations::BudgetCheck check;
      check.name = BudgetName(budget);
      check.task = task;
      check.period_start = start;
      check.period_end = end;
      check.limit = budget.limit;
      checks.push_back(std::move(check));
    }
    return checks;
  };
}

std::vector<musicgw::v1::TenantBudget> ReportBudgets(operations::OperationsEngine& engine,
                                                     const config::TenantConfig& tenant,
                                                     absl::Time now) {
  std::vector<musicgw::v1::TenantBudget> report;
  for (const auto& budget : tenant.budgets) {
    auto [start, end] = PeriodBounds(budget.period, now);
    musicgw::v1::TenantBudget entry;
    entry.set_budget(BudgetName(budget));
    entry.set_task(budget.task);
    entry.set_limit(budget.limit);
    auto usage = engine.ReadBudget(tenant.name, budget.task, start);
    if (usage.ok()) {
      entry.set_used(usage->used);
      entry.set_reserved(usage->reserved);
    }
    entry.set_remaining(std::max<int64_t>(0, budget.limit - entry.used() - entry.reserved()));
    *entry.mutable_period_end() = ToProtoTimestamp(end);
    report.push_back(std::move(entry));
  }
  return report;
}

}  // namespace musicgw::gateway
