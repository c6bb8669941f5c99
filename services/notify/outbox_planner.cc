#include "services/notify/outbox_planner.h"

#include <algorithm>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "services/notify/address_guard.h"
#include "services/notify/webhook_signer.h"

namespace musicgw::notify {

namespace v1 = musicgw::v1;
namespace ops = musicgw::operations;

namespace {

bool Wants(const WebhookEndpoint& endpoint, const std::string& type) {
  return endpoint.events.empty() ||
         std::find(endpoint.events.begin(), endpoint.events.end(), type) != endpoint.events.end();
}

std::string IdOf(const v1::Operation& op) {
  const std::string& name = op.name();
  const size_t slash = name.find('/');
  return slash == std::string::npos ? name : name.substr(slash + 1);
}

}  // namespace

bool IsKnownEvent(const std::string& event) {
  return event == "operation.running" || event == "operation.succeeded" ||
         event == "operation.failed" || event == "operation.cancelled";
}

OutboxPlanner::OutboxPlanner(absl::flat_hash_map<std::string, TenantWebhooks> tenants,
                             const Clock& clock)
    : tenants_(std::move(tenants)), clock_(clock) {}

std::vector<ops::OutboxMessage> OutboxPlanner::Plan(const std::string& tenant,
                                                    const v1::Operation& from,
                                                    const v1::Operation& to,
                                                    const WebhookEndpoint* request_target) const {
  std::vector<ops::OutboxMessage> messages;
  if (from.state() == to.state()) return messages;
  const std::optional<std::string> type = EventTypeForState(to.state());
  if (!type.has_value()) return messages;
  std::vector<const WebhookEndpoint*> targets;
  auto it = tenants_.find(tenant);
  if (it != tenants_.end()) {
    for (const WebhookEndpoint& endpoint : it->second.endpoints) targets.push_back(&endpoint);
  }
  if (request_target != nullptr && !request_target->url.empty()) targets.push_back(request_target);
  if (targets.empty()) return messages;
  const absl::Time now = clock_.Now();
  auto body = EventBody(*type, now, to);
  if (!body.ok()) return messages;
  const std::string op_id = IdOf(to);
  // The event's id is derived from the operation and its sequence: the same event always has
  // the same webhook-id, whichever replica writes it.
  const std::string event_id = absl::StrCat("msg_", op_id, "_", to.sequence());
  for (const WebhookEndpoint* endpoint : targets) {
    if (!Wants(*endpoint, *type)) continue;
    ops::OutboxMessage message;
    message.delivery_id = absl::StrCat("whd_", op_id, "_", to.sequence(), "_", endpoint->name);
    message.event_id = event_id;
    message.tenant = tenant;
    message.endpoint = endpoint->name;
    message.url = endpoint->url;
    message.operation_id = op_id;
    message.event_type = *type;
    message.body = *body;
    message.create_time = now;
    messages.push_back(std::move(message));
  }
  return messages;
}

std::vector<std::string> OutboxPlanner::Secrets(const std::string& tenant) const {
  auto it = tenants_.find(tenant);
  return it == tenants_.end() ? std::vector<std::string>{} : it->second.secrets;
}

const WebhookEndpoint* OutboxPlanner::Endpoint(const std::string& tenant,
                                               const std::string& name) const {
  auto it = tenants_.find(tenant);
  if (it == tenants_.end()) return nullptr;
  for (const WebhookEndpoint& endpoint : it->second.endpoints) {
    if (endpoint.name == name) return &endpoint;
  }
  return nullptr;
}

absl::Status ValidateTenantWebhooks(const TenantWebhooks& webhooks, bool allow_private) {
  if (!webhooks.endpoints.empty() && webhooks.secrets.empty()) {
    return absl::InvalidArgumentError("webhook endpoints need at least one whsec_ secret");
  }
  for (const std::string& secret : webhooks.secrets) {
    absl::Status status = DecodeWebhookSecret(secret).status();
    if (!status.ok()) return status;
  }
  absl::flat_hash_set<std::string> names;
  for (const WebhookEndpoint& endpoint : webhooks.endpoints) {
    if (endpoint.name.empty() || endpoint.name == "request" ||
        !names.insert(endpoint.name).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("webhook endpoint name \"", endpoint.name,
                       "\" must be non-empty, unique and not \"request\""));
    }
    for (const std::string& event : endpoint.events) {
      if (!IsKnownEvent(event)) {
        return absl::InvalidArgumentError(absl::StrCat("unknown webhook event \"", event, "\""));
      }
    }
    absl::Status status = CheckWebhookTarget(endpoint.url, allow_private);
    if (!status.ok()) {
      return absl::Status(status.code(),
                          absl::StrCat("webhook endpoint ", endpoint.name, ": ", status.message()));
    }
  }
  return absl::OkStatus();
}

}  // namespace musicgw::notify
