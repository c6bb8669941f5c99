// Metrics through real generations: the HTTP client, both adapters, the engine (SQLite ledger,
// tenant budgets) and the quota monitor wired to Metrics as server.cc wires them, against the
// in-process emulators; /metrics is scraped over HTTP and its values must move.
#include <unistd.h>

#include <atomic>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "adapters/http/curl_http_client.h"
#include "adapters/loudly/loudly_adapter.h"
#include "adapters/registry.h"
#include "common/config.h"
#include "common/errors.h"
#include "emulators/loudly/loudly_emulator.h"
#include "emulators/soundpiece/soundpiece_emulator.h"
#include "google/rpc/error_details.pb.h"
#include "gtest/gtest.h"
#include "services/gateway/budgets.h"
#include "services/gateway/quota_monitor.h"
#include "services/metrics/metrics.h"
#include "services/operations/engine.h"
#include "services/operations/operation_store.h"
#include "tests/metrics/emulator_util.h"
#include "tests/metrics/metrics_test_util.h"

namespace musicgw::metrics {
namespace {

namespace v1 = ::musicgw::v1;
constexpr char kTenant[] = "acme";

std::string Fetch(int port) { return testing::FetchMetrics(port).value_or(""); }

// Refreshes quota after each generation, as the server's own observer does.
class QuotaRefresh final : public operations::EngineObserver {
 public:
  explicit QuotaRefresh(gateway::QuotaMonitor* monitor) : monitor_(monitor) {}
  void OnCompleted(v1::Provider provider, v1::TaskKind, v1::OperationState,
                   absl::StatusCode) override {
    monitor_->RefreshSoon(provider);
  }

 private:
  gateway::QuotaMonitor* monitor_;
};

class MetricsEmulatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const absl::Status started = emulators_.Start();
    ASSERT_TRUE(started.ok()) << started;

    auto metrics = Metrics::Create();
    ASSERT_TRUE(metrics.ok()) << metrics.status();
    metrics_ = std::move(*metrics);  // shared: the HTTP client keeps a reference

    http::CurlHttpClient::Options http_options;
    http_options.observer = metrics_;
    http_ = http::CurlHttpClient::Create(http_options);
    ASSERT_NE(http_, nullptr);

    config::ProviderConfig loudly_config;
    loudly_config.name = "loudly-b2b";
    loudly_config.type = v1::PROVIDER_LOUDLY;
    loudly_config.dialect = "b2b";
    loudly_config.base_url = emulators_.loudly->base_url();
    loudly_config.api_key = "loudly_test_key";
    config::ProviderConfig soundpiece_config;
    soundpiece_config.name = "soundpiece-main";
    soundpiece_config.type = v1::PROVIDER_SOUNDPIECE;
    soundpiece_config.dialect = "v1";
    soundpiece_config.base_url = emulators_.soundpiece->base_url();
    soundpiece_config.api_key = "spk_test_key";
    for (const auto* config : {&loudly_config, &soundpiece_config}) {
      auto adapter = adapters::CreateAdapter(*config, http_.get());
      ASSERT_TRUE(adapter.ok()) << adapter.status();
      adapter_ptrs_.push_back(adapter->get());
      adapters_.push_back(std::move(*adapter));
    }
    for (auto& adapter : adapters_) adapter->Start();

    quota_ = std::make_unique<gateway::QuotaMonitor>(adapter_ptrs_, http_.get(), absl::Minutes(10));
    // Every accepted read passes the listener (under the monitor's lock, before the snapshot is
    // updated): the event QuotaReadAfter waits for.
    quota_->set_listener(
        [this](const adapters::ProviderAdapter* adapter, std::vector<adapters::QuotaFigure>*) {
          absl::MutexLock lock(&reads_mu_);
          last_read_[adapter->provider()] = absl::Now();
        });
    refresh_ = std::make_unique<QuotaRefresh>(quota_.get());
    fan_out_ = std::make_unique<EngineObserverFanOut>(
        std::vector<operations::EngineObserver*>{metrics_.get(), refresh_.get()});

