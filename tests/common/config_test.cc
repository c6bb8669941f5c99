#include "common/config.h"

#include <cstdio>
#include <fstream>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace musicgw::config {
namespace {

using nlohmann::json;

constexpr char kKeyHash[] = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b";

json ValidConfig() {
  return json::parse(R"({
    "server": {"grpc_listen": "127.0.0.1:0", "metrics_listen": "127.0.0.1:0",
               "webhook_listen": "127.0.0.1:0", "drain_deadline_seconds": 5},
    "ledger": {"path": "/tmp/ledger.db"},
    "operations": {"deadline_seconds": 600, "watch_heartbeat_seconds": 2, "watch_buffer": 8,
                   "worker_threads": 3, "download_chunk_bytes": 65536,
                   "background_nice": 5},
    "providers": [
      {"name": "loudly-main", "type": "loudly", "dialect": "web",
       "base_url": "http://127.0.0.1:9001", "client_id": "1_abc",
       "refresh_token": {"env": "LOUDLY_REFRESH_TOKEN"}, "token_state_file": "/tmp/loudly.token"},
      {"name": "soundpiece-main", "type": "soundpiece", "base_url": "http://127.0.0.1:9002",
       "api_key": {"env": "SOUNDPIECE_API_KEY"},
       "webhook_secrets": {"env": "SOUNDPIECE_WEBHOOK_SECRETS"},
       "callback_url": "https://gw.example.com/webhooks/soundpiece"}
    ],
    "tenants": [
      {"name": "acme", "api_key_sha256": [")" +
                     std::string(kKeyHash) + R"("],
       "budgets": [{"task": "SAMPLE", "limit": 10, "period": "day"}]}
    ]
  })");
}

EnvLookup FakeEnv(const std::map<std::string, std::string>& values = {
                      {"LOUDLY_REFRESH_TOKEN", "refresh-secret"},
                      {"SOUNDPIECE_API_KEY", "spk_secret"},
                      {"SOUNDPIECE_WEBHOOK_SECRETS", "whsec_AAAA whsec_BBBB"}}) {
  return [values](const std::string& name) -> std::optional<std::string> {
    auto it = values.find(name);
    if (it == values.end()) return std::nullopt;
    return it->second;
  };
}

std::string ErrorOf(const json& doc, const EnvLookup& env = FakeEnv()) {
  auto config = ParseConfig(doc.dump(), env);
  if (config.ok()) return "OK";
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
  return std::string(config.status().message());
}

TEST(ConfigTest, ParsesAValidConfig) {
  auto config = ParseConfig(ValidConfig().dump(), FakeEnv());
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->grpc_listen, "127.0.0.1:0");
  EXPECT_EQ(config->drain_deadline, absl::Seconds(5));
  EXPECT_EQ(config->watch_heartbeat, absl::Seconds(2));
  EXPECT_EQ(config->watch_buffer, 8);
  EXPECT_EQ(config->worker_threads, 3);
  EXPECT_EQ(config->background_nice, 5);
  ASSERT_EQ(config->providers.size(), 2u);
  EXPECT_EQ(config->providers[0].type, musicgw::v1::PROVIDER_LOUDLY);
  EXPECT_EQ(config->providers[0].refresh_token, "refresh-secret");
  EXPECT_EQ(config->providers[1].api_key, "spk_secret");
  EXPECT_EQ(config->providers[1].webhook_secrets,
            (std::vector<std::string>{"whsec_AAAA", "whsec_BBBB"}));
  ASSERT_EQ(config->tenants.size(), 1u);
  EXPECT_EQ(config->tenants[0].budgets[0].task, musicgw::v1::TASK_KIND_SAMPLE);
  EXPECT_EQ(config->tenants[0].budgets[0].limit, 10);
}

