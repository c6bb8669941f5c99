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
};

enum class BudgetPeriod { kHour, kDay, kWeek, kMonth };

struct BudgetConfig {
  musicgw::v1::TaskKind task = musicgw::v1::TASK_KIND_UNSPECIFIED;
  int64_t limit = 0;
  BudgetPeriod period = BudgetPeriod::kDay;
};

struct TenantConfig {
  std::string name;
  // Lower-case hex SHA-256 of each API key the tenant may use.
  std::vector<std::string> api_key_sha256;
  std::vector<BudgetConfig> budgets;
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
  std::string ledger_path = "musicgw-ledger.db";
  // The shared PostgreSQL ledger (ledger.postgres.dsn, a secret reference) for many replicas;
  // empty: the embedded SQLite ledger at ledger_path. Never logged.
  std::string ledger_postgres_dsn;
  int ledger_postgres_pool_size = 8;
  // This replica's name in the ledger's owner column: unique per replica sharing a ledger.
  // Empty: "local" with SQLite, the host name (the pod's name) with PostgreSQL.
  std::string replica_id;
  absl::Duration operation_deadline = absl::Minutes(15);
  absl::Duration watch_heartbeat = absl::Seconds(15);
  int watch_buffer = 16;
  int download_chunk_bytes = 256 * 1024;
  absl::Duration quota_refresh_interval = absl::Seconds(60);
  absl::Duration webhook_tolerance = absl::Minutes(5);
  std::vector<ProviderConfig> providers;
  std::vector<TenantConfig> tenants;
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
