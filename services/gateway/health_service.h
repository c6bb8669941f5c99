// File: health_service.h
// grpc.health.v1.Health for the gateway: Check, and Watch streams that a drain ends at once.
// gRPC's built-in service keeps a Watch open until the client goes or the shutdown deadline
// passes, so a client doing client-side health checking held a draining process to its full
// deadline (and its teardown about a second longer).
//
// Thread-safe.
#pragma once

#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace musicgw::gateway {

class HealthService final : public grpc::health::v1::Health::CallbackService {
 public:
  // `services`: the names Check and Watch know, besides "" (the whole server).
  explicit HealthService(std::vector<std::string> services);
  ~HealthService() override;
  HealthService(const HealthService&) = delete;
  HealthService& operator=(const HealthService&) = delete;

  // SERVING or NOT_SERVING for every known name; open Watch streams get the new status.
  void SetServing(bool serving);
  // For a drain: every open Watch gets NOT_SERVING and then ends with UNAVAILABLE, and new
  // ones end so at once; Check answers NOT_SERVING. Irreversible.
  void Shutdown();

  grpc::ServerUnaryReactor* Check(grpc::CallbackServerContext* context,
                                  const grpc::health::v1::HealthCheckRequest* request,
                                  grpc::health::v1::HealthCheckResponse* response) override;
  grpc::ServerWriteReactor<grpc::health::v1::HealthCheckResponse>* Watch(
      grpc::CallbackServerContext* context,
      const grpc::health::v1::HealthCheckRequest* request) override;

 private:
  class Watcher;
  friend class Watcher;

  grpc::health::v1::HealthCheckResponse::ServingStatus StatusOf(const std::string& service) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Forget(Watcher* watcher);

  const std::set<std::string> services_;
  mutable absl::Mutex mu_;
  bool serving_ ABSL_GUARDED_BY(mu_) = false;
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;
  std::set<Watcher*> watchers_ ABSL_GUARDED_BY(mu_);
  absl::CondVar no_watchers_;
};

}  // namespace musicgw::gateway
