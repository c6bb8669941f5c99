// File: outbox_planner.h
// Which webhook messages one state change produces: for each of the tenant's endpoints (from
// config, plus the request's own notify target) that wants the event, one outbox message with
// the signed-later JSON envelope. The operations engine calls it for every ledger update and
// writes what it returns in the same transaction (EngineOptions::outbox).
//
// Thread-safe (immutable after construction).
#pragma once

#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "musicgw/v1/musicgw.pb.h"
#include "services/operations/outbox.h"

namespace musicgw::notify {

struct WebhookEndpoint {
  std::string name;  // unique per tenant; "request" is reserved for GenerateRequest.notify
  std::string url;
  std::vector<std::string> events;  // empty: every operation.* event
};

struct TenantWebhooks {
  // Active "whsec_" secrets; every delivery is signed with each (rotation overlap).
  std::vector<std::string> secrets;
  std::vector<WebhookEndpoint> endpoints;
};

class OutboxPlanner {
 public:
  OutboxPlanner(absl::flat_hash_map<std::string, TenantWebhooks> tenants, const Clock& clock);

  // The messages for `tenant`'s operation moving from `from` to `to`; none unless the state
  // changed into an event state. `request_target` is the request's own URL ("" if none) with
  // its wanted events.
  std::vector<operations::OutboxMessage> Plan(const std::string& tenant,
                                              const musicgw::v1::Operation& from,
                                              const musicgw::v1::Operation& to,
                                              const WebhookEndpoint* request_target) const;

  // The tenant's active secrets (empty when it has none).
  std::vector<std::string> Secrets(const std::string& tenant) const;
  const WebhookEndpoint* Endpoint(const std::string& tenant, const std::string& name) const;

 private:
  const absl::flat_hash_map<std::string, TenantWebhooks> tenants_;
  const Clock& clock_;
};

// Validates a tenant's webhook config: secrets decode, names unique and not "request", URLs
// http(s) and (unless `allow_private`) not resolving to refused addresses, events known.
absl::Status ValidateTenantWebhooks(const TenantWebhooks& webhooks, bool allow_private);

// True when `event` is one of the operation.* event names.
bool IsKnownEvent(const std::string& event);

}  // namespace musicgw::notify
