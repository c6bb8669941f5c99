#include "services/gateway/server.h"

#include <unistd.h>

#include <algorithm>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "adapters/http/curl_http_client.h"
#include "adapters/registry.h"
#include "adapters/webhook_server.h"
#include "common/clock.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/security/tls_certificate_provider.h"
#include "grpcpp/security/tls_credentials_options.h"
#include "grpcpp/server_builder.h"
#include "services/gateway/auth.h"
#include "services/gateway/budgets.h"
#include "services/gateway/credit_estimator.h"
#include "services/gateway/decode_errors.h"
#include "services/gateway/gateway_service.h"
#include "services/gateway/health_reporter.h"
#include "services/gateway/health_service.h"
#include "services/gateway/provider_directory.h"
#include "services/metrics/metrics.h"
#include "services/notify/outbox_planner.h"
#include "services/notify/webhook_api.h"
#include "services/notify/webhook_config.h"
#include "services/notify/webhook_deliverer.h"
#include "services/notify/webhook_sender.h"
#include "services/operations/engine.h"
#include "services/operations/executor.h"
#include "services/operations/operation_store.h"
#include "services/operations/postgres_credentials.h"
#include "services/operations/postgres_quota_share.h"
#include "services/operations/postgres_store.h"
#include "services/operations/quota_monitor.h"

namespace musicgw::gateway {
namespace {

// How often health looks at the ledger's write status (an in-memory read).
constexpr absl::Duration kHealthCheckInterval = absl::Seconds(1);
constexpr int kMaxRequestBytes = 1 << 20;
constexpr int kAcceptThreads = 4;

using operations::QuotaMonitor;

// Refreshes the provider's quota figures after each generation ends, and after a late change
// to what a done one was charged.
class QuotaRefreshObserver final : public operations::EngineObserver {
 public:
  void set_monitor(QuotaMonitor* monitor) { monitor_ = monitor; }
  void OnCompleted(musicgw::v1::Provider provider, musicgw::v1::TaskKind task,
                   musicgw::v1::OperationState outcome, absl::StatusCode code) override {
    if (monitor_ != nullptr) monitor_->RefreshSoon(provider);
  }
  void OnLateChange(musicgw::v1::Provider provider, musicgw::v1::TaskKind task) override {
    if (monitor_ != nullptr) monitor_->RefreshSoon(provider);
  }

 private:
  QuotaMonitor* monitor_ = nullptr;
};

// Wakes the webhook deliverer after each committed change that wrote outbox messages (in the
// same transaction, so they are due now); the many changes that wrote none leave it asleep.
class OutboxWakeObserver final : public operations::EngineObserver {
 public:
  void set_deliverer(notify::WebhookDeliverer* deliverer) { deliverer_ = deliverer; }
  void OnOutboxWritten() override {
    if (deliverer_ != nullptr) deliverer_->Wake();
  }

 private:
  notify::WebhookDeliverer* deliverer_ = nullptr;
};

class GatewayServerImpl final : public GatewayServer {
 public:
  explicit GatewayServerImpl(config::Config config) : config_(std::move(config)) {}

  ~GatewayServerImpl() override { Drain(absl::ZeroDuration()); }

