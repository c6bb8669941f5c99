#include "services/metrics/metrics.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <exception>
#include <initializer_list>
#include <limits>
#include <map>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "common/tls_http_server.h"
#include "prometheus/collectable.h"
#include "prometheus/counter.h"
#include "prometheus/exposer.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "prometheus/text_serializer.h"
#include "services/metrics/metric_families.h"

namespace musicgw::metrics {
namespace {

namespace v1 = ::musicgw::v1;
using prometheus::Counter;
using prometheus::Gauge;
using prometheus::Histogram;

constexpr std::array<absl::string_view, 12> kMethods = {
    "Generate",      "GetOperation",          "ListOperations",   "WatchOperation",
    "WaitOperation", "CancelOperation",       "Download",         "GetQuota",
    "ListProviders", "ListWebhookDeliveries", "RedeliverWebhook", "SendTestWebhook"};
constexpr std::array<absl::string_view, 9> kHttpOutcomes = {
    "1xx", "2xx", "3xx", "4xx", "5xx", "timeout", "unavailable", "cancelled", "error"};
constexpr std::array<absl::string_view, 4> kCustodyOutcomes = {"stored", "upstream_error",
                                                               "timeout", "store_error"};
// The webhook deliverer's attempt outcomes (services/notify/webhook_deliverer.h).
constexpr std::array<absl::string_view, 9> kWebhookOutcomes = {
    "delivered",      "http_error", "redirect",  "timeout", "connect",
    "refused_target", "bad_target", "no_secret", "other"};
constexpr std::array<absl::string_view, 3> kAbandonReasons = {"attempts", "deadline", "budget"};
constexpr std::array<absl::string_view, 2> kProviders = {"loudly", "soundpiece"};
// Labels whose collapses are counted (pre-created so the counter exists at zero).
constexpr std::array<absl::string_view, 9> kCollapsible = {"provider", "method",       "grpc_code",
                                                           "endpoint", "status_class", "reason",
                                                           "resource", "account",      "task"};

// Sub-millisecond unary calls up to long-lived streams.
const Histogram::BucketBoundaries kRpcBuckets = {
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800};
// Provider HTTP calls: quick reads up to Loudly B2B's blocking generation.
const Histogram::BucketBoundaries kUpstreamBuckets = {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                                      2.5,  5,     10,   30,  60,   120, 300};
// Generate -> SUCCEEDED: seconds to the 15-minute operation deadline and beyond.
const Histogram::BucketBoundaries kSuccessBuckets = {1,  2,   5,   10,  20,  30,  45,  60,
                                                     90, 120, 180, 300, 450, 600, 900, 1800};

using internal::BoundedValues;
using internal::Children;
using internal::CodeLabel;
using internal::kOther;
using internal::OneOf;
using internal::ProviderLabel;
using internal::PullFamily;
using internal::Register;
using internal::Seconds;
using internal::StateLabel;
using internal::TaskLabel;
using prometheus::MetricType;

}  // namespace

class Metrics::Impl {
 public:
  explicit Impl(MetricsOptions options)
      : options_(std::move(options)),
        registry_(std::make_shared<prometheus::Registry>()),
        collapsed_family_(Register(prometheus::BuildCounter(),
                                   "musicgw_metrics_label_values_collapsed_total",
                                   "Label values replaced by \"other\" to keep series bounded, by "
                                   "label name.",
                                   *registry_)),
        grpc_requests_(Register(prometheus::BuildCounter(), "musicgw_grpc_requests_total",
                                "Finished gRPC calls by method and status code.", *registry_),
                       {"method", "grpc_code"}),
        grpc_latency_(
            Register(prometheus::BuildHistogram(), "musicgw_grpc_request_duration_seconds",
                     "gRPC call duration from start to status, streams included.", *registry_),
            {"method"}, kRpcBuckets),
        grpc_open_streams_(Register(prometheus::BuildGauge(), "musicgw_grpc_open_streams",
                                    "Server streams open now, by method.", *registry_),
                           {"method"}),
        grpc_stream_messages_(
            Register(prometheus::BuildCounter(), "musicgw_grpc_stream_messages_sent_total",
                     "Messages written on server streams, by method.", *registry_),
            {"method"}),
        upstream_requests_(
            Register(prometheus::BuildCounter(), "musicgw_upstream_requests_total",
                     "Provider HTTP attempts (retries included) by provider, endpoint and status "
                     "class (1xx..5xx, or timeout/unavailable/cancelled/error).",
                     *registry_),
            {"provider", "endpoint", "status_class"}),
        upstream_latency_(
            Register(prometheus::BuildHistogram(), "musicgw_upstream_request_duration_seconds",
                     "Provider HTTP attempt duration, to the end of the body.", *registry_),
            {"provider", "endpoint"}, kUpstreamBuckets),
        upstream_retries_(Register(prometheus::BuildCounter(), "musicgw_upstream_retries_total",
                                   "Provider HTTP retries scheduled, by reason.", *registry_),
                          {"provider", "endpoint", "reason"}),
        upstream_retry_delay_(
            Register(prometheus::BuildCounter(), "musicgw_upstream_retry_delay_seconds_total",
                     "Backoff waited before provider HTTP retries.", *registry_),
            {"provider", "endpoint"}),
        upstream_abandoned_(
            Register(prometheus::BuildCounter(), "musicgw_upstream_retries_abandoned_total",
                     "Retries given up, by reason (attempts, deadline, budget).", *registry_),
            {"provider", "endpoint", "reason"}),
        ops_created_(Register(prometheus::BuildCounter(), "musicgw_operations_created_total",
                              "Operations stored by Generate, by provider and task.", *registry_),
                     {"provider", "task"}),
        ops_completed_(
            Register(prometheus::BuildCounter(), "musicgw_operations_completed_total",
                     "Operations that became done, by provider, task, outcome (succeeded, "
                     "failed, cancelled) and status code.",
                     *registry_),
            {"provider", "task", "outcome", "grpc_code"}),
        ops_success_latency_(
            Register(prometheus::BuildHistogram(), "musicgw_operation_time_to_success_seconds",
                     "Time from Generate to SUCCEEDED, by provider and task.", *registry_),
            {"provider", "task"}, kSuccessBuckets),
        download_bytes_(Register(prometheus::BuildCounter(), "musicgw_download_bytes_total",
                                 "Asset bytes streamed from providers to clients.", *registry_),
                        {"provider"}),
        fallbacks_(Register(prometheus::BuildCounter(), "musicgw_routing_fallbacks_total",
                            "Submissions routed to fallback_provider after provider rejected "
                            "them.",
                            *registry_),
                   {"provider", "fallback_provider"}),
        custody_fetches_(Register(prometheus::BuildCounter(), "musicgw_custody_fetches_total",
                                  "Asset custody fetches from providers, by outcome.", *registry_),
                         {"outcome"}),
        webhook_deliveries_(
            Register(prometheus::BuildCounter(), "musicgw_webhook_deliveries_total",
                     "Outgoing webhook delivery attempts, by outcome (delivered, http_error, "
                     "redirect, timeout, connect, refused_target, bad_target, no_secret, other).",
                     *registry_),
            {"outcome"}),
        webhook_gave_up_(&Register(prometheus::BuildCounter(),
                                   "musicgw_webhook_deliveries_failed_total",
                                   "Outgoing webhook deliveries whose retries ran out.", *registry_)
                              .Add({})) {
    for (absl::string_view outcome : kCustodyOutcomes) {
      custody_fetches_.Get({std::string(outcome)});
    }
    for (absl::string_view outcome : kWebhookOutcomes) {
      webhook_deliveries_.Get({std::string(outcome)});
    }
    for (absl::string_view label : kCollapsible) {
      collapsed_[label] = &collapsed_family_.Add({{"label", std::string(label)}});
    }
    const size_t cap = static_cast<size_t>(std::max(1, options_.max_label_values));
    endpoints_ = std::make_unique<BoundedValues>(cap, collapsed_["endpoint"]);
    reasons_ = std::make_unique<BoundedValues>(cap, collapsed_["reason"]);
    resources_ = std::make_unique<BoundedValues>(cap, collapsed_["resource"]);
    accounts_ = std::make_unique<BoundedValues>(cap, collapsed_["account"]);
    collector_ = std::make_shared<Collector>(this);
  }