TEST(ConfigTest, ReadsTheSoundpieceCreditsTheOperatorBought) {
  json doc = ValidConfig();
  doc["providers"][1]["credits"] = {{"balance", 5000},
                                    {"since", "2026-11-01T00:00:00Z"},
                                    {"costs", {{"song", 4}, {"SAMPLE", 0}}}};
  auto config = ParseConfig(doc.dump(), FakeEnv());
  ASSERT_TRUE(config.ok()) << config.status();
  const ProviderConfig& soundpiece = config->providers[1];
  EXPECT_EQ(soundpiece.credit_balance, 5000);
  EXPECT_EQ(soundpiece.credits_since, absl::FromUnixSeconds(1793491200));
  EXPECT_EQ(soundpiece.credit_costs.at(musicgw::v1::TASK_KIND_SONG), 4);
  EXPECT_EQ(soundpiece.credit_costs.at(musicgw::v1::TASK_KIND_SAMPLE), 0);
  EXPECT_EQ(config->providers[0].credit_balance, 0);  // unknown unless stated
}

TEST(ConfigTest, ReadsALoudlyCatalogOverride) {
  json doc = ValidConfig();
  doc["providers"][0]["catalog"] = {
      {"genres", {"Deep House", "Polka Step"}},
      {"structures", {{{"id", 2}, {"name", "Intro-Verse-Chorus"}}, {{"id", 7}}}}};
  auto config = ParseConfig(doc.dump(), FakeEnv());
  ASSERT_TRUE(config.ok()) << config.status();
  const ProviderConfig& loudly = config->providers[0];
  EXPECT_EQ(loudly.catalog_genres, (std::vector<std::string>{"Deep House", "Polka Step"}));
  ASSERT_EQ(loudly.catalog_structures.size(), 2u);
  EXPECT_EQ(loudly.catalog_structures[0], std::make_pair(2, std::string("Intro-Verse-Chorus")));
  EXPECT_EQ(loudly.catalog_structures[1].first, 7);

  doc["providers"][0]["catalog"] = {{"genre", {"House"}}};
  EXPECT_EQ(ErrorOf(doc), "providers[0].catalog.genre: unknown key");
  doc["providers"][0]["catalog"] = {{"genres", {""}}};
  EXPECT_EQ(ErrorOf(doc), "providers[0].catalog.genres: each genre must be a non-empty string");
  doc["providers"][0]["catalog"] = {{"structures", {{{"name", "x"}}}}};
  EXPECT_EQ(ErrorOf(doc), "providers[0].catalog.structures[0].id: required");
  doc = ValidConfig();
  doc["providers"][1]["catalog"] = {{"genres", {"House"}}};
  EXPECT_EQ(ErrorOf(doc), "providers[1].catalog: unknown key");
}

TEST(ConfigTest, ReadsSecretsFromFilesWithoutTheTrailingNewline) {
  const std::string path = testing::TempDir() + "/spk_key";
  std::ofstream(path) << "spk_from_file\n";
  json doc = ValidConfig();
  doc["providers"][1]["api_key"] = {{"file", path}};
  auto config = ParseConfig(doc.dump(), FakeEnv());
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->providers[1].api_key, "spk_from_file");
  std::remove(path.c_str());
}

