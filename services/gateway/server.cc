#include "services/gateway/server.h"

#include <unistd.h>

#include <algorithm>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "adapters/capabilities.h"
#include "adapters/http/curl_http_client.h"
#include "adapters/loudly/loudly_adapter.h"
#include "adapters/registry.h"
#include "adapters/soundpiece/webhook.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "google/protobuf/util/time_util.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/server_builder.h"
#include "services/gateway/auth.h"
#include "services/gateway/budgets.h"
#include "services/gateway/gateway_service.h"
#include "services/gateway/health_service.h"
#include "services/gateway/quota_monitor.h"
#include "services/metrics/metrics.h"
#include "services/operations/engine.h"
#include "services/operations/operation_store.h"
#include "services/operations/postgres_store.h"

namespace musicgw::gateway {
namespace {

google::protobuf::Timestamp ToProto(absl::Time time) {
  return google::protobuf::util::TimeUtil::NanosecondsToTimestamp(absl::ToUnixNanos(time));
}

// ListProviders and GetQuota: capabilities from the shared table, health from the engine's
// routing view, catalogs from the adapters, quota from the monitor.
class Directory final : public ProviderDirectory {
 public:
  Directory(std::vector<adapters::ProviderAdapter*> adapters, operations::OperationsEngine* engine,
            const QuotaMonitor* quota)
      : adapters_(std::move(adapters)), engine_(engine), quota_(quota) {}

  std::vector<musicgw::v1::ProviderInfo> Providers() const override {
    std::vector<musicgw::v1::ProviderInfo> providers;
    const std::vector<operations::ProviderState> states = engine_->ProviderStates();
    for (const auto* adapter : adapters_) {
      musicgw::v1::ProviderInfo info;
      info.set_provider(adapter->provider());
      info.set_account(adapter->account());
      info.set_dialect(adapter->dialect());
      for (const auto& task : adapters::Capabilities(adapter->provider())) {
        *info.add_tasks() = task;
      }
      for (const auto& state : states) {
        if (state.provider != adapter->provider()) continue;
        info.set_health(state.health);
        info.set_health_detail(state.health_detail);
        info.set_quota_exhausted(state.quota_exhausted);
      }
      const adapters::ProviderCatalog catalog = adapter->catalog();
      for (const auto& genre : catalog.genres) info.add_genres(genre);
      for (const auto& structure : catalog.structures) *info.add_structures() = structure;
      info.set_example_prompt(catalog.example_prompt);
      providers.push_back(std::move(info));
    }
    return providers;
  }

  std::vector<musicgw::v1::ProviderQuota> Quotas(musicgw::v1::Provider filter) const override {
    std::vector<musicgw::v1::ProviderQuota> quotas;
    const std::vector<operations::ProviderState> states = engine_->ProviderStates();
    for (const auto& account : quota_->Snapshot()) {
      if (filter != musicgw::v1::PROVIDER_UNSPECIFIED && filter != account.provider) continue;
      bool exhausted = false;
      for (const auto& state : states) {
        if (state.provider == account.provider) exhausted = state.quota_exhausted;
      }
      for (const auto& figure : account.figures) {
        musicgw::v1::ProviderQuota quota;
        quota.set_provider(account.provider);
        quota.set_account(account.account);
        quota.set_resource(figure.resource);
        quota.set_limit(figure.limit);
        quota.set_used(figure.used);
        quota.set_remaining(figure.remaining);
        if (figure.reset_time != absl::InfinitePast()) {
          *quota.mutable_reset_time() = ToProto(figure.reset_time);
        }
        if (account.read_time != absl::InfinitePast()) {
          *quota.mutable_read_time() = ToProto(account.read_time);
        }
        quota.set_exhausted(exhausted || figure.remaining == 0);
        quotas.push_back(std::move(quota));
      }
    }
    return quotas;
  }

  std::vector<musicgw::v1::TenantBudget> Budgets(
      const config::TenantConfig& tenant) const override {
    return ReportBudgets(*engine_, tenant, absl::Now());
  }

 private:
  std::vector<adapters::ProviderAdapter*> adapters_;
  operations::OperationsEngine* engine_;
  const QuotaMonitor* quota_;
};

// Refreshes the provider's quota figures after each generation ends.
class QuotaRefreshObserver final : public operations::EngineObserver {
 public:
  void set_monitor(QuotaMonitor* monitor) { monitor_ = monitor; }
  void OnCompleted(musicgw::v1::Provider provider, musicgw::v1::TaskKind task,
                   musicgw::v1::OperationState outcome, absl::StatusCode code) override {
    if (monitor_ != nullptr) monitor_->RefreshSoon(provider);
  }