  ~Impl() { StopExposer(); }

  // --- label normalization ---
  std::string Method(absl::string_view method) {
    method = absl::StripPrefix(method, "/musicgw.v1.MusicGateway/");
    return Fixed(method, kMethods, "method");
  }
  std::string HttpProvider(absl::string_view provider) {
    return Fixed(provider, kProviders, "provider");
  }
  std::string Provider(v1::Provider provider) {
    std::string label = ProviderLabel(provider);
    if (label == kOther) Collapsed("provider");
    return label;
  }
  std::string Task(v1::TaskKind task) {
    std::string label = TaskLabel(task);
    if (label == kOther) Collapsed("task");
    return label;
  }
  std::string Code(int code) {
    std::string label = CodeLabel(code);
    if (label == kOther) Collapsed("grpc_code");
    return label;
  }
  template <size_t N>
  std::string Fixed(absl::string_view value, const std::array<absl::string_view, N>& set,
                    absl::string_view label) {
    if (OneOf(value, set)) return std::string(value);
    Collapsed(label);
    return kOther;
  }
  void Collapsed(absl::string_view label) {
    auto it = collapsed_.find(label);
    if (it != collapsed_.end()) it->second->Increment();
  }

  // --- observers ---
  void OnRpcDone(absl::string_view method, int code, absl::Duration latency) {
    const std::string m = Method(method);
    grpc_requests_.Get({m, Code(code)}).Increment();
    grpc_latency_.Get({m}).Observe(absl::ToDoubleSeconds(latency));
  }
  void OnStreamOpened(absl::string_view method) {
    grpc_open_streams_.Get({Method(method)}).Increment();
  }
  void OnStreamClosed(absl::string_view method) {
    grpc_open_streams_.Get({Method(method)}).Decrement();
  }
  void OnStreamMessage(absl::string_view method) {
    grpc_stream_messages_.Get({Method(method)}).Increment();
  }