TEST(ConfigTest, EachProblemNamesItsKey) {
  struct Case {
    std::function<void(json&)> mutate;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {[](json& d) { d["serverr"] = json::object(); }, "serverr: unknown key"},
      {[](json& d) { d["server"]["grpc_listen"] = "nope"; },
       "server.grpc_listen: must be host:port, e.g. 0.0.0.0:50051"},
      {[](json& d) { d["server"]["metrics_listen"] = 9464; },
       "server.metrics_listen: must be a string"},
      {[](json& d) { d["server"]["drain_deadline_seconds"] = 601; },
       "server.drain_deadline_seconds: must be between 0 and 600 seconds"},
      {[](json& d) { d["ledger"]["path"] = ""; }, "ledger.path: must not be empty"},
      {[](json& d) {
         d["server"]["tls"] = {{"cert_file", "/nonexistent/cert.pem"}};
       },
       "server.tls.key_file: required"},
      {[](json& d) {
         d["server"]["tls"] = {{"cert_file", "/nonexistent/c.pem"}, {"key_file", "/nonexistent/k"}};
       },
       "server.tls.cert_file: cannot read /nonexistent/c.pem"},
      {[](json& d) { d["server"]["metrics_tls"] = "on"; }, "server.metrics_tls: must be an object"},
      {[](json& d) {
         d["server"]["webhook_tls"] = {{"cert_file", "/nonexistent/c.pem"},
                                       {"key_file", "/nonexistent/k"}};
       },
       "server.webhook_tls.cert_file: cannot read /nonexistent/c.pem"},
      {[](json& d) {
         d["server"]["metrics_tls"] = {{"cert", "x"}};
       },
       "server.metrics_tls.cert_file: required"},
      {[](json& d) { d["tenants"][0]["client_sans"] = {""}; },
       "tenants[0].client_sans: must be a list of non-empty strings"},
      {[](json& d) {
         d["tenants"][0]["limits"] = {{"generate_per_second", 0}};
       },
       "tenants[0].limits.generate_per_second: must be a number from 1 to 10000000"},
      {[](json& d) {
         d["tenants"][0]["limits"] = {{"writes_per_second", 5}};
       },
       "tenants[0].limits.writes_per_second: unknown key"},
      {[](json& d) {
         d["tenant_defaults"] = {{"limits", {{"max_open_streams", 0}}}};
       },
       "tenant_defaults.limits.max_open_streams: must be between 1 and 10000000"},
      {[](json& d) {
         d["ledger"]["postgres"] = {{"dsn", {{"env", "PG_DSN"}}}};
       },
       "ledger: set either \"path\" (SQLite) or \"postgres\", not both"},
      {[](json& d) {
         d["ledger"] = {{"postgres", json::object()}};
       },
       "ledger.postgres.dsn: is required"},
      {[](json& d) {
         d["ledger"] = {{"postgres", {{"dsn", "host=db password=x"}}}};
       },
       "ledger.postgres.dsn: must be {\"env\": \"NAME\"} or {\"file\": \"/path\"}; secrets are "
       "never written in the config file"},
      {[](json& d) {
         d["ledger"] = {{"postgres", {{"dsn", {{"env", "UNSET"}}}, {"pool", 2}}}};
       },
       "ledger.postgres.dsn: environment variable UNSET is not set"},
      {[](json& d) { d["operations"]["watch_buffer"] = 0; },
       "operations.watch_buffer: must be between 1 and 1024"},
      {[](json& d) { d["operations"]["worker_threads"] = 0; },
       "operations.worker_threads: must be between 1 and 64"},
      {[](json& d) { d["operations"]["background_nice"] = -1; },
       "operations.background_nice: must be between 0 and 19"},
      {[](json& d) { d["operations"]["background_nice"] = 20; },
       "operations.background_nice: must be between 0 and 19"},
      {[](json& d) { d["operations"]["watch_buffer"] = 2.5; },
       "operations.watch_buffer: must be an integer"},
      {[](json& d) { d["operations"]["deadline_seconds"] = "x"; },
       "operations.deadline_seconds: must be a number of seconds"},
      {[](json& d) { d.erase("providers"); },
       "providers: required: a list with at least one provider account"},
      {[](json& d) { d["providers"][0]["type"] = "suno"; },
       "providers[0].type: must be \"loudly\" or \"soundpiece\""},
      {[](json& d) { d["providers"][0].erase("name"); }, "providers[0].name: required"},
      {[](json& d) { d["providers"][0]["name"] = "bad name"; },
       "providers[0].name: may hold only letters, digits, '-' and '_'"},
      {[](json& d) { d["providers"][1]["base_url"] = "ftp://x"; },
       "providers[1].base_url: must be an http or https URL"},
      {[](json& d) {
         d["providers"][0]["credits"] = {{"balance", 10}};
       },
       "providers[0].credits: unknown key"},
      {[](json& d) {
         d["providers"][1]["credits"] = {{"since", "2026-11-01T00:00:00Z"}};
       },
       "providers[1].credits.balance: required"},
      {[](json& d) {
         d["providers"][1]["credits"] = {{"balance", 10}, {"since", "last tuesday"}};
       },
       "providers[1].credits.since: must be an RFC 3339 time, e.g. 2026-11-01T00:00:00Z"},
      {[](json& d) {
         d["providers"][1]["credits"] = {{"balance", 10}, {"costs", {{"opera", 2}}}};
       },
       "providers[1].credits.costs.opera: unknown task; one of PARAMETRIC_MUSIC, TEXT_TO_MUSIC, "
       "SONG, INSTRUMENTAL, SAMPLE, SOUND_EFFECT, REMIX_SONG, REMIX_INSTRUMENTAL, SEPARATE_STEMS, "
       "CUT_DOWN"},
      {[](json& d) {
         d["providers"][1]["credits"] = {{"balance", 10}, {"costs", {{"song", -1}}}};
       },
       "providers[1].credits.costs.song: must be a whole number of credits, 0 or more"},
      {[](json& d) { d["providers"][0]["dialect"] = "v2"; },
       "providers[0].dialect: must be \"b2b\" or \"web\" for loudly"},
      {[](json& d) { d["providers"][0].erase("client_id"); },
       "providers[0].client_id: required for dialect web"},
      {[](json& d) { d["providers"][0].erase("refresh_token"); },
       "providers[0].refresh_token: required for dialect web"},
      {[](json& d) { d["providers"][0]["dialect"] = "b2b"; },
       "providers[0].api_key: required for dialect b2b"},
      {[](json& d) { d["providers"][1]["api_key"] = "spk_inline"; },
       "providers[1].api_key: must be {\"env\": \"NAME\"} or {\"file\": \"/path\"}; secrets are "
       "never written in the config file"},
      {[](json& d) {
         d["providers"][1]["api_key"] = {{"env", "A"}, {"file", "/b"}};
       },
       "providers[1].api_key: set exactly one of \"env\" or \"file\""},
      {[](json& d) {
         d["providers"][1]["api_key"] = {{"env", "NOT_SET_ANYWHERE"}};
       },
       "providers[1].api_key: environment variable NOT_SET_ANYWHERE is not set"},
      {[](json& d) {
         d["providers"][1]["api_key"] = {{"file", "/nonexistent/key"}};
       },
       "providers[1].api_key: cannot read secret file /nonexistent/key"},
      {[](json& d) {
         d["providers"][1]["api_key"] = {{"vault", "x"}};
       },
       "providers[1].api_key.vault: unknown key"},
      {[](json& d) { d["providers"][1]["callback_url"] = "not a url"; },
       "providers[1].callback_url: must be an http or https URL"},
      {[](json& d) {
         d["providers"][1]["refresh_token"] = {{"env", "X"}};
       },
       "providers[1].refresh_token: soundpiece uses api_key only"},
      {[](json& d) {
         d["providers"][0]["webhook_secrets"] = {{"env", "X"}};
       },
       "providers[0].webhook_secrets: loudly sends no webhooks"},
      {[](json& d) {
         d["providers"].push_back(d["providers"][1]);
         d["providers"][2].erase("webhook_secrets");
       },
       "providers[2].name: duplicate account \"soundpiece-main\" for provider soundpiece; each "
       "account of a provider needs its own name"},
      {[](json& d) {
         d["providers"].push_back(d["providers"][0]);
         d["providers"][2]["name"] = "loudly-second";
       },
       "providers[2].token_state_file: already used by another account"},
      {[](json& d) { d.erase("tenants"); }, "tenants: required: a list with at least one tenant"},
      {[](json& d) { d["tenants"][0]["api_key_sha256"] = json::array({"secret-key"}); },
       "tenants[0].api_key_sha256[0]: must be 64 hex characters (the SHA-256 of the key, never "
       "the key itself)"},
      {[](json& d) { d["tenants"][0].erase("api_key_sha256"); },
       "tenants[0].api_key_sha256: required: a list of lower-case hex SHA-256 digests of the "
       "tenant's API keys"},
      {[](json& d) { d["tenants"].push_back(d["tenants"][0]); },
       "tenants[1].name: duplicate tenant \"acme\""},
      {[](json& d) {
         d["tenants"].push_back(d["tenants"][0]);
         d["tenants"][1]["name"] = "other";
       },
       "tenants[1].api_key_sha256: a key hash already used by another tenant"},
      {[](json& d) { d["tenants"][0]["budgets"][0]["task"] = "KARAOKE"; },
       "tenants[0].budgets[0].task: unknown task; one of PARAMETRIC_MUSIC, TEXT_TO_MUSIC, SONG, "
       "INSTRUMENTAL, SAMPLE, SOUND_EFFECT, REMIX_SONG, REMIX_INSTRUMENTAL, SEPARATE_STEMS, "
       "CUT_DOWN"},
      {[](json& d) { d["tenants"][0]["budgets"][0]["period"] = "year"; },
       "tenants[0].budgets[0].period: must be hour, day, week or month"},
      {[](json& d) { d["tenants"][0]["budgets"][0].erase("limit"); },
       "tenants[0].budgets[0].limit: required"},
      {[](json& d) { d["tenants"][0]["budgets"][0]["limit"] = -1; },
       "tenants[0].budgets[0].limit: must be between 0 and 1000000000"},
      {[](json& d) { d["tenants"][0]["budgets"].push_back(d["tenants"][0]["budgets"][0]); },
       "tenants[0].budgets[1]: a second budget for the same task"},
  };
  for (const auto& c : cases) {
    json doc = ValidConfig();
    c.mutate(doc);
    EXPECT_EQ(ErrorOf(doc), c.expected) << doc.dump();
  }
}

