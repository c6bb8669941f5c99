// File: test_server.h
// A cpp-httplib server on a loopback port chosen by the OS, for HTTP-level tests.
#pragma once

#include <httplib.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"

namespace musicgw::testing {

class TestHttpServer {
 public:
  TestHttpServer() {
    // The listener creates its task queue once it runs (after it marks itself running, before it
    // accepts): the event Start() waits for.
    server_.new_task_queue = [this] {
      running_->Notify();
      return new httplib::ThreadPool(16);
    };
    // Headers and body go out in separate writes; without this Nagle + delayed ACK add 40 ms.
    server_.set_tcp_nodelay(true);
  }
  ~TestHttpServer() { Stop(); }

  httplib::Server& server() { return server_; }

  // Binds (the socket listens from here on) and serves on a background thread.
  void Start() {
    port_ = server_.bind_to_any_port("127.0.0.1");
    running_ = std::make_unique<absl::Notification>();
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    // stop() is a no-op until the server runs, so wait for it (the socket already listens).
    running_->WaitForNotification();
    if (!server_.is_running()) {
      std::fprintf(stderr, "TestHttpServer: task queue created before the server ran\n");
      std::abort();
    }
  }
  void Stop() {
    if (thread_.joinable()) {
      server_.stop();
      thread_.join();
    }
  }

  int port() const { return port_; }
  std::string Url(const std::string& path) const {
    return absl::StrCat("http://127.0.0.1:", port_, path);
  }

 private:
  httplib::Server server_;
  std::unique_ptr<absl::Notification> running_;  // per Start()
  std::thread thread_;
  int port_ = 0;
};

}  // namespace musicgw::testing
