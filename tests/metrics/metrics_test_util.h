// Helpers for the metrics tests: reading series out of Collect(), a scripted engine for the
// pull-time sources, and running promtool.
#pragma once

#include <curl/curl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "prometheus/metric_family.h"
#include "services/metrics/metrics.h"
#include "services/operations/engine.h"

namespace musicgw::metrics::testing {

using LabelMap = std::map<std::string, std::string>;

inline LabelMap Labels(const prometheus::ClientMetric& metric) {
  LabelMap labels;
  for (const auto& label : metric.label) labels[label.name] = label.value;
  return labels;
}

// The value of the series `name` whose labels include `want` (counter/gauge value, or the
// histogram's sample count); nullopt when absent.
inline std::optional<double> Value(const std::vector<prometheus::MetricFamily>& families,
                                   const std::string& name, const LabelMap& want) {
  for (const auto& family : families) {
    if (family.name != name) continue;
    for (const auto& metric : family.metric) {
      const LabelMap labels = Labels(metric);
      bool match = true;
      for (const auto& [key, value] : want) {
        auto it = labels.find(key);
        if (it == labels.end() || it->second != value) match = false;
      }
      if (!match) continue;
      switch (family.type) {
        case prometheus::MetricType::Counter:
          return metric.counter.value;
        case prometheus::MetricType::Gauge:
          return metric.gauge.value;
        case prometheus::MetricType::Histogram:
          return static_cast<double>(metric.histogram.sample_count);
        default:
          return metric.untyped.value;
      }
    }
  }
  return std::nullopt;
}

// Every series as "name{k=v,...}".
inline std::set<std::string> Series(const std::vector<prometheus::MetricFamily>& families) {
  std::set<std::string> series;
  for (const auto& family : families) {
    for (const auto& metric : family.metric) {
      std::string key = family.name + "{";
      for (const auto& [name, value] : Labels(metric)) key += name + "=" + value + ",";
      series.insert(key + "}");
    }
  }
  return series;
}

// An engine that only answers the metrics collector's questions.
class ScriptedEngine final : public operations::OperationsEngine {
 public:
  std::vector<operations::ProviderState> states;
  operations::EngineStats stats;

  absl::Status Start() override { return absl::OkStatus(); }
  void Shutdown() override {}
  absl::StatusOr<musicgw::v1::Operation> Generate(const std::string&,
                                                  const musicgw::v1::GenerateRequest&) override {
    return absl::UnimplementedError("scripted");
  }
  absl::StatusOr<musicgw::v1::Operation> Get(const std::string&, absl::string_view) override {
    return absl::UnimplementedError("scripted");
  }
  absl::StatusOr<musicgw::v1::ListOperationsResponse> List(
      const std::string&, const musicgw::v1::ListOperationsRequest&) override {
    return absl::UnimplementedError("scripted");
  }
  void Cancel(const std::string&, absl::string_view, absl::string_view,
              absl::AnyInvocable<void(absl::StatusOr<musicgw::v1::Operation>) &&> done) override {
    std::move(done)(absl::UnimplementedError("scripted"));
  }
  void Wait(const std::string&, absl::string_view, absl::Duration,
            absl::AnyInvocable<void(absl::StatusOr<musicgw::v1::Operation>) &&> done) override {
    std::move(done)(absl::UnimplementedError("scripted"));
  }
  absl::StatusOr<std::unique_ptr<operations::EventStream<musicgw::v1::OperationEvent>>> Watch(
      const std::string&, absl::string_view, int64_t) override {
    return absl::UnimplementedError("scripted");
  }
  absl::StatusOr<std::unique_ptr<operations::EventStream<musicgw::v1::DownloadChunk>>> Download(
      const std::string&, absl::string_view, int64_t) override {
    return absl::UnimplementedError("scripted");
  }
  void OnProviderUpdate(musicgw::v1::Provider, const adapters::UpstreamStatus&) override {}
  absl::StatusOr<std::map<musicgw::v1::TaskKind, int64_t>> ChargedOperations(musicgw::v1::Provider,
                                                                             const std::string&,
                                                                             absl::Time) override {
    return absl::UnimplementedError("scripted");
  }
  void UpdateQuota(const adapters::ProviderAdapter*,
                   const std::vector<adapters::QuotaFigure>&) override {}
  std::vector<operations::ProviderState> ProviderStates() const override { return states; }
  operations::EngineStats Stats() const override { return stats; }
  absl::StatusOr<operations::BudgetUsage> ReadBudget(const std::string&, musicgw::v1::TaskKind,
                                                     absl::Time) override {
    return absl::UnimplementedError("scripted");
  }
};

inline size_t AppendBody(char* data, size_t size, size_t count, void* out) {
  static_cast<std::string*>(out)->append(data, size * count);
  return size * count;
}

// GET http://127.0.0.1:<port>/metrics: the body, or an error.
inline absl::StatusOr<std::string> FetchMetrics(int port) {
  CURL* curl = curl_easy_init();
  if (curl == nullptr) return absl::InternalError("curl_easy_init");
  std::string body;
  const std::string url = "http://127.0.0.1:" + std::to_string(port) + "/metrics";
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, &AppendBody);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &body);
  curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, 10000L);
  const CURLcode code = curl_easy_perform(curl);
  long status = 0;
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
  curl_easy_cleanup(curl);
  if (code != CURLE_OK) return absl::UnavailableError(curl_easy_strerror(code));
  if (status != 200) return absl::UnavailableError("HTTP " + std::to_string(status));
  return body;
}