// Two accounts of one provider (two Soundpiece keys, two Loudly logins) are configured side by
// side; account names need only be distinct within their provider.
TEST(ConfigTest, AcceptsSeveralAccountsOfOneProvider) {
  json doc = ValidConfig();
  json second_soundpiece = doc["providers"][1];
  second_soundpiece["name"] = "soundpiece-backup";
  second_soundpiece["api_key"] = {{"env", "SOUNDPIECE_BACKUP_KEY"}};
  second_soundpiece["credits"] = {{"balance", 50}};
  doc["providers"].push_back(second_soundpiece);
  json second_loudly = doc["providers"][0];
  second_loudly["name"] = "soundpiece-main";  // the same name as an account of the other provider
  second_loudly["token_state_file"] = "/tmp/loudly-second.token";
  doc["providers"].push_back(second_loudly);
  auto config = ParseConfig(doc.dump(), FakeEnv({{"LOUDLY_REFRESH_TOKEN", "refresh-secret"},
                                                 {"SOUNDPIECE_API_KEY", "spk_secret"},
                                                 {"SOUNDPIECE_BACKUP_KEY", "spk_backup"},
                                                 {"SOUNDPIECE_WEBHOOK_SECRETS", "whsec_AAAA"}}));
  ASSERT_TRUE(config.ok()) << config.status();
  ASSERT_EQ(config->providers.size(), 4u);
  EXPECT_EQ(config->providers[1].type, musicgw::v1::PROVIDER_SOUNDPIECE);
  EXPECT_EQ(config->providers[1].api_key, "spk_secret");
  EXPECT_EQ(config->providers[1].credit_balance, 0);
  EXPECT_EQ(config->providers[2].type, musicgw::v1::PROVIDER_SOUNDPIECE);
  EXPECT_EQ(config->providers[2].name, "soundpiece-backup");
  EXPECT_EQ(config->providers[2].api_key, "spk_backup");
  EXPECT_EQ(config->providers[2].credit_balance, 50);
  EXPECT_EQ(config->providers[3].type, musicgw::v1::PROVIDER_LOUDLY);
  EXPECT_EQ(config->providers[3].name, "soundpiece-main");
}

