// File: test_server.h
// A cpp-httplib server on a loopback port chosen by the OS, for HTTP-level tests.
#pragma once

#include <httplib.h>

#include <chrono>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"

namespace musicgw::testing {

class TestHttpServer {
 public:
  TestHttpServer() {
    server_.new_task_queue = [] { return new httplib::ThreadPool(16); };
    // Headers and body go out in separate writes; without this Nagle + delayed ACK add 40 ms.
    server_.set_tcp_nodelay(true);
  }
  ~TestHttpServer() { Stop(); }

  httplib::Server& server() { return server_; }

  // Binds (the socket listens from here on) and serves on a background thread.
  void Start() {
    port_ = server_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    // stop() is a no-op until the server runs, so wait for it (the socket already listens).
    for (int i = 0; i < 5000 && !server_.is_running(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
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
  std::thread thread_;
  int port_ = 0;
};

}  // namespace musicgw::testing