 private:
  QuotaMonitor* monitor_ = nullptr;
};

class GatewayServerImpl final : public GatewayServer {
 public:
  explicit GatewayServerImpl(config::Config config) : config_(std::move(config)) {}

  ~GatewayServerImpl() override { Drain(absl::ZeroDuration()); }

  absl::Status Init() {
    MUSICGW_ASSIGN_OR_RETURN(metrics_, metrics::Metrics::Create());
    http::CurlHttpClient::Options http_options;
    http_options.observer = metrics_;
    http_ = http::CurlHttpClient::Create(std::move(http_options));
    if (http_ == nullptr) return absl::InternalError("cannot start the HTTP client (libcurl)");

    for (const auto& provider : config_.providers) {
      auto adapter = adapters::CreateAdapter(provider, http_.get());
      if (!adapter.ok()) {
        return absl::Status(
            adapter.status().code(),
            absl::StrCat("provider account ", provider.name, ": ", adapter.status().message()));
      }
      adapter_ptrs_.push_back(adapter->get());
      adapters_.push_back(std::move(*adapter));
    }
    for (auto& adapter : adapters_) adapter->Start();

    MUSICGW_ASSIGN_OR_RETURN(std::unique_ptr<operations::OperationStore> store, OpenLedger());
    operations::EngineOptions options;
    options.ledger_path = config_.ledger_path;
    options.replica_id = ReplicaId();
    options.operation_deadline = config_.operation_deadline;
    options.watch_heartbeat = config_.watch_heartbeat;
    options.watch_buffer = config_.watch_buffer;
    options.download_chunk_bytes = config_.download_chunk_bytes;
    options.budgets = MakeBudgetResolver(config_.tenants);
    engine_observer_ = std::make_unique<metrics::EngineObserverFanOut>(
        std::vector<operations::EngineObserver*>{&quota_observer_, metrics_.get()});
    options.observer = engine_observer_.get();
    MUSICGW_ASSIGN_OR_RETURN(
        engine_, operations::CreateOperationsEngine(std::move(options), std::move(store),
                                                    adapter_ptrs_, http_.get()));

    quota_ =
        std::make_unique<QuotaMonitor>(adapter_ptrs_, http_.get(), config_.quota_refresh_interval);
    quota_observer_.set_monitor(quota_.get());
    quota_->set_listener([this](const adapters::ProviderAdapter* adapter,
                                std::vector<adapters::QuotaFigure>* figures) {
      EstimateCredits(adapter, figures);
      engine_->UpdateQuota(adapter, *figures);
    });
    directory_ = std::make_unique<Directory>(adapter_ptrs_, engine_.get(), quota_.get());
    tenants_ = std::make_unique<TenantDirectory>(config_.tenants);

    GatewayDeps deps;
    deps.tenants = tenants_.get();
    deps.engine = engine_.get();
    deps.adapters = adapter_ptrs_;
    deps.directory = directory_.get();
    deps.observer = metrics_.get();
    service_ = std::make_unique<GatewayService>(std::move(deps));

    // Our own health service, not gRPC's built-in one: a drain must end Watch streams at once.
    health_ = std::make_unique<HealthService>(
        std::vector<std::string>{musicgw::v1::MusicGateway::service_full_name()});
    grpc::reflection::InitProtoReflectionServerBuilderPlugin();
    grpc::ServerBuilder builder;
    builder.AddListeningPort(config_.grpc_listen, grpc::InsecureServerCredentials(), &grpc_port_);
    builder.RegisterService(service_.get());
    builder.RegisterService(health_.get());
    // Keepalive enforcement: clients may ping at most every keepalive_min_ping_interval, also
    // on idle connections (long WatchOperation streams); documented for client authors.
    builder.AddChannelArgument(
        GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
        static_cast<int>(absl::ToInt64Milliseconds(config_.keepalive_min_ping_interval)));
    builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 2);
    builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
    builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 60 * 1000);
    builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 20 * 1000);
    server_ = builder.BuildAndStart();
    if (server_ == nullptr || grpc_port_ == 0) {
      return absl::UnavailableError(absl::StrCat("cannot listen on ", config_.grpc_listen));
    }