TEST(ConfigTest, WebhookSecretsMustLookLikeSecrets) {
  EXPECT_EQ(ErrorOf(ValidConfig(), FakeEnv({{"LOUDLY_REFRESH_TOKEN", "r"},
                                            {"SOUNDPIECE_API_KEY", "k"},
                                            {"SOUNDPIECE_WEBHOOK_SECRETS", "plain"}})),
            "providers[1].webhook_secrets: each secret must start with whsec_");
}

TEST(ConfigTest, NoErrorMessageEverContainsASecret) {
  json doc = ValidConfig();
  doc["providers"][1]["callback_url"] = "bad";
  const std::string message = ErrorOf(doc);
  EXPECT_EQ(message.find("spk_secret"), std::string::npos);
  EXPECT_EQ(message.find("refresh-secret"), std::string::npos);
}

TEST(ConfigTest, RejectsNonJson) {
  auto config = ParseConfig("{not json", FakeEnv());
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().message(), "(file): not valid JSON");
  EXPECT_FALSE(LoadConfigFile("/nonexistent/musicgw.json", FakeEnv()).ok());
}

TEST(ConfigTest, APostgresLedgerTakesItsDsnFromASecretReference) {
  json doc = ValidConfig();
  doc["ledger"] = {{"postgres", {{"dsn", {{"env", "PG_DSN"}}}, {"pool_size", 4}}},
                   {"replica_id", "gw-0"}};
  auto config = ParseConfig(doc.dump(), FakeEnv({{"LOUDLY_REFRESH_TOKEN", "r"},
                                                 {"SOUNDPIECE_API_KEY", "k"},
                                                 {"SOUNDPIECE_WEBHOOK_SECRETS", "whsec_AAAA"},
                                                 {"PG_DSN", "host=db user=gw password=pw"}}));
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->ledger_postgres_dsn, "host=db user=gw password=pw");
  EXPECT_EQ(config->ledger_postgres_pool_size, 4);
  EXPECT_EQ(config->replica_id, "gw-0");
}

