// Metrics: every observer path moves its series, labels stay bounded, pull-time sources are
// read at scrape time, and the exposer serves text promtool accepts.
#include "services/metrics/metrics.h"

#include <unistd.h>

#include <fstream>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "tests/metrics/metrics_test_util.h"

namespace musicgw::metrics {
namespace {

namespace v1 = ::musicgw::v1;
using testing::LabelMap;
using testing::Value;

std::unique_ptr<Metrics> NewMetrics(MetricsOptions options = {}) {
  auto metrics = Metrics::Create(std::move(options));
  EXPECT_TRUE(metrics.ok()) << metrics.status();
  return metrics.ok() ? std::move(*metrics) : nullptr;
}

double Get(const Metrics& metrics, const std::string& name, const LabelMap& labels) {
  return Value(metrics.Collect(), name, labels).value_or(-1);
}

TEST(MetricsTest, RpcObserverMovesRequestLatencyAndStreamSeries) {
  auto metrics = NewMetrics();
  metrics->OnRpcDone("Generate", 0, absl::Milliseconds(12));
  metrics->OnRpcDone("Generate", 0, absl::Milliseconds(3));
  metrics->OnRpcDone("/musicgw.v1.MusicGateway/Generate", 8, absl::Milliseconds(1));
  EXPECT_EQ(
      Get(*metrics, "musicgw_grpc_requests_total", {{"method", "Generate"}, {"grpc_code", "OK"}}),
      2);
  EXPECT_EQ(Get(*metrics, "musicgw_grpc_requests_total",
                {{"method", "Generate"}, {"grpc_code", "RESOURCE_EXHAUSTED"}}),
            1);
  EXPECT_EQ(Get(*metrics, "musicgw_grpc_request_duration_seconds", {{"method", "Generate"}}), 3);

  metrics->OnStreamOpened("WatchOperation");
  metrics->OnStreamOpened("WatchOperation");
  metrics->OnStreamMessage("WatchOperation");
  metrics->OnStreamMessage("WatchOperation");
  metrics->OnStreamMessage("WatchOperation");
  metrics->OnStreamClosed("WatchOperation");
  EXPECT_EQ(Get(*metrics, "musicgw_grpc_open_streams", {{"method", "WatchOperation"}}), 1);
  EXPECT_EQ(
      Get(*metrics, "musicgw_grpc_stream_messages_sent_total", {{"method", "WatchOperation"}}), 3);
}

TEST(MetricsTest, UnknownMethodAndCodeCollapseToOther) {
  auto metrics = NewMetrics();
  metrics->OnRpcDone("/grpc.health.v1.Health/Check", 99, absl::Milliseconds(1));
  EXPECT_EQ(
      Get(*metrics, "musicgw_grpc_requests_total", {{"method", "other"}, {"grpc_code", "other"}}),
      1);
  EXPECT_EQ(Get(*metrics, "musicgw_metrics_label_values_collapsed_total", {{"label", "method"}}),
            1);
  EXPECT_EQ(Get(*metrics, "musicgw_metrics_label_values_collapsed_total", {{"label", "grpc_code"}}),
            1);
}

TEST(MetricsTest, EngineObserverMovesOperationSeries) {
  auto metrics = NewMetrics();
  const auto p = v1::PROVIDER_SOUNDPIECE;
  const auto t = v1::TASK_KIND_SONG;
  metrics->OnStateChange(p, t, v1::OPERATION_STATE_UNSPECIFIED, v1::OPERATION_STATE_QUEUED);
  metrics->OnStateChange(p, t, v1::OPERATION_STATE_UNSPECIFIED, v1::OPERATION_STATE_QUEUED);
  metrics->OnStateChange(p, t, v1::OPERATION_STATE_QUEUED, v1::OPERATION_STATE_RUNNING);
  EXPECT_EQ(Get(*metrics, "musicgw_operations_created_total",
                {{"provider", "soundpiece"}, {"task", "song"}}),
            2);

  metrics->OnStateChange(p, t, v1::OPERATION_STATE_RUNNING, v1::OPERATION_STATE_SUCCEEDED);
  metrics->OnCompleted(p, t, v1::OPERATION_STATE_SUCCEEDED, absl::StatusCode::kOk);
  metrics->OnSucceededLatency(p, t, absl::Seconds(42));
  metrics->OnStateChange(p, t, v1::OPERATION_STATE_QUEUED, v1::OPERATION_STATE_FAILED);
  metrics->OnCompleted(p, t, v1::OPERATION_STATE_FAILED, absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(Get(*metrics, "musicgw_operations_completed_total",
                {{"provider", "soundpiece"},
                 {"task", "song"},
                 {"outcome", "succeeded"},
                 {"grpc_code", "OK"}}),
            1);
  EXPECT_EQ(
      Get(*metrics, "musicgw_operations_completed_total",
          {{"provider", "soundpiece"}, {"outcome", "failed"}, {"grpc_code", "DEADLINE_EXCEEDED"}}),
      1);
  EXPECT_EQ(Get(*metrics, "musicgw_operation_time_to_success_seconds",
                {{"provider", "soundpiece"}, {"task", "song"}}),
            1);

  metrics->OnDownloadBytes(v1::PROVIDER_LOUDLY, 1000);
  metrics->OnDownloadBytes(v1::PROVIDER_LOUDLY, 24);
  EXPECT_EQ(Get(*metrics, "musicgw_download_bytes_total", {{"provider", "loudly"}}), 1024);
  metrics->OnFallback(v1::PROVIDER_LOUDLY, v1::PROVIDER_SOUNDPIECE);
  EXPECT_EQ(Get(*metrics, "musicgw_routing_fallbacks_total",
                {{"provider", "loudly"}, {"fallback_provider", "soundpiece"}}),
            1);
}

TEST(MetricsTest, LiveGaugeComesFromTheEngineCounts) {
  auto metrics = NewMetrics();
  testing::ScriptedEngine engine;
  operations::ProviderState loudly;
  loudly.provider = v1::PROVIDER_LOUDLY;
  operations::ProviderState soundpiece;
  soundpiece.provider = v1::PROVIDER_SOUNDPIECE;
  engine.states = {loudly, soundpiece};
  // Resumed operations are in the engine's counts although no state change announced them.
  engine.stats.live_by_state = {{v1::PROVIDER_LOUDLY, v1::OPERATION_STATE_RUNNING, 3},
                                {v1::PROVIDER_SOUNDPIECE, v1::OPERATION_STATE_QUEUED, 2}};
  metrics->SetEngine(&engine);
  EXPECT_EQ(
      Get(*metrics, "musicgw_operations_live", {{"provider", "loudly"}, {"state", "running"}}), 3);
  EXPECT_EQ(Get(*metrics, "musicgw_operations_live", {{"provider", "loudly"}, {"state", "queued"}}),
            0);
  EXPECT_EQ(
      Get(*metrics, "musicgw_operations_live", {{"provider", "soundpiece"}, {"state", "queued"}}),
      2);
  EXPECT_EQ(
      Get(*metrics, "musicgw_operations_live", {{"provider", "soundpiece"}, {"state", "running"}}),
      0);
  metrics->ClearSources();
}

TEST(MetricsTest, HttpObserverMovesUpstreamSeries) {
  auto metrics = NewMetrics();
  metrics->OnRequestDone("loudly", "loudly:ai.songs:post", "2xx", absl::Milliseconds(800));
  metrics->OnRequestDone("loudly", "loudly:ai.songs:post", "5xx", absl::Milliseconds(80));
  metrics->OnRequestDone("loudly", "loudly:ai.songs:post", "timeout", absl::Seconds(30));
  metrics->OnRetry("loudly", "loudly:ai.songs:post", "http_5xx", absl::Milliseconds(250));
  metrics->OnRetry("loudly", "loudly:ai.songs:post", "http_429", absl::Seconds(2));
  metrics->OnRetryAbandoned("loudly", "loudly:ai.songs:post", "timeout", "budget");
  const LabelMap base = {{"provider", "loudly"}, {"endpoint", "loudly:ai.songs:post"}};
  auto with = [&](const std::string& key, const std::string& value) {
    LabelMap labels = base;
    labels[key] = value;
    return labels;
  };
  EXPECT_EQ(Get(*metrics, "musicgw_upstream_requests_total", with("status_class", "2xx")), 1);
  EXPECT_EQ(Get(*metrics, "musicgw_upstream_requests_total", with("status_class", "5xx")), 1);
  EXPECT_EQ(Get(*metrics, "musicgw_upstream_requests_total", with("status_class", "timeout")), 1);
  EXPECT_EQ(Get(*metrics, "musicgw_upstream_request_duration_seconds", base), 3);
  EXPECT_EQ(Get(*metrics, "musicgw_upstream_retries_total", with("reason", "http_5xx")), 1);
  EXPECT_EQ(Get(*metrics, "musicgw_upstream_retries_total", with("reason", "http_429")), 1);
  EXPECT_DOUBLE_EQ(Get(*metrics, "musicgw_upstream_retry_delay_seconds_total", base), 2.25);
  EXPECT_EQ(Get(*metrics, "musicgw_upstream_retries_abandoned_total", with("reason", "budget")), 1);
}

TEST(MetricsTest, OpenEndedLabelsCollapseBeyondTheCapAndRejectUrlsAndIds) {
  MetricsOptions options;
  options.max_label_values = 3;
  auto metrics = NewMetrics(options);
  metrics->OnRequestDone("soundpiece", "https://api.example/v1/ops/op_123?sig=abc", "2xx",
                         absl::Milliseconds(1));
  metrics->OnRequestDone("soundpiece", "an endpoint with spaces", "2xx", absl::Milliseconds(1));
  for (int i = 0; i < 10; ++i) {
    metrics->OnRequestDone("soundpiece", absl::StrCat("soundpiece:route", i, ":get"), "2xx",
                           absl::Milliseconds(1));
  }
  metrics->OnRequestDone("mystery", "x:y", "7xx", absl::Milliseconds(1));
  const auto families = metrics->Collect();
  EXPECT_EQ(Value(families, "musicgw_upstream_requests_total",
                  {{"provider", "soundpiece"}, {"endpoint", "other"}}),
            9);  // the URL, the free text, and routes 3..9
  EXPECT_EQ(Value(families, "musicgw_upstream_requests_total",
                  {{"provider", "soundpiece"}, {"endpoint", "soundpiece:route2:get"}}),
            1);
  EXPECT_EQ(Value(families, "musicgw_upstream_requests_total",
                  {{"provider", "other"}, {"status_class", "other"}}),
            1);
  for (const std::string& series : testing::Series(families)) {
    EXPECT_FALSE(absl::StrContains(series, "https")) << series;
    EXPECT_FALSE(absl::StrContains(series, "op_123")) << series;
  }
  // Those nine, and "x:y" arriving after the cap was reached.
  EXPECT_EQ(
      Value(families, "musicgw_metrics_label_values_collapsed_total", {{"label", "endpoint"}}), 10);
}

// 1,000 operations by 100 tenants: after the first operation of each label set, no new series.
TEST(MetricsTest, ManyOperationsAndTenantsAddNoSeriesAfterTheFirstOfEachLabelSet) {
  auto metrics = NewMetrics();
  constexpr v1::TaskKind kTasks[] = {v1::TASK_KIND_SONG, v1::TASK_KIND_INSTRUMENTAL,
                                     v1::TASK_KIND_PARAMETRIC_MUSIC};
  auto run = [&](int op) {
    // The tenant and operation id never reach the observers (the interfaces carry none); this
    // drives the paths one operation by tenant (op % 100) takes.
    const v1::Provider provider = op % 2 == 0 ? v1::PROVIDER_SOUNDPIECE : v1::PROVIDER_LOUDLY;
    const v1::TaskKind task = kTasks[op % 3];
    const std::string endpoint =
        provider == v1::PROVIDER_SOUNDPIECE ? "soundpiece:song:put" : "loudly:ai.songs:post";
    const std::string http_provider = provider == v1::PROVIDER_SOUNDPIECE ? "soundpiece" : "loudly";
    metrics->OnRpcDone("Generate", 0, absl::Milliseconds(op % 50));
    metrics->OnStateChange(provider, task, v1::OPERATION_STATE_UNSPECIFIED,
                           v1::OPERATION_STATE_QUEUED);
    metrics->OnRequestDone(http_provider, endpoint, "2xx", absl::Milliseconds(op));
    metrics->OnStateChange(provider, task, v1::OPERATION_STATE_QUEUED, v1::OPERATION_STATE_RUNNING);
    metrics->OnStreamOpened("WatchOperation");
    metrics->OnStreamMessage("WatchOperation");
    const bool ok = op % 7 != 0;
    const v1::OperationState end = ok ? v1::OPERATION_STATE_SUCCEEDED : v1::OPERATION_STATE_FAILED;
    metrics->OnStateChange(provider, task, v1::OPERATION_STATE_RUNNING, end);
    metrics->OnCompleted(provider, task, end,
                         ok ? absl::StatusCode::kOk : absl::StatusCode::kUnavailable);
    if (ok) metrics->OnSucceededLatency(provider, task, absl::Seconds(op % 300));
    metrics->OnStreamClosed("WatchOperation");
    metrics->OnDownloadBytes(provider, 4096 + op);
    metrics->OnRpcDone("GetOperation", op % 10 == 0 ? 5 : 0, absl::Milliseconds(1));
  };
  // Every label set this workload produces appears within its first 42 operations
  // (lcm of the provider, task and failure cycles, plus the NOT_FOUND one).
  for (int op = 0; op < 42; ++op) run(op);
  const size_t after_first = testing::Series(metrics->Collect()).size();
  for (int op = 42; op < 1000; ++op) run(op);
  const size_t after_all = testing::Series(metrics->Collect()).size();
  EXPECT_EQ(after_all, after_first);
  EXPECT_LT(after_all, 100u);
  EXPECT_EQ(
      Get(*metrics, "musicgw_grpc_requests_total", {{"method", "Generate"}, {"grpc_code", "OK"}}),
      1000);
}

TEST(MetricsTest, PullTimeSourcesAreReadAtScrapeAndClearable) {
  absl::Time now = absl::FromUnixSeconds(1'800'000'000);
  MetricsOptions options;
  options.clock = [&now] { return now; };
  auto metrics = NewMetrics(options);

  operations::AccountQuota loudly;
  loudly.provider = v1::PROVIDER_LOUDLY;
  loudly.account = "loudly-main";
  loudly.read_time = now - absl::Seconds(30);
  adapters::QuotaFigure songs;
  songs.resource = "GENERATE_SONG_VEGA_1";
  songs.limit = 100;
  songs.used = 40;
  songs.remaining = 60;
  songs.reset_time = absl::FromUnixSeconds(1'800'003'600);
  loudly.figures.push_back(songs);
  adapters::QuotaFigure unknown;
  unknown.resource = "credits";  // limit/used/remaining not reported
  loudly.figures.push_back(unknown);
  operations::AccountQuota soundpiece;
  soundpiece.provider = v1::PROVIDER_SOUNDPIECE;
  soundpiece.account = "sp";
  soundpiece.last_error = "UNAVAILABLE: provider down";
  int quota_reads = 0;
  metrics->SetQuotaSource([&] {
    ++quota_reads;
    return std::vector<operations::AccountQuota>{loudly, soundpiece};
  });

  testing::ScriptedEngine engine;
  operations::ProviderState ls;
  ls.provider = v1::PROVIDER_LOUDLY;
  ls.account = "loudly-main";
  ls.health = v1::PROVIDER_HEALTH_HEALTHY;
  operations::ProviderState ss;
  ss.provider = v1::PROVIDER_SOUNDPIECE;
  ss.account = "sp";
  ss.health = v1::PROVIDER_HEALTH_UNAVAILABLE;
  ss.consecutive_failures = 3;
  ss.cooldown_until = now + absl::Seconds(20);
  ss.quota_exhausted = true;
  ss.quota_exhausted_until = now + absl::Seconds(60);
  engine.states = {ls, ss};
  engine.stats.live_operations = 7;
  engine.stats.open_watchers = 2;
  engine.stats.open_downloads = 1;
  engine.stats.background_queued = 6;
  metrics->SetEngine(&engine);
  int64_t accepts_queued = 3;
  metrics->SetAcceptQueueSource([&] { return accepts_queued; });

  int64_t refreshes = 4;
  metrics->AddTokenRefreshSource(v1::PROVIDER_LOUDLY, "loudly-main", [&] { return refreshes; });
  adapters::WebhookCounters webhooks;
  webhooks.verified = 10;
  webhooks.bad_signature = 2;
  webhooks.duplicate = 1;
  metrics->AddWebhookSource(v1::PROVIDER_SOUNDPIECE, "soundpiece-main", [&] { return webhooks; });

  EXPECT_EQ(quota_reads, 0);  // nothing is read before a scrape
  auto families = metrics->Collect();
  EXPECT_EQ(quota_reads, 1);
  const LabelMap vega = {
      {"provider", "loudly"}, {"account", "loudly-main"}, {"resource", "GENERATE_SONG_VEGA_1"}};
  EXPECT_EQ(Value(families, "musicgw_provider_quota_limit", vega), 100);
  EXPECT_EQ(Value(families, "musicgw_provider_quota_used", vega), 40);
  EXPECT_EQ(Value(families, "musicgw_provider_quota_remaining", vega), 60);
  EXPECT_EQ(Value(families, "musicgw_provider_quota_reset_timestamp_seconds", vega), 1'800'003'600);
  EXPECT_FALSE(Value(families, "musicgw_provider_quota_limit", {{"resource", "credits"}}));
  EXPECT_EQ(Value(families, "musicgw_provider_quota_read_age_seconds", {{"provider", "loudly"}}),
            30);
  EXPECT_EQ(
      Value(families, "musicgw_provider_quota_read_age_seconds", {{"provider", "soundpiece"}}),
      std::numeric_limits<double>::infinity());
  EXPECT_EQ(Value(families, "musicgw_provider_quota_read_failing", {{"provider", "soundpiece"}}),
            1);
  EXPECT_EQ(Value(families, "musicgw_provider_quota_read_failing", {{"provider", "loudly"}}), 0);

  EXPECT_EQ(
      Value(families, "musicgw_provider_health", {{"provider", "loudly"}, {"health", "healthy"}}),
      1);
  EXPECT_EQ(Value(families, "musicgw_provider_health",
                  {{"provider", "soundpiece"}, {"health", "unavailable"}}),
            1);
  EXPECT_EQ(Value(families, "musicgw_provider_health",
                  {{"provider", "soundpiece"}, {"health", "healthy"}}),
            0);
  EXPECT_EQ(Value(families, "musicgw_provider_consecutive_failures", {{"provider", "soundpiece"}}),
            3);
  EXPECT_EQ(Value(families, "musicgw_provider_cooldown_active", {{"provider", "soundpiece"}}), 1);
  EXPECT_EQ(Value(families, "musicgw_provider_cooldown_active", {{"provider", "loudly"}}), 0);
  EXPECT_EQ(Value(families, "musicgw_provider_cooldown_until_timestamp_seconds",
                  {{"provider", "soundpiece"}}),
            1'800'000'020);
  EXPECT_EQ(Value(families, "musicgw_provider_quota_exhausted", {{"provider", "soundpiece"}}), 1);
  EXPECT_EQ(Value(families, "musicgw_provider_quota_exhausted_until_timestamp_seconds",
                  {{"provider", "soundpiece"}}),
            1'800'000'060);
  EXPECT_EQ(Value(families, "musicgw_engine_live_operations", {}), 7);
  EXPECT_EQ(Value(families, "musicgw_engine_open_watchers", {}), 2);
  EXPECT_EQ(Value(families, "musicgw_engine_open_downloads", {}), 1);
  EXPECT_EQ(Value(families, "musicgw_queued_tasks", {{"pool", "background"}}), 6);
  EXPECT_EQ(Value(families, "musicgw_queued_tasks", {{"pool", "accept"}}), 3);
  // Live gauges exist at zero for every configured provider.
  EXPECT_EQ(
      Value(families, "musicgw_operations_live", {{"provider", "loudly"}, {"state", "queued"}}), 0);
  EXPECT_EQ(Value(families, "musicgw_upstream_token_refreshes_total",
                  {{"provider", "loudly"}, {"account", "loudly-main"}}),
            4);
  EXPECT_EQ(Value(families, "musicgw_webhooks_received_total",
                  {{"provider", "soundpiece"}, {"outcome", "verified"}}),
            10);
  EXPECT_EQ(Value(families, "musicgw_webhooks_received_total",
                  {{"provider", "soundpiece"}, {"outcome", "bad_signature"}}),
            2);
  EXPECT_EQ(Value(families, "musicgw_webhooks_received_total",
                  {{"provider", "soundpiece"}, {"outcome", "stale"}}),
            0);

  // Values move with their sources.
  songs.used = 41;
  songs.remaining = 59;
  loudly.figures[0] = songs;
  now += absl::Seconds(15);
  refreshes = 5;
  accepts_queued = 0;
  families = metrics->Collect();
  EXPECT_EQ(Value(families, "musicgw_queued_tasks", {{"pool", "accept"}}), 0);
  EXPECT_EQ(Value(families, "musicgw_provider_quota_remaining", vega), 59);
  EXPECT_EQ(Value(families, "musicgw_provider_quota_read_age_seconds", {{"provider", "loudly"}}),
            45);
  EXPECT_EQ(Value(families, "musicgw_upstream_token_refreshes_total", {{"provider", "loudly"}}), 5);

  metrics->ClearSources();
  families = metrics->Collect();
  EXPECT_FALSE(Value(families, "musicgw_provider_quota_remaining", vega));
  EXPECT_FALSE(Value(families, "musicgw_engine_live_operations", {}));
  EXPECT_FALSE(Value(families, "musicgw_queued_tasks", {{"pool", "accept"}}));
  EXPECT_FALSE(Value(families, "musicgw_webhooks_received_total", {}));
}

TEST(MetricsTest, EveryFamilyHasTheProjectPrefixAndHelp) {
  auto metrics = NewMetrics();
  metrics->OnRpcDone("Generate", 0, absl::Milliseconds(1));
  for (const auto& family : metrics->Collect()) {
    EXPECT_TRUE(absl::StartsWith(family.name, "musicgw_")) << family.name;
    EXPECT_FALSE(family.help.empty()) << family.name;
    if (family.type == prometheus::MetricType::Counter) {
      EXPECT_TRUE(absl::EndsWith(family.name, "_total")) << family.name;
    }
  }
}

TEST(MetricsTest, FanOutCallsEveryObserver) {
  auto a = NewMetrics();
  auto b = NewMetrics();
  EngineObserverFanOut fan_out({a.get(), nullptr, b.get()});
  fan_out.OnStateChange(v1::PROVIDER_LOUDLY, v1::TASK_KIND_SONG, v1::OPERATION_STATE_UNSPECIFIED,
                        v1::OPERATION_STATE_QUEUED);
  fan_out.OnCompleted(v1::PROVIDER_LOUDLY, v1::TASK_KIND_SONG, v1::OPERATION_STATE_CANCELLED,
                      absl::StatusCode::kCancelled);
  fan_out.OnSucceededLatency(v1::PROVIDER_LOUDLY, v1::TASK_KIND_SONG, absl::Seconds(1));
  fan_out.OnDownloadBytes(v1::PROVIDER_LOUDLY, 10);
  fan_out.OnFallback(v1::PROVIDER_LOUDLY, v1::PROVIDER_SOUNDPIECE);
  for (const auto* m : {a.get(), b.get()}) {
    EXPECT_EQ(Get(*m, "musicgw_operations_created_total", {{"provider", "loudly"}}), 1);
    EXPECT_EQ(Get(*m, "musicgw_operations_completed_total", {{"outcome", "cancelled"}}), 1);
    EXPECT_EQ(Get(*m, "musicgw_operation_time_to_success_seconds", {{"provider", "loudly"}}), 1);
    EXPECT_EQ(Get(*m, "musicgw_download_bytes_total", {{"provider", "loudly"}}), 10);
    EXPECT_EQ(Get(*m, "musicgw_routing_fallbacks_total", {{"provider", "loudly"}}), 1);
  }
}

// --- the exposer over HTTP ---

TEST(MetricsExposerTest, ServesTheScrapeOverHttpAndPromtoolAcceptsIt) {
  auto metrics = NewMetrics();
  testing::ScriptedEngine engine;
  testing::Populate(*metrics, engine);
  EXPECT_EQ(metrics->port(), 0);
  ASSERT_TRUE(metrics->StartExposer("127.0.0.1:0").ok());
  ASSERT_GT(metrics->port(), 0);
  EXPECT_EQ(metrics->StartExposer("127.0.0.1:0").code(), absl::StatusCode::kFailedPrecondition);

  absl::StatusOr<std::string> body = testing::FetchMetrics(metrics->port());
  ASSERT_TRUE(body.ok()) << body.status();
  for (
      const char* expected :
      {"# TYPE musicgw_grpc_requests_total counter",
       "musicgw_grpc_requests_total{grpc_code=\"OK\",method=\"Generate\"} 1",
       "# TYPE musicgw_grpc_request_duration_seconds histogram",
       R"(musicgw_provider_quota_remaining{provider="soundpiece",account="sp-main",resource="credits"} 1)",
       R"(musicgw_webhooks_received_total{provider="soundpiece",account="sp-main",outcome="verified"} 5)",
       "musicgw_upstream_token_refreshes_total{provider=\"loudly\",account=\"loudly-web\"} 3"}) {
    EXPECT_TRUE(absl::StrContains(*body, expected)) << expected << "\n" << *body;
  }

  // A missing promtool fails the test: scripts/install-deps.sh installs it.
  ASSERT_EQ(access(testing::kPromtool, X_OK), 0)
      << "promtool not installed (Debian package prometheus)";
  const auto [rc, output] = testing::PromtoolCheckMetrics(*body);
  EXPECT_EQ(rc, 0) << output << "\n--- scrape ---\n" << *body;
  EXPECT_EQ(output, "") << "promtool lint findings";
  metrics->StopExposer();
  EXPECT_EQ(metrics->port(), 0);
  EXPECT_FALSE(testing::FetchMetrics(0).ok());
}

TEST(MetricsExposerTest, PortInUseIsUnavailable) {
  auto first = NewMetrics();
  ASSERT_TRUE(first->StartExposer("127.0.0.1:0").ok());
  auto second = NewMetrics();
  const absl::Status status = second->StartExposer(absl::StrCat("127.0.0.1:", first->port()));
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
}

TEST(MetricsExposerTest, ScrapesWhileSourcesAreClearedAndEventsArrive) {
  auto metrics = NewMetrics();
  testing::ScriptedEngine engine;
  testing::Populate(*metrics, engine);
  ASSERT_TRUE(metrics->StartExposer("127.0.0.1:0").ok());
  std::thread events([&] {
    for (int i = 0; i < 2000; ++i) {
      metrics->OnRequestDone("loudly", "loudly:ai.songs:post", "2xx", absl::Milliseconds(i));
      metrics->OnStateChange(v1::PROVIDER_LOUDLY, v1::TASK_KIND_SONG,
                             v1::OPERATION_STATE_UNSPECIFIED, v1::OPERATION_STATE_QUEUED);
    }
    metrics->ClearSources();
  });
  for (int i = 0; i < 5; ++i) EXPECT_TRUE(testing::FetchMetrics(metrics->port()).ok());
  events.join();
  EXPECT_EQ(Get(*metrics, "musicgw_operations_created_total", {{"provider", "loudly"}}), 2000);
}

}  // namespace
}  // namespace musicgw::metrics
