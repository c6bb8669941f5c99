// The provider directory and the credit estimate with two accounts of one provider: each
// account reports its own health, quota and credits, never its sibling's.

#include "services/gateway/provider_directory.h"

#include <map>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "services/gateway/credit_estimator.h"

namespace musicgw::gateway {
namespace {

namespace v1 = musicgw::v1;

// Enough of an adapter for the directory: identity and catalog.
class StubAdapter final : public adapters::ProviderAdapter {
 public:
  StubAdapter(v1::Provider provider, std::string account)
      : provider_(provider), account_(std::move(account)) {}
  v1::Provider provider() const override { return provider_; }
  const std::string& account() const override { return account_; }
  std::string dialect() const override { return "stub"; }
  bool idempotent_submit() const override { return true; }
  bool synchronous() const override { return false; }
  absl::Status CheckRequest(const v1::GenerateRequest&) const override { return absl::OkStatus(); }
  void Submit(adapters::SubmitRequest, adapters::Callback<adapters::UpstreamStatus>) override {}
  void Poll(adapters::PollRequest, adapters::Callback<adapters::UpstreamStatus>) override {}
  void Cancel(adapters::PollRequest, adapters::Callback<bool>) override {}
  void ReadQuota(adapters::Callback<std::vector<adapters::QuotaFigure>>) override {}

