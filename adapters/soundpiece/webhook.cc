#include "adapters/soundpiece/webhook.h"

#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <optional>
#include <thread>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "adapters/soundpiece/soundpiece_wire.h"
#include "common/crypto.h"
#include "common/log.h"

namespace musicgw::adapters::soundpiece {

const char* WebhookOutcomeName(WebhookOutcome outcome) {
  switch (outcome) {
    case WebhookOutcome::kVerified:
      return "verified";
    case WebhookOutcome::kBadSignature:
      return "bad_signature";
    case WebhookOutcome::kStale:
      return "stale";
    case WebhookOutcome::kDuplicate:
      return "duplicate";
    case WebhookOutcome::kMalformed:
      return "malformed";
    case WebhookOutcome::kTooLarge:
      return "too_large";
  }
  return "malformed";
}

absl::StatusOr<std::unique_ptr<WebhookVerifier>> WebhookVerifier::Create(
    WebhookVerifierOptions options, absl::AnyInvocable<absl::Time() const> clock) {
  if (options.secrets.empty()) {
    return absl::InvalidArgumentError("webhook verification needs at least one whsec_ secret");
  }
  std::vector<std::string> keys;
  for (size_t i = 0; i < options.secrets.size(); ++i) {
    absl::string_view secret = options.secrets[i];
    if (!absl::ConsumePrefix(&secret, "whsec_")) {
      return absl::InvalidArgumentError(
          absl::StrCat("webhook secret #", i + 1, " does not start with whsec_"));
    }
    auto key = Base64Decode(secret);
    if (!key.ok() || key->empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("webhook secret #", i + 1, " is not whsec_ followed by base64"));
    }
    keys.push_back(std::move(*key));
  }
  // A replay is only caught while its id is remembered; within the tolerance window it would
  // otherwise pass the timestamp check.
  options.remember_for = std::max(options.remember_for, 2 * options.tolerance);
  return std::unique_ptr<WebhookVerifier>(
      new WebhookVerifier(std::move(options), std::move(keys), std::move(clock)));
}

WebhookVerifier::WebhookVerifier(WebhookVerifierOptions options, std::vector<std::string> keys,
                                 absl::AnyInvocable<absl::Time() const> clock)
    : options_(std::move(options)), keys_(std::move(keys)), clock_(std::move(clock)) {}

bool WebhookVerifier::SignatureMatches(absl::string_view signed_content,
                                       absl::string_view header) const {
  std::vector<std::string> expected;
  expected.reserve(keys_.size());
  for (const std::string& key : keys_) expected.push_back(HmacSha256(key, signed_content));
  for (absl::string_view entry : absl::StrSplit(header, ' ', absl::SkipEmpty())) {
    if (!absl::ConsumePrefix(&entry, "v1,")) continue;  // other schemes are not ours to check
    auto signature = Base64Decode(entry);
    if (!signature.ok()) continue;
    for (const std::string& mac : expected) {
      if (ConstantTimeEquals(*signature, mac)) return true;
    }
  }
  return false;
}

void WebhookVerifier::ExpireLocked(absl::Time now) {
  while (!order_.empty() &&
         (order_.front().first <= now || order_.size() > options_.max_remembered_ids)) {
    auto it = seen_.find(order_.front().second);
    // Only erase when this queue entry is the id's current one (it may have been re-added).
    if (it != seen_.end() && it->second == order_.front().first) seen_.erase(it);
    order_.pop_front();
  }
}

WebhookOutcome WebhookVerifier::Verify(absl::string_view webhook_id,
                                       absl::string_view webhook_timestamp,
                                       absl::string_view webhook_signature,
                                       absl::string_view body) {
  int64_t seconds = 0;
  if (webhook_id.empty() || webhook_id.size() > 256 || webhook_signature.empty() ||
      !absl::SimpleAtoi(webhook_timestamp, &seconds)) {
    return WebhookOutcome::kMalformed;
  }
  const absl::Time now = clock_();
  if (absl::AbsDuration(now - absl::FromUnixSeconds(seconds)) > options_.tolerance) {
    return WebhookOutcome::kStale;
  }
  const std::string signed_content = absl::StrCat(webhook_id, ".", webhook_timestamp, ".", body);
  if (!SignatureMatches(signed_content, webhook_signature)) return WebhookOutcome::kBadSignature;
  absl::MutexLock lock(&mu_);
  ExpireLocked(now);
  const absl::Time forget_at = now + options_.remember_for;
  auto [it, inserted] = seen_.try_emplace(std::string(webhook_id), forget_at);
  if (!inserted) return WebhookOutcome::kDuplicate;
  order_.emplace_back(forget_at, std::string(webhook_id));
  ExpireLocked(now);
  return WebhookOutcome::kVerified;
}