    config::TenantConfig tenant;
    tenant.name = kTenant;
    config::BudgetConfig budget;
    budget.task = v1::TASK_KIND_SOUND_EFFECT;
    budget.limit = 10;
    budget.period = config::BudgetPeriod::kDay;
    tenant.budgets.push_back(budget);

    operations::EngineOptions options;
    options.ledger_path = ":memory:";
    options.budgets = gateway::MakeBudgetResolver({tenant});
    options.observer = fan_out_.get();
    options.min_poll_interval = absl::Milliseconds(50);
    auto store = operations::OpenSqliteOperationStore(":memory:");
    ASSERT_TRUE(store.ok()) << store.status();
    auto engine = operations::CreateOperationsEngine(std::move(options), std::move(*store),
                                                     adapter_ptrs_, http_.get());
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = std::move(*engine);
    ASSERT_TRUE(engine_->Start().ok());
    quota_->Start();

    // What server.cc does with the sources.
    metrics_->SetQuotaSource([quota = quota_.get()] { return quota->Snapshot(); });
    metrics_->SetEngine(engine_.get());
    for (auto* adapter : adapter_ptrs_) {
      if (auto* loudly_adapter = dynamic_cast<adapters::loudly::LoudlyAdapter*>(adapter)) {
        metrics_->AddTokenRefreshSource(adapter->provider(), adapter->account(), [loudly_adapter] {
          return loudly_adapter->token_refreshes();
        });
      }
    }
    ASSERT_TRUE(metrics_->StartExposer("127.0.0.1:0").ok());
  }

  void TearDown() override {
    if (metrics_ != nullptr) {
      metrics_->StopExposer();
      metrics_->ClearSources();
    }
    if (engine_ != nullptr) engine_->Shutdown();
    if (quota_ != nullptr) quota_->Stop();
    for (auto& adapter : adapters_) adapter->Stop();
    engine_.reset();
    quota_.reset();
    adapters_.clear();
    http_.reset();
  }

  // The latest quota read of `provider`, once one newer than `after` has succeeded.
  std::optional<gateway::AccountQuota> QuotaReadAfter(v1::Provider provider, absl::Time after) {
    {
      absl::MutexLock lock(&reads_mu_);
      auto read = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(reads_mu_) {
        auto it = last_read_.find(provider);
        return it != last_read_.end() && it->second > after;
      };
      if (!reads_mu_.AwaitWithTimeout(absl::Condition(&read), absl::Seconds(20))) {
        return std::nullopt;
      }
    }
    // The snapshot is updated under the lock the listener ran under, so it has the read now
    // (stamped after the listener ran, so also after `after`).
    for (const auto& account : quota_->Snapshot()) {
      if (account.provider == provider && account.read_time > after) return account;
    }
    return std::nullopt;
  }

  absl::StatusOr<v1::Operation> WaitDone(const std::string& name) {
    absl::Notification done;
    absl::StatusOr<v1::Operation> result;
    engine_->Wait(kTenant, name, absl::Seconds(30), [&](absl::StatusOr<v1::Operation> op) {
      result = std::move(op);
      done.Notify();
    });
    done.WaitForNotificationWithTimeout(absl::Seconds(40));
    return result;
  }

  testing::Emulators emulators_;
  std::shared_ptr<Metrics> metrics_;
  std::unique_ptr<http::CurlHttpClient> http_;
  std::vector<adapters::ProviderAdapterPtr> adapters_;
  std::vector<adapters::ProviderAdapter*> adapter_ptrs_;
  std::unique_ptr<gateway::QuotaMonitor> quota_;
  std::unique_ptr<QuotaRefresh> refresh_;
  std::unique_ptr<EngineObserverFanOut> fan_out_;
  std::unique_ptr<operations::OperationsEngine> engine_;

  absl::Mutex reads_mu_;
  std::map<v1::Provider, absl::Time> last_read_ ABSL_GUARDED_BY(reads_mu_);
};

