// A webhook receiver for integration tests: a cpp-httplib server on loopback that checks every
// delivery with its own Standard Webhooks verification (OpenSSL HMAC-SHA256 and base64, never
// the gateway's signer) against each of the secrets it is given, records what it saw, and
// answers with a status the test sets (a 301 carries a Location that must not be followed).
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "httplib.h"

namespace musicgw::testing {

// "whsec_" + base64 of `key`.
std::string WebhookSecret(const std::string& key);

// One request the receiver got.
struct ReceivedWebhook {
  std::string path;
  std::string id;
  std::string timestamp;
  std::string type;
  std::string body;
  // verified[i]: a signature in the header verifies with the receiver's secret i.
  std::vector<bool> verified;
  int answered = 0;  // the status the receiver answered
};

class WebhookReceiver {
 public:
  // `keys`: the raw key bytes of the secrets to verify with. `port` 0: any free port.
  explicit WebhookReceiver(std::vector<std::string> keys, int port = 0);
  ~WebhookReceiver();
  WebhookReceiver(const WebhookReceiver&) = delete;
  WebhookReceiver& operator=(const WebhookReceiver&) = delete;

  bool ok() const { return port_ > 0; }
  int port() const { return port_; }
  // http://127.0.0.1:<port><path>
  std::string url(const std::string& path = "/hook") const;
  void set_status(int status);

  std::vector<ReceivedWebhook> received() const;
  // How many requests reached `path`.
  int count(const std::string& path) const;
  // Waits until `times` received requests satisfy `match`; false on timeout. `out` gets the
  // last of them.
  bool Await(const std::function<bool(const ReceivedWebhook&)>& match, absl::Duration timeout,
             ReceivedWebhook* out = nullptr, int times = 1) const;

 private:
  void Handle(const httplib::Request& request, httplib::Response& response);

  const std::vector<std::string> keys_;
  httplib::Server server_;
  int port_ = 0;
  std::thread thread_;
  mutable absl::Mutex mu_;
  int status_ ABSL_GUARDED_BY(mu_) = 200;
  std::vector<ReceivedWebhook> received_ ABSL_GUARDED_BY(mu_);
};

}  // namespace musicgw::testing
