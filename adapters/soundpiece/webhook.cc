#include "adapters/soundpiece/webhook.h"

#include <algorithm>
#include <map>
#include <optional>
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

bool WebhookVerifier::Signed(absl::string_view webhook_id, absl::string_view webhook_timestamp,
                             absl::string_view webhook_signature, absl::string_view body) const {
  if (webhook_id.empty() || webhook_signature.empty()) return false;
  return SignatureMatches(absl::StrCat(webhook_id, ".", webhook_timestamp, ".", body),
                          webhook_signature);
}

void WebhookVerifier::Forget(absl::string_view webhook_id) {
  absl::MutexLock lock(&mu_);
  seen_.erase(std::string(webhook_id));
}

absl::StatusOr<std::unique_ptr<SoundpieceWebhookHandler>> SoundpieceWebhookHandler::Create(
    WebhookHandlerOptions options) {
  auto verifier = WebhookVerifier::Create(options.verifier);
  if (!verifier.ok()) return verifier.status();
  return std::unique_ptr<SoundpieceWebhookHandler>(
      new SoundpieceWebhookHandler(std::move(options), std::move(*verifier)));
}

SoundpieceWebhookHandler::SoundpieceWebhookHandler(WebhookHandlerOptions options,
                                                   std::unique_ptr<WebhookVerifier> verifier)
    : options_(std::move(options)), verifier_(std::move(verifier)) {}

bool SoundpieceWebhookHandler::SignedForThisAccount(
    const adapters::WebhookDelivery& delivery) const {
  return verifier_->Signed(delivery.header("webhook-id"), delivery.header("webhook-timestamp"),
                           delivery.header("webhook-signature"), delivery.body);
}

int SoundpieceWebhookHandler::Handle(const adapters::WebhookDelivery& delivery, const Sink& sink) {
  const std::string id = delivery.header("webhook-id");
  WebhookOutcome outcome = WebhookOutcome::kMalformed;
  int http_status = 400;
  std::string upstream_id;
  std::optional<UpstreamStatus> verified_update;
  const size_t body_bytes = std::max(delivery.body.size(), delivery.refused_body_bytes);
  if (body_bytes > options_.max_body_bytes) {
    outcome = WebhookOutcome::kTooLarge;
    http_status = 413;
  } else {
    outcome = verifier_->Verify(id, delivery.header("webhook-timestamp"),
                                delivery.header("webhook-signature"), delivery.body);
    switch (outcome) {
      case WebhookOutcome::kVerified: {
        auto update = ParseWebhookEvent(delivery.body);
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
  }
  // Counted before the update is delivered: whoever sees the update also sees the count.
  Count(outcome);
  if (verified_update.has_value() && sink) sink(*verified_update);
  // Never the body or the signature; the webhook-id is an opaque delivery id.
  log::Write(outcome == WebhookOutcome::kVerified || outcome == WebhookOutcome::kDuplicate
                 ? log::Level::kInfo
                 : log::Level::kWarning,
             "soundpiece webhook",
             {{"account", options_.account},
              {"outcome", WebhookOutcomeName(outcome)},
              {"http_status", http_status},
              {"webhook_id", id.substr(0, 64)},
              {"upstream_id", upstream_id},
              {"body_bytes", static_cast<unsigned long>(body_bytes)}});
  return http_status;
}

WebhookCounters SoundpieceWebhookHandler::counters() const {
  return {verified_.load(),  bad_signature_.load(), stale_.load(),
          duplicate_.load(), malformed_.load(),     too_large_.load()};
}

void SoundpieceWebhookHandler::Count(WebhookOutcome outcome) {
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

// One handler on its own listener and path.
class WebhookReceiver::Impl {
 public:
  Impl(WebhookReceiverOptions options, std::unique_ptr<SoundpieceWebhookHandler> handler, Sink sink)
      : options_(std::move(options)),
        handler_(std::move(handler)),
        sink_(std::make_shared<Sink>(std::move(sink))) {}

  absl::Status Listen() {
    adapters::WebhookServerOptions server_options;
    server_options.host = options_.host;
    server_options.port = options_.port;
    server_options.max_body_bytes = options_.max_body_bytes;
    server_options.threads = options_.threads;
    adapters::WebhookServer::Routes routes;
    routes.push_back(
        {options_.path,
         {{handler_.get(), [sink = sink_](const UpstreamStatus& status) { (*sink)(status); }}}});
    auto server = adapters::WebhookServer::Start(std::move(server_options), std::move(routes));
    if (!server.ok()) return server.status();
    server_ = std::move(*server);
    return absl::OkStatus();
  }

  int Handle(absl::string_view id, absl::string_view timestamp, absl::string_view signature,
             absl::string_view body) {
    const std::map<std::string, std::string> headers = {
        {"webhook-id", std::string(id)},
        {"webhook-timestamp", std::string(timestamp)},
        {"webhook-signature", std::string(signature)}};
    adapters::WebhookDelivery delivery;
    delivery.header = [&headers](const std::string& name) {
      auto it = headers.find(name);
      return it == headers.end() ? std::string() : it->second;
    };
    delivery.body = body;
    return server_->Handle(options_.path, delivery);
  }

  void Stop() {
    if (server_ != nullptr) server_->Stop();
  }

  int port() const { return server_->port(); }
  std::string url() const {
    const std::string host =
        options_.host == "0.0.0.0" || options_.host.empty() ? "127.0.0.1" : options_.host;
    return absl::StrCat("http://", host, ":", port(), options_.path);
  }
  WebhookCounters counters() const { return handler_->counters(); }

 private:
  const WebhookReceiverOptions options_;
  const std::unique_ptr<SoundpieceWebhookHandler> handler_;
  // Shared with the server's route; called only while the server runs.
  std::shared_ptr<Sink> sink_;
  std::unique_ptr<adapters::WebhookServer> server_;
};

absl::StatusOr<std::unique_ptr<WebhookReceiver>> WebhookReceiver::Start(
    WebhookReceiverOptions options, Sink sink) {
  WebhookHandlerOptions handler_options;
  handler_options.verifier = options.verifier;
  handler_options.max_body_bytes = options.max_body_bytes;
  handler_options.observer = options.observer;
  auto handler = SoundpieceWebhookHandler::Create(std::move(handler_options));
  if (!handler.ok()) return handler.status();
  auto impl = std::make_unique<Impl>(std::move(options), std::move(*handler), std::move(sink));
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
