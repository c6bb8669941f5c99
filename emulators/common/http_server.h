// File: http_server.h
// The emulators' HTTP server: cpp-httplib on a sized thread pool, with the fault plan applied
// around every dialect handler, so each emulator only writes its happy path and its own
// dialect-specific faults (fail_operation, expire_url).
//
// Thread-safe. Handlers run on the pool, one thread per open connection; anything that waits
// (long-polls, latency faults, synchronous generation) must use WaitUntilStopped/cv waits so
// Stop() returns promptly.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "emulators/common/fault_plan.h"
#include "httplib.h"

namespace musicgw::emulators {

struct HttpServerOptions {
  std::string host = "127.0.0.1";
  int port = 0;
  int threads = 256;
};

// The dialect's own bodies for the generic faults.
struct DialectErrors {
  // Body (JSON) for an injected status without a `body`.
  std::function<std::string(int status)> error_body;
  // 429 body for rate_limit.
  std::function<std::string(absl::Duration retry_after)> rate_limit_body;
  // Status and body for quota_exhausted.
  std::function<std::pair<int, std::string>()> quota_exhausted;
};

class HttpServer {
 public:
  // `faults` lists the rules that fired for this request and that the generic layer leaves to
  // the dialect (fail_operation, expire_url, webhook_*); usually empty.
  using Handler = std::function<void(const httplib::Request&, httplib::Response&,
                                     const std::vector<Fault>& faults)>;
  using RawHandler = std::function<void(const httplib::Request&, httplib::Response&)>;
  // Called once per answered request with its final status (for stats).
  using StatusObserver = std::function<void(const httplib::Request&, int status)>;

  HttpServer(HttpServerOptions options, FaultPlan* plan, DialectErrors errors);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // A dialect route: `pattern` is a cpp-httplib regex over the path; faults are evaluated on
  // (method, path). Register before Start().
  void Route(const std::string& method, const std::string& pattern, Handler handler);
  // A route without faults (control endpoints, the 404/405 catch-alls).
  void RawRoute(const std::string& method, const std::string& pattern, RawHandler handler);
  void set_status_observer(StatusObserver observer) { observer_ = std::move(observer); }

  // Binds (port 0 = any free port) and serves on a background thread.
  absl::Status Start();
  // Stops accepting, wakes every WaitUntilStopped, joins the listener. Idempotent.
  void Stop();
  int port() const { return port_; }
  std::string base_url() const;
  bool stopping() const { return stopping_.load(); }
  // Sleeps for `d` unless the server stops first; true when it slept the whole time.
  bool SleepUnlessStopped(absl::Duration d);

 private:
  void Dispatch(const Handler& handler, const httplib::Request& req, httplib::Response& res);

  HttpServerOptions options_;
  FaultPlan* plan_;  // not owned; may be null
  DialectErrors errors_;
  StatusObserver observer_;
  httplib::Server server_;
  std::thread listener_;
  int port_ = 0;
  int listen_fd_ = -1;
  std::atomic<bool> stopping_{false};
  absl::Notification stopped_;
};

// Serves `path` from disk with constant memory (cpp-httplib handles Range requests).
absl::Status ServeFile(const std::string& path, const std::string& content_type,
                       httplib::Response& res);

}  // namespace musicgw::emulators
