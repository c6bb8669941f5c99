#include "services/gateway/gateway_service.h"

#include <utility>

#include "absl/time/clock.h"
#include "adapters/capabilities.h"
#include "common/errors.h"
#include "services/gateway/decode_errors.h"
#include "services/gateway/download_reactor.h"
#include "services/gateway/pending_accept.h"
#include "services/gateway/stream_reactor.h"
#include "services/gateway/validator.h"
#include "services/gateway/watch_reactor.h"

namespace musicgw::gateway {
namespace {

using musicgw::v1::Operation;

absl::Status NoWebhooks() { return absl::UnimplementedError("this gateway sends no webhooks"); }

// A raw method's request that does not parse (ParseRawRequest) is answered before anything else,
// as gRPC answers a typed method's: with what the decode-error interceptor gives the typed ones.
grpc::ServerWriteReactor<grpc::ByteBuffer>* Unparsed(absl::string_view method) {
  return new FailedStreamReactor<grpc::ByteBuffer>(AnswerUnparsedRequest(method));
}

}  // namespace

GatewayService::GatewayService(GatewayDeps deps) : deps_(std::move(deps)) {}

grpc::ServerUnaryReactor* GatewayService::Generate(grpc::CallbackServerContext* context,
                                                   const musicgw::v1::GenerateRequest* request,
                                                   Operation* response) {
  auto call = std::make_unique<CallLog>("Generate", deps_.observer);
  auto tenant = Admit(*context, MethodClass::kGenerate);
  if (!tenant.ok()) return FinishUnary(context, *call, tenant.status());
  call->set_tenant((*tenant)->name);
  absl::Status valid = ValidateGenerate(*request);
  if (valid.ok()) valid = CheckNotify((*tenant)->name, *request);
  if (!valid.ok()) return FinishUnary(context, *call, valid);
  call->set_provider(request->provider());
  if (request->validate_only()) {
    // The same routing decision as a real Generate, then the routed account's dry run.
    auto* reactor = context->DefaultReactor();
    deps_.engine->ValidateOnly((*tenant)->name, *request,
                               FinishWithOperation(reactor, response, std::move(call)));
    return reactor;
  }
  auto* reactor = context->DefaultReactor();
  PendingAccept accept(
      [engine = deps_.engine, name = (*tenant)->name, request] {
        return engine->Generate(name, *request);  // gRPC's request, alive until the answer
      },
      FinishWithOperation(reactor, response, std::move(call)));
  deps_.accepts->Post(std::move(accept));
  return reactor;
}

grpc::ServerUnaryReactor* GatewayService::GetOperation(
    grpc::CallbackServerContext* context, const musicgw::v1::GetOperationRequest* request,
    Operation* response) {
  CallLog call("GetOperation", deps_.observer);
  auto tenant = Admit(*context, MethodClass::kRead);
  if (!tenant.ok()) return FinishUnary(context, call, tenant.status());
  call.set_tenant((*tenant)->name);
  call.set_operation(request->name());
  absl::Status valid = ValidateOperationName("name", request->name());
  if (!valid.ok()) return FinishUnary(context, call, valid);
  auto operation = deps_.engine->Get((*tenant)->name, request->name());
  if (!operation.ok()) return FinishUnary(context, call, operation.status());
  NoteOperation(call, *operation);
  *response = std::move(*operation);
  return FinishUnary(context, call, absl::OkStatus());
}

grpc::ServerUnaryReactor* GatewayService::ListOperations(
    grpc::CallbackServerContext* context, const musicgw::v1::ListOperationsRequest* request,
    musicgw::v1::ListOperationsResponse* response) {
  CallLog call("ListOperations", deps_.observer);
  auto tenant = Admit(*context, MethodClass::kList);
  if (!tenant.ok()) return FinishUnary(context, call, tenant.status());
  call.set_tenant((*tenant)->name);
  absl::Status valid = ValidateList(*request);
  if (!valid.ok()) return FinishUnary(context, call, valid);
  auto page = deps_.engine->List((*tenant)->name, *request);
  if (!page.ok()) return FinishUnary(context, call, page.status());
  *response = std::move(*page);
  return FinishUnary(context, call, absl::OkStatus());
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* GatewayService::WatchOperation(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* raw) {
  auto request = ParseRawRequest<musicgw::v1::WatchOperationRequest>(*raw);
  if (!request.has_value()) return Unparsed("/musicgw.v1.MusicGateway/WatchOperation");
  auto call = std::make_unique<CallLog>("WatchOperation", deps_.observer);
  auto fail = [&call](const absl::Status& status) {
    call->Done(status);
    return new FailedStreamReactor<grpc::ByteBuffer>(status);
  };
  auto tenant = deps_.tenants->Authenticate(*context);
  if (!tenant.ok()) return fail(tenant.status());
  call->set_tenant((*tenant)->name);
  call->set_operation(request->name());
  absl::Status valid = ValidateWatch(*request);
  if (!valid.ok()) return fail(valid);
  auto slot = OpenStream((*tenant)->name);
  if (!slot.ok()) return fail(slot.status());
  auto stream =
      deps_.engine->WatchShared((*tenant)->name, request->name(), request->after_sequence());
  if (!stream.ok()) return fail(stream.status());
  return new WatchReactor(std::move(call), std::make_unique<SlottedStream<operations::WatchEvent>>(
                                               std::move(*stream), std::move(*slot)));
}

grpc::ServerUnaryReactor* GatewayService::WaitOperation(
    grpc::CallbackServerContext* context, const musicgw::v1::WaitOperationRequest* request,
    Operation* response) {
  auto call = std::make_unique<CallLog>("WaitOperation", deps_.observer);
  auto tenant = Admit(*context, MethodClass::kRead);
  if (!tenant.ok()) return FinishUnary(context, *call, tenant.status());
  call->set_tenant((*tenant)->name);
  call->set_operation(request->name());
  absl::Status valid = ValidateWait(*request);
  if (!valid.ok()) return FinishUnary(context, *call, valid);
  absl::Duration timeout =
      absl::Seconds(request->timeout().seconds()) + absl::Nanoseconds(request->timeout().nanos());
  if (timeout <= absl::ZeroDuration()) timeout = absl::Seconds(60);
  // Answer a little before the caller's own deadline, so it gets a snapshot, not an error.
  const absl::Time deadline = absl::FromChrono(context->deadline());
  if (deadline != absl::InfiniteFuture()) {
    timeout = std::min(
        timeout, std::max(absl::ZeroDuration(), deadline - absl::Now() - absl::Milliseconds(50)));
  }
  auto* reactor = context->DefaultReactor();
  deps_.engine->Wait((*tenant)->name, request->name(), timeout,
                     FinishWithOperation(reactor, response, std::move(call)));
  return reactor;
}

grpc::ServerUnaryReactor* GatewayService::CancelOperation(
    grpc::CallbackServerContext* context, const musicgw::v1::CancelOperationRequest* request,
    Operation* response) {
  auto call = std::make_unique<CallLog>("CancelOperation", deps_.observer);
  auto tenant = Admit(*context, MethodClass::kCancel);
  if (!tenant.ok()) return FinishUnary(context, *call, tenant.status());
  call->set_tenant((*tenant)->name);
  call->set_operation(request->name());
  absl::Status valid = ValidateCancel(*request);
  if (!valid.ok()) return FinishUnary(context, *call, valid);
  auto* reactor = context->DefaultReactor();
  deps_.engine->Cancel((*tenant)->name, request->name(), request->reason(),
                       FinishWithOperation(reactor, response, std::move(call)));
  return reactor;
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* GatewayService::Download(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* raw) {
  auto request = ParseRawRequest<musicgw::v1::DownloadRequest>(*raw);
  if (!request.has_value()) return Unparsed("/musicgw.v1.MusicGateway/Download");
  auto call = std::make_unique<CallLog>("Download", deps_.observer);
  auto fail = [&call](const absl::Status& status) {
    call->Done(status);
    return new FailedStreamReactor<grpc::ByteBuffer>(status);
  };
  auto tenant = deps_.tenants->Authenticate(*context);
  if (!tenant.ok()) return fail(tenant.status());
  call->set_tenant((*tenant)->name);
  call->set_operation(request->asset());
  absl::Status valid = ValidateDownload(*request);
  if (!valid.ok()) return fail(valid);
  auto slot = OpenStream((*tenant)->name);
  if (!slot.ok()) return fail(slot.status());
  auto stream = deps_.engine->Download((*tenant)->name, request->asset(), request->offset());
  if (!stream.ok()) return fail(stream.status());
  // A copy in custody is read and framed by the reactor itself.
  auto* custody = dynamic_cast<operations::CustodyStream*>(stream->get());
  return new DownloadReactor(std::move(call),
                             std::make_unique<SlottedStream<musicgw::v1::DownloadChunk>>(
                                 std::move(*stream), std::move(*slot)),
                             custody);
}

grpc::ServerUnaryReactor* GatewayService::GetQuota(grpc::CallbackServerContext* context,
                                                   const musicgw::v1::GetQuotaRequest* request,
                                                   musicgw::v1::QuotaReport* response) {
  CallLog call("GetQuota", deps_.observer);
  auto tenant = Admit(*context, MethodClass::kRead);
  if (!tenant.ok()) return FinishUnary(context, call, tenant.status());
  call.set_tenant((*tenant)->name);
  absl::Status valid = ValidateGetQuota(*request);
  if (!valid.ok()) return FinishUnary(context, call, valid);
  for (auto& quota : deps_.directory->Quotas(request->provider())) {
    *response->add_provider_quotas() = std::move(quota);
  }
  for (auto& budget : deps_.directory->Budgets(**tenant)) {
    *response->add_tenant_budgets() = std::move(budget);
  }
  return FinishUnary(context, call, absl::OkStatus());
}

grpc::ServerUnaryReactor* GatewayService::ListProviders(
    grpc::CallbackServerContext* context, const musicgw::v1::ListProvidersRequest* request,
    musicgw::v1::ListProvidersResponse* response) {
  CallLog call("ListProviders", deps_.observer);
  auto tenant = Admit(*context, MethodClass::kRead);
  if (!tenant.ok()) return FinishUnary(context, call, tenant.status());
  call.set_tenant((*tenant)->name);
  for (auto& provider : deps_.directory->Providers()) {
    *response->add_providers() = std::move(provider);
  }
  return FinishUnary(context, call, absl::OkStatus());
}

grpc::ServerUnaryReactor* GatewayService::ListWebhookDeliveries(
    grpc::CallbackServerContext* context, const musicgw::v1::ListWebhookDeliveriesRequest* request,
    musicgw::v1::ListWebhookDeliveriesResponse* response) {
  CallLog call("ListWebhookDeliveries", deps_.observer);
  auto tenant = Admit(*context, MethodClass::kList);
  if (!tenant.ok()) return FinishUnary(context, call, tenant.status());
  call.set_tenant((*tenant)->name);
  if (deps_.webhooks == nullptr) return FinishUnary(context, call, NoWebhooks());
  auto page = deps_.webhooks->List((*tenant)->name, *request);
  if (!page.ok()) return FinishUnary(context, call, page.status());
  *response = std::move(*page);
  return FinishUnary(context, call, absl::OkStatus());
}

grpc::ServerUnaryReactor* GatewayService::RedeliverWebhook(
    grpc::CallbackServerContext* context, const musicgw::v1::RedeliverWebhookRequest* request,
    musicgw::v1::WebhookDelivery* response) {
  CallLog call("RedeliverWebhook", deps_.observer);
  auto tenant = Admit(*context, MethodClass::kCancel);
  if (!tenant.ok()) return FinishUnary(context, call, tenant.status());
  call.set_tenant((*tenant)->name);
  if (deps_.webhooks == nullptr) return FinishUnary(context, call, NoWebhooks());
  auto delivery = deps_.webhooks->Redeliver((*tenant)->name, *request);
  if (!delivery.ok()) return FinishUnary(context, call, delivery.status());
  *response = std::move(*delivery);
  return FinishUnary(context, call, absl::OkStatus());
}

grpc::ServerUnaryReactor* GatewayService::SendTestWebhook(
    grpc::CallbackServerContext* context, const musicgw::v1::SendTestWebhookRequest* request,
    musicgw::v1::WebhookDelivery* response) {
  CallLog call("SendTestWebhook", deps_.observer);
  auto tenant = Admit(*context, MethodClass::kCancel);
  if (!tenant.ok()) return FinishUnary(context, call, tenant.status());
  call.set_tenant((*tenant)->name);
  if (deps_.webhooks == nullptr) return FinishUnary(context, call, NoWebhooks());
  auto delivery = deps_.webhooks->SendTest((*tenant)->name, *request);
  if (!delivery.ok()) return FinishUnary(context, call, delivery.status());
  *response = std::move(*delivery);
  return FinishUnary(context, call, absl::OkStatus());
}

absl::Status GatewayService::CheckNotify(const std::string& tenant,
                                         const musicgw::v1::GenerateRequest& request) const {
  if (!request.has_notify()) return absl::OkStatus();
  if (deps_.webhooks == nullptr) {
    return InvalidFieldError("notify", "this gateway sends no webhooks");
  }
  return deps_.webhooks->CheckNotify(tenant, request.notify());
}

absl::StatusOr<const config::TenantConfig*> GatewayService::Admit(
    const grpc::CallbackServerContext& context, MethodClass method) const {
  auto tenant = deps_.tenants->Authenticate(context);
  if (!tenant.ok() || deps_.admission == nullptr) return tenant;
  absl::Status admitted = deps_.admission->Admit((*tenant)->name, method);
  if (!admitted.ok()) return admitted;
  return tenant;
}

absl::StatusOr<StreamSlot> GatewayService::OpenStream(const std::string& tenant) const {
  if (deps_.admission == nullptr) return StreamSlot();
  return deps_.admission->OpenStream(tenant);
}

}  // namespace musicgw::gateway
