// File: observer.h
// Hooks for HTTP metrics. The metrics module implements HttpObserver (e.g. with prometheus-cpp
// counters and histograms) and hands it to CurlHttpClient::Options; this module never depends
// on a metrics library.
//
// Every string argument is a bounded label: provider and endpoint come from Request::provider
// and Request::endpoint, the rest from the fixed sets documented below. Never ids or URLs.
#pragma once

#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace musicgw::http {

class HttpObserver {
 public:
  virtual ~HttpObserver() = default;

  // One HTTP attempt finished (every attempt, retries included). `outcome` is one of
  // "1xx" "2xx" "3xx" "4xx" "5xx" (a response arrived) or "timeout" "unavailable" "cancelled"
  // "error" (a transport failure). `latency` runs from the start of the transfer to its end
  // (for Stream: to the end of the body).
  virtual void OnRequestDone(absl::string_view provider, absl::string_view endpoint,
                             absl::string_view outcome, absl::Duration latency) = 0;

  // The retry layer scheduled another attempt after `delay`. `reason` comes from the
  // classifier: "http_429", "http_5xx", "unavailable", "timeout", or a caller-chosen label.
  virtual void OnRetry(absl::string_view provider, absl::string_view endpoint,
                       absl::string_view reason, absl::Duration delay) = 0;

  // The retry layer wanted to retry but gave up. `why` is one of "attempts" (max_attempts
  // reached), "deadline" (max_total would be exceeded), "budget" (the client's retry budget is
  // spent: the provider is failing broadly and retries would only add load).
  virtual void OnRetryAbandoned(absl::string_view provider, absl::string_view endpoint,
                                absl::string_view reason, absl::string_view why) {}
};

}  // namespace musicgw::http