TEST(ConfigTest, TenantLimitsStartFromTheDefaultsAndOverrideKeyByKey) {
  json doc = ValidConfig();
  doc["tenant_defaults"] = {{"limits", {{"generate_per_second", 5}, {"max_open_streams", 50}}}};
  doc["tenants"][0]["limits"] = {{"generate_burst", 7}, {"max_live_operations", 3}};
  auto config = ParseConfig(doc.dump(), FakeEnv());
  ASSERT_TRUE(config.ok()) << config.status();
  const TenantLimitsConfig& limits = config->tenants[0].limits;
  EXPECT_EQ(limits.generate.per_second, 5);
  EXPECT_EQ(limits.generate.burst, 7);
  EXPECT_EQ(limits.max_open_streams, 50);
  EXPECT_EQ(limits.max_live_operations, 3);
  EXPECT_EQ(limits.read.per_second, TenantLimitsConfig().read.per_second);
}

TEST(ConfigTest, AssetCustodyKeys) {
  json doc = ValidConfig();
  auto config = ParseConfig(doc.dump(), FakeEnv());
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->tenants[0].asset_retention, absl::Hours(24 * 30));
  EXPECT_EQ(config->assets_path, "");  // the server puts it next to the ledger

  doc["tenant_defaults"] = {{"asset_retention_seconds", 3600}};
  doc["ledger"] = {{"path", "/data/ledger.db"}, {"assets_path", "/shared/assets"}};
  doc["operations"] = {{"custody_fetch_timeout_seconds", 5},
                       {"custody_retry_seconds", 2},
                       {"custody_sweep_seconds", 1}};
  config = ParseConfig(doc.dump(), FakeEnv());
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->tenants[0].asset_retention, absl::Hours(1));
  EXPECT_EQ(config->assets_path, "/shared/assets");
  EXPECT_EQ(config->custody_fetch_timeout, absl::Seconds(5));
  EXPECT_EQ(config->custody_retry, absl::Seconds(2));
  EXPECT_EQ(config->custody_sweep_interval, absl::Seconds(1));

  doc["tenants"][0]["asset_retention_seconds"] = 60;
  config = ParseConfig(doc.dump(), FakeEnv());
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->tenants[0].asset_retention, absl::Minutes(1));

  doc["tenants"][0]["asset_retention_seconds"] = 0;
  config = ParseConfig(doc.dump(), FakeEnv());
  ASSERT_FALSE(config.ok());
  EXPECT_NE(config.status().message().find("tenants[0].asset_retention_seconds"), std::string::npos)
      << config.status();
}

