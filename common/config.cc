#include "common/config.h"

#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <optional>
#include <set>
#include <sstream>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/provider_names.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace musicgw::config {
namespace {

using nlohmann::json;

absl::Status Problem(const std::string& path, absl::string_view problem) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": ", problem));
}

// Reads one JSON object, remembering which keys were used so unknown keys (typos) fail.
class ObjectReader {
 public:
  ObjectReader(const json& object, std::string path) : object_(object), path_(std::move(path)) {}

  std::string Path(absl::string_view key) const {
    return path_.empty() ? std::string(key) : absl::StrCat(path_, ".", key);
  }

  const json* Find(absl::string_view key) {
    used_.insert(std::string(key));
    auto it = object_.find(std::string(key));
    return it == object_.end() || it->is_null() ? nullptr : &*it;
  }

  absl::Status String(absl::string_view key, std::string* out, bool required = false) {
    const json* value = Find(key);
    if (value == nullptr) return required ? Problem(Path(key), "required") : absl::OkStatus();
    if (!value->is_string()) return Problem(Path(key), "must be a string");
    *out = value->get<std::string>();
    if (required && out->empty()) return Problem(Path(key), "must not be empty");
    return absl::OkStatus();
  }

  absl::Status Int(absl::string_view key, int64_t* out, int64_t min, int64_t max) {
    const json* value = Find(key);
    if (value == nullptr) return absl::OkStatus();
    if (!value->is_number_integer()) return Problem(Path(key), "must be an integer");
    const int64_t v = value->get<int64_t>();
    if (v < min || v > max) {
      return Problem(Path(key), absl::StrCat("must be between ", min, " and ", max));
    }
    *out = v;
    return absl::OkStatus();
  }

  absl::Status Seconds(absl::string_view key, absl::Duration* out, double min, double max) {
    const json* value = Find(key);
    if (value == nullptr) return absl::OkStatus();
    if (!value->is_number()) return Problem(Path(key), "must be a number of seconds");
    const double v = value->get<double>();
    if (v < min || v > max) {
      return Problem(Path(key), absl::StrCat("must be between ", min, " and ", max, " seconds"));
    }
    *out = absl::Seconds(v);
    return absl::OkStatus();
  }

  absl::Status CheckNoUnknownKeys() const {
    for (auto it = object_.begin(); it != object_.end(); ++it) {
      if (!used_.count(it.key())) return Problem(Path(it.key()), "unknown key");
    }
    return absl::OkStatus();
  }

 private:
  const json& object_;
  std::string path_;
  std::set<std::string> used_;
};

absl::Status CheckListen(const std::string& path, const std::string& address) {
  const size_t colon = address.rfind(':');
  int port = 0;
  if (colon == std::string::npos || colon == 0 ||
      !absl::SimpleAtoi(address.substr(colon + 1), &port) || port < 0 || port > 65535) {
    return Problem(path, "must be host:port, e.g. 0.0.0.0:50051");
  }
  return absl::OkStatus();
}

absl::Status CheckUrl(const std::string& path, const std::string& url) {
  if (!(absl::StartsWith(url, "http://") || absl::StartsWith(url, "https://")) || url.size() < 10 ||
      url.find(' ') != std::string::npos) {
    return Problem(path, "must be an http or https URL");
  }
  return absl::OkStatus();
}

// One port's TLS block (server.tls, server.metrics_tls, server.webhook_tls): files that must be
// readable now (they are re-read on change while running).
absl::Status ParseTls(const json& doc, const std::string& path, TlsConfig& tls) {
  if (!doc.is_object()) return Problem(path, "must be an object");
  ObjectReader t(doc, path);
  MUSICGW_RETURN_IF_ERROR(t.String("cert_file", &tls.cert_file, true));
  MUSICGW_RETURN_IF_ERROR(t.String("key_file", &tls.key_file, true));
  MUSICGW_RETURN_IF_ERROR(t.String("client_ca_file", &tls.client_ca_file));
  MUSICGW_RETURN_IF_ERROR(t.Seconds("reload_interval_seconds", &tls.reload_interval, 1, 86400));
  MUSICGW_RETURN_IF_ERROR(t.CheckNoUnknownKeys());
  for (const auto& [key, file] : {std::pair<const char*, std::string>{"cert_file", tls.cert_file},
                                  {"key_file", tls.key_file},
                                  {"client_ca_file", tls.client_ca_file}}) {
    if (!file.empty() && access(file.c_str(), R_OK) != 0) {
      return Problem(t.Path(key), absl::StrCat("cannot read ", file));
    }
  }
  return absl::OkStatus();
}

