// File: gateway_service.h
// The musicgw.v1.MusicGateway service on the gRPC callback API: authentication, validation and
// logging around the operations engine. No handler blocks a gRPC thread on a provider: unary
// calls touch only the ledger, Wait and the streams complete from engine callbacks.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "adapters/provider.h"
#include "musicgw/v1/musicgw.grpc.pb.h"
#include "services/gateway/auth.h"
#include "services/gateway/call_log.h"
#include "services/gateway/tenant_admission.h"
#include "services/notify/webhook_api.h"
#include "services/operations/engine.h"
#include "services/operations/executor.h"

namespace musicgw::gateway {

// What ListProviders and GetQuota report; implemented where adapters, the engine's health view
// and the quota cache meet (server.cc).
class ProviderDirectory {
 public:
  virtual ~ProviderDirectory() = default;
  virtual std::vector<musicgw::v1::ProviderInfo> Providers() const = 0;
  virtual std::vector<musicgw::v1::ProviderQuota> Quotas(musicgw::v1::Provider filter) const = 0;
  virtual std::vector<musicgw::v1::TenantBudget> Budgets(
      const config::TenantConfig& tenant) const = 0;
};

struct GatewayDeps {
  const TenantDirectory* tenants = nullptr;
  operations::OperationsEngine* engine = nullptr;
  // Configured adapters in routing order (not owned).
  std::vector<adapters::ProviderAdapter*> adapters;
  const ProviderDirectory* directory = nullptr;
  RpcObserver* observer = nullptr;       // optional
  TenantAdmission* admission = nullptr;  // optional: no per-tenant limits without it
  // Outgoing webhooks (not owned); null: the webhook RPCs answer UNIMPLEMENTED and
  // GenerateRequest.notify is refused.
  const notify::WebhookApi* webhooks = nullptr;
  // Where Generate's durable accept runs (not owned, required): it waits for the ledger's disk,
  // which gRPC's callback threads, shared by every call of every tenant, must not.
  operations::Executor* accepts = nullptr;
};

// Download and WatchOperation are raw methods: custody downloads frame their data messages
// themselves (download_reactor.h), and watch events are written as bytes shared across streams.
using GatewayBase = musicgw::v1::MusicGateway::WithRawCallbackMethod_Download<
    musicgw::v1::MusicGateway::WithRawCallbackMethod_WatchOperation<
        musicgw::v1::MusicGateway::CallbackService>>;
class GatewayService final : public GatewayBase {
 public:
  explicit GatewayService(GatewayDeps deps);

  grpc::ServerUnaryReactor* Generate(grpc::CallbackServerContext* context,
                                     const musicgw::v1::GenerateRequest* request,
                                     musicgw::v1::Operation* response) override;
  grpc::ServerUnaryReactor* GetOperation(grpc::CallbackServerContext* context,
                                         const musicgw::v1::GetOperationRequest* request,
                                         musicgw::v1::Operation* response) override;
  grpc::ServerUnaryReactor* ListOperations(grpc::CallbackServerContext* context,
                                           const musicgw::v1::ListOperationsRequest* request,
                                           musicgw::v1::ListOperationsResponse* response) override;
  // Takes a WatchOperationRequest, writes OperationEvents.
  grpc::ServerWriteReactor<grpc::ByteBuffer>* WatchOperation(grpc::CallbackServerContext* context,
                                                             const grpc::ByteBuffer* raw) override;
  grpc::ServerUnaryReactor* WaitOperation(grpc::CallbackServerContext* context,
                                          const musicgw::v1::WaitOperationRequest* request,
                                          musicgw::v1::Operation* response) override;
  grpc::ServerUnaryReactor* CancelOperation(grpc::CallbackServerContext* context,
                                            const musicgw::v1::CancelOperationRequest* request,
                                            musicgw::v1::Operation* response) override;
  // Takes a DownloadRequest, writes DownloadChunks.
  grpc::ServerWriteReactor<grpc::ByteBuffer>* Download(grpc::CallbackServerContext* context,
                                                       const grpc::ByteBuffer* raw) override;
  grpc::ServerUnaryReactor* GetQuota(grpc::CallbackServerContext* context,
                                     const musicgw::v1::GetQuotaRequest* request,
                                     musicgw::v1::QuotaReport* response) override;
  grpc::ServerUnaryReactor* ListProviders(grpc::CallbackServerContext* context,
                                          const musicgw::v1::ListProvidersRequest* request,
                                          musicgw::v1::ListProvidersResponse* response) override;
  grpc::ServerUnaryReactor* ListWebhookDeliveries(
      grpc::CallbackServerContext* context,
      const musicgw::v1::ListWebhookDeliveriesRequest* request,
      musicgw::v1::ListWebhookDeliveriesResponse* response) override;
  grpc::ServerUnaryReactor* RedeliverWebhook(grpc::CallbackServerContext* context,
                                             const musicgw::v1::RedeliverWebhookRequest* request,
                                             musicgw::v1::WebhookDelivery* response) override;
  grpc::ServerUnaryReactor* SendTestWebhook(grpc::CallbackServerContext* context,
                                            const musicgw::v1::SendTestWebhookRequest* request,
                                            musicgw::v1::WebhookDelivery* response) override;

 private:
  // Authenticates, then admits one request of `method` for the tenant (its rate limit).
  absl::StatusOr<const config::TenantConfig*> Admit(const grpc::CallbackServerContext& context,
                                                    MethodClass method) const;
  absl::StatusOr<StreamSlot> OpenStream(const std::string& tenant) const;
  // GenerateRequest.notify, when set.
  absl::Status CheckNotify(const std::string& tenant,
                           const musicgw::v1::GenerateRequest& request) const;

  GatewayDeps deps_;
};

}  // namespace musicgw::gateway