  absl::Status Init() {
    RouteProtobufLogs();
    MUSICGW_ASSIGN_OR_RETURN(metrics_, metrics::Metrics::Create());
    http::CurlHttpClient::Options http_options;
    http_options.observer = metrics_;
    http_options.loop_thread_nice = config_.background_nice;
    http_ = http::CurlHttpClient::Create(std::move(http_options));
    if (http_ == nullptr) return absl::InternalError("cannot start the HTTP client (libcurl)");

    if (!config_.ledger_postgres_dsn.empty()) {
      // Replicas share rotating credentials and the quota reader's figures through the ledger.
      credentials_ = operations::PostgresCredentialStore::Create(PostgresLedgerOptions());
      quota_share_ = operations::PostgresQuotaShare::Create(PostgresLedgerOptions(), ReplicaId());
    }
    for (const auto& provider : config_.providers) {
      auto adapter = adapters::CreateAdapter(provider, http_.get(), credentials_.get());
      if (!adapter.ok()) {
        return absl::Status(
            adapter.status().code(),
            absl::StrCat("provider account ", provider.name, ": ", adapter.status().message()));
      }
      adapter_ptrs_.push_back(adapter->get());
      adapters_.push_back(std::move(*adapter));
    }
    for (auto& adapter : adapters_) adapter->Start();

    // Refused webhook targets and unusable secrets fail the start, before the ledger opens.
    MUSICGW_ASSIGN_OR_RETURN(outbox_planner_, notify::PlannerFromConfig(config_, Clock::Real()));
    MUSICGW_ASSIGN_OR_RETURN(std::unique_ptr<operations::OperationStore> store, OpenLedger());
    // The engine owns the ledger; the webhook deliverer and RPCs use it while the engine lives
    // (both stop before it is destroyed).
    ledger_ = store.get();
    operations::EngineOptions options;
    options.outbox = notify::OutboxHook(*outbox_planner_);
    options.ledger_path = config_.ledger_path;
    options.replica_id = ReplicaId();
    options.lease = config_.ledger_lease;
    if (!config_.ledger_postgres_dsn.empty()) {
      // Other replicas' changes and webhook nudges arrive over LISTEN on the ledger's database.
      operations::PostgresListenerOptions link;
      link.dsn = config_.ledger_postgres_dsn;
      options.replica_link = operations::NewPostgresReplicaLink(std::move(link));
    }
    options.operation_deadline = config_.operation_deadline;
    options.watch_heartbeat = config_.watch_heartbeat;
    options.watch_buffer = config_.watch_buffer;
    options.worker_threads = config_.worker_threads;
    options.background_nice = config_.background_nice;
    options.download_chunk_bytes = config_.download_chunk_bytes;
    options.budgets = MakeBudgetResolver(config_.tenants);
    MUSICGW_ASSIGN_OR_RETURN(options.asset_store, OpenAssetStore());
    options.custody_fetch_timeout = config_.custody_fetch_timeout;
    options.custody_retry_initial = config_.custody_retry;
    options.custody_sweep_interval = config_.custody_sweep_interval;
    {
      std::map<std::string, absl::Duration> retention;
      for (const auto& tenant : config_.tenants) retention[tenant.name] = tenant.asset_retention;
      options.asset_retention = [retention = std::move(retention)](const std::string& tenant) {
        auto it = retention.find(tenant);
        return it != retention.end() ? it->second : config::TenantConfig().asset_retention;
      };
    }
    engine_observer_ = std::make_unique<metrics::EngineObserverFanOut>(
        std::vector<operations::EngineObserver*>{&quota_observer_, &outbox_wake_, metrics_.get()});
    options.observer = engine_observer_.get();
    MUSICGW_ASSIGN_OR_RETURN(
        engine_, operations::CreateOperationsEngine(std::move(options), std::move(store),
                                                    adapter_ptrs_, http_.get()));

    quota_ =
        std::make_unique<QuotaMonitor>(adapter_ptrs_, http_.get(), config_.quota_refresh_interval);
    quota_observer_.set_monitor(quota_.get());
    if (quota_share_ != nullptr) {
      // Longer than two reads, so the reader keeps it; a dead reader is replaced within it.
      quota_->set_share(quota_share_.get(), 2 * config_.quota_refresh_interval + absl::Seconds(5));
    }
    operations::OperationsEngine* engine = engine_.get();
    credits_ = std::make_unique<CreditEstimator>(
        config_.providers,
        [engine](musicgw::v1::Provider provider, const std::string& account, absl::Time since) {
          return engine->ChargedOperations(provider, account, since);
        });
    quota_->set_listener([this](const adapters::ProviderAdapter* adapter,
                                std::vector<adapters::QuotaFigure>* figures) {
      credits_->Complete(adapter->provider(), adapter->account(), figures);
      engine_->UpdateQuota(adapter, *figures);
    });
    AccountDirectorySources sources;
    sources.adapters = adapter_ptrs_;
    sources.states = [engine] { return engine->ProviderStates(); };
    sources.quotas = [quota = quota_.get()] { return quota->Snapshot(); };
    sources.budgets = [engine](const config::TenantConfig& tenant) {
      return ReportBudgets(*engine, tenant, Clock::Real().Now());
    };
    directory_ = std::make_unique<AccountDirectory>(std::move(sources));
    tenants_ = std::make_unique<TenantDirectory>(config_.tenants);
    admission_ = std::make_unique<TenantAdmission>(Clock::Real(), config_.tenants);

    GatewayDeps deps;
    deps.tenants = tenants_.get();
    deps.engine = engine_.get();
    deps.adapters = adapter_ptrs_;
    deps.directory = directory_.get();
    deps.observer = metrics_.get();
    deps.admission = admission_.get();
    // At the RPC threads' priority: the accept is on the caller's latency path. Several threads,
    // so that concurrent accepts share the ledger's group sync.
    accepts_ = std::make_unique<operations::Executor>(kAcceptThreads);
    deps.accepts = accepts_.get();
    CreateWebhookDeliverer();
    deps.webhooks = webhook_api_.get();
    service_ = std::make_unique<GatewayService>(std::move(deps));

    // Our own health service, not gRPC's built-in one: a drain must end Watch streams at once.
    health_ = std::make_unique<HealthService>(
        std::vector<std::string>{musicgw::v1::MusicGateway::service_full_name()});
    grpc::reflection::InitProtoReflectionServerBuilderPlugin();
    grpc::ServerBuilder builder;
    builder.AddListeningPort(config_.grpc_listen, GrpcCredentials(), &grpc_port_);
    builder.RegisterService(service_.get());
    // Requests are small (the largest is a Generate with lyrics); a bigger message is refused by
    // gRPC itself (RESOURCE_EXHAUSTED) before it is parsed.
    builder.SetMaxReceiveMessageSize(kMaxRequestBytes);
    builder.RegisterService(health_.get());
    // A request that cannot be parsed (e.g. not UTF-8) gets INVALID_ARGUMENT, not UNIMPLEMENTED,
    // and errors gRPC produces itself get an ErrorInfo too.
    std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
        interceptors;
    interceptors.push_back(MakeDecodeErrorInterceptorFactory());
    builder.experimental().SetInterceptorCreators(std::move(interceptors));
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
    deliverer_->Start();
    MUSICGW_RETURN_IF_ERROR(StartWebhooks());
    quota_->Start();
    MUSICGW_RETURN_IF_ERROR(StartMetrics());
    StartHealthReporter();
    log::Info("musicgw serving", {{"grpc_port", grpc_port_},
                                  {"providers", static_cast<long>(adapters_.size())},
                                  {"tenants", static_cast<long>(config_.tenants.size())},
                                  {"ledger", LedgerDescription()}});
    return absl::OkStatus();
  }

