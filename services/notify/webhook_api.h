// File: webhook_api.h
// What the webhook RPCs do (ListWebhookDeliveries, RedeliverWebhook, SendTestWebhook) and the
// check of GenerateRequest.notify, over the ledger's outbox. Every call is scoped to the
// calling tenant: another tenant's deliveries are NOT_FOUND or absent.
//
// Thread-safe; calls touch only the ledger (and DNS for a target given as a host name).
#pragma once

#include <functional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/clock.h"
#include "musicgw/v1/musicgw.pb.h"
#include "services/notify/outbox_planner.h"
#include "services/operations/operation_store.h"

namespace musicgw::notify {

struct WebhookApiDeps {
  operations::OperationStore* store = nullptr;  // the ledger; not owned
  const OutboxPlanner* planner = nullptr;       // not owned
  bool allow_private_targets = false;
  std::function<void()> wake;  // the deliverer: something is due now
  const Clock* clock = nullptr;
};

class WebhookApi {
 public:
  explicit WebhookApi(WebhookApiDeps deps);

  // GenerateRequest.notify: http(s), not a refused address (unless allowed), known events, and
  // a tenant with a secret to sign with. INVALID_ARGUMENT with a BadRequest naming the field.
  absl::Status CheckNotify(const std::string& tenant,
                           const musicgw::v1::WebhookTarget& target) const;

  absl::StatusOr<musicgw::v1::ListWebhookDeliveriesResponse> List(
      const std::string& tenant, const musicgw::v1::ListWebhookDeliveriesRequest& request) const;
  absl::StatusOr<musicgw::v1::WebhookDelivery> Redeliver(
      const std::string& tenant, const musicgw::v1::RedeliverWebhookRequest& request) const;
  absl::StatusOr<musicgw::v1::WebhookDelivery> SendTest(
      const std::string& tenant, const musicgw::v1::SendTestWebhookRequest& request) const;

 private:
  absl::Status CheckUrl(const std::string& url, const std::string& field) const;
  absl::StatusOr<musicgw::v1::WebhookDelivery> Find(const std::string& tenant,
                                                    const std::string& delivery_id) const;
  absl::StatusOr<musicgw::v1::WebhookDelivery> ToProto(
      const operations::OutboxDelivery& delivery) const;

  WebhookApiDeps deps_;
};

}  // namespace musicgw::notify
