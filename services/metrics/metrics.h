// File: metrics.h
// Prometheus metrics for the gateway: one prometheus::Registry with every family registered at
// construction, observer hooks the gRPC layer, the engine and the HTTP client call on their hot
// paths, and a pull-time collector that reads quota, provider health, engine counts, token
// refreshes and webhook outcomes when /metrics is scraped. Served by prometheus-cpp's Exposer on
// its own port.
//
// Label values are bounded: providers, tasks, states and codes are enums; methods, HTTP outcomes
// and retry reasons are fixed sets; endpoints, resources, accounts and caller-chosen retry
// reasons are accepted until a per-label cap and collapse to "other" beyond it (counted in
// musicgw_metrics_label_values_collapsed_total). Never ids, tenants or URLs.
//
// Thread-safe. Observer methods never block on I/O.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "adapters/http/observer.h"
#include "adapters/provider.h"
#include "common/config.h"
#include "prometheus/metric_family.h"
#include "services/gateway/gateway_service.h"
#include "services/operations/engine.h"
#include "services/operations/quota_monitor.h"

namespace musicgw::metrics {

struct MetricsOptions {
  // Clock for pull-time ages (quota read age); tests pin it.
  std::function<absl::Time()> clock = [] { return absl::Now(); };
  // Distinct values accepted per open-ended label (endpoint, resource, account, retry reason)
  // before new values collapse to "other".
  int max_label_values = 64;
};

class Metrics final : public gateway::RpcObserver,
                      public operations::EngineObserver,
                      public http::HttpObserver {
 public:
  // Registers every family. prometheus-cpp throws on invalid names; that is caught here and
  // returned as INTERNAL.
  static absl::StatusOr<std::unique_ptr<Metrics>> Create(MetricsOptions options = {});
  ~Metrics() override;
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  // Pull-time sources, read on every scrape. Each must stay valid until ClearSources() returns
  // or the Metrics object is destroyed (call ClearSources() before tearing the sources down).
  // The quota gauges read the same snapshot GetQuota reports, e.g.
  //   SetQuotaSource([monitor] { return monitor->Snapshot(); }).
  void SetQuotaSource(std::function<std::vector<operations::AccountQuota>()> snapshot);
  // ProviderStates() (health, cooldown, quota exhaustion) and Stats().
  void SetEngine(const operations::OperationsEngine* engine);
  // A monotonic count of completed credential refreshes of one account
  // (ProviderAdapter::credential_refreshes()).
  void AddTokenRefreshSource(musicgw::v1::Provider provider, std::string account,
                             std::function<int64_t()> refreshes);
  // Monotonic webhook outcome counters of one account (WebhookHandler::counters()).
  void AddWebhookSource(musicgw::v1::Provider provider, std::string account,
                        std::function<adapters::WebhookCounters()> counters);
  // Generate's durable accepts waiting for a worker of the accept pool (Executor::Queued()).
  void SetAcceptQueueSource(std::function<int64_t()> queued);
  // Forgets every source; waits for a scrape in progress to finish with them.
  void ClearSources();

  // Serves /metrics on `listen_address` ("0.0.0.0:9464", "127.0.0.1:0" for any free port),
  // over TLS when `tls` is enabled (its files reloaded when they change).
  // UNAVAILABLE when it cannot bind; INVALID_ARGUMENT for unusable TLS files;
  // FAILED_PRECONDITION when already started.
  absl::Status StartExposer(const std::string& listen_address,
                            const config::TlsConfig& tls = config::TlsConfig());
  // Stops serving (idempotent); the destructor does it too.
  void StopExposer();
  // The bound port, 0 before StartExposer.
  int port() const;

  // Everything a scrape would return (registry families and pull-time families), and the same
  // in the text format. For tests and debugging.
  std::vector<prometheus::MetricFamily> Collect() const;
  std::string Scrape() const;

  // gateway::RpcObserver
  void OnRpcDone(absl::string_view method, int grpc_code, absl::Duration latency) override;
  void OnStreamOpened(absl::string_view method) override;
  void OnStreamClosed(absl::string_view method) override;
  void OnStreamMessage(absl::string_view method) override;

  // operations::EngineObserver
  void OnStateChange(musicgw::v1::Provider provider, musicgw::v1::TaskKind task,
                     musicgw::v1::OperationState from, musicgw::v1::OperationState to) override;
  void OnCompleted(musicgw::v1::Provider provider, musicgw::v1::TaskKind task,
                   musicgw::v1::OperationState outcome, absl::StatusCode code) override;
  void OnSucceededLatency(musicgw::v1::Provider provider, musicgw::v1::TaskKind task,
                          absl::Duration latency) override;
  void OnDownloadBytes(musicgw::v1::Provider provider, int64_t bytes) override;
  void OnFallback(musicgw::v1::Provider from, musicgw::v1::Provider to) override;
  void OnCustodyFetch(absl::string_view outcome) override;

  // One outgoing webhook attempt (outcome from the deliverer's bounded set); `gave_up`: its
  // retries ran out.
  void OnWebhookDelivery(absl::string_view outcome, bool gave_up);

  // http::HttpObserver
  void OnRequestDone(absl::string_view provider, absl::string_view endpoint,
                     absl::string_view outcome, absl::Duration latency) override;
  void OnRetry(absl::string_view provider, absl::string_view endpoint, absl::string_view reason,
               absl::Duration delay) override;
  void OnRetryAbandoned(absl::string_view provider, absl::string_view endpoint,
                        absl::string_view reason, absl::string_view why) override;

  class Impl;  // public only so the .cc file can name it

 private:
  explicit Metrics(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Calls each observer in order; the server combines Metrics with its quota refresh observer.
// Observers are not owned and must outlive the fan-out.
class EngineObserverFanOut final : public operations::EngineObserver {
 public:
  explicit EngineObserverFanOut(std::vector<operations::EngineObserver*> observers);

  void OnStateChange(musicgw::v1::Provider provider, musicgw::v1::TaskKind task,
                     musicgw::v1::OperationState from, musicgw::v1::OperationState to) override;
  void OnCompleted(musicgw::v1::Provider provider, musicgw::v1::TaskKind task,
                   musicgw::v1::OperationState outcome, absl::StatusCode code) override;
  void OnSucceededLatency(musicgw::v1::Provider provider, musicgw::v1::TaskKind task,
                          absl::Duration latency) override;
  void OnDownloadBytes(musicgw::v1::Provider provider, int64_t bytes) override;
  void OnFallback(musicgw::v1::Provider from, musicgw::v1::Provider to) override;
  void OnCustodyFetch(absl::string_view outcome) override;
  void OnLateChange(musicgw::v1::Provider provider, musicgw::v1::TaskKind task) override;
  void OnOutboxWritten() override;

 private:
  std::vector<operations::EngineObserver*> observers_;
};

}  // namespace musicgw::metrics
