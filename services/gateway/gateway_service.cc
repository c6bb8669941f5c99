#include "services/gateway/gateway_service.h"

#include <utility>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "adapters/capabilities.h"
#include "common/errors.h"
#include "common/log.h"
#include "services/gateway/validator.h"

namespace musicgw::gateway {
namespace {

using musicgw::v1::Operation;

const char* CodeName(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk:
      return "OK";
    case absl::StatusCode::kCancelled:
      return "CANCELLED";
    case absl::StatusCode::kUnknown:
      return "UNKNOWN";
    case absl::StatusCode::kInvalidArgument:
      return "INVALID_ARGUMENT";
    case absl::StatusCode::kDeadlineExceeded:
      return "DEADLINE_EXCEEDED";
    case absl::StatusCode::kNotFound:
      return "NOT_FOUND";
    case absl::StatusCode::kAlreadyExists:
      return "ALREADY_EXISTS";
    case absl::StatusCode::kPermissionDenied:
      return "PERMISSION_DENIED";
    case absl::StatusCode::kResourceExhausted:
      return "RESOURCE_EXHAUSTED";
    case absl::StatusCode::kFailedPrecondition:
      return "FAILED_PRECONDITION";
    case absl::StatusCode::kAborted:
      return "ABORTED";
    case absl::StatusCode::kOutOfRange:
      return "OUT_OF_RANGE";
    case absl::StatusCode::kUnimplemented:
      return "UNIMPLEMENTED";
    case absl::StatusCode::kInternal:
      return "INTERNAL";
    case absl::StatusCode::kUnavailable:
      return "UNAVAILABLE";
    case absl::StatusCode::kDataLoss:
      return "DATA_LOSS";
    case absl::StatusCode::kUnauthenticated:
      return "UNAUTHENTICATED";
    default:
      return "UNKNOWN";
  }
}

// One log line and one observation per call, whatever path the handler takes.
class CallLog {
 public:
  CallLog(absl::string_view method, RpcObserver* observer)
      : method_(method), observer_(observer), start_(absl::Now()) {}

  void set_tenant(absl::string_view tenant) { tenant_ = std::string(tenant); }
  void set_operation(absl::string_view operation) { operation_ = std::string(operation); }
  void set_provider(musicgw::v1::Provider provider) { provider_ = provider; }

  void Done(const absl::Status& status) {
    const absl::Duration latency = absl::Now() - start_;
    if (observer_ != nullptr) {
      observer_->OnRpcDone(method_, static_cast<int>(status.code()), latency);
    }
    const bool server_fault = status.code() == absl::StatusCode::kInternal ||
                              status.code() == absl::StatusCode::kUnknown ||
                              status.code() == absl::StatusCode::kDataLoss;
    log::Write(server_fault ? log::Level::kError : log::Level::kInfo, "rpc",
               {{"method", method_},
                {"tenant", tenant_},
                {"operation", operation_},
                {"provider", provider_ == musicgw::v1::PROVIDER_UNSPECIFIED
                                 ? std::string()
                                 : musicgw::v1::Provider_Name(provider_)},
                {"code", CodeName(status.code())},
                {"error", status.ok() ? std::string() : std::string(status.message())},
                {"latency_ms", absl::ToDoubleMilliseconds(latency)}});
  }

  RpcObserver* observer() const { return observer_; }
  const std::string& method() const { return method_; }

