#include "services/gateway/health_service.h"

#include <utility>

namespace musicgw::gateway {

using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

// One Watch stream: at most one write in flight, the newest status waiting behind it, and the
// end (UNAVAILABLE) sent after the last status. Deletes itself in OnDone.
class HealthService::Watcher final : public grpc::ServerWriteReactor<HealthCheckResponse> {
 public:
  explicit Watcher(HealthService* service) : service_(service) {}

  void Send(HealthCheckResponse::ServingStatus status) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    if (finished_) return;
    if (writing_) {
      pending_ = status;
      has_pending_ = true;
      return;
    }
    WriteLocked(status);
  }

  // Ends the stream once the statuses already queued are written.
  void End() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    ending_ = true;
    if (!writing_) FinishLocked(grpc::Status(grpc::StatusCode::UNAVAILABLE, "server draining"));
  }

  void OnWriteDone(bool ok) override ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    writing_ = false;
    if (!ok) {
      FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "health watch write failed"));
    } else if (has_pending_) {
      has_pending_ = false;
      WriteLocked(pending_);
    } else if (ending_) {
      FinishLocked(grpc::Status(grpc::StatusCode::UNAVAILABLE, "server draining"));
    }
  }

  void OnCancel() override ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    FinishLocked(grpc::Status::CANCELLED);
  }

  void OnDone() override {
    service_->Forget(this);
    delete this;
  }

 private:
  void WriteLocked(HealthCheckResponse::ServingStatus status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    response_.set_status(status);
    writing_ = true;
    StartWrite(&response_);
  }
  void FinishLocked(const grpc::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_) return;
    finished_ = true;
    Finish(status);
  }

  HealthService* const service_;
  absl::Mutex mu_;
  HealthCheckResponse response_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool has_pending_ ABSL_GUARDED_BY(mu_) = false;
  HealthCheckResponse::ServingStatus pending_ ABSL_GUARDED_BY(mu_) = HealthCheckResponse::UNKNOWN;
  bool ending_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
};

HealthService::HealthService(std::vector<std::string> services)
    : services_(services.begin(), services.end()) {}

HealthService::~HealthService() {
  // The server ends every call (so every Watcher's OnDone runs) before its services go.
  absl::MutexLock lock(&mu_);
  while (!watchers_.empty()) no_watchers_.Wait(&mu_);
}

HealthCheckResponse::ServingStatus HealthService::StatusOf(const std::string& service) const {
  if (!service.empty() && services_.count(service) == 0)
    return HealthCheckResponse::SERVICE_UNKNOWN;
  return serving_ && !shutdown_ ? HealthCheckResponse::SERVING : HealthCheckResponse::NOT_SERVING;
}

void HealthService::SetServing(bool serving) {
  absl::MutexLock lock(&mu_);
  if (shutdown_ || serving_ == serving) return;
  serving_ = serving;
  // Every watcher gets the server-wide status; one watching an unknown name keeps its answer.
  for (Watcher* watcher : watchers_) {
    watcher->Send(serving ? HealthCheckResponse::SERVING : HealthCheckResponse::NOT_SERVING);
  }
}

void HealthService::Shutdown() {
  absl::MutexLock lock(&mu_);
  if (shutdown_) return;
  shutdown_ = true;
  serving_ = false;
  for (Watcher* watcher : watchers_) {
    watcher->Send(HealthCheckResponse::NOT_SERVING);
    watcher->End();
  }
}

grpc::ServerUnaryReactor* HealthService::Check(grpc::CallbackServerContext* context,
                                               const HealthCheckRequest* request,
                                               HealthCheckResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::MutexLock lock(&mu_);
  const auto status = StatusOf(request->service());
  if (status == HealthCheckResponse::SERVICE_UNKNOWN) {
    reactor->Finish(grpc::Status(grpc::StatusCode::NOT_FOUND, "unknown service"));
    return reactor;
  }
  response->set_status(status);
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerWriteReactor<HealthCheckResponse>* HealthService::Watch(
    grpc::CallbackServerContext* context, const HealthCheckRequest* request) {
  auto* watcher = new Watcher(this);
  absl::MutexLock lock(&mu_);
  watchers_.insert(watcher);
  watcher->Send(StatusOf(request->service()));
  if (shutdown_) watcher->End();
  return watcher;
}

void HealthService::Forget(Watcher* watcher) {
  absl::MutexLock lock(&mu_);
  watchers_.erase(watcher);
  if (watchers_.empty()) no_watchers_.SignalAll();
}

}  // namespace musicgw::gateway