// Resolves {"env": NAME} or {"file": PATH} to the secret's value.
absl::StatusOr<std::string> ResolveSecret(const json& ref, const std::string& path,
                                          const EnvLookup& env) {
  if (!ref.is_object()) {
    return Problem(path,
                   "must be {\"env\": \"NAME\"} or {\"file\": \"/path\"}; secrets are never "
                   "written in the config file");
  }
  ObjectReader reader(ref, path);
  std::string env_name, file_name;
  MUSICGW_RETURN_IF_ERROR(reader.String("env", &env_name));
  MUSICGW_RETURN_IF_ERROR(reader.String("file", &file_name));
  MUSICGW_RETURN_IF_ERROR(reader.CheckNoUnknownKeys());
  if (env_name.empty() == file_name.empty()) {
    return Problem(path, "set exactly one of \"env\" or \"file\"");
  }
  if (!env_name.empty()) {
    std::optional<std::string> value = env(env_name);
    if (!value.has_value() || value->empty()) {
      return Problem(path, absl::StrCat("environment variable ", env_name, " is not set"));
    }
    return *value;
  }
  std::ifstream in(file_name, std::ios::binary);
  if (!in) return Problem(path, absl::StrCat("cannot read secret file ", file_name));
  std::stringstream buffer;
  buffer << in.rdbuf();
  // Kubernetes Secret files and `echo` often end with a newline that is not part of the key.
  std::string value(absl::StripTrailingAsciiWhitespace(buffer.str()));
  if (value.empty()) return Problem(path, absl::StrCat("secret file ", file_name, " is empty"));
  return value;
}

absl::StatusOr<std::vector<std::string>> ResolveSecretList(const json& ref, const std::string& path,
                                                           const EnvLookup& env) {
  // Several secrets (rotation) are written space- or comma-separated in one variable or file.
  MUSICGW_ASSIGN_OR_RETURN(std::string joined, ResolveSecret(ref, path, env));
  std::vector<std::string> secrets;
  for (absl::string_view part :
       absl::StrSplit(joined, absl::ByAnyChar(" ,\n\t"), absl::SkipEmpty())) {
    secrets.emplace_back(part);
  }
  return secrets;
}

// "song" or "SONG" -> TASK_KIND_SONG.
std::optional<musicgw::v1::TaskKind> ParseTaskKind(const std::string& task) {
  musicgw::v1::TaskKind kind;
  if (!musicgw::v1::TaskKind_Parse(absl::StrCat("TASK_KIND_", absl::AsciiStrToUpper(task)),
                                   &kind) ||
      kind == musicgw::v1::TASK_KIND_UNSPECIFIED) {
    return std::nullopt;
  }
  return kind;
}

constexpr char kTaskNames[] =
    "unknown task; one of PARAMETRIC_MUSIC, TEXT_TO_MUSIC, SONG, INSTRUMENTAL, SAMPLE, "
    "SOUND_EFFECT, REMIX_SONG, REMIX_INSTRUMENTAL, SEPARATE_STEMS, CUT_DOWN";

absl::Status ParseCredits(const json& object, const std::string& path, ProviderConfig* provider) {
  if (!object.is_object()) return Problem(path, "must be an object");
  ObjectReader reader(object, path);
  MUSICGW_RETURN_IF_ERROR(reader.Int("balance", &provider->credit_balance, 1, 1'000'000'000'000));
  if (reader.Find("balance") == nullptr) return Problem(reader.Path("balance"), "required");
  std::string since;
  MUSICGW_RETURN_IF_ERROR(reader.String("since", &since));
  if (!since.empty()) {
    std::string error;
    if (!absl::ParseTime(absl::RFC3339_full, since, &provider->credits_since, &error)) {
      return Problem(reader.Path("since"), "must be an RFC 3339 time, e.g. 2026-11-01T00:00:00Z");
    }
  }
  if (const json* costs = reader.Find("costs"); costs != nullptr) {
    if (!costs->is_object()) return Problem(reader.Path("costs"), "must be an object");
    for (const auto& [task, cost] : costs->items()) {
      const std::string item_path = absl::StrCat(reader.Path("costs"), ".", task);
      const std::optional<musicgw::v1::TaskKind> kind = ParseTaskKind(task);
      if (!kind.has_value()) return Problem(item_path, kTaskNames);
      if (!cost.is_number_integer() || cost.get<int64_t>() < 0) {
        return Problem(item_path, "must be a whole number of credits, 0 or more");
      }
      provider->credit_costs[*kind] = cost.get<int64_t>();
    }
  }
  return reader.CheckNoUnknownKeys();
}