  void OnStateChange(v1::Provider provider, v1::TaskKind task, v1::OperationState from,
                     v1::OperationState to) {
    const std::string p = Provider(provider);
    if (from == v1::OPERATION_STATE_UNSPECIFIED) ops_created_.Get({p, Task(task)}).Increment();
  }
  void OnCompleted(v1::Provider provider, v1::TaskKind task, v1::OperationState outcome,
                   absl::StatusCode code) {
    ops_completed_
        .Get({Provider(provider), Task(task), StateLabel(outcome), Code(static_cast<int>(code))})
        .Increment();
  }
  void OnSucceededLatency(v1::Provider provider, v1::TaskKind task, absl::Duration latency) {
    ops_success_latency_.Get({Provider(provider), Task(task)})
        .Observe(absl::ToDoubleSeconds(latency));
  }
  void OnDownloadBytes(v1::Provider provider, int64_t bytes) {
    if (bytes <= 0) return;
    download_bytes_.Get({Provider(provider)}).Increment(static_cast<double>(bytes));
  }
  void OnFallback(v1::Provider from, v1::Provider to) {
    fallbacks_.Get({Provider(from), Provider(to)}).Increment();
  }
  void OnCustodyFetch(absl::string_view outcome) {
    custody_fetches_.Get({Fixed(outcome, kCustodyOutcomes, "outcome")}).Increment();
  }
  void OnWebhookDelivery(absl::string_view outcome, bool gave_up) {
    webhook_deliveries_.Get({Fixed(outcome, kWebhookOutcomes, "outcome")}).Increment();
    if (gave_up) webhook_gave_up_->Increment();
  }

  void OnRequestDone(absl::string_view provider, absl::string_view endpoint,
                     absl::string_view outcome, absl::Duration latency) {
    const std::string p = HttpProvider(provider);
    const std::string e = endpoints_->Normalize(endpoint);
    upstream_requests_.Get({p, e, Fixed(outcome, kHttpOutcomes, "status_class")}).Increment();
    upstream_latency_.Get({p, e}).Observe(absl::ToDoubleSeconds(latency));
  }
  void OnRetry(absl::string_view provider, absl::string_view endpoint, absl::string_view reason,
               absl::Duration delay) {
    const std::string p = HttpProvider(provider);
    const std::string e = endpoints_->Normalize(endpoint);
    upstream_retries_.Get({p, e, reasons_->Normalize(reason)}).Increment();
    const double seconds = absl::ToDoubleSeconds(delay);
    if (seconds > 0) upstream_retry_delay_.Get({p, e}).Increment(seconds);
  }
  void OnRetryAbandoned(absl::string_view provider, absl::string_view endpoint,
                        absl::string_view why) {
    upstream_abandoned_
        .Get({HttpProvider(provider), endpoints_->Normalize(endpoint),
              Fixed(why, kAbandonReasons, "reason")})
        .Increment();
  }

