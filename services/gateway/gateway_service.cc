#include "services/gateway/gateway_service.h"

#include <utility>

#include "absl/time/clock.h"
#include "adapters/capabilities.h"
#include "common/errors.h"
#include "services/gateway/stream_reactor.h"
#include "services/gateway/validator.h"

namespace musicgw::gateway {
namespace {

using musicgw::v1::Operation;

// validate_only: the routed provider checks the request too where it has a dry run (Loudly B2B
// test=true: no quota spent); the other adapters encode it and send nothing.
grpc::ServerUnaryReactor* DryRun(grpc::CallbackServerContext* context,
                                 const std::vector<adapters::ProviderAdapter*>& adapters,
                                 const musicgw::v1::GenerateRequest& request, Operation routed,
                                 Operation* response, std::unique_ptr<CallLog> call) {
  adapters::ProviderAdapter* adapter = nullptr;
  for (auto* candidate : adapters) {
    if (candidate->provider() == routed.provider() &&
        candidate->account() == routed.provider_account()) {
      adapter = candidate;
    }
  }
  if (adapter == nullptr) return FinishUnary(context, *call, absl::OkStatus());
  adapters::SubmitRequest submit;
  submit.request_id = request.request_id();
  submit.idempotency_key = absl::StrCat("validate-only-", request.request_id());
  submit.request = request;
  submit.deadline = absl::Now() + absl::Seconds(30);
  submit.validate_only = true;
  auto* reactor = context->DefaultReactor();
  adapter->Submit(std::move(submit),
                  [reactor, response, routed = std::move(routed), call = std::move(call)](
                      const absl::StatusOr<adapters::UpstreamStatus>& checked) mutable {
                    FinishWithOperation(reactor, response, std::move(call))(
                        checked.ok() ? absl::StatusOr<Operation>(std::move(routed))
                                     : absl::StatusOr<Operation>(checked.status()));
                  });
  return reactor;
}

}  // namespace

GatewayService::GatewayService(GatewayDeps deps) : deps_(std::move(deps)) {
  for (const auto* adapter : deps_.adapters) configured_.push_back(adapter->provider());
}

absl::Status GatewayService::CheckWithAdapters(
    const musicgw::v1::GenerateRequest& request,
    const std::vector<musicgw::v1::Provider>& candidates) const {
  // The first candidate must accept the request as a whole (its catalog included); the others
  // are only fallbacks, and the engine re-checks them before use.
  for (const auto* adapter : deps_.adapters) {
    if (adapter->provider() == candidates.front()) return adapter->CheckRequest(request);
  }
  return absl::OkStatus();
}

grpc::ServerUnaryReactor* GatewayService::Generate(grpc::CallbackServerContext* context,
                                                   const musicgw::v1::GenerateRequest* request,
                                                   Operation* response) {
  auto call = std::make_unique<CallLog>("Generate", deps_.observer);
  auto tenant = Admit(*context, MethodClass::kGenerate);
  if (!tenant.ok()) return FinishUnary(context, *call, tenant.status());
  call->set_tenant((*tenant)->name);
  auto candidates = ValidateGenerate(*request, configured_);
  if (!candidates.ok()) return FinishUnary(context, *call, candidates.status());
  call->set_provider(candidates->front());
  absl::Status supported = CheckWithAdapters(*request, *candidates);
  if (!supported.ok()) return FinishUnary(context, *call, supported);
  auto operation = deps_.engine->Generate((*tenant)->name, *request);
  if (!operation.ok()) return FinishUnary(context, *call, operation.status());
  if (request->validate_only())
    return DryRun(context, deps_.adapters, *request, std::move(*operation), response,
                  std::move(call));
  NoteOperation(*call, *operation);
  *response = std::move(*operation);
  return FinishUnary(context, *call, absl::OkStatus());
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

grpc::ServerWriteReactor<musicgw::v1::OperationEvent>* GatewayService::WatchOperation(
    grpc::CallbackServerContext* context, const musicgw::v1::WatchOperationRequest* request) {
  auto call = std::make_unique<CallLog>("WatchOperation", deps_.observer);
  auto fail = [&call](const absl::Status& status) {
    call->Done(status);
    return new FailedStreamReactor<musicgw::v1::OperationEvent>(status);
  };
  auto tenant = deps_.tenants->Authenticate(*context);
  if (!tenant.ok()) return fail(tenant.status());
  call->set_tenant((*tenant)->name);
  call->set_operation(request->name());
  absl::Status valid = ValidateWatch(*request);
  if (!valid.ok()) return fail(valid);
  auto slot = OpenStream((*tenant)->name);
  if (!slot.ok()) return fail(slot.status());
  auto stream = deps_.engine->Watch((*tenant)->name, request->name(), request->after_sequence());
  if (!stream.ok()) return fail(stream.status());
  return new StreamReactor<musicgw::v1::OperationEvent>(
      std::move(call), std::make_unique<SlottedStream<musicgw::v1::OperationEvent>>(
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

grpc::ServerWriteReactor<musicgw::v1::DownloadChunk>* GatewayService::Download(
    grpc::CallbackServerContext* context, const musicgw::v1::DownloadRequest* request) {
  auto call = std::make_unique<CallLog>("Download", deps_.observer);
  auto fail = [&call](const absl::Status& status) {
    call->Done(status);
    return new FailedStreamReactor<musicgw::v1::DownloadChunk>(status);
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
  return new StreamReactor<musicgw::v1::DownloadChunk>(
      std::move(call), std::make_unique<SlottedStream<musicgw::v1::DownloadChunk>>(
                           std::move(*stream), std::move(*slot)));
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
