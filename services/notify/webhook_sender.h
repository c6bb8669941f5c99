// File: webhook_sender.h
// One HTTP POST of a signed webhook. CurlWebhookSender: redirects are not followed (a 3xx is
// the endpoint's answer, and counts as a failure), a whole-request timeout, http(s) only, and
// the SSRF guard applied to the very address being connected to (after DNS), unless private
// targets are allowed.
//
// Thread-safe; Send blocks (the deliverer calls it from its own threads, never a gRPC one).
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/time/time.h"

namespace musicgw::notify {

struct SendResult {
  int status_code = 0;  // 0: no HTTP answer
  absl::Duration latency = absl::ZeroDuration();
  // Why it failed without an answer: "timeout", "connect", "refused_target", ...; empty when
  // an HTTP status came back. Never carries the body or a secret.
  std::string error;
};

class WebhookSender {
 public:
  virtual ~WebhookSender() = default;
  virtual SendResult Send(const std::string& url,
                          const std::vector<std::pair<std::string, std::string>>& headers,
                          const std::string& body, absl::Duration timeout) = 0;
};

// curl_global_init must have run (main does it).
std::unique_ptr<WebhookSender> NewCurlWebhookSender(bool allow_private_targets);

}  // namespace musicgw::notify