  // --- sources ---
  void SetQuotaSource(std::function<std::vector<operations::AccountQuota>()> snapshot) {
    absl::MutexLock lock(&sources_mu_);
    quota_ = std::move(snapshot);
  }
  void SetEngine(const operations::OperationsEngine* engine) {
    absl::MutexLock lock(&sources_mu_);
    engine_ = engine;
  }
  void AddTokenRefreshSource(v1::Provider provider, std::string account,
                             std::function<int64_t()> refreshes) {
    absl::MutexLock lock(&sources_mu_);
    token_sources_.push_back({provider, std::move(account), std::move(refreshes)});
  }
  void AddWebhookSource(v1::Provider provider, std::string account,
                        std::function<adapters::WebhookCounters()> counters) {
    absl::MutexLock lock(&sources_mu_);
    webhook_sources_.push_back({provider, std::move(account), std::move(counters)});
  }
  void SetAcceptQueueSource(std::function<int64_t()> queued) {
    absl::MutexLock lock(&sources_mu_);
    accept_queue_ = std::move(queued);
  }
  void ClearSources() {
    absl::MutexLock lock(&sources_mu_);
    accept_queue_ = nullptr;
    quota_ = nullptr;
    engine_ = nullptr;
    token_sources_.clear();
    webhook_sources_.clear();
  }

  // --- exposition ---
  absl::Status StartExposer(const std::string& listen_address, const config::TlsConfig& tls) {
    absl::MutexLock lock(&exposer_mu_);
    if (exposer_ != nullptr || https_ != nullptr)
      return absl::FailedPreconditionError("metrics exposer already started");
    if (tls.enabled()) return StartHttps(listen_address, tls);
    try {
      auto exposer = std::make_unique<prometheus::Exposer>(listen_address, 2);
      const std::vector<int> ports = exposer->GetListeningPorts();
      if (ports.empty()) {
        return absl::UnavailableError(absl::StrCat("metrics: not listening on ", listen_address));
      }
      exposer->RegisterCollectable(registry_);
      exposer->RegisterCollectable(collector_);
      port_ = ports.front();
      exposer_ = std::move(exposer);
    } catch (const std::exception& e) {
      return absl::UnavailableError(
          absl::StrCat("metrics: cannot listen on ", listen_address, ": ", e.what()));
    }
    return absl::OkStatus();
  }
  void StopExposer() {
    std::unique_ptr<prometheus::Exposer> exposer;
    std::unique_ptr<tls::HttpServer> https;
    std::thread https_thread;
    {
      absl::MutexLock lock(&exposer_mu_);
      exposer = std::move(exposer_);
      https = std::move(https_);
      https_thread = std::move(https_thread_);
      port_ = 0;
    }
    // Joins the server threads outside the lock.
    exposer.reset();
    if (https != nullptr) https->server().stop();
    if (https_thread.joinable()) https_thread.join();
  }
  int port() const {
    absl::MutexLock lock(&exposer_mu_);
    return port_;
  }

  std::vector<prometheus::MetricFamily> Collect() const {
    std::vector<prometheus::MetricFamily> families = registry_->Collect();
    std::vector<prometheus::MetricFamily> pulled = collector_->Collect();
    for (auto& family : pulled) families.push_back(std::move(family));
    return families;
  }

