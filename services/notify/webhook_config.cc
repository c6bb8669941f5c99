#include "services/notify/webhook_config.h"

#include <algorithm>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"

namespace musicgw::notify {

absl::StatusOr<std::unique_ptr<OutboxPlanner>> PlannerFromConfig(const config::Config& config,
                                                                 const Clock& clock) {
  absl::flat_hash_map<std::string, TenantWebhooks> tenants;
  for (size_t i = 0; i < config.tenants.size(); ++i) {
    const config::TenantConfig& tenant = config.tenants[i];
    TenantWebhooks webhooks;
    webhooks.secrets = tenant.webhooks.secrets;
    for (const config::WebhookEndpointConfig& endpoint : tenant.webhooks.endpoints) {
      webhooks.endpoints.push_back({endpoint.name, endpoint.url, endpoint.events});
    }
    absl::Status valid =
        ValidateTenantWebhooks(webhooks, config.webhook_delivery.allow_private_targets);
    if (!valid.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tenants[", i, "].webhooks: ", valid.message()));
    }
    tenants.emplace(tenant.name, std::move(webhooks));
  }
  return std::make_unique<OutboxPlanner>(std::move(tenants), clock);
}

DeliveryOptions DeliveryOptionsFromConfig(const config::WebhookDeliveryConfig& config) {
  DeliveryOptions options;
  options.timeout = config.timeout;
  options.per_endpoint_concurrency = config.per_endpoint_concurrency;
  options.first_retry = config.first_retry;
  options.max_retry = config.max_retry;
  options.retry_for = config.retry_for;
  // A claim must outlast the batch it is in (sends run a few at a time, each within the
  // timeout), so a live deliverer keeps its claims; after a crash, the claims it held lapse
  // this long after they were taken and the deliveries are sent again, with the same id.
  const int parallel = std::max(1, std::min(options.threads, options.per_endpoint_concurrency));
  const int rounds = (options.batch + parallel - 1) / parallel;
  options.claim = config.timeout * (rounds + 1) + absl::Seconds(5);
  return options;
}

std::function<std::vector<operations::OutboxMessage>(
    const std::string&, const musicgw::v1::Operation&, const musicgw::v1::Operation&)>
OutboxHook(const OutboxPlanner& planner) {
  return [&planner](const std::string& tenant, const musicgw::v1::Operation& from,
                    const musicgw::v1::Operation& to) {
    const musicgw::v1::WebhookTarget& notify = to.request().notify();
    if (notify.url().empty()) return planner.Plan(tenant, from, to, nullptr);
    WebhookEndpoint target;
    target.name = "request";
    target.url = notify.url();
    target.events.assign(notify.events().begin(), notify.events().end());
    return planner.Plan(tenant, from, to, &target);
  };
}

}  // namespace musicgw::notify