void WebhookVerifier::Forget(absl::string_view webhook_id) {
  absl::MutexLock lock(&mu_);
  seen_.erase(std::string(webhook_id));
}

class WebhookReceiver::Impl {
 public:
  Impl(WebhookReceiverOptions options, std::unique_ptr<WebhookVerifier> verifier, Sink sink)
      : options_(std::move(options)), verifier_(std::move(verifier)), sink_(std::move(sink)) {}
  ~Impl() { Stop(); }

  absl::Status Listen() {
    const int threads = std::max(1, options_.threads);
    server_.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
    server_.set_tcp_nodelay(true);
    server_.set_payload_max_length(options_.max_body_bytes);
    // A body over the limit is refused with 413 by cpp-httplib itself, before any route runs
    // (the body is not even read); the logger still sees that answer, so it is counted there.
    // An empty body tells it from Handle's own 413 (already counted, and it has a body).
    server_.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
      if (res.status == 413 && req.path == options_.path && req.body.empty()) {
        size_t declared = 0;
        if (!absl::SimpleAtoi(req.get_header_value("Content-Length"), &declared)) declared = 0;
        Refuse(req.get_header_value("webhook-id"), declared);
      }
    });
    server_.set_read_timeout(5, 0);
    server_.set_write_timeout(5, 0);
    server_.Post(options_.path, [this](const httplib::Request& req, httplib::Response& res) {
      res.status =
          Handle(req.get_header_value("webhook-id"), req.get_header_value("webhook-timestamp"),
                 req.get_header_value("webhook-signature"), req.body);
    });
    if (options_.port == 0) {
      port_ = server_.bind_to_any_port(options_.host);
    } else if (server_.bind_to_port(options_.host, options_.port)) {
      port_ = options_.port;
    } else {
      port_ = -1;
    }
    if (port_ <= 0) {
      return absl::UnavailableError(
          absl::StrCat("cannot listen for webhooks on ", options_.host, ":", options_.port));
    }
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    // stop() is a no-op until the server runs; the socket already accepts connections.
    for (int i = 0; i < 5000 && !server_.is_running(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return absl::OkStatus();
  }

  int Handle(absl::string_view id, absl::string_view timestamp, absl::string_view signature,
             absl::string_view body) {
    WebhookOutcome outcome = WebhookOutcome::kMalformed;
    int http_status = 400;
    std::string upstream_id;
    std::optional<UpstreamStatus> verified_update;
    if (body.size() > options_.max_body_bytes) {
      Refuse(id, body.size());
      return 413;
    }
    outcome = verifier_->Verify(id, timestamp, signature, body);
    switch (outcome) {
      case WebhookOutcome::kVerified: {
        auto update = ParseWebhookEvent(body);
        if (!update.ok()) {
          verifier_->Forget(id);
          outcome = WebhookOutcome::kMalformed;
          break;
        }
        upstream_id = update->upstream_id;
        http_status = 204;
        verified_update = *std::move(update);
        break;
      }
      case WebhookOutcome::kDuplicate:
        http_status = 200;  // already handled: the provider may stop retrying
        break;
      case WebhookOutcome::kBadSignature:
        http_status = 401;
        break;
      case WebhookOutcome::kStale:
      case WebhookOutcome::kMalformed:
      case WebhookOutcome::kTooLarge:
        http_status = 400;
        break;
    }
    // Counted before the update is delivered: whoever sees the update also sees the count.
    Count(outcome);
    if (verified_update.has_value()) {
      absl::MutexLock lock(&sink_mu_);
      if (!stopped_) sink_(*verified_update);
    }
    // Never the body or the signature; the webhook-id is an opaque delivery id.
    log::Write(outcome == WebhookOutcome::kVerified || outcome == WebhookOutcome::kDuplicate
                   ? log::Level::kInfo
                   : log::Level::kWarning,
               "soundpiece webhook",
               {{"outcome", WebhookOutcomeName(outcome)},
                {"http_status", http_status},
                {"webhook_id", std::string(id.substr(0, 64))},
                {"upstream_id", upstream_id}});
    return http_status;
  }

  void Stop() {
    {
      absl::MutexLock lock(&sink_mu_);
      stopped_ = true;
    }
    if (thread_.joinable()) {
      server_.stop();
      thread_.join();
    }
  }

  int port() const { return port_; }
  std::string url() const {
    const std::string host =
        options_.host == "0.0.0.0" || options_.host.empty() ? "127.0.0.1" : options_.host;
    return absl::StrCat("http://", host, ":", port_, options_.path);
  }
  WebhookCounters counters() const {
    return {verified_.load(),  bad_signature_.load(), stale_.load(),
            duplicate_.load(), malformed_.load(),     too_large_.load()};
  }

 private:
  // A delivery over max_body_bytes: counted and logged (sizes and the delivery id only).
  void Refuse(absl::string_view id, size_t body_bytes) {
    Count(WebhookOutcome::kTooLarge);
    log::Warning("soundpiece webhook",
                 {{"outcome", WebhookOutcomeName(WebhookOutcome::kTooLarge)},
                  {"http_status", 413},
                  {"body_bytes", static_cast<unsigned long>(body_bytes)},
                  {"max_body_bytes", static_cast<unsigned long>(options_.max_body_bytes)},
                  {"webhook_id", std::string(id.substr(0, 64))}});
  }

  void Count(WebhookOutcome outcome) {
    switch (outcome) {
      case WebhookOutcome::kVerified:
        ++verified_;
        break;
      case WebhookOutcome::kBadSignature:
        ++bad_signature_;
        break;
      case WebhookOutcome::kStale:
        ++stale_;
        break;
      case WebhookOutcome::kDuplicate:
        ++duplicate_;
        break;
      case WebhookOutcome::kMalformed:
        ++malformed_;
        break;
      case WebhookOutcome::kTooLarge:
        ++too_large_;
        break;
    }
    if (options_.observer != nullptr) options_.observer->OnWebhook("soundpiece", outcome);
  }

  const WebhookReceiverOptions options_;
  const std::unique_ptr<WebhookVerifier> verifier_;
  httplib::Server server_;
  std::thread thread_;
  int port_ = 0;
  absl::Mutex sink_mu_;
  Sink sink_ ABSL_GUARDED_BY(sink_mu_);
  bool stopped_ ABSL_GUARDED_BY(sink_mu_) = false;
  std::atomic<int64_t> verified_{0}, bad_signature_{0}, stale_{0}, duplicate_{0}, malformed_{0},
      too_large_{0};
};

absl::StatusOr<std::unique_ptr<WebhookReceiver>> WebhookReceiver::Start(
    WebhookReceiverOptions options, Sink sink) {
  auto verifier = WebhookVerifier::Create(options.verifier);
  if (!verifier.ok()) return verifier.status();
  auto impl = std::make_unique<Impl>(std::move(options), std::move(*verifier), std::move(sink));
  absl::Status listening = impl->Listen();
  if (!listening.ok()) return listening;
  return std::unique_ptr<WebhookReceiver>(new WebhookReceiver(std::move(impl)));
}

WebhookReceiver::WebhookReceiver(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
WebhookReceiver::~WebhookReceiver() { Stop(); }
int WebhookReceiver::port() const { return impl_->port(); }
std::string WebhookReceiver::url() const { return impl_->url(); }
WebhookCounters WebhookReceiver::counters() const { return impl_->counters(); }
int WebhookReceiver::Handle(absl::string_view webhook_id, absl::string_view webhook_timestamp,
                            absl::string_view webhook_signature, absl::string_view body) {
  return impl_->Handle(webhook_id, webhook_timestamp, webhook_signature, body);
}
void WebhookReceiver::Stop() { impl_->Stop(); }

}  // namespace musicgw::adapters::soundpiece