    MUSICGW_RETURN_IF_ERROR(engine_->Start());
    MUSICGW_RETURN_IF_ERROR(StartWebhooks());
    quota_->Start();
    MUSICGW_RETURN_IF_ERROR(StartMetrics());
    health_->SetServing(true);
    log::Info("musicgw serving", {{"grpc_port", grpc_port_},
                                  {"providers", static_cast<long>(adapters_.size())},
                                  {"tenants", static_cast<long>(config_.tenants.size())},
                                  {"ledger", LedgerDescription()}});
    return absl::OkStatus();
  }

  int grpc_port() const override { return grpc_port_; }
  int metrics_port() const override { return metrics_ == nullptr ? 0 : metrics_->port(); }
  int webhook_port() const override { return webhooks_ == nullptr ? 0 : webhooks_->port(); }

  // Soundpiece publishes no balance: with the credits the operator bought in the config, the
  // "credits" figure becomes that balance minus the ledger's charged operations at their cost.
  void EstimateCredits(const adapters::ProviderAdapter* adapter,
                       std::vector<adapters::QuotaFigure>* figures) {
    const config::ProviderConfig* account = nullptr;
    for (size_t i = 0; i < adapter_ptrs_.size(); ++i) {
      if (adapter_ptrs_[i] == adapter) account = &config_.providers[i];
    }
    if (account == nullptr || account->credit_balance <= 0) return;
    auto charged =
        engine_->ChargedOperations(adapter->provider(), adapter->account(), account->credits_since);
    if (!charged.ok()) {
      log::Warning("credit estimate failed", {{"account", adapter->account()},
                                              {"error", std::string(charged.status().message())}});
      return;
    }
    int64_t spent = 0;
    for (const auto& [task, count] : *charged) {
      auto cost = account->credit_costs.find(task);
      spent += count * (cost == account->credit_costs.end() ? 1 : cost->second);
    }
    for (adapters::QuotaFigure& figure : *figures) {
      if (figure.resource != "credits") continue;
      figure.limit = account->credit_balance;
      figure.used = spent;
      // A recent 402 (remaining 0) outranks the estimate.
      if (figure.remaining != 0) figure.remaining = std::max<int64_t>(0, figure.limit - spent);
    }
  }

  void Drain(absl::Duration deadline) override {
    {
      absl::MutexLock lock(&drain_mu_);
      if (drained_) return;
      drained_ = true;
    }
    const absl::Time started = absl::Now();
    log::Info("musicgw draining", {{"deadline_seconds", absl::ToDoubleSeconds(deadline)}});
    // Health watchers (client-side health checking) learn NOT_SERVING and their streams end
    // now, so they neither hold the shutdown to its deadline nor keep the client waiting.
    if (health_ != nullptr) health_->Shutdown();
    // Webhooks stop first: polling remains the source of truth after a restart.
    if (webhooks_ != nullptr) webhooks_->Stop();
    // Streams end first, with UNAVAILABLE, so Shutdown only waits for short unary calls.
    if (engine_ != nullptr) engine_->Shutdown();
    if (server_ != nullptr) {
      // gRPC holds the shutdown until connected clients go (seconds after its GOAWAY, even for
      // idle connections), and the teardown below can take two seconds more (the metrics
      // listener polls for its stop every 2 s): the calls get the deadline less a reserve, so
      // the process exits within the deadline.
      const absl::Duration reserve = std::min(absl::Milliseconds(2500), deadline / 2);
      server_->Shutdown(absl::ToChronoTime(started + deadline - reserve));
      server_->Wait();
    }
    if (quota_ != nullptr) quota_->Stop();
    for (auto& adapter : adapters_) adapter->Stop();
    // Scrapes keep working through the drain; the sources go before what they read.
    if (metrics_ != nullptr) metrics_->ClearSources();
    webhooks_.reset();
    service_.reset();
    server_.reset();
    health_.reset();
    engine_.reset();
    quota_.reset();
    adapters_.clear();
    http_.reset();
    if (metrics_ != nullptr) metrics_->StopExposer();
    log::Info("musicgw stopped");
  }

 private:
  // The embedded SQLite ledger, or the shared PostgreSQL one. Errors never quote the DSN.
  absl::StatusOr<std::unique_ptr<operations::OperationStore>> OpenLedger() {
    if (config_.ledger_postgres_dsn.empty()) {
      auto store = operations::OpenSqliteOperationStore(config_.ledger_path);
      if (!store.ok()) {
        return absl::Status(store.status().code(), absl::StrCat("ledger ", config_.ledger_path,
                                                                ": ", store.status().message()));
      }
      return store;
    }
    operations::PostgresOptions options;
    options.dsn = config_.ledger_postgres_dsn;
    options.pool_size = config_.ledger_postgres_pool_size;
    auto store = operations::OpenPostgresOperationStore(std::move(options));
    if (!store.ok()) {
      return absl::Status(store.status().code(),
                          absl::StrCat("ledger (PostgreSQL): ", store.status().message()));
    }
    return store;
  }

  std::string LedgerDescription() const {
    return config_.ledger_postgres_dsn.empty() ? config_.ledger_path : "postgres";
  }

  // Replicas sharing a ledger need distinct names; a pod's host name is its own.
  std::string ReplicaId() const {
    if (!config_.replica_id.empty()) return config_.replica_id;
    if (config_.ledger_postgres_dsn.empty()) return "local";
    char host[256] = {};
    if (gethostname(host, sizeof(host) - 1) != 0 || host[0] == '\0') return "replica";
    return host;
  }

  // /metrics on its own port; pull-time gauges read the quota snapshot GetQuota reports, the
  // engine's routing view, Loudly's token refreshes and the webhook outcomes.
  absl::Status StartMetrics() {
    metrics_->SetQuotaSource([quota = quota_.get()] { return quota->Snapshot(); });
    metrics_->SetEngine(engine_.get());
    for (auto* adapter : adapter_ptrs_) {
      if (auto* loudly = dynamic_cast<adapters::loudly::LoudlyAdapter*>(adapter)) {
        metrics_->AddTokenRefreshSource(adapter->provider(), adapter->account(),
                                        [loudly] { return loudly->token_refreshes(); });
      }
    }
    if (webhooks_ != nullptr) {
      metrics_->AddWebhookSource(musicgw::v1::PROVIDER_SOUNDPIECE,
                                 [receiver = webhooks_.get()] { return receiver->counters(); });
    }
    return metrics_->StartExposer(config_.metrics_listen);
  }

  // Soundpiece completion callbacks: verified, then handed to the engine at once.
  absl::Status StartWebhooks() {
    if (config_.webhook_listen.empty()) return absl::OkStatus();
    const config::ProviderConfig* soundpiece = nullptr;
    for (const auto& provider : config_.providers) {
      if (provider.type == musicgw::v1::PROVIDER_SOUNDPIECE) soundpiece = &provider;
    }
    if (soundpiece == nullptr || soundpiece->webhook_secrets.empty()) {
      log::Warning("webhook endpoint disabled: no soundpiece webhook_secrets configured");
      return absl::OkStatus();
    }
    adapters::soundpiece::WebhookReceiverOptions options;
    const size_t colon = config_.webhook_listen.rfind(':');
    options.host = config_.webhook_listen.substr(0, colon);
    if (!absl::SimpleAtoi(config_.webhook_listen.substr(colon + 1), &options.port)) {
      return absl::InvalidArgumentError("server.webhook_listen: bad port");
    }
    options.verifier.secrets = soundpiece->webhook_secrets;
    options.verifier.tolerance = config_.webhook_tolerance;
    operations::OperationsEngine* engine = engine_.get();
    auto receiver = adapters::soundpiece::WebhookReceiver::Start(
        std::move(options), [engine](const adapters::UpstreamStatus& status) {
          engine->OnProviderUpdate(musicgw::v1::PROVIDER_SOUNDPIECE, status);
        });
    if (!receiver.ok()) {
      return absl::Status(receiver.status().code(),
                          absl::StrCat("webhook endpoint ", config_.webhook_listen, ": ",
                                       receiver.status().message()));
    }
    webhooks_ = std::move(*receiver);
    return absl::OkStatus();
  }

  config::Config config_;
  // Shared with the HTTP client, which reports to it.
  std::shared_ptr<metrics::Metrics> metrics_;
  std::unique_ptr<metrics::EngineObserverFanOut> engine_observer_;
  std::unique_ptr<http::CurlHttpClient> http_;
  std::vector<adapters::ProviderAdapterPtr> adapters_;
  std::vector<adapters::ProviderAdapter*> adapter_ptrs_;
  QuotaRefreshObserver quota_observer_;
  std::unique_ptr<operations::OperationsEngine> engine_;
  std::unique_ptr<QuotaMonitor> quota_;
  std::unique_ptr<Directory> directory_;
  std::unique_ptr<TenantDirectory> tenants_;
  std::unique_ptr<GatewayService> service_;
  std::unique_ptr<HealthService> health_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<adapters::soundpiece::WebhookReceiver> webhooks_;
  int grpc_port_ = 0;
  absl::Mutex drain_mu_;
  bool drained_ ABSL_GUARDED_BY(drain_mu_) = false;
};

}  // namespace

absl::StatusOr<std::unique_ptr<GatewayServer>> GatewayServer::Start(config::Config config) {
  auto server = std::make_unique<GatewayServerImpl>(std::move(config));
  absl::Status status = server->Init();
  if (!status.ok()) return status;
  return server;
}

}  // namespace musicgw::gateway