inline constexpr char kPromtool[] = "/usr/bin/promtool";

// Runs a shell command; returns its exit code and combined output.
inline std::pair<int, std::string> Run(const std::string& command) {
  std::string output;
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  if (pipe == nullptr) return {-1, "popen failed"};
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) output.append(buffer, n);
  const int status = pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, output};
}

// Runs `promtool check metrics` on `text`: exit code and findings.
inline std::pair<int, std::string> PromtoolCheckMetrics(const std::string& text) {
  const std::string path =
      ::testing::TempDir() + "/musicgw-metrics-scrape-" + std::to_string(getpid()) + ".txt";
  std::ofstream(path) << text;
  auto result = Run(std::string(kPromtool) + " check metrics < " + path);
  std::remove(path.c_str());
  return result;
}

// Drives every family so the scrape has each kind of series in it.
inline void Populate(Metrics& metrics, ScriptedEngine& engine) {
  metrics.OnRpcDone("Generate", 0, absl::Milliseconds(3));
  metrics.OnRpcDone("GetQuota", 16, absl::Milliseconds(1));
  metrics.OnStreamOpened("Download");
  metrics.OnStreamMessage("Download");
  metrics.OnStateChange(v1::PROVIDER_SOUNDPIECE, v1::TASK_KIND_SONG,
                        v1::OPERATION_STATE_UNSPECIFIED, v1::OPERATION_STATE_QUEUED);
  metrics.OnCompleted(v1::PROVIDER_LOUDLY, v1::TASK_KIND_TEXT_TO_MUSIC, v1::OPERATION_STATE_FAILED,
                      absl::StatusCode::kResourceExhausted);
  metrics.OnSucceededLatency(v1::PROVIDER_SOUNDPIECE, v1::TASK_KIND_SONG, absl::Seconds(33));
  metrics.OnDownloadBytes(v1::PROVIDER_SOUNDPIECE, 123456);
  metrics.OnFallback(v1::PROVIDER_LOUDLY, v1::PROVIDER_SOUNDPIECE);
  metrics.OnRequestDone("soundpiece", "soundpiece:song:put", "2xx", absl::Milliseconds(40));
  metrics.OnRetry("soundpiece", "soundpiece:song:put", "http_429", absl::Seconds(1));
  metrics.OnRetryAbandoned("soundpiece", "soundpiece:song:put", "http_429", "attempts");

  operations::ProviderState state;
  state.provider = v1::PROVIDER_SOUNDPIECE;
  state.account = "sp-main";
  state.health = v1::PROVIDER_HEALTH_DEGRADED;
  state.cooldown_until = absl::Now() + absl::Minutes(1);
  state.quota_exhausted = true;
  state.quota_exhausted_until = absl::Now() + absl::Minutes(1);
  engine.states = {state};
  metrics.SetEngine(&engine);
  metrics.SetQuotaSource([] {
    operations::AccountQuota account;
    account.provider = v1::PROVIDER_SOUNDPIECE;
    account.account = "sp-main";
    account.read_time = absl::Now();
    adapters::QuotaFigure figure;
    figure.resource = "credits";
    figure.limit = 500;
    figure.used = 499;
    figure.remaining = 1;
    figure.reset_time = absl::Now() + absl::Hours(1);
    account.figures.push_back(figure);
    return std::vector<operations::AccountQuota>{account};
  });
  metrics.AddTokenRefreshSource(v1::PROVIDER_LOUDLY, "loudly-web", [] { return int64_t{3}; });
  metrics.AddWebhookSource(v1::PROVIDER_SOUNDPIECE, "sp-main", [] {
    adapters::WebhookCounters counters;
    counters.verified = 5;
    counters.stale = 1;
    return counters;
  });
}

}  // namespace musicgw::metrics::testing
