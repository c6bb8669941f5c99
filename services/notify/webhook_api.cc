#include "services/notify/webhook_api.h"

#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/errors.h"
#include "common/status_macros.h"
#include "common/time_util.h"
#include "services/notify/address_guard.h"
#include "services/notify/webhook_signer.h"
#include "services/operations/ids.h"

namespace musicgw::notify {

namespace v1 = musicgw::v1;
namespace ops = musicgw::operations;

namespace {

constexpr int kDefaultPageSize = 100;
constexpr int kMaxPageSize = 1000;
// The endpoint name of targets given in a request (GenerateRequest.notify, a test ping's URL).
constexpr char kRequestEndpoint[] = "request";

v1::WebhookDeliveryStatus StatusOf(ops::DeliveryStatus status) {
  switch (status) {
    case ops::DeliveryStatus::kPending:
      return v1::WEBHOOK_DELIVERY_STATUS_PENDING;
    case ops::DeliveryStatus::kDelivered:
      return v1::WEBHOOK_DELIVERY_STATUS_DELIVERED;
    case ops::DeliveryStatus::kFailed:
      return v1::WEBHOOK_DELIVERY_STATUS_FAILED;
  }
  return v1::WEBHOOK_DELIVERY_STATUS_UNSPECIFIED;
}

}  // namespace

WebhookApi::WebhookApi(WebhookApiDeps deps) : deps_(std::move(deps)) {
  if (deps_.clock == nullptr) deps_.clock = &Clock::Real();
}

absl::Status WebhookApi::CheckUrl(const std::string& url, const std::string& field) const {
  absl::Status status = CheckWebhookTarget(url, deps_.allow_private_targets);
  if (status.ok()) return status;
  if (absl::IsPermissionDenied(status)) {
    return InvalidFieldError(field,
                             "refused target: loopback, private, link-local and metadata "
                             "addresses may not receive webhooks");
  }
  return InvalidFieldError(field, status.message());
}

absl::Status WebhookApi::CheckNotify(const std::string& tenant,
                                     const v1::WebhookTarget& target) const {
  if (target.url().empty()) {
    if (target.events_size() > 0) return InvalidFieldError("notify.url", "required with events");
    return absl::OkStatus();
  }
  for (const std::string& event : target.events()) {
    if (!IsKnownEvent(event)) {
      return InvalidFieldError("notify.events",
                               absl::StrCat("unknown event \"", event,
                                            "\"; one of operation.running, operation.succeeded, "
                                            "operation.failed, operation.cancelled"));
    }
  }
  MUSICGW_RETURN_IF_ERROR(CheckUrl(target.url(), "notify.url"));
  if (deps_.planner->Secrets(tenant).empty()) {
    return InvalidFieldError("notify", "the tenant has no webhook secret configured to sign with");
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::WebhookDelivery> WebhookApi::ToProto(const ops::OutboxDelivery& delivery) const {
  const ops::OutboxMessage& message = delivery.message;
  v1::WebhookDelivery out;
  out.set_delivery_id(message.delivery_id);
  out.set_webhook_id(message.event_id);
  out.set_endpoint(message.endpoint);
  out.set_url(message.url);
  if (!message.operation_id.empty()) out.set_operation(ops::OperationName(message.operation_id));
  out.set_event_type(message.event_type);
  out.set_status(StatusOf(delivery.status));
  out.set_attempt_count(delivery.attempts);
  out.set_last_status_code(delivery.last_status_code);
  *out.mutable_last_latency() = ToProtoDuration(delivery.last_latency);
  if (delivery.status == ops::DeliveryStatus::kPending) {
    *out.mutable_next_attempt_time() = ToProtoTimestamp(delivery.next_attempt_time);
  }
  out.set_last_error(delivery.last_error);
  *out.mutable_create_time() = ToProtoTimestamp(message.create_time);
  MUSICGW_ASSIGN_OR_RETURN(std::vector<ops::DeliveryAttempt> attempts,
                           deps_.store->ListDeliveryAttempts(message.delivery_id));
  for (const ops::DeliveryAttempt& attempt : attempts) {
    v1::WebhookAttempt* a = out.add_attempts();
    a->set_attempt(attempt.attempt);
    *a->mutable_time() = ToProtoTimestamp(attempt.time);
    a->set_status_code(attempt.status_code);
    *a->mutable_latency() = ToProtoDuration(attempt.latency);
    a->set_error(attempt.error);
  }
  return out;
}

absl::StatusOr<v1::ListWebhookDeliveriesResponse> WebhookApi::List(
    const std::string& tenant, const v1::ListWebhookDeliveriesRequest& request) const {
  if (request.operation().empty() == request.endpoint().empty()) {
    return InvalidFieldError("operation", "set exactly one of operation or endpoint");
  }
  if (request.page_size() < 0 || request.page_size() > kMaxPageSize) {
    return InvalidFieldError("page_size", absl::StrCat("must be from 0 to ", kMaxPageSize));
  }
  ops::DeliveryQuery query;
  query.tenant = tenant;
  query.limit = request.page_size() == 0 ? kDefaultPageSize : request.page_size();
  if (!request.operation().empty()) {
    MUSICGW_ASSIGN_OR_RETURN(query.operation_id,
                             ops::ParseOperationName(request.operation(), "operation"));
  }
  query.endpoint = request.endpoint();
  MUSICGW_ASSIGN_OR_RETURN(std::vector<ops::OutboxDelivery> deliveries,
                           deps_.store->ListDeliveries(query));
  v1::ListWebhookDeliveriesResponse response;
  for (const ops::OutboxDelivery& delivery : deliveries) {
    MUSICGW_ASSIGN_OR_RETURN(*response.add_deliveries(), ToProto(delivery));
  }
  return response;
}

absl::StatusOr<v1::WebhookDelivery> WebhookApi::Find(const std::string& tenant,
                                                     const std::string& delivery_id) const {
  ops::DeliveryQuery query;
  query.tenant = tenant;
  query.delivery_id = delivery_id;
  query.limit = 1;
  MUSICGW_ASSIGN_OR_RETURN(std::vector<ops::OutboxDelivery> found,
                           deps_.store->ListDeliveries(query));
  if (found.empty()) {
    return WithErrorInfo(
        absl::NotFoundError(absl::StrCat("webhook delivery ", delivery_id, " not found")),
        "WEBHOOK_DELIVERY_NOT_FOUND", "musicgw.dev");
  }
  return ToProto(found.front());
}

absl::StatusOr<v1::WebhookDelivery> WebhookApi::Redeliver(
    const std::string& tenant, const v1::RedeliverWebhookRequest& request) const {
  if (request.delivery_id().empty()) return InvalidFieldError("delivery_id", "required");
  // Tenant-scoped first, so another tenant's id is NOT_FOUND whatever the store says.
  MUSICGW_RETURN_IF_ERROR(Find(tenant, request.delivery_id()).status());
  MUSICGW_RETURN_IF_ERROR(
      deps_.store->Redeliver(tenant, request.delivery_id(), deps_.clock->Now()));
  if (deps_.wake) deps_.wake();
  return Find(tenant, request.delivery_id());
}

absl::StatusOr<v1::WebhookDelivery> WebhookApi::SendTest(
    const std::string& tenant, const v1::SendTestWebhookRequest& request) const {
  if (request.endpoint().empty() == request.url().empty()) {
    return InvalidFieldError("endpoint", "set exactly one of endpoint or url");
  }
  ops::OutboxMessage message;
  if (!request.endpoint().empty()) {
    const WebhookEndpoint* endpoint = deps_.planner->Endpoint(tenant, request.endpoint());
    if (endpoint == nullptr) {
      return WithErrorInfo(absl::NotFoundError(absl::StrCat("webhook endpoint \"",
                                                            request.endpoint(), "\" not found")),
                           "WEBHOOK_ENDPOINT_NOT_FOUND", "musicgw.dev");
    }
    message.endpoint = endpoint->name;
    message.url = endpoint->url;
  } else {
    MUSICGW_RETURN_IF_ERROR(CheckUrl(request.url(), "url"));
    message.endpoint = kRequestEndpoint;
    message.url = request.url();
  }
  if (deps_.planner->Secrets(tenant).empty()) {
    return WithErrorInfo(
        absl::FailedPreconditionError("the tenant has no webhook secret configured to sign with"),
        "WEBHOOK_SECRET_MISSING", "musicgw.dev");
  }
  const absl::Time now = deps_.clock->Now();
  const std::string id = ops::NewOperationId(now);
  message.delivery_id = absl::StrCat("whd_ping_", id);
  message.event_id = absl::StrCat("msg_ping_", id);
  message.tenant = tenant;
  message.event_type = std::string(kPingEventType);
  message.create_time = now;
  MUSICGW_ASSIGN_OR_RETURN(message.body, EventBody(kPingEventType, now, v1::Operation()));
  MUSICGW_RETURN_IF_ERROR(deps_.store->EnqueueOutbox(message));
  if (deps_.wake) deps_.wake();
  return Find(tenant, message.delivery_id);
}

}  // namespace musicgw::notify
