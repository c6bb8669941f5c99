// File: server.h
// The whole gateway process minus main(): builds the HTTP client, adapters, ledger, engine,
// quota monitor, webhook endpoint and gRPC server from a Config, and drains them in order.
// Integration tests start it in-process; main() adds flags and signals.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/config.h"

namespace musicgw::gateway {

class GatewayServer {
 public:
  // Starts serving. Errors name what failed (a port in use, the ledger, a provider account).
  static absl::StatusOr<std::unique_ptr<GatewayServer>> Start(config::Config config);
  virtual ~GatewayServer() = default;

  virtual int grpc_port() const = 0;
  virtual int metrics_port() const = 0;
  // 0 when no webhook endpoint is configured.
  virtual int webhook_port() const = 0;

  // Stops accepting, reports NOT_SERVING, ends open streams with UNAVAILABLE and gives unary
  // calls until `deadline` to finish. Idempotent.
  virtual void Drain(absl::Duration deadline) = 0;
};

}  // namespace musicgw::gateway