TEST(ConfigTest, OutgoingWebhooksPerTenantAndHowTheyAreDelivered) {
  json doc = ValidConfig();
  auto config = ParseConfig(doc.dump(), FakeEnv());
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_TRUE(config->tenants[0].webhooks.endpoints.empty());
  EXPECT_FALSE(config->webhook_delivery.allow_private_targets);
  EXPECT_GE(config->webhook_delivery.retry_for, absl::Hours(24));

  doc["tenants"][0]["webhooks"] = {{"secrets", {{"env", "ACME_WEBHOOK_SECRETS"}}},
                                   {"endpoints",
                                    {{{"name", "backend"},
                                      {"url", "https://hooks.example.com/musicgw"},
                                      {"events", {"operation.succeeded"}}}}}};
  doc["webhooks"] = {{"allow_private_targets", true}, {"timeout_seconds", 3},
                     {"per_endpoint_concurrency", 2}, {"first_retry_seconds", 1},
                     {"max_retry_seconds", 60},       {"retry_for_seconds", 172800}};
  config = ParseConfig(doc.dump(), FakeEnv({{"LOUDLY_REFRESH_TOKEN", "r"},
                                            {"SOUNDPIECE_API_KEY", "k"},
                                            {"SOUNDPIECE_WEBHOOK_SECRETS", "whsec_AAAA"},
                                            {"ACME_WEBHOOK_SECRETS", "whsec_OLD whsec_NEW"}}));
  ASSERT_TRUE(config.ok()) << config.status();
  const TenantWebhooksConfig& webhooks = config->tenants[0].webhooks;
  EXPECT_EQ(webhooks.secrets, (std::vector<std::string>{"whsec_OLD", "whsec_NEW"}));
  ASSERT_EQ(webhooks.endpoints.size(), 1u);
  EXPECT_EQ(webhooks.endpoints[0].name, "backend");
  EXPECT_EQ(webhooks.endpoints[0].events, (std::vector<std::string>{"operation.succeeded"}));
  EXPECT_TRUE(config->webhook_delivery.allow_private_targets);
  EXPECT_EQ(config->webhook_delivery.timeout, absl::Seconds(3));
  EXPECT_EQ(config->webhook_delivery.per_endpoint_concurrency, 2);
  EXPECT_EQ(config->webhook_delivery.first_retry, absl::Seconds(1));
  EXPECT_EQ(config->webhook_delivery.max_retry, absl::Seconds(60));
  EXPECT_EQ(config->webhook_delivery.retry_for, absl::Hours(48));
}

TEST(ConfigTest, OutgoingWebhookProblemsNameTheirKeyAndNeverTheSecret) {
  const auto env = FakeEnv({{"LOUDLY_REFRESH_TOKEN", "r"},
                            {"SOUNDPIECE_API_KEY", "k"},
                            {"SOUNDPIECE_WEBHOOK_SECRETS", "whsec_AAAA"},
                            {"ACME_WEBHOOK_SECRETS", "not-a-whsec-value"}});
  json doc = ValidConfig();
  doc["tenants"][0]["webhooks"] = {{"secrets", {{"env", "ACME_WEBHOOK_SECRETS"}}}};
  const std::string message = ErrorOf(doc, env);
  EXPECT_EQ(message, "tenants[0].webhooks.secrets: each secret must start with whsec_");
  EXPECT_EQ(message.find("not-a-whsec-value"), std::string::npos);

  doc["tenants"][0]["webhooks"] = {
      {"endpoints", {{{"name", "a"}, {"url", "https://hooks.example.com/x"}}}}};
  EXPECT_EQ(ErrorOf(doc), "tenants[0].webhooks.secrets: required when endpoints are set");
  doc["tenants"][0]["webhooks"] = {{"endpoints", {{{"name", "a"}, {"url", "ftp://x.example"}}}}};
  EXPECT_EQ(ErrorOf(doc), "tenants[0].webhooks.endpoints[0].url: must be an http or https URL");
  doc = ValidConfig();
  doc["webhooks"] = {{"first_retry_seconds", 10}, {"max_retry_seconds", 5}};
  EXPECT_EQ(ErrorOf(doc), "webhooks.max_retry_seconds: must not be below first_retry_seconds");
  doc["webhooks"] = {{"retry_seconds", 10}};
  EXPECT_EQ(ErrorOf(doc), "webhooks.retry_seconds: unknown key");
}

}  // namespace
}  // namespace musicgw::config
