// File: curl_http_client.h
// The production http::Client: libcurl's multi interface driven by one loop thread.
//
// - One multi handle, so connections (and DNS and TLS sessions) are pooled and reused across
//   requests with HTTP keep-alive; easy handles are recycled.
// - Send/Stream/RunAfter from any thread enqueue work and wake the loop (curl_multi_wakeup);
//   every callback runs on the loop thread, never inline in the caller.
// - Stream flow control: when StreamHandler::OnData returns false the transfer is paused
//   (CURL_WRITEFUNC_PAUSE, so at most one socket read is held back) until Resume().
// - Destruction: in-flight transfers complete with CANCELLED, pending timers run at once, and
//   new work is refused with CANCELLED, so every callback still runs exactly once; then the
//   loop thread is joined. Do not destroy the client from its own loop thread.
//
// libcurl's global state must be initialised once per process before any thread starts:
// call `curl_global_init(CURL_GLOBAL_DEFAULT)` at the top of main (tests do it in their main).
// The client does not call it, because it is not thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "adapters/http/http_client.h"
#include "adapters/http/observer.h"
#include "adapters/http/retry.h"

namespace musicgw::http {

class CurlHttpClient final : public Client {
 public:
  struct Options {
    // Idle connections kept for reuse (CURLMOPT_MAXCONNECTS).
    int max_cached_connections = 64;
    // Simultaneous connections per host; 0 means no limit (CURLMOPT_MAX_HOST_CONNECTIONS).
    int max_host_connections = 0;
    // Simultaneous connections in total; 0 means no limit (CURLMOPT_MAX_TOTAL_CONNECTIONS).
    int max_total_connections = 0;
    // Send() bodies larger than this fail with RESOURCE_EXHAUSTED; use Stream() for files.
    size_t max_response_bytes = 32 << 20;
    std::string user_agent = "musicgw/0.1";
    // GET redirects are followed (download links behind CDNs); other methods never follow.
    int max_redirects = 5;
    // Metrics hooks (may be null). Shared so the metrics module can keep a reference too.
    std::shared_ptr<HttpObserver> observer;
    RetryBudgetOptions retry_budget;
    // The loop thread's nice value (see common/thread_priority.h); 0: the process's priority.
    int loop_thread_nice = 0;
  };

  // Counters for tests and debugging.
  struct Stats {
    int64_t transfers = 0;        // finished transfers (any outcome)
    int64_t new_connections = 0;  // connections opened (CURLINFO_NUM_CONNECTS summed)
  };

  // Starts the loop thread. nullptr when libcurl cannot create a multi handle.
  static std::unique_ptr<CurlHttpClient> Create(Options options);
  static std::unique_ptr<CurlHttpClient> Create() { return Create(Options()); }

  ~CurlHttpClient() override;
  CurlHttpClient(const CurlHttpClient&) = delete;
  CurlHttpClient& operator=(const CurlHttpClient&) = delete;

  void Send(Request request, ResponseCallback done) override;
  std::unique_ptr<StreamHandle> Stream(Request request, StreamHandler* handler) override;
  void RunAfter(absl::Duration delay, absl::AnyInvocable<void() &&> fn) override;
  HttpObserver* observer() const override;
  RetryBudget* retry_budget() const override;

  Stats stats() const;

  class Loop;  // implementation detail (public only so the .cc file can name it)

 private:
  explicit CurlHttpClient(std::shared_ptr<Loop> loop);
  std::shared_ptr<Loop> loop_;
};

}  // namespace musicgw::http
