// File: webhook_server.h
// The HTTP endpoint provider callbacks (webhooks) arrive on: one listener, one route per path,
// each path served by the WebhookHandlers of the provider accounts that use it. A delivery on
// a path shared by several accounts goes to the first account whose secrets signed it (else to
// the first account, which rejects and counts it). Verified updates go to that account's sink,
// serialized, never after Stop(). Knows no provider: the handlers do the checking.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "adapters/provider.h"
#include "common/config.h"

namespace musicgw::adapters {

struct WebhookAccountRoute {
  WebhookHandler* handler = nullptr;  // not owned; must outlive the server
  WebhookHandler::Sink sink;          // quick: post real work elsewhere
};

struct WebhookServerOptions {
  std::string host = "0.0.0.0";
  int port = 0;  // 0 = any free port
  size_t max_body_bytes = 1 << 20;
  int threads = 8;
  // The listener's and its workers' nice value (common/thread_priority.h): webhooks only nudge
  // trackers, which run below the RPC threads too. 0: the process's priority.
  int thread_nice = 0;
  // TLS from files, reloaded when they change; not enabled: plaintext.
  config::TlsConfig tls;
};

class WebhookServer {
 public:
  // path -> the accounts served on it, in order.
  using Routes = std::vector<std::pair<std::string, std::vector<WebhookAccountRoute>>>;

  // Binds and starts serving. UNAVAILABLE when the address cannot be bound.
  static absl::StatusOr<std::unique_ptr<WebhookServer>> Start(WebhookServerOptions options,
                                                              Routes routes);
  ~WebhookServer();  // stops
  WebhookServer(const WebhookServer&) = delete;
  WebhookServer& operator=(const WebhookServer&) = delete;

  int port() const;
  // What the route `path` answers to a delivery, without HTTP. Thread-safe.
  int Handle(const std::string& path, const WebhookDelivery& delivery);
  // Stops serving; no sink calls after it returns. Idempotent.
  void Stop();

  class Impl;

 private:
  explicit WebhookServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace musicgw::adapters
