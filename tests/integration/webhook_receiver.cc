#include "tests/integration/webhook_receiver.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "nlohmann/json.hpp"

namespace musicgw::testing {
namespace {

std::string Base64(const std::string& raw) {
  std::string out(4 * ((raw.size() + 2) / 3) + 1, '\0');
  out.resize(static_cast<size_t>(EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                                 reinterpret_cast<const unsigned char*>(raw.data()),
                                                 static_cast<int>(raw.size()))));
  return out;
}

// The Standard Webhooks check: some "v1,<sig>" entry equals base64(HMAC-SHA256(key,
// "<id>.<timestamp>.<body>")).
bool Verifies(const std::string& key, const std::string& id, const std::string& timestamp,
              const std::string& signature, const std::string& body) {
  const std::string content = absl::StrCat(id, ".", timestamp, ".", body);
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
       reinterpret_cast<const unsigned char*>(content.data()), content.size(), mac, &length);
  const std::string expected =
      absl::StrCat("v1,", Base64(std::string(reinterpret_cast<char*>(mac), length)));
  for (absl::string_view entry : absl::StrSplit(signature, ' ', absl::SkipEmpty())) {
    if (entry == expected) return true;
  }
  return false;
}

}  // namespace

std::string WebhookSecret(const std::string& key) { return "whsec_" + Base64(key); }

WebhookReceiver::WebhookReceiver(std::vector<std::string> keys, int port) : keys_(std::move(keys)) {
  server_.Post(".*", [this](const httplib::Request& request, httplib::Response& response) {
    Handle(request, response);
  });
  port_ = port == 0 ? server_.bind_to_any_port("127.0.0.1")
                    : (server_.bind_to_port("127.0.0.1", port) ? port : -1);
  if (port_ <= 0) return;
  thread_ = std::thread([this] { server_.listen_after_bind(); });
  // Stopping a server whose loop has not started yet would leave the loop running.
  while (!server_.is_running()) std::this_thread::yield();
}

WebhookReceiver::~WebhookReceiver() {
  server_.stop();
  if (thread_.joinable()) thread_.join();
}

std::string WebhookReceiver::url(const std::string& path) const {
  return absl::StrCat("http://127.0.0.1:", port_, path);
}

void WebhookReceiver::set_status(int status) {
  absl::MutexLock lock(&mu_);
  status_ = status;
}

void WebhookReceiver::Handle(const httplib::Request& request, httplib::Response& response) {
  ReceivedWebhook seen;
  seen.path = request.path;
  seen.id = request.get_header_value("webhook-id");
  seen.timestamp = request.get_header_value("webhook-timestamp");
  seen.body = request.body;
  const std::string signature = request.get_header_value("webhook-signature");
  for (const std::string& key : keys_) {
    seen.verified.push_back(Verifies(key, seen.id, seen.timestamp, signature, seen.body));
  }
  const nlohmann::json body = nlohmann::json::parse(seen.body, nullptr, false);
  if (body.is_object() && body.contains("type") && body["type"].is_string()) {
    seen.type = body["type"].get<std::string>();
  }
  absl::MutexLock lock(&mu_);
  seen.answered = status_;
  response.status = status_;
  if (status_ == 301) response.set_header("Location", url("/moved"));
  received_.push_back(std::move(seen));
}

std::vector<ReceivedWebhook> WebhookReceiver::received() const {
  absl::MutexLock lock(&mu_);
  return received_;
}

int WebhookReceiver::count(const std::string& path) const {
  absl::MutexLock lock(&mu_);
  int n = 0;
  for (const auto& seen : received_) n += seen.path == path ? 1 : 0;
  return n;
}

bool WebhookReceiver::Await(const std::function<bool(const ReceivedWebhook&)>& match,
                            absl::Duration timeout, ReceivedWebhook* out, int times) const {
  absl::MutexLock lock(&mu_);
  const ReceivedWebhook* found = nullptr;
  auto seen = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    int n = 0;
    for (const auto& r : received_) {
      if (match(r)) {
        found = &r;
        if (++n >= times) return true;
      }
    }
    return false;
  };
  if (!mu_.AwaitWithTimeout(absl::Condition(&seen), timeout)) return false;
  if (out != nullptr) *out = *found;
  return true;
}

}  // namespace musicgw::testing