TEST_F(MetricsEmulatorTest, AGenerationMovesCountersAndTheProvidersDecrementedLimits) {
  const std::optional<gateway::AccountQuota> before =
      QuotaReadAfter(v1::PROVIDER_LOUDLY, absl::InfinitePast());
  ASSERT_TRUE(before.has_value()) << "no Loudly quota read";
  ASSERT_FALSE(before->figures.empty());
  const std::string scrape_before = Fetch(metrics_->port());
  ASSERT_FALSE(scrape_before.empty());

  v1::GenerateRequest request;
  request.set_request_id("metrics-e2e-1");
  request.set_provider(v1::PROVIDER_LOUDLY);
  request.mutable_text_to_music()->set_prompt("calm piano, rain");
  request.mutable_text_to_music()->set_duration_seconds(30);
  absl::StatusOr<v1::Operation> created = engine_->Generate(kTenant, request);
  ASSERT_TRUE(created.ok()) << created.status();
  absl::StatusOr<v1::Operation> done = WaitDone(created->name());
  ASSERT_TRUE(done.ok()) << done.status();
  ASSERT_EQ(done->state(), v1::OPERATION_STATE_SUCCEEDED) << done->error().message();

  // The monitor re-reads Loudly's limits after the generation; the gauges follow.
  const std::optional<gateway::AccountQuota> after =
      QuotaReadAfter(v1::PROVIDER_LOUDLY, before->read_time);
  ASSERT_TRUE(after.has_value()) << "quota was not re-read after the generation";
  const std::string scrape = Fetch(metrics_->port());
  ASSERT_FALSE(scrape.empty());

  const std::vector<std::string> loudly_t2m = {"provider=\"loudly\"", "task=\"text_to_music\""};
  EXPECT_EQ(testing::Sample(scrape_before, "musicgw_operations_created_total", loudly_t2m),
            std::nullopt);
  EXPECT_EQ(testing::Sample(scrape, "musicgw_operations_created_total", loudly_t2m), 1);
  std::vector<std::string> succeeded = loudly_t2m;
  succeeded.push_back("outcome=\"succeeded\"");
  succeeded.push_back("grpc_code=\"OK\"");
  EXPECT_EQ(testing::Sample(scrape, "musicgw_operations_completed_total", succeeded), 1);
  EXPECT_EQ(testing::Sample(scrape, "musicgw_operation_time_to_success_seconds_count", loudly_t2m),
            1);
  EXPECT_GE(testing::Sample(scrape, "musicgw_upstream_requests_total",
                            {"provider=\"loudly\"", "endpoint=\"loudly:ai.prompt.songs:post\"",
                             "status_class=\"2xx\""})
                .value_or(0),
            1);
  EXPECT_GE(testing::Sample(scrape, "musicgw_upstream_requests_total",
                            {"provider=\"loudly\"", "endpoint=\"loudly:account.limits:get\""})
                .value_or(0),
            2);
  EXPECT_EQ(testing::Sample(scrape, "musicgw_operations_live",
                            {"provider=\"loudly\"", "state=\"running\""}),
            0);
  EXPECT_EQ(
      testing::Sample(scrape, "musicgw_provider_health",
                      {"provider=\"loudly\"", "account=\"loudly-b2b\"", "health=\"healthy\""}),
      1);
  EXPECT_EQ(
      testing::Sample(scrape, "musicgw_upstream_token_refreshes_total", {"provider=\"loudly\""}),
      0);
  EXPECT_LT(
      testing::Sample(scrape, "musicgw_provider_quota_read_age_seconds", {"provider=\"loudly\""})
          .value_or(1e9),
      60);

  // Some resource's figures moved by exactly this generation, and the gauges show the same
  // numbers as the snapshot GetQuota reports.
  int moved = 0;
  for (const auto& figure : after->figures) {
    const std::vector<std::string> labels = {"provider=\"loudly\"", "account=\"loudly-b2b\"",
                                             "resource=\"" + figure.resource + "\""};
    if (figure.remaining >= 0) {
      EXPECT_EQ(testing::Sample(scrape, "musicgw_provider_quota_remaining", labels),
                figure.remaining)
          << figure.resource;
    }
    if (figure.used >= 0) {
      EXPECT_EQ(testing::Sample(scrape, "musicgw_provider_quota_used", labels), figure.used)
          << figure.resource;
      const std::optional<double> was =
          testing::Sample(scrape_before, "musicgw_provider_quota_used", labels);
      if (was.has_value() && *was + 1 == figure.used) {
        ++moved;
        EXPECT_EQ(testing::Sample(scrape_before, "musicgw_provider_quota_remaining", labels)
                          .value_or(-1) -
                      1,
                  testing::Sample(scrape, "musicgw_provider_quota_remaining", labels).value_or(-2))
            << figure.resource;
      }
    }
  }
  EXPECT_EQ(moved, 1) << "exactly one Loudly resource should count the generation\n" << scrape;

  if (access(testing::kPromtool, X_OK) == 0) {
    const auto [rc, output] = testing::PromtoolCheckMetrics(scrape);
    EXPECT_EQ(rc, 0) << output;
  }
}

