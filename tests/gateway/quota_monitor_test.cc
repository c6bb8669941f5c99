// The quota monitor with two accounts of one provider: each account's figures are read, kept
// and handed to the listener as its own, stamped by the injected clock.

#include "services/operations/quota_monitor.h"

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "common/clock.h"
#include "gtest/gtest.h"

namespace musicgw::operations {
namespace {

namespace v1 = musicgw::v1;

// Timers run only when the test says so.
class ManualTimers final : public http::Client {
 public:
  void Send(http::Request, http::ResponseCallback) override { ADD_FAILURE() << "no HTTP here"; }
  std::unique_ptr<http::StreamHandle> Stream(http::Request, http::StreamHandler*) override {
    ADD_FAILURE() << "no HTTP here";
    return nullptr;
  }
  void RunAfter(absl::Duration, absl::AnyInvocable<void() &&> fn) override {
    absl::MutexLock lock(&mu_);
    pending_.push_back(std::move(fn));
  }
  // Runs the timers scheduled so far (not those they schedule).
  void RunPending() {
    std::vector<absl::AnyInvocable<void() &&>> due;
    {
      absl::MutexLock lock(&mu_);
      due.swap(pending_);
    }
    for (auto& fn : due) std::move(fn)();
  }

 private:
  absl::Mutex mu_;
  std::vector<absl::AnyInvocable<void() &&>> pending_ ABSL_GUARDED_BY(mu_);
};

// Answers ReadQuota at once with its current credits.
class CreditsAdapter final : public adapters::ProviderAdapter {
 public:
  explicit CreditsAdapter(std::string account) : account_(std::move(account)) {}
  void set_remaining(int64_t remaining) { remaining_ = remaining; }

  v1::Provider provider() const override { return v1::PROVIDER_SOUNDPIECE; }
  const std::string& account() const override { return account_; }
  std::string dialect() const override { return "stub"; }
  bool idempotent_submit() const override { return true; }
  bool synchronous() const override { return false; }
  absl::Status CheckRequest(const v1::GenerateRequest&) const override { return absl::OkStatus(); }
  void Submit(adapters::SubmitRequest, adapters::Callback<adapters::UpstreamStatus>) override {}
  void Poll(adapters::PollRequest, adapters::Callback<adapters::UpstreamStatus>) override {}
  void Cancel(adapters::PollRequest, adapters::Callback<bool>) override {}
  void ReadQuota(adapters::Callback<std::vector<adapters::QuotaFigure>> done) override {
    adapters::QuotaFigure figure;
    figure.resource = "credits";
    figure.remaining = remaining_;
    std::move(done)(std::vector<adapters::QuotaFigure>{figure});
  }

 private:
  std::string account_;
  int64_t remaining_ = -1;
};

std::map<std::string, AccountQuota> ByAccount(const std::vector<AccountQuota>& accounts) {
  std::map<std::string, AccountQuota> by_account;
  for (const auto& account : accounts) by_account[account.account] = account;
  return by_account;
}

TEST(QuotaMonitorTest, KeepsEachAccountsFiguresApart) {
  FakeClock clock;
  ManualTimers timers;
  CreditsAdapter a("sp-a");
  CreditsAdapter b("sp-b");
  a.set_remaining(0);
  b.set_remaining(40);
  QuotaMonitor monitor({&a, &b}, &timers, absl::Minutes(1), clock);
  std::vector<std::pair<std::string, int64_t>> heard;
  monitor.set_listener(
      [&heard](const adapters::ProviderAdapter* adapter, std::vector<adapters::QuotaFigure>* f) {
        heard.emplace_back(adapter->account(), f->front().remaining);
      });

  const absl::Time started = clock.Now();
  monitor.Start();
  auto accounts = ByAccount(monitor.Snapshot());
  ASSERT_EQ(accounts.size(), 2u);
  EXPECT_EQ(accounts["sp-a"].figures.front().remaining, 0);
  EXPECT_EQ(accounts["sp-b"].figures.front().remaining, 40);
  EXPECT_EQ(accounts["sp-a"].read_time, started);
  EXPECT_EQ(heard, (std::vector<std::pair<std::string, int64_t>>{{"sp-a", 0}, {"sp-b", 40}}));

  // A refresh after a generation reads both accounts of the provider again; each keeps its own.
  clock.Advance(absl::Seconds(5));
  b.set_remaining(39);
  monitor.RefreshSoon(v1::PROVIDER_SOUNDPIECE);
  monitor.RefreshSoon(v1::PROVIDER_SOUNDPIECE);  // coalesced with the first
  timers.RunPending();
  accounts = ByAccount(monitor.Snapshot());
  EXPECT_EQ(accounts["sp-a"].figures.front().remaining, 0);
  EXPECT_EQ(accounts["sp-b"].figures.front().remaining, 39);
  EXPECT_EQ(accounts["sp-b"].read_time, started + absl::Seconds(5));
  // Two periodic timers were pending too: at most one more read per account happened.
  EXPECT_LE(heard.size(), 6u);
  EXPECT_GE(heard.size(), 4u);
  monitor.Stop();
}

}  // namespace
}  // namespace musicgw::operations