 private:
  // /metrics over TLS. prometheus-cpp's exposer cannot change its certificate without
  // rebinding, so a TLS port is served by cpp-httplib with certificates reloaded from files.
  absl::Status StartHttps(const std::string& listen_address, const config::TlsConfig& tls)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(exposer_mu_) {
    const size_t colon = listen_address.rfind(':');
    int port = 0;
    if (colon == std::string::npos || !absl::SimpleAtoi(listen_address.substr(colon + 1), &port)) {
      return absl::InvalidArgumentError(absl::StrCat("metrics: bad address ", listen_address));
    }
    const std::string host = listen_address.substr(0, colon);
    auto http = tls::HttpServer::Create(tls, "server.metrics_tls");
    if (!http.ok()) return http.status();
    httplib::Server& server = (*http)->server();
    server.new_task_queue = [] { return new httplib::ThreadPool(2); };
    server.set_read_timeout(5, 0);
    server.set_write_timeout(5, 0);
    server.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
      res.set_content(prometheus::TextSerializer().Serialize(Collect()),
                      "text/plain; version=0.0.4");
    });
    const int bound =
        port == 0 ? server.bind_to_any_port(host) : (server.bind_to_port(host, port) ? port : -1);
    if (bound <= 0) {
      return absl::UnavailableError(absl::StrCat("metrics: cannot listen on ", listen_address));
    }
    https_ = *std::move(http);
    port_ = bound;
    https_thread_ = std::thread([&server] { server.listen_after_bind(); });
    // stop() is a no-op until the server runs; the socket already accepts connections.
    for (int i = 0; i < 5000 && !server.is_running(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return absl::OkStatus();
  }

  class Collector final : public prometheus::Collectable {
   public:
    explicit Collector(Impl* impl) : impl_(impl) {}
    std::vector<prometheus::MetricFamily> Collect() const override { return impl_->Pull(); }

   private:
    Impl* const impl_;
  };

  struct TokenSource {
    v1::Provider provider;
    std::string account;
    std::function<int64_t()> refreshes;
  };
  struct WebhookSource {
    v1::Provider provider;
    std::string account;
    std::function<adapters::WebhookCounters()> counters;
  };

  std::vector<prometheus::MetricFamily> Pull() ABSL_LOCKS_EXCLUDED(sources_mu_);
  void PullQuota(const std::vector<operations::AccountQuota>& accounts, absl::Time now,
                 std::vector<prometheus::MetricFamily>& out);
  void PullProviders(const std::vector<operations::ProviderState>& states, absl::Time now,
                     std::vector<prometheus::MetricFamily>& out);

  const MetricsOptions options_;
  const std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<Counter>& collapsed_family_;
  absl::flat_hash_map<absl::string_view, Counter*> collapsed_;  // written only in the ctor
  Children<Counter> grpc_requests_;
  Children<Histogram> grpc_latency_;
  Children<Gauge> grpc_open_streams_;
  Children<Counter> grpc_stream_messages_;
  Children<Counter> upstream_requests_;
  Children<Histogram> upstream_latency_;
  Children<Counter> upstream_retries_;
  Children<Counter> upstream_retry_delay_;
  Children<Counter> upstream_abandoned_;
  Children<Counter> ops_created_;
  Children<Counter> ops_completed_;
  Children<Histogram> ops_success_latency_;
  Children<Counter> download_bytes_;
  Children<Counter> fallbacks_;
  Children<Counter> custody_fetches_;
  Children<Counter> webhook_deliveries_;
  Counter* webhook_gave_up_;
  std::unique_ptr<BoundedValues> endpoints_;
  std::unique_ptr<BoundedValues> reasons_;
  std::unique_ptr<BoundedValues> resources_;
  std::unique_ptr<BoundedValues> accounts_;

  absl::Mutex sources_mu_;
  std::function<std::vector<operations::AccountQuota>()> quota_ ABSL_GUARDED_BY(sources_mu_);
  const operations::OperationsEngine* engine_ ABSL_GUARDED_BY(sources_mu_) = nullptr;
  std::function<int64_t()> accept_queue_ ABSL_GUARDED_BY(sources_mu_);
  std::vector<TokenSource> token_sources_ ABSL_GUARDED_BY(sources_mu_);
  std::vector<WebhookSource> webhook_sources_ ABSL_GUARDED_BY(sources_mu_);

  std::shared_ptr<Collector> collector_;
  mutable absl::Mutex exposer_mu_;
  std::unique_ptr<prometheus::Exposer> exposer_ ABSL_GUARDED_BY(exposer_mu_);
  std::unique_ptr<tls::HttpServer> https_ ABSL_GUARDED_BY(exposer_mu_);
  std::thread https_thread_ ABSL_GUARDED_BY(exposer_mu_);
  int port_ ABSL_GUARDED_BY(exposer_mu_) = 0;
};

std::vector<prometheus::MetricFamily> Metrics::Impl::Pull() {
  const absl::Time now = options_.clock();
  std::vector<prometheus::MetricFamily> out;
  {
    // Held while sources run so ClearSources() can wait for this scrape.
    absl::MutexLock lock(&sources_mu_);
    if (quota_) PullQuota(quota_(), now, out);
    // Work waiting for a worker: a queue that keeps growing means the pool cannot keep up (the
    // ledger's disk for accepts; ledger writes and provider calls for the background).
    PullFamily queued("musicgw_queued_tasks",
                      "Tasks due to run and waiting for a worker, by pool (accept, background).",
                      MetricType::Gauge);
    if (engine_ != nullptr) {
      const std::vector<operations::ProviderState> states = engine_->ProviderStates();
      PullProviders(states, now, out);
      const operations::EngineStats stats = engine_->Stats();
      // The engine counts live operations where their states change (resumed ones included);
      // every configured provider's series exist, at zero when idle.
      PullFamily by_state_family(
          "musicgw_operations_live",
          "Live operations by provider and state (queued, running), resumed ones included.",
          MetricType::Gauge);
      std::map<std::pair<std::string, std::string>, int64_t> by_state;
      for (const auto& state : states) {
        by_state.try_emplace({Provider(state.provider), "queued"}, 0);
        by_state.try_emplace({Provider(state.provider), "running"}, 0);
      }
      for (const auto& entry : stats.live_by_state) {
        by_state[{Provider(entry.provider), StateLabel(entry.state)}] += entry.count;
      }
      for (const auto& [key, count] : by_state) {
        by_state_family.Add({{"provider", key.first}, {"state", key.second}},
                            static_cast<double>(count));
      }
      by_state_family.MoveTo(out);
      PullFamily live("musicgw_engine_live_operations",
                      "Operations this replica tracks now (resumed ones included).",
                      MetricType::Gauge);
      live.Add({}, static_cast<double>(stats.live_operations));
      live.MoveTo(out);
      PullFamily watchers("musicgw_engine_open_watchers", "WatchOperation streams open now.",
                          MetricType::Gauge);
      watchers.Add({}, static_cast<double>(stats.open_watchers));
      watchers.MoveTo(out);
      PullFamily downloads("musicgw_engine_open_downloads", "Downloads in progress now.",
                           MetricType::Gauge);
      downloads.Add({}, static_cast<double>(stats.open_downloads));
      downloads.MoveTo(out);
      PullFamily held("musicgw_custody_held_bytes",
                      "Asset bytes the gateway holds in its custody store (distinct objects).",
                      MetricType::Gauge);
      held.Add({}, static_cast<double>(stats.custody_held_bytes));
      held.MoveTo(out);
      PullFamily pending("musicgw_custody_pending_fetches",
                         "Asset custody fetches pending (retried in the background).",
                         MetricType::Gauge);
      pending.Add({}, static_cast<double>(stats.custody_pending));
      pending.MoveTo(out);
      PullFamily oldest("musicgw_custody_oldest_pending_seconds",
                        "Age of the oldest pending asset custody fetch; 0 when none.",
                        MetricType::Gauge);
      oldest.Add({}, absl::ToDoubleSeconds(stats.custody_oldest_pending_age));
      oldest.MoveTo(out);
      queued.Add({{"pool", "background"}}, static_cast<double>(stats.background_queued));
    }
    if (accept_queue_) queued.Add({{"pool", "accept"}}, static_cast<double>(accept_queue_()));
    queued.MoveTo(out);
    PullFamily tokens("musicgw_upstream_token_refreshes_total",
                      "Completed OAuth token refreshes, by provider account.", MetricType::Counter);
    for (const auto& source : token_sources_) {
      if (!source.refreshes) continue;
      tokens.Add({{"provider", Provider(source.provider)},
                  {"account", accounts_->Normalize(source.account)}},
                 static_cast<double>(source.refreshes()));
    }
    tokens.MoveTo(out);
    PullFamily webhooks("musicgw_webhooks_received_total",
                        "Provider webhook deliveries by provider account and outcome (verified, "
                        "bad_signature, stale, duplicate, malformed, too_large).",
                        MetricType::Counter);
    for (const auto& source : webhook_sources_) {
      if (!source.counters) continue;
      const adapters::WebhookCounters counters = source.counters();
      const std::string p = Provider(source.provider);
      const std::string a = accounts_->Normalize(source.account);
      const std::pair<const char*, int64_t> outcomes[] = {
          {"verified", counters.verified},   {"bad_signature", counters.bad_signature},
          {"stale", counters.stale},         {"duplicate", counters.duplicate},
          {"malformed", counters.malformed}, {"too_large", counters.too_large}};
      for (const auto& [outcome, count] : outcomes) {
        webhooks.Add({{"provider", p}, {"account", a}, {"outcome", outcome}},
                     static_cast<double>(count));
      }
    }
    webhooks.MoveTo(out);
  }
  return out;
}

void Metrics::Impl::PullQuota(const std::vector<operations::AccountQuota>& accounts, absl::Time now,
                              std::vector<prometheus::MetricFamily>& out) {
  PullFamily limit("musicgw_provider_quota_limit",
                   "Provider quota limit per account and resource (as last read).",
                   MetricType::Gauge);
  PullFamily used("musicgw_provider_quota_used",
                  "Provider quota used per account and resource (as last read).",
                  MetricType::Gauge);
  PullFamily remaining("musicgw_provider_quota_remaining",
                       "Provider quota remaining per account and resource (as last read).",
                       MetricType::Gauge);
  PullFamily reset("musicgw_provider_quota_reset_timestamp_seconds",
                   "When the provider quota next resets (Unix time), where known.",
                   MetricType::Gauge);
  PullFamily age("musicgw_provider_quota_read_age_seconds",
                 "Seconds since the last successful quota read (+Inf: never read).",
                 MetricType::Gauge);
  PullFamily failing("musicgw_provider_quota_read_failing", "1 when the latest quota read failed.",
                     MetricType::Gauge);
  for (const auto& account : accounts) {
    const std::string p = Provider(account.provider);
    const std::string a = accounts_->Normalize(account.account);
    age.Add({{"provider", p}, {"account", a}},
            account.read_time == absl::InfinitePast()
                ? std::numeric_limits<double>::infinity()
                : std::max(0.0, absl::ToDoubleSeconds(now - account.read_time)));
    failing.Add({{"provider", p}, {"account", a}}, account.last_error.empty() ? 0 : 1);
    for (const auto& figure : account.figures) {
      const std::vector<std::pair<std::string, std::string>> labels = {
          {"provider", p}, {"account", a}, {"resource", resources_->Normalize(figure.resource)}};
      // Negative figures mean the provider did not say.
      if (figure.limit >= 0) limit.Add(labels, static_cast<double>(figure.limit));
      if (figure.used >= 0) used.Add(labels, static_cast<double>(figure.used));
      if (figure.remaining >= 0) remaining.Add(labels, static_cast<double>(figure.remaining));
      if (figure.reset_time != absl::InfinitePast() &&
          figure.reset_time != absl::InfiniteFuture()) {
        reset.Add(labels, Seconds(figure.reset_time));
      }
    }
  }
  limit.MoveTo(out);
  used.MoveTo(out);
  remaining.MoveTo(out);
  reset.MoveTo(out);
  age.MoveTo(out);
  failing.MoveTo(out);
}

void Metrics::Impl::PullProviders(const std::vector<operations::ProviderState>& states,
                                  absl::Time now, std::vector<prometheus::MetricFamily>& out) {
  PullFamily health("musicgw_provider_health",
                    "1 for the provider account's current routing health (healthy, degraded, "
                    "unavailable), 0 for the others.",
                    MetricType::Gauge);
  PullFamily failures("musicgw_provider_consecutive_failures",
                      "Consecutive failed calls counted towards cooldown.", MetricType::Gauge);
  PullFamily cooldown("musicgw_provider_cooldown_active",
                      "1 while routing skips the provider account after repeated failures.",
                      MetricType::Gauge);
  PullFamily cooldown_until("musicgw_provider_cooldown_until_timestamp_seconds",
                            "When the current cooldown ends (Unix time), while active.",
                            MetricType::Gauge);
  PullFamily exhausted("musicgw_provider_quota_exhausted",
                       "1 while routing treats the provider account's quota as exhausted.",
                       MetricType::Gauge);
  PullFamily exhausted_until("musicgw_provider_quota_exhausted_until_timestamp_seconds",
                             "When routing will try the exhausted account again (Unix time).",
                             MetricType::Gauge);
  constexpr std::pair<v1::ProviderHealth, const char*> kHealth[] = {
      {v1::PROVIDER_HEALTH_HEALTHY, "healthy"},
      {v1::PROVIDER_HEALTH_DEGRADED, "degraded"},
      {v1::PROVIDER_HEALTH_UNAVAILABLE, "unavailable"}};
  for (const auto& state : states) {
    const std::string p = Provider(state.provider);
    const std::string a = accounts_->Normalize(state.account);
    for (const auto& [value, name] : kHealth) {
      health.Add({{"provider", p}, {"account", a}, {"health", name}},
                 state.health == value ? 1 : 0);
    }
    failures.Add({{"provider", p}, {"account", a}}, state.consecutive_failures);
    const bool cooling = state.cooldown_until > now;
    cooldown.Add({{"provider", p}, {"account", a}}, cooling ? 1 : 0);
    if (cooling && state.cooldown_until != absl::InfiniteFuture()) {
      cooldown_until.Add({{"provider", p}, {"account", a}}, Seconds(state.cooldown_until));
    }
    exhausted.Add({{"provider", p}, {"account", a}}, state.quota_exhausted ? 1 : 0);
    if (state.quota_exhausted && state.quota_exhausted_until != absl::InfinitePast() &&
        state.quota_exhausted_until != absl::InfiniteFuture()) {
      exhausted_until.Add({{"provider", p}, {"account", a}}, Seconds(state.quota_exhausted_until));
    }
  }
  health.MoveTo(out);
  failures.MoveTo(out);
  cooldown.MoveTo(out);
  cooldown_until.MoveTo(out);
  exhausted.MoveTo(out);
  exhausted_until.MoveTo(out);
}

absl::StatusOr<std::unique_ptr<Metrics>> Metrics::Create(MetricsOptions options) {
  try {
    return std::unique_ptr<Metrics>(new Metrics(std::make_unique<Impl>(std::move(options))));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("metrics registration failed: ", e.what()));
  }
}