  int grpc_port() const override { return grpc_port_; }
  int metrics_port() const override { return metrics_ == nullptr ? 0 : metrics_->port(); }
  int webhook_port() const override { return webhooks_ == nullptr ? 0 : webhooks_->port(); }

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
    // The reporter stops first, so nothing turns health back to SERVING during the drain.
    if (health_reporter_ != nullptr) health_reporter_->Stop();
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
    // Every call has finished, so no accept is pending.
    if (accepts_ != nullptr) accepts_->Stop();
    // Outgoing webhooks stop before the ledger goes; what is unsent stays in the outbox.
    outbox_wake_.set_deliverer(nullptr);
    if (deliverer_ != nullptr) deliverer_->Stop();
    if (quota_ != nullptr) quota_->Stop();
    for (auto& adapter : adapters_) adapter->Stop();
    // Scrapes keep working through the drain; the sources go before what they read.
    if (metrics_ != nullptr) metrics_->ClearSources();
    webhooks_.reset();
    webhook_handlers_.clear();
    service_.reset();
    webhook_api_.reset();
    deliverer_.reset();
    webhook_sender_.reset();
    server_.reset();
    health_reporter_.reset();
    health_.reset();
    engine_.reset();
    quota_.reset();
    quota_share_.reset();
    adapters_.clear();
    credentials_.reset();
    http_.reset();
    if (metrics_ != nullptr) metrics_->StopExposer();
    log::Info("musicgw stopped");
  }

