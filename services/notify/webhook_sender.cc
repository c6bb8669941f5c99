#include "services/notify/webhook_sender.h"

#include <curl/curl.h>

#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "services/notify/address_guard.h"

namespace musicgw::notify {
namespace {

struct ConnectGuard {
  bool allow_private = false;
  bool refused = false;
};

// Called by curl for every socket it opens, with the resolved address: the connect-time check.
curl_socket_t OpenSocket(void* data, curlsocktype purpose, curl_sockaddr* address) {
  auto* guard = static_cast<ConnectGuard*>(data);
  if (purpose != CURLSOCKTYPE_IPCXN || address == nullptr) return CURL_SOCKET_BAD;
  if (!guard->allow_private && IsRefusedAddress(&address->addr)) {
    guard->refused = true;
    return CURL_SOCKET_BAD;
  }
  return socket(address->family, address->socktype, address->protocol);
}

size_t DiscardBody(char* /*data*/, size_t size, size_t count, void* /*user*/) {
  return size * count;
}

class CurlWebhookSender final : public WebhookSender {
 public:
  explicit CurlWebhookSender(bool allow_private) : allow_private_(allow_private) {}

  SendResult Send(const std::string& url,
                  const std::vector<std::pair<std::string, std::string>>& headers,
                  const std::string& body, absl::Duration timeout) override {
    SendResult result;
    // Parse and resolve-check first: a refused target never gets a connection attempt.
    absl::Status target = CheckWebhookTarget(url, allow_private_);
    if (!target.ok()) {
      result.error = absl::IsPermissionDenied(target) ? "refused_target" : "bad_target";
      return result;
    }
    std::unique_ptr<CURL, decltype(&curl_easy_cleanup)> curl(curl_easy_init(), &curl_easy_cleanup);
    if (curl == nullptr) {
      result.error = "internal";
      return result;
    }
    curl_slist* list = nullptr;
    for (const auto& [name, value] : headers) {
      list = curl_slist_append(list, absl::StrCat(name, ": ", value).c_str());
    }
    list = curl_slist_append(list, "Content-Type: application/json");
    list = curl_slist_append(list, "Expect:");
    std::unique_ptr<curl_slist, decltype(&curl_slist_free_all)> owned(list, &curl_slist_free_all);
    ConnectGuard guard{allow_private_, false};
    CURL* c = curl.get();
    curl_easy_setopt(c, CURLOPT_URL, url.c_str());
    curl_easy_setopt(c, CURLOPT_POST, 1L);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body.data());
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body.size()));
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, list);
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, static_cast<long>(absl::ToInt64Milliseconds(timeout)));
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_OPENSOCKETFUNCTION, &OpenSocket);
    curl_easy_setopt(c, CURLOPT_OPENSOCKETDATA, &guard);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, &DiscardBody);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "musicgw-webhooks/1");
    const absl::Time start = absl::Now();
    const CURLcode rc = curl_easy_perform(c);
    result.latency = absl::Now() - start;
    if (rc == CURLE_OK) {
      long code = 0;
      curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
      result.status_code = static_cast<int>(code);
      return result;
    }
    if (guard.refused) {
      result.error = "refused_target";
    } else if (rc == CURLE_OPERATION_TIMEDOUT) {
      result.error = "timeout";
    } else if (rc == CURLE_COULDNT_CONNECT || rc == CURLE_COULDNT_RESOLVE_HOST) {
      result.error = "connect";
    } else {
      result.error = absl::StrCat("curl: ", curl_easy_strerror(rc));
    }
    return result;
  }

 private:
  const bool allow_private_;
};

}  // namespace

std::unique_ptr<WebhookSender> NewCurlWebhookSender(bool allow_private_targets) {
  return std::make_unique<CurlWebhookSender>(allow_private_targets);
}

}  // namespace musicgw::notify
