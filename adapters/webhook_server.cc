#include "adapters/webhook_server.h"

#include <httplib.h>

#include <algorithm>
#include <chrono>
#include <thread>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/thread_priority.h"
#include "common/tls_http_server.h"

namespace musicgw::adapters {

class WebhookServer::Impl {
 public:
  Impl(WebhookServerOptions options, Routes routes)
      : options_(std::move(options)), routes_(std::move(routes)) {}
  ~Impl() { Stop(); }

  absl::Status Listen() {
    auto http = tls::HttpServer::Create(options_.tls, "server.webhook_tls");
    if (!http.ok()) return http.status();
    http_ = *std::move(http);
    httplib::Server& server = http_->server();
    const int threads = std::max(1, options_.threads);
    server.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
    server.set_tcp_nodelay(true);
    server.set_payload_max_length(options_.max_body_bytes);
    // A body over the limit is refused with 413 by cpp-httplib itself, before any route runs
    // (the body is not even read); the logger still sees that answer, so the route's handler
    // counts and logs it there. An empty body tells it from a handler's own 413.
    server.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
      if (res.status != 413 || !req.body.empty()) return;
      WebhookDelivery delivery;
      delivery.header = [&req](const std::string& name) { return req.get_header_value(name); };
      if (!absl::SimpleAtoi(req.get_header_value("Content-Length"), &delivery.refused_body_bytes) ||
          delivery.refused_body_bytes == 0) {
        delivery.refused_body_bytes = options_.max_body_bytes + 1;
      }
      Handle(req.path, delivery);
    });
    server.set_read_timeout(5, 0);
    server.set_write_timeout(5, 0);
    for (const auto& route : routes_) {
      const std::string path = route.first;
      server.Post(path, [this, path](const httplib::Request& req, httplib::Response& res) {
        WebhookDelivery delivery;
        delivery.header = [&req](const std::string& name) { return req.get_header_value(name); };
        delivery.body = req.body;
        res.status = Handle(path, delivery);
      });
    }
    if (options_.port == 0) {
      port_ = server.bind_to_any_port(options_.host);
    } else if (server.bind_to_port(options_.host, options_.port)) {
      port_ = options_.port;
    } else {
      port_ = -1;
    }
    if (port_ <= 0) {
      return absl::UnavailableError(
          absl::StrCat("cannot listen for webhooks on ", options_.host, ":", options_.port));
    }
    // cpp-httplib makes its worker pool on this thread, so the workers inherit its nice.
    thread_ = std::thread([this] {
      LowerCurrentThreadPriorityOrWarn(options_.thread_nice, "webhook listener");
      http_->server().listen_after_bind();
    });
    // stop() is a no-op until the server runs; the socket already accepts connections.
    for (int i = 0; i < 5000 && !server.is_running(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return absl::OkStatus();
  }

  int Handle(const std::string& path, const WebhookDelivery& delivery) {
    const std::vector<WebhookAccountRoute>* accounts = nullptr;
    for (const auto& route : routes_) {
      if (route.first == path) accounts = &route.second;
    }
    if (accounts == nullptr || accounts->empty()) return 404;
    const WebhookAccountRoute* chosen = &accounts->front();
    if (accounts->size() > 1) {
      for (const auto& account : *accounts) {
        if (account.handler->SignedForThisAccount(delivery)) {
          chosen = &account;
          break;
        }
      }
    }
    return chosen->handler->Handle(delivery, [this, chosen](const UpstreamStatus& status) {
      absl::MutexLock lock(&sink_mu_);
      if (!stopped_) chosen->sink(status);
    });
  }

  void Stop() {
    {
      absl::MutexLock lock(&sink_mu_);
      stopped_ = true;
    }
    if (thread_.joinable()) {
      http_->server().stop();
      thread_.join();
    }
  }

  int port() const { return port_; }

 private:
  const WebhookServerOptions options_;
  const Routes routes_;
  std::unique_ptr<tls::HttpServer> http_;  // plaintext or TLS (options_.tls)
  std::thread thread_;
  int port_ = 0;
  absl::Mutex sink_mu_;
  bool stopped_ ABSL_GUARDED_BY(sink_mu_) = false;
};

absl::StatusOr<std::unique_ptr<WebhookServer>> WebhookServer::Start(WebhookServerOptions options,
                                                                    Routes routes) {
  auto impl = std::make_unique<Impl>(std::move(options), std::move(routes));
  absl::Status listening = impl->Listen();
  if (!listening.ok()) return listening;
  return std::unique_ptr<WebhookServer>(new WebhookServer(std::move(impl)));
}

WebhookServer::WebhookServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
WebhookServer::~WebhookServer() { Stop(); }
int WebhookServer::port() const { return impl_->port(); }
int WebhookServer::Handle(const std::string& path, const WebhookDelivery& delivery) {
  return impl_->Handle(path, delivery);
}
void WebhookServer::Stop() { impl_->Stop(); }

}  // namespace musicgw::adapters