// providers[].catalog (Loudly): {"genres": ["House", …], "structures": [{"id": 2, "name": "…"}]}.
absl::Status ParseCatalog(const json& object, const std::string& path, ProviderConfig* provider) {
  if (!object.is_object()) return Problem(path, "must be an object");
  ObjectReader reader(object, path);
  if (const json* genres = reader.Find("genres"); genres != nullptr) {
    if (!genres->is_array()) return Problem(reader.Path("genres"), "must be a list of names");
    for (const json& genre : *genres) {
      if (!genre.is_string() || genre.get<std::string>().empty()) {
        return Problem(reader.Path("genres"), "each genre must be a non-empty string");
      }
      provider->catalog_genres.push_back(genre.get<std::string>());
    }
  }
  if (const json* structures = reader.Find("structures"); structures != nullptr) {
    if (!structures->is_array()) return Problem(reader.Path("structures"), "must be a list");
    for (size_t i = 0; i < structures->size(); ++i) {
      const std::string item_path = absl::StrCat(reader.Path("structures"), "[", i, "]");
      if (!(*structures)[i].is_object()) return Problem(item_path, "must be {\"id\", \"name\"}");
      ObjectReader item(structures->at(i), item_path);
      int64_t id = -1;
      std::string name;
      MUSICGW_RETURN_IF_ERROR(item.Int("id", &id, 0, 1'000'000));
      if (item.Find("id") == nullptr) return Problem(item.Path("id"), "required");
      MUSICGW_RETURN_IF_ERROR(item.String("name", &name));
      MUSICGW_RETURN_IF_ERROR(item.CheckNoUnknownKeys());
      provider->catalog_structures.emplace_back(static_cast<int32_t>(id), std::move(name));
    }
  }
  return reader.CheckNoUnknownKeys();
}

absl::StatusOr<ProviderConfig> ParseProvider(const json& object, const std::string& path,
                                             const EnvLookup& env) {
  if (!object.is_object()) return Problem(path, "must be an object");
  ObjectReader reader(object, path);
  ProviderConfig provider;
  std::string type;
  MUSICGW_RETURN_IF_ERROR(reader.String("name", &provider.name, true));
  MUSICGW_RETURN_IF_ERROR(reader.String("type", &type, true));
  MUSICGW_RETURN_IF_ERROR(reader.String("dialect", &provider.dialect));
  MUSICGW_RETURN_IF_ERROR(reader.String("base_url", &provider.base_url, true));
  MUSICGW_RETURN_IF_ERROR(CheckUrl(reader.Path("base_url"), provider.base_url));
  MUSICGW_RETURN_IF_ERROR(reader.String("client_id", &provider.client_id));
  MUSICGW_RETURN_IF_ERROR(reader.String("token_state_file", &provider.token_state_file));
  MUSICGW_RETURN_IF_ERROR(reader.String("callback_url", &provider.callback_url));
  MUSICGW_RETURN_IF_ERROR(reader.Seconds("sync_timeout_seconds", &provider.sync_timeout, 10, 3600));
  for (char c : provider.name) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_') {
      return Problem(reader.Path("name"), "may hold only letters, digits, '-' and '_'");
    }
  }
  if (!provider.callback_url.empty()) {
    MUSICGW_RETURN_IF_ERROR(CheckUrl(reader.Path("callback_url"), provider.callback_url));
  }
  const json* api_key = reader.Find("api_key");
  const json* refresh_token = reader.Find("refresh_token");
  const json* webhook_secrets = reader.Find("webhook_secrets");
  if (type == "loudly") {
    provider.type = musicgw::v1::PROVIDER_LOUDLY;
    if (provider.dialect.empty()) provider.dialect = "b2b";
    if (provider.dialect == "b2b") {
      if (api_key == nullptr) return Problem(reader.Path("api_key"), "required for dialect b2b");
    } else if (provider.dialect == "web") {
      if (refresh_token == nullptr) {
        return Problem(reader.Path("refresh_token"), "required for dialect web");
      }
      if (provider.client_id.empty()) {
        return Problem(reader.Path("client_id"), "required for dialect web");
      }
    } else {
      return Problem(reader.Path("dialect"), "must be \"b2b\" or \"web\" for loudly");
    }
    if (webhook_secrets != nullptr) {
      return Problem(reader.Path("webhook_secrets"), "loudly sends no webhooks");
    }
    if (const json* catalog = reader.Find("catalog"); catalog != nullptr) {
      MUSICGW_RETURN_IF_ERROR(ParseCatalog(*catalog, reader.Path("catalog"), &provider));
    }
  } else if (type == "soundpiece") {
    provider.type = musicgw::v1::PROVIDER_SOUNDPIECE;
    if (provider.dialect.empty()) provider.dialect = "v1";
    if (provider.dialect != "v1") return Problem(reader.Path("dialect"), "must be \"v1\"");
    if (api_key == nullptr) return Problem(reader.Path("api_key"), "required");
    if (refresh_token != nullptr) {
      return Problem(reader.Path("refresh_token"), "soundpiece uses api_key only");
    }
    if (const json* credits = reader.Find("credits"); credits != nullptr) {
      MUSICGW_RETURN_IF_ERROR(ParseCredits(*credits, reader.Path("credits"), &provider));
    }
  } else {
    return Problem(reader.Path("type"), "must be \"loudly\" or \"soundpiece\"");
  }
  if (api_key != nullptr) {
    MUSICGW_ASSIGN_OR_RETURN(provider.api_key,
                             ResolveSecret(*api_key, reader.Path("api_key"), env));
  }
  if (refresh_token != nullptr) {
    MUSICGW_ASSIGN_OR_RETURN(provider.refresh_token,
                             ResolveSecret(*refresh_token, reader.Path("refresh_token"), env));
  }
  if (webhook_secrets != nullptr) {
    MUSICGW_ASSIGN_OR_RETURN(
        provider.webhook_secrets,
        ResolveSecretList(*webhook_secrets, reader.Path("webhook_secrets"), env));
    for (const auto& secret : provider.webhook_secrets) {
      if (!absl::StartsWith(secret, "whsec_")) {
        return Problem(reader.Path("webhook_secrets"), "each secret must start with whsec_");
      }
    }
  }
  MUSICGW_RETURN_IF_ERROR(reader.CheckNoUnknownKeys());
  return provider;
}