Metrics::Metrics(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Metrics::~Metrics() = default;

void Metrics::SetQuotaSource(std::function<std::vector<operations::AccountQuota>()> snapshot) {
  impl_->SetQuotaSource(std::move(snapshot));
}
void Metrics::SetEngine(const operations::OperationsEngine* engine) { impl_->SetEngine(engine); }
void Metrics::AddTokenRefreshSource(v1::Provider provider, std::string account,
                                    std::function<int64_t()> refreshes) {
  impl_->AddTokenRefreshSource(provider, std::move(account), std::move(refreshes));
}
void Metrics::AddWebhookSource(v1::Provider provider, std::string account,
                               std::function<adapters::WebhookCounters()> counters) {
  impl_->AddWebhookSource(provider, std::move(account), std::move(counters));
}
void Metrics::SetAcceptQueueSource(std::function<int64_t()> queued) {
  impl_->SetAcceptQueueSource(std::move(queued));
}
void Metrics::ClearSources() { impl_->ClearSources(); }

absl::Status Metrics::StartExposer(const std::string& listen_address,
                                   const config::TlsConfig& tls) {
  return impl_->StartExposer(listen_address, tls);
}
void Metrics::StopExposer() { impl_->StopExposer(); }
int Metrics::port() const { return impl_->port(); }

std::vector<prometheus::MetricFamily> Metrics::Collect() const { return impl_->Collect(); }
std::string Metrics::Scrape() const {
  return prometheus::TextSerializer().Serialize(impl_->Collect());
}

void Metrics::OnRpcDone(absl::string_view method, int grpc_code, absl::Duration latency) {
  impl_->OnRpcDone(method, grpc_code, latency);
}
void Metrics::OnStreamOpened(absl::string_view method) { impl_->OnStreamOpened(method); }
void Metrics::OnStreamClosed(absl::string_view method) { impl_->OnStreamClosed(method); }
void Metrics::OnStreamMessage(absl::string_view method) { impl_->OnStreamMessage(method); }

void Metrics::OnStateChange(v1::Provider provider, v1::TaskKind task, v1::OperationState from,
                            v1::OperationState to) {
  impl_->OnStateChange(provider, task, from, to);
}
void Metrics::OnCompleted(v1::Provider provider, v1::TaskKind task, v1::OperationState outcome,
                          absl::StatusCode code) {
  impl_->OnCompleted(provider, task, outcome, code);
}
void Metrics::OnSucceededLatency(v1::Provider provider, v1::TaskKind task, absl::Duration latency) {
  impl_->OnSucceededLatency(provider, task, latency);
}
void Metrics::OnDownloadBytes(v1::Provider provider, int64_t bytes) {
  impl_->OnDownloadBytes(provider, bytes);
}
void Metrics::OnFallback(v1::Provider from, v1::Provider to) { impl_->OnFallback(from, to); }
void Metrics::OnCustodyFetch(absl::string_view outcome) { impl_->OnCustodyFetch(outcome); }
void Metrics::OnWebhookDelivery(absl::string_view outcome, bool gave_up) {
  impl_->OnWebhookDelivery(outcome, gave_up);
}

void Metrics::OnRequestDone(absl::string_view provider, absl::string_view endpoint,
                            absl::string_view outcome, absl::Duration latency) {
  impl_->OnRequestDone(provider, endpoint, outcome, latency);
}
void Metrics::OnRetry(absl::string_view provider, absl::string_view endpoint,
                      absl::string_view reason, absl::Duration delay) {
  impl_->OnRetry(provider, endpoint, reason, delay);
}
void Metrics::OnRetryAbandoned(absl::string_view provider, absl::string_view endpoint,
                               absl::string_view reason, absl::string_view why) {
  impl_->OnRetryAbandoned(provider, endpoint, why);
}

}  // namespace musicgw::metrics
