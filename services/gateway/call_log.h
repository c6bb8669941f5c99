// File: call_log.h
// One log line and one RpcObserver observation per gRPC call, whatever path the handler takes,
// and the helpers that finish a unary call through it.
#pragma once

#include <memory>
#include <string>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "musicgw/v1/musicgw.pb.h"

namespace musicgw::gateway {

// Observes every call, for metrics. Methods are called from gRPC threads; must not block.
class RpcObserver {
 public:
  virtual ~RpcObserver() = default;
  virtual void OnRpcDone(absl::string_view method, int grpc_code, absl::Duration latency) = 0;
  virtual void OnStreamOpened(absl::string_view method) = 0;
  virtual void OnStreamClosed(absl::string_view method) = 0;
  virtual void OnStreamMessage(absl::string_view method) = 0;
};

class CallLog {
 public:
  // `observer` may be null.
  CallLog(absl::string_view method, RpcObserver* observer);

  void set_tenant(absl::string_view tenant) { tenant_ = std::string(tenant); }
  void set_operation(absl::string_view operation) { operation_ = std::string(operation); }
  void set_provider(musicgw::v1::Provider provider) { provider_ = provider; }

  // Logs the call (an error line for server faults) and reports its code and latency.
  void Done(const absl::Status& status);

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

// Ends a unary call at once with `status`.
grpc::ServerUnaryReactor* FinishUnary(grpc::CallbackServerContext* context, CallLog& call,
                                      const absl::Status& status);

// Names the operation and its provider in the call's log line.
void NoteOperation(CallLog& call, const musicgw::v1::Operation& operation);

// The engine's answer, delivered later, finishes the unary call.
absl::AnyInvocable<void(absl::StatusOr<musicgw::v1::Operation>) &&> FinishWithOperation(
    grpc::ServerUnaryReactor* reactor, musicgw::v1::Operation* response,
    std::unique_ptr<CallLog> call);

}  // namespace musicgw::gateway