absl::StatusOr<BudgetConfig> ParseBudget(const json& object, const std::string& path) {
  if (!object.is_object()) return Problem(path, "must be an object");
  ObjectReader reader(object, path);
  BudgetConfig budget;
  std::string task, period = "day";
  MUSICGW_RETURN_IF_ERROR(reader.String("task", &task, true));
  MUSICGW_RETURN_IF_ERROR(reader.String("period", &period));
  MUSICGW_RETURN_IF_ERROR(reader.Int("limit", &budget.limit, 0, 1'000'000'000));
  if (reader.Find("limit") == nullptr) return Problem(reader.Path("limit"), "required");
  const std::optional<musicgw::v1::TaskKind> kind = ParseTaskKind(task);
  if (!kind.has_value()) return Problem(reader.Path("task"), kTaskNames);
  budget.task = *kind;
  if (period == "hour") {
    budget.period = BudgetPeriod::kHour;
  } else if (period == "day") {
    budget.period = BudgetPeriod::kDay;
  } else if (period == "week") {
    budget.period = BudgetPeriod::kWeek;
  } else if (period == "month") {
    budget.period = BudgetPeriod::kMonth;
  } else {
    return Problem(reader.Path("period"), "must be hour, day, week or month");
  }
  MUSICGW_RETURN_IF_ERROR(reader.CheckNoUnknownKeys());
  return budget;
}

absl::Status ParseRate(ObjectReader& reader, const std::string& name, RateLimitConfig* rate) {
  for (auto [suffix, out] : {std::pair<const char*, double*>{"_per_second", &rate->per_second},
                             std::pair<const char*, double*>{"_burst", &rate->burst}}) {
    const std::string key = absl::StrCat(name, suffix);
    const json* value = reader.Find(key);
    if (value == nullptr) continue;
    if (!value->is_number() || value->get<double>() < 1 || value->get<double>() > 1e7) {
      return Problem(reader.Path(key), "must be a number from 1 to 10000000");
    }
    *out = value->get<double>();
  }
  return absl::OkStatus();
}

// Overrides `limits` key by key.
// Ten years: retention beyond that is "forever" in practice.
constexpr double kMaxRetentionSeconds = 10.0 * 366 * 86400;

absl::Status ParseLimits(const json& object, const std::string& path, TenantLimitsConfig* limits) {
  if (!object.is_object()) return Problem(path, "must be an object");
  ObjectReader reader(object, path);
  MUSICGW_RETURN_IF_ERROR(ParseRate(reader, "generate", &limits->generate));
  MUSICGW_RETURN_IF_ERROR(ParseRate(reader, "read", &limits->read));
  MUSICGW_RETURN_IF_ERROR(ParseRate(reader, "list", &limits->list));
  MUSICGW_RETURN_IF_ERROR(ParseRate(reader, "cancel", &limits->cancel));
  MUSICGW_RETURN_IF_ERROR(ParseRate(reader, "stream", &limits->stream));
  MUSICGW_RETURN_IF_ERROR(reader.Int("max_open_streams", &limits->max_open_streams, 1, 10000000));
  MUSICGW_RETURN_IF_ERROR(
      reader.Int("max_live_operations", &limits->max_live_operations, 1, 10000000));
  return reader.CheckNoUnknownKeys();
}

// tenants[].webhooks: {"secrets": <secret reference>, "endpoints": [{name, url, events}]}.
// Targets are checked against the SSRF guard when the server starts (ValidateTenantWebhooks).
absl::Status ParseTenantWebhooks(const json& object, const std::string& path, const EnvLookup& env,
                                 TenantWebhooksConfig* webhooks) {
  if (!object.is_object()) return Problem(path, "must be an object");
  ObjectReader reader(object, path);
  if (const json* secrets = reader.Find("secrets"); secrets != nullptr) {
    MUSICGW_ASSIGN_OR_RETURN(webhooks->secrets,
                             ResolveSecretList(*secrets, reader.Path("secrets"), env));
    for (const auto& secret : webhooks->secrets) {
      if (!absl::StartsWith(secret, "whsec_")) {
        return Problem(reader.Path("secrets"), "each secret must start with whsec_");
      }
    }
  }
  if (const json* endpoints = reader.Find("endpoints"); endpoints != nullptr) {
    if (!endpoints->is_array()) return Problem(reader.Path("endpoints"), "must be a list");
    for (size_t i = 0; i < endpoints->size(); ++i) {
      const std::string item_path = absl::StrCat(reader.Path("endpoints"), "[", i, "]");
      if (!(*endpoints)[i].is_object()) return Problem(item_path, "must be {name, url, events}");
      ObjectReader item((*endpoints)[i], item_path);
      WebhookEndpointConfig endpoint;
      MUSICGW_RETURN_IF_ERROR(item.String("name", &endpoint.name, true));
      MUSICGW_RETURN_IF_ERROR(item.String("url", &endpoint.url, true));
      MUSICGW_RETURN_IF_ERROR(CheckUrl(item.Path("url"), endpoint.url));
      if (const json* events = item.Find("events"); events != nullptr) {
        if (!events->is_array()) return Problem(item.Path("events"), "must be a list of names");
        for (const json& event : *events) {
          if (!event.is_string()) return Problem(item.Path("events"), "must be a list of names");
          endpoint.events.push_back(event.get<std::string>());
        }
      }
      MUSICGW_RETURN_IF_ERROR(item.CheckNoUnknownKeys());
      webhooks->endpoints.push_back(std::move(endpoint));
    }
  }
  if (!webhooks->endpoints.empty() && webhooks->secrets.empty()) {
    return Problem(reader.Path("secrets"), "required when endpoints are set");
  }
  return reader.CheckNoUnknownKeys();
}

// The top-level `webhooks` section: how outgoing webhooks are delivered.
absl::Status ParseWebhookDelivery(const json& object, WebhookDeliveryConfig* delivery) {
  if (!object.is_object()) return Problem("webhooks", "must be an object");
  ObjectReader reader(object, "webhooks");
  if (const json* allow = reader.Find("allow_private_targets"); allow != nullptr) {
    if (!allow->is_boolean())
      return Problem(reader.Path("allow_private_targets"), "must be true or false");
    delivery->allow_private_targets = allow->get<bool>();
  }
  int64_t concurrency = delivery->per_endpoint_concurrency;
  MUSICGW_RETURN_IF_ERROR(reader.Int("per_endpoint_concurrency", &concurrency, 1, 64));
  delivery->per_endpoint_concurrency = static_cast<int>(concurrency);
  MUSICGW_RETURN_IF_ERROR(reader.Seconds("timeout_seconds", &delivery->timeout, 0.1, 300));
  MUSICGW_RETURN_IF_ERROR(
      reader.Seconds("first_retry_seconds", &delivery->first_retry, 0.01, 86400));
  MUSICGW_RETURN_IF_ERROR(reader.Seconds("max_retry_seconds", &delivery->max_retry, 0.01, 86400));
  MUSICGW_RETURN_IF_ERROR(
      reader.Seconds("retry_for_seconds", &delivery->retry_for, 1, 30.0 * 86400));
  if (delivery->max_retry < delivery->first_retry) {
    return Problem(reader.Path("max_retry_seconds"), "must not be below first_retry_seconds");
  }
  return reader.CheckNoUnknownKeys();
}

absl::StatusOr<TenantConfig> ParseTenant(const json& object, const std::string& path,
                                         const TenantLimitsConfig& default_limits,
                                         absl::Duration default_retention, const EnvLookup& env) {
  if (!object.is_object()) return Problem(path, "must be an object");
  ObjectReader reader(object, path);
  TenantConfig tenant;
  tenant.limits = default_limits;
  tenant.asset_retention = default_retention;
  MUSICGW_RETURN_IF_ERROR(
      reader.Seconds("asset_retention_seconds", &tenant.asset_retention, 1, kMaxRetentionSeconds));
  if (const json* limits = reader.Find("limits"); limits != nullptr) {
    MUSICGW_RETURN_IF_ERROR(ParseLimits(*limits, reader.Path("limits"), &tenant.limits));
  }
  if (const json* sans = reader.Find("client_sans"); sans != nullptr) {
    if (!sans->is_array()) return Problem(reader.Path("client_sans"), "must be a list of strings");
    for (const auto& san : *sans) {
      if (!san.is_string() || san.get<std::string>().empty()) {
        return Problem(reader.Path("client_sans"), "must be a list of non-empty strings");
      }
      tenant.client_sans.push_back(san.get<std::string>());
    }
  }
  MUSICGW_RETURN_IF_ERROR(reader.String("name", &tenant.name, true));
  if (const json* webhooks = reader.Find("webhooks"); webhooks != nullptr) {
    MUSICGW_RETURN_IF_ERROR(
        ParseTenantWebhooks(*webhooks, reader.Path("webhooks"), env, &tenant.webhooks));
  }
  const json* hashes = reader.Find("api_key_sha256");
  // A tenant known by its client certificate (mTLS) needs no API key.
  if ((hashes == nullptr && tenant.client_sans.empty()) ||
      (hashes != nullptr && (!hashes->is_array() || hashes->empty()))) {
    return Problem(reader.Path("api_key_sha256"),
                   "required: a list of lower-case hex SHA-256 digests of the tenant's API keys");
  }
  for (size_t i = 0; hashes != nullptr && i < hashes->size(); ++i) {
    const std::string item_path = absl::StrCat(reader.Path("api_key_sha256"), "[", i, "]");
    const json& hash = (*hashes)[i];
    if (!hash.is_string()) return Problem(item_path, "must be a string");
    std::string hex = absl::AsciiStrToLower(hash.get<std::string>());
    if (hex.size() != 64 || hex.find_first_not_of("0123456789abcdef") != std::string::npos) {
      return Problem(item_path,
                     "must be 64 hex characters (the SHA-256 of the key, never the key itself)");
    }
    tenant.api_key_sha256.push_back(std::move(hex));
  }
  if (const json* budgets = reader.Find("budgets"); budgets != nullptr) {
    if (!budgets->is_array()) return Problem(reader.Path("budgets"), "must be a list");
    std::set<musicgw::v1::TaskKind> seen;
    for (size_t i = 0; i < budgets->size(); ++i) {
      const std::string item_path = absl::StrCat(reader.Path("budgets"), "[", i, "]");
      MUSICGW_ASSIGN_OR_RETURN(BudgetConfig budget, ParseBudget((*budgets)[i], item_path));
      if (!seen.insert(budget.task).second) {
        return Problem(item_path, "a second budget for the same task");
      }
      tenant.budgets.push_back(budget);
    }
  }
  MUSICGW_RETURN_IF_ERROR(reader.CheckNoUnknownKeys());
  return tenant;
}

}  // namespace

EnvLookup ProcessEnv() {
  return [](const std::string& name) -> std::optional<std::string> {
    const char* value = std::getenv(name.c_str());
    if (value == nullptr) return std::nullopt;
    return std::string(value);
  };
}

const char* BudgetPeriodName(BudgetPeriod period) {
  switch (period) {
    case BudgetPeriod::kHour:
      return "hour";
    case BudgetPeriod::kDay:
      return "day";
    case BudgetPeriod::kWeek:
      return "week";
    case BudgetPeriod::kMonth:
      return "month";
  }
  return "day";
}

absl::StatusOr<Config> ParseConfig(absl::string_view json_text, const EnvLookup& env) {
  json root = json::parse(json_text.begin(), json_text.end(), nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) return Problem("(file)", "not valid JSON");
  if (!root.is_object()) return Problem("(file)", "must be a JSON object");
  Config config;
  ObjectReader reader(root, "");

  if (const json* server = reader.Find("server"); server != nullptr) {
    if (!server->is_object()) return Problem("server", "must be an object");
    ObjectReader s(*server, "server");
    MUSICGW_RETURN_IF_ERROR(s.String("grpc_listen", &config.grpc_listen));
    MUSICGW_RETURN_IF_ERROR(CheckListen(s.Path("grpc_listen"), config.grpc_listen));
    MUSICGW_RETURN_IF_ERROR(s.String("metrics_listen", &config.metrics_listen));
    MUSICGW_RETURN_IF_ERROR(CheckListen(s.Path("metrics_listen"), config.metrics_listen));
    MUSICGW_RETURN_IF_ERROR(s.String("webhook_listen", &config.webhook_listen));
    if (!config.webhook_listen.empty()) {
      MUSICGW_RETURN_IF_ERROR(CheckListen(s.Path("webhook_listen"), config.webhook_listen));
    }
    MUSICGW_RETURN_IF_ERROR(s.Seconds("drain_deadline_seconds", &config.drain_deadline, 0, 600));
    MUSICGW_RETURN_IF_ERROR(s.Seconds("keepalive_min_ping_interval_seconds",
                                      &config.keepalive_min_ping_interval, 1, 3600));
    for (const auto& [key, tls] : {std::pair<const char*, TlsConfig*>{"tls", &config.tls},
                                   {"metrics_tls", &config.metrics_tls},
                                   {"webhook_tls", &config.webhook_tls}}) {
      if (const json* doc = s.Find(key); doc != nullptr) {
        MUSICGW_RETURN_IF_ERROR(ParseTls(*doc, s.Path(key), *tls));
      }
    }
    MUSICGW_RETURN_IF_ERROR(s.CheckNoUnknownKeys());
  }
  if (const json* ledger = reader.Find("ledger"); ledger != nullptr) {
    if (!ledger->is_object()) return Problem("ledger", "must be an object");
    ObjectReader l(*ledger, "ledger");
    MUSICGW_RETURN_IF_ERROR(l.String("replica_id", &config.replica_id));
    MUSICGW_RETURN_IF_ERROR(l.Seconds("lease_seconds", &config.ledger_lease, 1, 3600));
    if (const json* postgres = l.Find("postgres"); postgres == nullptr) {
      MUSICGW_RETURN_IF_ERROR(l.String("path", &config.ledger_path, true));
    } else {
      if (ledger->contains("path")) {
        return Problem("ledger", "set either \"path\" (SQLite) or \"postgres\", not both");
      }
      if (!postgres->is_object()) return Problem("ledger.postgres", "must be an object");
      ObjectReader pg(*postgres, "ledger.postgres");
      const json* dsn = pg.Find("dsn");
      if (dsn == nullptr) return Problem("ledger.postgres.dsn", "is required");
      MUSICGW_ASSIGN_OR_RETURN(config.ledger_postgres_dsn,
                               ResolveSecret(*dsn, pg.Path("dsn"), env));
      int64_t pool = config.ledger_postgres_pool_size;
      MUSICGW_RETURN_IF_ERROR(pg.Int("pool_size", &pool, 1, 256));
      config.ledger_postgres_pool_size = static_cast<int>(pool);
      MUSICGW_RETURN_IF_ERROR(pg.CheckNoUnknownKeys());
    }
    MUSICGW_RETURN_IF_ERROR(l.String("assets_path", &config.assets_path));
    MUSICGW_RETURN_IF_ERROR(l.CheckNoUnknownKeys());
  }

  if (const json* operations = reader.Find("operations"); operations != nullptr) {
    if (!operations->is_object()) return Problem("operations", "must be an object");
    ObjectReader o(*operations, "operations");
    int64_t buffer = config.watch_buffer, chunk = config.download_chunk_bytes;
    int64_t workers = config.worker_threads, background_nice = config.background_nice;
    MUSICGW_RETURN_IF_ERROR(o.Seconds("deadline_seconds", &config.operation_deadline, 10, 86400));
    MUSICGW_RETURN_IF_ERROR(
        o.Seconds("watch_heartbeat_seconds", &config.watch_heartbeat, 0.1, 300));
    MUSICGW_RETURN_IF_ERROR(o.Int("watch_buffer", &buffer, 1, 1024));
    MUSICGW_RETURN_IF_ERROR(o.Int("download_chunk_bytes", &chunk, 1024, 4 * 1024 * 1024));
    MUSICGW_RETURN_IF_ERROR(o.Int("worker_threads", &workers, 1, 64));
    MUSICGW_RETURN_IF_ERROR(o.Int("background_nice", &background_nice, 0, 19));
    MUSICGW_RETURN_IF_ERROR(
        o.Seconds("quota_refresh_seconds", &config.quota_refresh_interval, 1, 86400));
    MUSICGW_RETURN_IF_ERROR(
        o.Seconds("webhook_tolerance_seconds", &config.webhook_tolerance, 1, 86400));
    MUSICGW_RETURN_IF_ERROR(
        o.Seconds("custody_fetch_timeout_seconds", &config.custody_fetch_timeout, 0.1, 3600));
    MUSICGW_RETURN_IF_ERROR(o.Seconds("custody_retry_seconds", &config.custody_retry, 0.01, 3600));
    MUSICGW_RETURN_IF_ERROR(
        o.Seconds("custody_sweep_seconds", &config.custody_sweep_interval, 0.01, 86400));
    MUSICGW_RETURN_IF_ERROR(o.CheckNoUnknownKeys());
    config.watch_buffer = static_cast<int>(buffer);
    config.download_chunk_bytes = static_cast<int>(chunk);
    config.worker_threads = static_cast<int>(workers);
    config.background_nice = static_cast<int>(background_nice);
  }
  const json* providers = reader.Find("providers");
  if (providers == nullptr || !providers->is_array() || providers->empty()) {
    return Problem("providers", "required: a list with at least one provider account");
  }
  // Several accounts of one provider are routed and reported separately, by provider and
  // account name; what they keep on disk must not be shared.
  std::set<std::pair<musicgw::v1::Provider, std::string>> accounts;
  std::set<std::string> token_files;
  for (size_t i = 0; i < providers->size(); ++i) {
    const std::string path = absl::StrCat("providers[", i, "]");
    MUSICGW_ASSIGN_OR_RETURN(ProviderConfig provider, ParseProvider((*providers)[i], path, env));
    if (!accounts.emplace(provider.type, provider.name).second) {
      return Problem(path + ".name",
                     absl::StrCat("duplicate account \"", provider.name, "\" for provider ",
                                  ProviderSlug(provider.type),
                                  "; each account of a provider needs its own name"));
    }
    if (!provider.token_state_file.empty() &&
        !token_files.insert(provider.token_state_file).second) {
      return Problem(path + ".token_state_file", "already used by another account");
    }
    config.providers.push_back(std::move(provider));
  }
  const json* tenants = reader.Find("tenants");
  if (tenants == nullptr || !tenants->is_array() || tenants->empty()) {
    return Problem("tenants", "required: a list with at least one tenant");
  }
  TenantLimitsConfig default_limits;
  absl::Duration default_retention = TenantConfig().asset_retention;
  if (const json* defaults = reader.Find("tenant_defaults"); defaults != nullptr) {
    if (!defaults->is_object()) return Problem("tenant_defaults", "must be an object");
    ObjectReader d(*defaults, "tenant_defaults");
    MUSICGW_RETURN_IF_ERROR(
        d.Seconds("asset_retention_seconds", &default_retention, 1, kMaxRetentionSeconds));
    if (const json* limits = d.Find("limits"); limits != nullptr) {
      MUSICGW_RETURN_IF_ERROR(ParseLimits(*limits, d.Path("limits"), &default_limits));
    }
    MUSICGW_RETURN_IF_ERROR(d.CheckNoUnknownKeys());
  }
  std::set<std::string> tenant_names, key_hashes;
  for (size_t i = 0; i < tenants->size(); ++i) {
    const std::string path = absl::StrCat("tenants[", i, "]");
    MUSICGW_ASSIGN_OR_RETURN(TenantConfig tenant, ParseTenant((*tenants)[i], path, default_limits,
                                                              default_retention, env));
    if (!tenant_names.insert(tenant.name).second) {
      return Problem(path + ".name", absl::StrCat("duplicate tenant \"", tenant.name, "\""));
    }
    for (const auto& hash : tenant.api_key_sha256) {
      if (!key_hashes.insert(hash).second) {
        return Problem(path + ".api_key_sha256", "a key hash already used by another tenant");
      }
    }
    config.tenants.push_back(std::move(tenant));
  }
  if (const json* webhooks = reader.Find("webhooks"); webhooks != nullptr) {
    MUSICGW_RETURN_IF_ERROR(ParseWebhookDelivery(*webhooks, &config.webhook_delivery));
  }
  MUSICGW_RETURN_IF_ERROR(reader.CheckNoUnknownKeys());
  return config;
}

absl::StatusOr<Config> LoadConfigFile(const std::string& path, const EnvLookup& env) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read config file ", path));
  std::stringstream buffer;
  buffer << in.rdbuf();
  return ParseConfig(buffer.str(), env);
}

}  // namespace musicgw::config