 private:
  std::string method_;
  RpcObserver* observer_;
  absl::Time start_;
  std::string tenant_;
  std::string operation_;
  musicgw::v1::Provider provider_ = musicgw::v1::PROVIDER_UNSPECIFIED;
};

grpc::ServerUnaryReactor* FinishUnary(grpc::CallbackServerContext* context, CallLog& call,
                                      const absl::Status& status) {
  call.Done(status);
  auto* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

void NoteOperation(CallLog& call, const Operation& operation) {
  call.set_operation(operation.name());
  call.set_provider(operation.provider());
}

// The engine's answer, delivered later, finishes the unary call.
absl::AnyInvocable<void(absl::StatusOr<Operation>) &&> FinishWithOperation(
    grpc::ServerUnaryReactor* reactor, Operation* response, std::unique_ptr<CallLog> call) {
  return [reactor, response, call = std::move(call)](absl::StatusOr<Operation> operation) {
    if (operation.ok()) {
      NoteOperation(*call, *operation);
      *response = std::move(*operation);
    }
    const absl::Status status = operation.ok() ? absl::OkStatus() : operation.status();
    call->Done(status);
    reactor->Finish(ToGrpcStatus(status));
  };
}

// Pumps an EventStream into a server stream, one write in flight at a time. The stream wakes
// the reactor when it has something new; a slow client only slows its own stream.
template <typename Message>
class StreamReactor final : public grpc::ServerWriteReactor<Message> {
 public:
  StreamReactor(std::unique_ptr<CallLog> call,
                std::unique_ptr<operations::EventStream<Message>> stream)
      : call_(std::move(call)), stream_(std::move(stream)) {
    if (call_->observer() != nullptr) call_->observer()->OnStreamOpened(call_->method());
    stream_->SetWakeup([this] { Pump(); });
    Pump();
  }

  void OnWriteDone(bool ok) override {
    {
      absl::MutexLock lock(&mu_);
      writing_ = false;
      if (!ok) {
        // The client went away; OnCancel or the failed write ends the call.
        FinishLocked(absl::CancelledError("client stopped reading"));
        return;
      }
      if (call_->observer() != nullptr) call_->observer()->OnStreamMessage(call_->method());
    }
    Pump();
  }

  void OnCancel() override {
    absl::MutexLock lock(&mu_);
    FinishLocked(absl::CancelledError("cancelled by the client"));
  }

  void OnDone() override {
    // Destroying the stream first guarantees its wake-up never touches a deleted reactor; it is
    // moved out under the lock so a concurrent Pump() sees finished_ and leaves it alone.
    std::unique_ptr<operations::EventStream<Message>> stream;
    {
      absl::MutexLock lock(&mu_);
      finished_ = true;
      stream = std::move(stream_);
    }
    stream.reset();
    if (call_->observer() != nullptr) call_->observer()->OnStreamClosed(call_->method());
    delete this;
  }

 private:
  void Pump() {
    absl::MutexLock lock(&mu_);
    if (writing_ || finished_) return;
    bool done = false;
    absl::Status final_status;
    std::optional<Message> next = stream_->Next(&done, &final_status);
    if (next.has_value()) {
      current_ = std::move(*next);
      writing_ = true;
      this->StartWrite(&current_);
      return;
    }
    if (done) FinishLocked(final_status);
  }

  void FinishLocked(const absl::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_) return;
    finished_ = true;
    call_->Done(status);
    this->Finish(ToGrpcStatus(status));
  }

  std::unique_ptr<CallLog> call_;
  absl::Mutex mu_;
  std::unique_ptr<operations::EventStream<Message>> stream_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  Message current_ ABSL_GUARDED_BY(mu_);
};

// A stream that fails before it starts.
template <typename Message>
class FailedStreamReactor final : public grpc::ServerWriteReactor<Message> {
 public:
  explicit FailedStreamReactor(const absl::Status& status) { this->Finish(ToGrpcStatus(status)); }
  void OnDone() override { delete this; }
};

}  // namespace

GatewayService::GatewayService(GatewayDeps deps) : deps_(std::move(deps)) {}

grpc::ServerUnaryReactor* GatewayService::Generate(grpc::CallbackServerContext* context,
                                                   const musicgw::v1::GenerateRequest* request,
                                                   Operation* response) {
  auto call = std::make_unique<CallLog>("Generate", deps_.observer);
  auto tenant = deps_.tenants->Authenticate(*context);
  if (!tenant.ok()) return FinishUnary(context, *call, tenant.status());
  call->set_tenant((*tenant)->name);
  absl::Status valid = ValidateGenerate(*request);
  if (!valid.ok()) return FinishUnary(context, *call, valid);
  call->set_provider(request->provider());
  if (request->validate_only()) {
    // The same routing decision as a real Generate, then the routed account's dry run.
    auto* reactor = context->DefaultReactor();
    deps_.engine->ValidateOnly((*tenant)->name, *request,
                               FinishWithOperation(reactor, response, std::move(call)));
    return reactor;
  }
  auto operation = deps_.engine->Generate((*tenant)->name, *request);
  if (!operation.ok()) return FinishUnary(context, *call, operation.status());
  NoteOperation(*call, *operation);
  *response = std::move(*operation);
  return FinishUnary(context, *call, absl::OkStatus());
}

grpc::ServerUnaryReactor* GatewayService::GetOperation(
    grpc::CallbackServerContext* context, const musicgw::v1::GetOperationRequest* request,
    Operation* response) {
  CallLog call("GetOperation", deps_.observer);
  auto tenant = deps_.tenants->Authenticate(*context);
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
  auto tenant = deps_.tenants->Authenticate(*context);
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
  auto stream = deps_.engine->Watch((*tenant)->name, request->name(), request->after_sequence());
  if (!stream.ok()) return fail(stream.status());
  return new StreamReactor<musicgw::v1::OperationEvent>(std::move(call), std::move(*stream));
}

grpc::ServerUnaryReactor* GatewayService::WaitOperation(
    grpc::CallbackServerContext* context, const musicgw::v1::WaitOperationRequest* request,
    Operation* response) {
  auto call = std::make_unique<CallLog>("WaitOperation", deps_.observer);
  auto tenant = deps_.tenants->Authenticate(*context);
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
  auto tenant = deps_.tenants->Authenticate(*context);
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
  auto stream = deps_.engine->Download((*tenant)->name, request->asset(), request->offset());
  if (!stream.ok()) return fail(stream.status());
  return new StreamReactor<musicgw::v1::DownloadChunk>(std::move(call), std::move(*stream));
}

grpc::ServerUnaryReactor* GatewayService::GetQuota(grpc::CallbackServerContext* context,
                                                   const musicgw::v1::GetQuotaRequest* request,
                                                   musicgw::v1::QuotaReport* response) {
  CallLog call("GetQuota", deps_.observer);
  auto tenant = deps_.tenants->Authenticate(*context);
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
  auto tenant = deps_.tenants->Authenticate(*context);
  if (!tenant.ok()) return FinishUnary(context, call, tenant.status());
  call.set_tenant((*tenant)->name);
  for (auto& provider : deps_.directory->Providers()) {
    *response->add_providers() = std::move(provider);
  }
  return FinishUnary(context, call, absl::OkStatus());
}

}  // namespace musicgw::gateway