 private:
  v1::Provider provider_;
  std::string account_;
};

operations::AccountQuota Credits(const std::string& account, int64_t limit, int64_t remaining) {
  operations::AccountQuota quota;
  quota.provider = v1::PROVIDER_SOUNDPIECE;
  quota.account = account;
  quota.read_time = absl::FromUnixSeconds(1'800'000'000);
  adapters::QuotaFigure figure;
  figure.resource = "credits";
  figure.limit = limit;
  figure.used = limit - remaining;
  figure.remaining = remaining;
  quota.figures.push_back(figure);
  return quota;
}

class ProviderDirectoryTest : public ::testing::Test {
 protected:
  ProviderDirectoryTest()
      : main_(v1::PROVIDER_SOUNDPIECE, "sp-main"),
        backup_(v1::PROVIDER_SOUNDPIECE, "sp-backup"),
        loudly_(v1::PROVIDER_LOUDLY, "sp-main") {}

  AccountDirectory Directory() {
    AccountDirectorySources sources;
    sources.adapters = {&main_, &backup_, &loudly_};
    sources.states = [this] { return states_; };
    sources.quotas = [this] { return quotas_; };
    sources.budgets = [](const config::TenantConfig&) { return std::vector<v1::TenantBudget>{}; };
    return AccountDirectory(std::move(sources));
  }

  static operations::ProviderState State(v1::Provider provider, const std::string& account,
                                         v1::ProviderHealth health, bool exhausted) {
    operations::ProviderState state;
    state.provider = provider;
    state.account = account;
    state.health = health;
    state.quota_exhausted = exhausted;
    if (health != v1::PROVIDER_HEALTH_HEALTHY) state.health_detail = account + " is failing";
    return state;
  }

  StubAdapter main_;
  StubAdapter backup_;
  StubAdapter loudly_;
  std::vector<operations::ProviderState> states_;
  std::vector<operations::AccountQuota> quotas_;
};

TEST_F(ProviderDirectoryTest, ListProvidersShowsEachAccountsOwnHealthAndQuota) {
  // The exhausted account is listed first and the unhealthy one last: a match by provider
  // alone would give every Soundpiece account the last state.
  states_ = {
      State(v1::PROVIDER_SOUNDPIECE, "sp-main", v1::PROVIDER_HEALTH_HEALTHY, true),
      State(v1::PROVIDER_SOUNDPIECE, "sp-backup", v1::PROVIDER_HEALTH_UNAVAILABLE, false),
      State(v1::PROVIDER_LOUDLY, "sp-main", v1::PROVIDER_HEALTH_DEGRADED, false),
  };
  const std::vector<v1::ProviderInfo> providers = Directory().Providers();
  ASSERT_EQ(providers.size(), 3u);

  EXPECT_EQ(providers[0].provider(), v1::PROVIDER_SOUNDPIECE);
  EXPECT_EQ(providers[0].account(), "sp-main");
  EXPECT_EQ(providers[0].health(), v1::PROVIDER_HEALTH_HEALTHY);
  EXPECT_TRUE(providers[0].quota_exhausted());
  EXPECT_EQ(providers[0].health_detail(), "");

  EXPECT_EQ(providers[1].provider(), v1::PROVIDER_SOUNDPIECE);
  EXPECT_EQ(providers[1].account(), "sp-backup");
  EXPECT_EQ(providers[1].health(), v1::PROVIDER_HEALTH_UNAVAILABLE);
  EXPECT_FALSE(providers[1].quota_exhausted());
  EXPECT_EQ(providers[1].health_detail(), "sp-backup is failing");

  // Same account name, other provider: its own state too.
  EXPECT_EQ(providers[2].provider(), v1::PROVIDER_LOUDLY);
  EXPECT_EQ(providers[2].account(), "sp-main");
  EXPECT_EQ(providers[2].health(), v1::PROVIDER_HEALTH_DEGRADED);
  EXPECT_FALSE(providers[2].quota_exhausted());
}

TEST_F(ProviderDirectoryTest, GetQuotaReportsEachAccountsFiguresAndExhaustion) {
  states_ = {
      State(v1::PROVIDER_SOUNDPIECE, "sp-main", v1::PROVIDER_HEALTH_HEALTHY, true),
      State(v1::PROVIDER_SOUNDPIECE, "sp-backup", v1::PROVIDER_HEALTH_HEALTHY, false),
  };
  quotas_ = {Credits("sp-main", 100, 7), Credits("sp-backup", 500, 480)};
  const std::vector<v1::ProviderQuota> quotas = Directory().Quotas(v1::PROVIDER_SOUNDPIECE);
  ASSERT_EQ(quotas.size(), 2u);
  std::map<std::string, v1::ProviderQuota> by_account;
  for (const auto& quota : quotas) by_account[quota.account()] = quota;
  ASSERT_EQ(by_account.size(), 2u);

  const v1::ProviderQuota& main = by_account["sp-main"];
  EXPECT_EQ(main.limit(), 100);
  EXPECT_EQ(main.remaining(), 7);
  EXPECT_TRUE(main.exhausted()) << "routing holds sp-main exhausted";

  const v1::ProviderQuota& backup = by_account["sp-backup"];
  EXPECT_EQ(backup.limit(), 500);
  EXPECT_EQ(backup.remaining(), 480);
  EXPECT_FALSE(backup.exhausted()) << "sp-main's exhaustion must not leak into sp-backup";

  EXPECT_TRUE(Directory().Quotas(v1::PROVIDER_LOUDLY).empty());
}

TEST(CreditEstimatorTest, EachAccountSpendsItsOwnBalance) {
  config::ProviderConfig main;
  main.name = "sp-main";
  main.type = v1::PROVIDER_SOUNDPIECE;
  main.credit_balance = 10;
  main.credit_costs[v1::TASK_KIND_SONG] = 3;
  config::ProviderConfig backup = main;
  backup.name = "sp-backup";
  backup.credit_balance = 100;
  config::ProviderConfig unstated = main;
  unstated.name = "sp-unstated";
  unstated.credit_balance = 0;

  std::vector<std::string> asked;
  CreditEstimator estimator(
      {main, backup, unstated},
      [&asked](v1::Provider provider, const std::string& account, absl::Time) {
        asked.push_back(account);
        std::map<v1::TaskKind, int64_t> charged;
        if (provider != v1::PROVIDER_SOUNDPIECE) return charged;
        if (account == "sp-main") charged[v1::TASK_KIND_SONG] = 2;            // 6 credits
        if (account == "sp-backup") charged[v1::TASK_KIND_SOUND_EFFECT] = 5;  // 5 credits
        return charged;
      });

  auto figures = [] {
    adapters::QuotaFigure credits;
    credits.resource = "credits";
    return std::vector<adapters::QuotaFigure>{credits};
  };
  std::vector<adapters::QuotaFigure> main_figures = figures();
  estimator.Complete(v1::PROVIDER_SOUNDPIECE, "sp-main", &main_figures);
  EXPECT_EQ(main_figures[0].limit, 10);
  EXPECT_EQ(main_figures[0].used, 6);
  EXPECT_EQ(main_figures[0].remaining, 4);

  std::vector<adapters::QuotaFigure> backup_figures = figures();
  estimator.Complete(v1::PROVIDER_SOUNDPIECE, "sp-backup", &backup_figures);
  EXPECT_EQ(backup_figures[0].limit, 100);
  EXPECT_EQ(backup_figures[0].used, 5);
  EXPECT_EQ(backup_figures[0].remaining, 95);

  // No stated balance, or the same name under another provider: left as read.
  std::vector<adapters::QuotaFigure> unstated_figures = figures();
  estimator.Complete(v1::PROVIDER_SOUNDPIECE, "sp-unstated", &unstated_figures);
  EXPECT_EQ(unstated_figures[0].limit, -1);
  std::vector<adapters::QuotaFigure> loudly_figures = figures();
  estimator.Complete(v1::PROVIDER_LOUDLY, "sp-main", &loudly_figures);
  EXPECT_EQ(loudly_figures[0].limit, -1);
  EXPECT_EQ(asked, (std::vector<std::string>{"sp-main", "sp-backup"}));

  // A 402 (remaining 0) outranks the estimate.
  std::vector<adapters::QuotaFigure> refused = figures();
  refused[0].remaining = 0;
  estimator.Complete(v1::PROVIDER_SOUNDPIECE, "sp-backup", &refused);
  EXPECT_EQ(refused[0].remaining, 0);
  EXPECT_EQ(refused[0].limit, 100);
}

}  // namespace
}  // namespace musicgw::gateway
