// File: http_client.h
// The asynchronous HTTP client the provider adapters use. One implementation,
// CurlHttpClient (curl_http_client.h), runs libcurl's multi interface on one loop thread with
// connection reuse; tests may substitute fakes.
//
// Threading: every callback runs on the client's loop thread, never inline in the calling
// function, and must not block (post heavy work elsewhere). All methods are thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace musicgw::http {

class HttpObserver;  // observer.h
class RetryBudget;   // retry.h

using Headers = std::vector<std::pair<std::string, std::string>>;

// Case-insensitive header lookup; nullopt when absent.
std::optional<std::string> FindHeader(const Headers& headers, absl::string_view name);

struct Request {
  std::string method = "GET";  // GET, POST, PUT, ...
  std::string url;
  Headers headers;
  std::string body;
  // Whole-transfer limit (a Soundpiece long-poll needs more than its 20 s).
  absl::Duration timeout = absl::Seconds(30);
  absl::Duration connect_timeout = absl::Seconds(5);
  // Bounded label for metrics and logs, e.g. "soundpiece:create.new_song:put". Never an id or URL.
  std::string endpoint = "other";
  // Provider label for metrics ("loudly", "soundpiece", ...).
  std::string provider = "other";
};

struct Response {
  int status = 0;
  Headers headers;
  std::string body;
  std::optional<std::string> Header(absl::string_view name) const {
    return FindHeader(headers, name);
  }
};

// Transport failures arrive as a non-OK status: UNAVAILABLE (connect, reset, DNS),
// DEADLINE_EXCEEDED (timeout), CANCELLED. Any HTTP status, 4xx and 5xx included, is a Response.
using ResponseCallback = absl::AnyInvocable<void(absl::StatusOr<Response>) &&>;

// True when a transport failure happened before the request could reach the server (name
// resolution, connection refused, TLS handshake), read from the client's error text: the only
// transport failures after which a call that creates paid work provably did nothing.
bool FailedBeforeSending(const absl::Status& status);

// Receives a streamed response body with flow control.
class StreamHandler {
 public:
  virtual ~StreamHandler() = default;
  // Status line and headers. Return false to abort the transfer (OnComplete gets CANCELLED).
  virtual bool OnHeaders(int status, const Headers& headers) = 0;
  // The next bytes. Return false to pause: no more OnData until StreamHandle::Resume().
  virtual bool OnData(absl::string_view data) = 0;
  // Called exactly once, last: OK at the end of the body, otherwise why it stopped.
  virtual void OnComplete(absl::Status status) = 0;
};

class StreamHandle {
 public:
  virtual ~StreamHandle() = default;  // destroying the handle cancels the transfer
  // Resumes after OnData returned false.
  virtual void Resume() = 0;
  // Stops the transfer; OnComplete(CANCELLED) follows unless it already completed.
  virtual void Cancel() = 0;
};

class Client {
 public:
  virtual ~Client() = default;
  // Sends one request; `done` runs once on the loop thread.
  virtual void Send(Request request, ResponseCallback done) = 0;
  // Streams a response body into `handler`, which must outlive OnComplete.
  virtual std::unique_ptr<StreamHandle> Stream(Request request, StreamHandler* handler) = 0;
  // Runs `fn` on the loop thread after `delay` (timers for backoff and polling).
  virtual void RunAfter(absl::Duration delay, absl::AnyInvocable<void() &&> fn) = 0;

  // Metrics hooks, or nullptr. Owned by the client; lives as long as it.
  virtual HttpObserver* observer() const { return nullptr; }
  // The budget SendWithRetry (retry.h) draws retries from, or nullptr for unlimited retries
  // (fakes in tests). Owned by the client; lives as long as it.
  virtual RetryBudget* retry_budget() const { return nullptr; }
};

// Retry policy for one logical call: full-jitter exponential backoff, Retry-After honoured as a
// floor, and a cap on attempts and total time.
struct RetryPolicy {
  int max_attempts = 5;
  absl::Duration initial_backoff = absl::Milliseconds(200);
  absl::Duration max_backoff = absl::Seconds(10);
  absl::Duration max_total = absl::Seconds(60);
};

}  // namespace musicgw::http
