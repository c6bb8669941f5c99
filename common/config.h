// File: config.h
// The gateway's configuration: a JSON file, checked completely at start. Any problem fails with
// one line naming the key path and what is wrong. Secrets are never written in the file: they
// are referenced as {"env": "NAME"} or {"file": "/path"} and resolved here.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "musicgw/v1/musicgw.pb.h"

namespace musicgw::config {

struct ProviderConfig {
  // Account name: a metrics label and the name shown by ListProviders.
  std::string name;
  musicgw::v1::Provider type = musicgw::v1::PROVIDER_UNSPECIFIED;
  // Loudly: "web" (vega bundles, OAuth) or "b2b" (API-KEY). Soundpiece: "v1".
  std::string dialect;
  std::string base_url;
  // Resolved secret values; never log them.
  std::string api_key;
  std::string refresh_token;
  std::vector<std::string> webhook_secrets;
  // Loudly web: OAuth client id (not a secret) and where the rotated refresh token is kept.
  std::string client_id;
  std::string token_state_file;
  // Soundpiece: the URL the provider should call back; empty = no webhooks requested.
  std::string callback_url;
  // Loudly B2B: how long one synchronous generation may take.
  absl::Duration sync_timeout = absl::Seconds(180);
  // Soundpiece publishes no balance. When the operator states the credits bought, the gateway
  // reports credits left as that balance minus what its ledger shows charged on the account
  // since `credits_since`, at `credit_costs` per task (1 for tasks not listed). 0: unknown.
  int64_t credit_balance = 0;
  absl::Time credits_since = absl::InfinitePast();
  std::map<musicgw::v1::TaskKind, int64_t> credit_costs;
  // Loudly: the account's catalog where its API publishes none (web; empty = the one shipped
  // with the gateway), or until its own is read (b2b). Structures are (id, name).
  std::vector<std::string> catalog_genres;
  std::vector<std::pair<int32_t, std::string>> catalog_structures;
};

enum class BudgetPeriod { kHour, kDay, kWeek, kMonth };

struct BudgetConfig {
  musicgw::v1::TaskKind task = musicgw::v1::TASK_KIND_UNSPECIFIED;
  int64_t limit = 0;
  BudgetPeriod period = BudgetPeriod::kDay;
};

// A token bucket: `per_second` sustained, up to `burst` at once.
struct RateLimitConfig {
  double per_second = 0;
  double burst = 0;
};

// Per-tenant limits (tenant_defaults.limits, overridden key by key by tenants[].limits). The
// defaults stop a runaway client without getting in the way of a normal heavy one.
struct TenantLimitsConfig {
  RateLimitConfig generate{100, 1000};
  RateLimitConfig read{50000, 50000};  // GetOperation, WaitOperation, GetQuota, ListProviders
  RateLimitConfig list{1000, 2000};    // ListOperations
  RateLimitConfig cancel{100, 1000};
  RateLimitConfig stream{1000, 5000};  // opening WatchOperation and Download streams
  int64_t max_open_streams = 200000;
  // Exact across replicas: checked in the ledger transaction that stores a new operation.
  int64_t max_live_operations = 50000;
};

// TLS on a port (server.tls for gRPC; server.metrics_tls, server.webhook_tls). The files are
// re-read every reload_interval (gRPC's file watcher; on the HTTP ports, at the first handshake
// after it), so a renewed certificate takes effect without a restart.
struct TlsConfig {
  std::string cert_file;  // PEM chain; empty: plaintext
  std::string key_file;
  // Optional mTLS: clients must present a certificate issued by this CA bundle.
  std::string client_ca_file;
  absl::Duration reload_interval = absl::Seconds(60);
  bool enabled() const { return !cert_file.empty(); }
};

// Outgoing webhooks (tenants[].webhooks): where the tenant's operation events go.
struct WebhookEndpointConfig {
  std::string name;  // unique per tenant; "request" is reserved for GenerateRequest.notify
  std::string url;
  std::vector<std::string> events;  // empty: every operation.* event
};

struct TenantWebhooksConfig {
  // Resolved active "whsec_" secrets (several while one is rotated out); never log them.
  std::vector<std::string> secrets;
  std::vector<WebhookEndpointConfig> endpoints;
};

// How outgoing webhooks are delivered (the top-level `webhooks` section), for every tenant.
struct WebhookDeliveryConfig {
  // Loopback, private, link-local and metadata targets are refused unless this is set
  // (sandboxes and tests).
  bool allow_private_targets = false;
  absl::Duration timeout = absl::Seconds(10);
  int per_endpoint_concurrency = 4;
  // Backoff: first_retry doubling up to max_retry, with jitter, until retry_for after the event.
  absl::Duration first_retry = absl::Seconds(5);
  absl::Duration max_retry = absl::Hours(1);
  absl::Duration retry_for = absl::Hours(25);
};

struct TenantConfig {
  std::string name;
  // Lower-case hex SHA-256 of each API key the tenant may use.
  std::vector<std::string> api_key_sha256;
  std::vector<BudgetConfig> budgets;
  TenantLimitsConfig limits;
  // mTLS identities: a client certificate carrying one of these subject alternative names
  // (e.g. "spiffe://example.org/ns/batch/sa/renderer", a DNS name) is this tenant, no API key
  // needed.
  std::vector<std::string> client_sans;
  // How long the gateway keeps its copy of this tenant's assets (asset_retention_seconds;
  // default tenant_defaults.asset_retention_seconds, else 30 days). A Download after that is
  // NOT_FOUND ASSET_EXPIRED.
  absl::Duration asset_retention = absl::Hours(24 * 30);
  // Outgoing webhooks (tenants[].webhooks): endpoints and signing secrets; none by default.
  TenantWebhooksConfig webhooks;
};

struct Config {
  std::string grpc_listen = "0.0.0.0:50051";
  std::string metrics_listen = "0.0.0.0:9464";
  // Where provider webhooks are received; empty disables the endpoint.
  std::string webhook_listen;
  // SIGTERM: how long open calls get before the process exits.
  absl::Duration drain_deadline = absl::Seconds(20);
  // The server's keepalive enforcement: clients must not ping more often than this.
  absl::Duration keepalive_min_ping_interval = absl::Seconds(10);
  TlsConfig tls;
  // Optional TLS on the metrics and webhook ports (server.metrics_tls, server.webhook_tls),
  // the same shape and reload as server.tls; absent: plaintext.
  TlsConfig metrics_tls;
  TlsConfig webhook_tls;
  std::string ledger_path = "musicgw-ledger.db";
  // The shared PostgreSQL ledger (ledger.postgres.dsn, a secret reference) for many replicas;
  // empty: the embedded SQLite ledger at ledger_path. Never logged.
  std::string ledger_postgres_dsn;
  int ledger_postgres_pool_size = 8;
  // The asset custody store (ledger.assets_path): a directory on the data volume, shared by
  // every replica (a ReadWriteMany volume) when the ledger is PostgreSQL. Empty: next to the
  // SQLite ledger ("<ledger.path>.assets"), or "musicgw-assets" with PostgreSQL.
  std::string assets_path;
  // This replica's name in the ledger's owner column: unique per replica sharing a ledger.
  // Empty: "local" with SQLite, the host name (the pod's name) with PostgreSQL.
  std::string replica_id;
  // How long a replica's claim on the live operations it tracks lasts without renewal
  // (ledger.lease_seconds): a dead replica's operations are taken over within about this long.
  absl::Duration ledger_lease = absl::Minutes(2);
  absl::Duration operation_deadline = absl::Minutes(15);
  absl::Duration watch_heartbeat = absl::Seconds(15);
  int watch_buffer = 16;
  // Threads that run trackers, ledger writes and fan-out (operations.worker_threads). A ledger
  // write blocks its thread until its fsync; writers on other threads share that fsync, so more
  // threads than cores means fewer fsyncs per operation under load.
  int worker_threads = 8;
  // The nice value (0-19) of threads doing work nobody waits on at that moment: trackers and
  // ledger writes, custody copies, provider I/O, webhook delivery
  // (operations.background_nice). Under contention the RPC threads go first, so one tenant's
  // accepted operations cannot queue another tenant's calls. 0 runs them like the RPC threads.
  int background_nice = 10;
  int download_chunk_bytes = 256 * 1024;
  // Asset custody: one fetch's limit, the first background retry delay (doubling up to 30 min)
  // and how often pending fetches are retried and expired assets swept.
  absl::Duration custody_fetch_timeout = absl::Seconds(60);
  absl::Duration custody_retry = absl::Seconds(10);
  absl::Duration custody_sweep_interval = absl::Seconds(30);
  absl::Duration quota_refresh_interval = absl::Seconds(60);
  absl::Duration webhook_tolerance = absl::Minutes(5);
  std::vector<ProviderConfig> providers;
  std::vector<TenantConfig> tenants;
  WebhookDeliveryConfig webhook_delivery;
};

// Looks up an environment variable; injectable for tests.
using EnvLookup = std::function<std::optional<std::string>(const std::string&)>;
EnvLookup ProcessEnv();

// Parses and checks a config document. Errors are INVALID_ARGUMENT with the message
// "<key path>: <problem>", e.g. "providers[1].base_url: must be an http or https URL".
absl::StatusOr<Config> ParseConfig(absl::string_view json_text, const EnvLookup& env);
// Reads and parses a file.
absl::StatusOr<Config> LoadConfigFile(const std::string& path, const EnvLookup& env);

const char* BudgetPeriodName(BudgetPeriod period);

}  // namespace musicgw::config
