#include "services/gateway/call_log.h"

#include <utility>

#include "absl/time/clock.h"
#include "common/errors.h"
#include "common/log.h"
#include "services/gateway/access_log.h"

namespace musicgw::gateway {

CallLog::CallLog(absl::string_view method, RpcObserver* observer)
    : method_(method), observer_(observer), start_(absl::Now()) {}

void CallLog::Done(const absl::Status& status) {
  const absl::Duration latency = absl::Now() - start_;
  if (observer_ != nullptr) {
    observer_->OnRpcDone(method_, static_cast<int>(status.code()), latency);
  }
  const bool server_fault = status.code() == absl::StatusCode::kInternal ||
                            status.code() == absl::StatusCode::kUnknown ||
                            status.code() == absl::StatusCode::kDataLoss;
  const std::string provider = provider_ == musicgw::v1::PROVIDER_UNSPECIFIED
                                   ? std::string()
                                   : musicgw::v1::Provider_Name(provider_);
  if (server_fault) {
    // Rare and important: written at once, at error level.
    log::Write(log::Level::kError, "rpc",
               {{"method", method_},
                {"tenant", tenant_},
                {"operation", operation_},
                {"provider", provider},
                {"code", absl::StatusCodeToString(status.code())},
                {"error", std::string(status.message())},
                {"latency_ms", absl::ToDoubleMilliseconds(latency)}});
    return;
  }
  AccessLog::Default().Append(AccessRecord{
      .time = start_ + latency,
      .method = method_,
      .tenant = std::move(tenant_),
      .operation = std::move(operation_),
      .provider = provider,
      .code = absl::StatusCodeToString(status.code()),
      .error = status.ok() ? std::string() : std::string(status.message()),
      .latency_ms = absl::ToDoubleMilliseconds(latency),
  });
}

grpc::ServerUnaryReactor* FinishUnary(grpc::CallbackServerContext* context, CallLog& call,
                                      const absl::Status& status) {
  call.Done(status);
  auto* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

void NoteOperation(CallLog& call, const musicgw::v1::Operation& operation) {
  call.set_operation(operation.name());
  call.set_provider(operation.provider());
}

absl::AnyInvocable<void(absl::StatusOr<musicgw::v1::Operation>) &&> FinishWithOperation(
    grpc::ServerUnaryReactor* reactor, musicgw::v1::Operation* response,
    std::unique_ptr<CallLog> call) {
  return [reactor, response,
          call = std::move(call)](absl::StatusOr<musicgw::v1::Operation> operation) {
    if (operation.ok()) {
      NoteOperation(*call, *operation);
      *response = std::move(*operation);
    }
    const absl::Status status = operation.ok() ? absl::OkStatus() : operation.status();
    call->Done(status);
    reactor->Finish(ToGrpcStatus(status));
  };
}

}  // namespace musicgw::gateway