TEST_F(MetricsEmulatorTest, FiftyConcurrentGeneratesAgainstABudgetOfTenAdmitExactlyTen) {
  constexpr int kCalls = 50;
  std::vector<absl::StatusOr<v1::Operation>> results(kCalls, absl::UnknownError("not run"));
  std::vector<std::thread> threads;
  threads.reserve(kCalls);
  std::atomic<bool> go{false};
  for (int i = 0; i < kCalls; ++i) {
    threads.emplace_back([&, i] {
      while (!go.load()) std::this_thread::yield();
      v1::GenerateRequest request;
      request.set_request_id(absl::StrCat("budget-", i));
      request.set_provider(v1::PROVIDER_SOUNDPIECE);
      request.mutable_sound_effect()->set_prompt("door slam");
      request.mutable_sound_effect()->set_duration_seconds(1);
      results[i] = engine_->Generate(kTenant, request);
    });
  }
  go = true;
  for (auto& thread : threads) thread.join();

  int admitted = 0;
  std::vector<std::string> names;
  for (const auto& result : results) {
    if (result.ok()) {
      ++admitted;
      names.push_back(result->name());
      continue;
    }
    EXPECT_EQ(result.status().code(), absl::StatusCode::kResourceExhausted) << result.status();
    google::rpc::QuotaFailure quota;
    ASSERT_TRUE(GetQuotaFailure(result.status(), &quota)) << result.status();
    ASSERT_EQ(quota.violations_size(), 1);
    EXPECT_EQ(quota.violations(0).subject(), "tenant:acme");
    EXPECT_TRUE(absl::StrContains(quota.violations(0).description(), "SOUND_EFFECT"))
        << quota.violations(0).description();
    google::rpc::RetryInfo retry;
    ASSERT_TRUE(GetRetryInfo(result.status(), &retry)) << result.status();
    EXPECT_GT(retry.retry_delay().seconds(), 0);
    EXPECT_LE(retry.retry_delay().seconds(), 24 * 3600);
  }
  EXPECT_EQ(admitted, 10);

  for (const std::string& name : names) {
    absl::StatusOr<v1::Operation> done = WaitDone(name);
    ASSERT_TRUE(done.ok()) << done.status();
    EXPECT_EQ(done->state(), v1::OPERATION_STATE_SUCCEEDED) << done->error().message();
  }
  // Rejected calls never reached the provider, and the counters say the same.
  EXPECT_EQ(emulators_.soundpiece->stats().operations_created, 10);
  const std::string scrape = Fetch(metrics_->port());
  EXPECT_EQ(testing::Sample(scrape, "musicgw_operations_created_total",
                            {"provider=\"soundpiece\"", "task=\"sound_effect\""}),
            10);
  EXPECT_EQ(testing::Sample(
                scrape, "musicgw_operations_completed_total",
                {"provider=\"soundpiece\"", "task=\"sound_effect\"", "outcome=\"succeeded\""}),
            10);
  EXPECT_EQ(testing::Sample(scrape, "musicgw_upstream_requests_total",
                            {"provider=\"soundpiece\"", "status_class=\"4xx\""}),
            std::nullopt);
}

}  // namespace
}  // namespace musicgw::metrics