 private:
  // Outgoing webhooks: the deliverer sends the ledger's outbox (every replica runs one; claims
  // keep them apart), and the RPCs read and refill it.
  void CreateWebhookDeliverer() {
    const config::WebhookDeliveryConfig& delivery = config_.webhook_delivery;
    webhook_sender_ = notify::NewCurlWebhookSender(delivery.allow_private_targets);
    notify::DeliveryOptions delivery_options = notify::DeliveryOptionsFromConfig(delivery);
    delivery_options.thread_nice = config_.background_nice;
    deliverer_ = std::make_unique<notify::WebhookDeliverer>(
        *ledger_, *webhook_sender_,
        [planner = outbox_planner_.get()](const std::string& tenant) {
          return planner->Secrets(tenant);
        },
        Clock::Real(), delivery_options,
        [metrics = metrics_.get()](absl::string_view outcome, bool gave_up) {
          metrics->OnWebhookDelivery(outcome, gave_up);
        });
    outbox_wake_.set_deliverer(deliverer_.get());
    notify::WebhookApiDeps deps;
    deps.store = ledger_;
    deps.planner = outbox_planner_.get();
    deps.allow_private_targets = delivery.allow_private_targets;
    deps.wake = [deliverer = deliverer_.get()] { deliverer->Wake(); };
    webhook_api_ = std::make_unique<notify::WebhookApi>(std::move(deps));
  }

  // grpc.health.v1 answers for "" and for the service's own name (HealthService knows both),
  // NOT_SERVING while the ledger cannot be written.
  void StartHealthReporter() {
    operations::OperationsEngine* engine = engine_.get();
    HealthService* health = health_.get();
    health_reporter_ = std::make_unique<HealthReporter>(
        Clock::Real(), kHealthCheckInterval, [engine] { return engine->LedgerStatus(); },
        [health](bool serving) { health->SetServing(serving); });
    health_reporter_->Start();
  }

  // Plaintext, or TLS from files gRPC re-reads every reload_interval (a renewed certificate
  // takes effect without a restart), with client certificates verified when a CA is set.
  std::shared_ptr<grpc::ServerCredentials> GrpcCredentials() const {
    const config::TlsConfig& tls = config_.tls;
    if (!tls.enabled()) return grpc::InsecureServerCredentials();
    auto provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
        tls.key_file, tls.cert_file, tls.client_ca_file,
        static_cast<unsigned int>(absl::ToInt64Seconds(tls.reload_interval)));
    grpc::experimental::TlsServerCredentialsOptions options(provider);
    options.watch_identity_key_cert_pairs();
    if (tls.client_ca_file.empty()) {
      options.set_cert_request_type(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
    } else {
      options.watch_root_certs();
      options.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
    }
    return grpc::experimental::TlsServerCredentials(options);
  }

  // The asset custody store: a directory next to the SQLite ledger by default; with PostgreSQL,
  // ledger.assets_path on a volume every replica mounts (README "Asset custody").
  absl::StatusOr<std::shared_ptr<operations::AssetStore>> OpenAssetStore() {
    std::string path = config_.assets_path;
    if (path.empty()) {
      path = config_.ledger_postgres_dsn.empty() ? config_.ledger_path + ".assets"
                                                 : std::string("musicgw-assets");
    }
    auto store = operations::OpenDirectoryAssetStore(path);
    if (!store.ok()) return store.status();
    return std::shared_ptr<operations::AssetStore>(*std::move(store));
  }

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
    auto store = operations::OpenPostgresOperationStore(PostgresLedgerOptions());
    if (!store.ok()) {
      return absl::Status(store.status().code(),
                          absl::StrCat("ledger (PostgreSQL): ", store.status().message()));
    }
    return store;
  }

