// File: webhook_config.h
// Outgoing webhooks from the gateway's configuration: each tenant's endpoints and secrets
// checked (ValidateTenantWebhooks: refused targets fail the start), the planner built from them,
// the delivery options, and the engine's outbox hook, which adds a request's own notify target
// (kept in Operation.request, so it survives a restart) to the tenant's endpoints.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/clock.h"
#include "common/config.h"
#include "musicgw/v1/musicgw.pb.h"
#include "services/notify/outbox_planner.h"
#include "services/notify/webhook_deliverer.h"
#include "services/operations/outbox.h"

namespace musicgw::notify {

// The planner for every tenant in `config`; INVALID_ARGUMENT "tenants[i].webhooks: …" when a
// tenant's webhooks are unusable (a refused target included, unless private targets are
// allowed). Secrets are never quoted.
absl::StatusOr<std::unique_ptr<OutboxPlanner>> PlannerFromConfig(const config::Config& config,
                                                                 const Clock& clock);

DeliveryOptions DeliveryOptionsFromConfig(const config::WebhookDeliveryConfig& config);

// EngineOptions::outbox: the messages for the tenant's endpoints plus the operation's own
// GenerateRequest.notify target. `planner` must outlive the hook.
std::function<std::vector<operations::OutboxMessage>(
    const std::string&, const musicgw::v1::Operation&, const musicgw::v1::Operation&)>
OutboxHook(const OutboxPlanner& planner);

}  // namespace musicgw::notify