  operations::PostgresOptions PostgresLedgerOptions() const {
    operations::PostgresOptions options;
    options.dsn = config_.ledger_postgres_dsn;
    options.pool_size = config_.ledger_postgres_pool_size;
    return options;
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
  // engine's routing view, credential refreshes and webhook outcomes, per provider account.
  absl::Status StartMetrics() {
    metrics_->SetQuotaSource([quota = quota_.get()] { return quota->Snapshot(); });
    metrics_->SetEngine(engine_.get());
    metrics_->SetAcceptQueueSource([accepts = accepts_.get()] { return accepts->Queued(); });
    for (auto* adapter : adapter_ptrs_) {
      if (adapter->credential_refreshes().has_value()) {
        metrics_->AddTokenRefreshSource(adapter->provider(), adapter->account(), [adapter] {
          return adapter->credential_refreshes().value_or(0);
        });
      }
    }
    for (const auto& [adapter, handler] : webhook_handlers_) {
      metrics_->AddWebhookSource(adapter->provider(), adapter->account(),
                                 [handler = handler.get()] { return handler->counters(); });
    }
    return metrics_->StartExposer(config_.metrics_listen, config_.metrics_tls);
  }

  // Provider callbacks: every account whose adapter asks for webhooks gets its routes on the
  // one webhook listener; its verified updates go to the engine at once.
  absl::Status StartWebhooks() {
    if (config_.webhook_listen.empty()) return absl::OkStatus();
    adapters::WebhookSettings settings;
    settings.tolerance = config_.webhook_tolerance;
    adapters::WebhookServer::Routes routes;
    operations::OperationsEngine* engine = engine_.get();
    for (auto* adapter : adapter_ptrs_) {
      auto handler = adapter->CreateWebhookHandler(settings);
      if (!handler.ok()) {
        return absl::Status(handler.status().code(),
                            absl::StrCat("provider account ", adapter->account(), ": ",
                                         handler.status().message()));
      }
      if (*handler == nullptr) continue;
      adapters::WebhookAccountRoute route;
      route.handler = handler->get();
      route.sink = [engine, provider = adapter->provider()](const adapters::UpstreamStatus& s) {
        engine->OnProviderUpdate(provider, s);
      };
      for (const std::string& path : adapter->webhook_paths()) {
        auto it = std::find_if(routes.begin(), routes.end(),
                               [&path](const auto& r) { return r.first == path; });
        if (it == routes.end()) it = routes.insert(routes.end(), {path, {}});
        it->second.push_back(route);
      }
      webhook_handlers_.emplace_back(adapter, std::move(*handler));
    }
    if (webhook_handlers_.empty()) {
      log::Warning("webhook endpoint disabled: no provider account has webhook_secrets");
      return absl::OkStatus();
    }
    adapters::WebhookServerOptions options;
    options.tls = config_.webhook_tls;
    options.thread_nice = config_.background_nice;
    const size_t colon = config_.webhook_listen.rfind(':');
    options.host = config_.webhook_listen.substr(0, colon);
    if (!absl::SimpleAtoi(config_.webhook_listen.substr(colon + 1), &options.port)) {
      return absl::InvalidArgumentError("server.webhook_listen: bad port");
    }
    auto server = adapters::WebhookServer::Start(std::move(options), std::move(routes));
    if (!server.ok()) {
      return absl::Status(server.status().code(),
                          absl::StrCat("webhook endpoint ", config_.webhook_listen, ": ",
                                       server.status().message()));
    }
    webhooks_ = std::move(*server);
    return absl::OkStatus();
  }

  config::Config config_;
  // Shared with the HTTP client, which reports to it.
  std::shared_ptr<metrics::Metrics> metrics_;
  std::unique_ptr<metrics::EngineObserverFanOut> engine_observer_;
  std::unique_ptr<http::CurlHttpClient> http_;
  // PostgreSQL ledger only; outlive the adapters and the quota monitor that use them.
  std::unique_ptr<operations::PostgresCredentialStore> credentials_;
  std::unique_ptr<operations::PostgresQuotaShare> quota_share_;
  std::vector<adapters::ProviderAdapterPtr> adapters_;
  std::vector<adapters::ProviderAdapter*> adapter_ptrs_;
  QuotaRefreshObserver quota_observer_;
  OutboxWakeObserver outbox_wake_;
  std::unique_ptr<notify::OutboxPlanner> outbox_planner_;
  // Owned by engine_.
  operations::OperationStore* ledger_ = nullptr;
  std::unique_ptr<operations::OperationsEngine> engine_;
  std::unique_ptr<notify::WebhookSender> webhook_sender_;
  std::unique_ptr<notify::WebhookDeliverer> deliverer_;
  std::unique_ptr<notify::WebhookApi> webhook_api_;
  std::unique_ptr<QuotaMonitor> quota_;
  std::unique_ptr<CreditEstimator> credits_;
  std::unique_ptr<AccountDirectory> directory_;
  std::unique_ptr<TenantDirectory> tenants_;
  std::unique_ptr<TenantAdmission> admission_;
  std::unique_ptr<operations::Executor> accepts_;  // Generate's durable accepts
  std::unique_ptr<GatewayService> service_;
  std::unique_ptr<HealthService> health_;
  std::unique_ptr<HealthReporter> health_reporter_;
  std::unique_ptr<grpc::Server> server_;
  // Each webhook handler with the adapter it belongs to; outlive webhooks_.
  std::vector<std::pair<adapters::ProviderAdapter*, std::unique_ptr<adapters::WebhookHandler>>>
      webhook_handlers_;
  std::unique_ptr<adapters::WebhookServer> webhooks_;
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
