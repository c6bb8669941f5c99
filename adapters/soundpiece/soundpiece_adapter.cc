#include "adapters/soundpiece/soundpiece_adapter.h"

#include <algorithm>
#include <map>
#include <string>
#include <type_traits>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "adapters/capabilities.h"
#include "adapters/http/retry.h"
#include "adapters/soundpiece/soundpiece_wire.h"
#include "adapters/soundpiece/webhook.h"
#include "adapters/submit_outcome.h"
#include "common/errors.h"
#include "nlohmann/json.hpp"

namespace musicgw::adapters::soundpiece {
namespace {

// A long-poll is only worth it with this much time left (the provider holds it up to 20 s).
constexpr absl::Duration kMinLongPollBudget = absl::Seconds(22);
// Suggested re-poll delay after a quick (wait=false) read of a running operation.
constexpr absl::Duration kQuickPollInterval = absl::Seconds(1);

bool IsHttpUrl(absl::string_view url) {
  return absl::StartsWithIgnoreCase(url, "http://") || absl::StartsWithIgnoreCase(url, "https://");
}

// Operation ids are "op_" + [0-9a-z]; anything else is percent-encoded rather than trusted.
std::string QueryEscape(absl::string_view text) {
  std::string out;
  for (const char c : text) {
    if (absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.' ||
        c == '~') {
      out.push_back(c);
    } else {
      absl::StrAppend(&out, "%", absl::Hex(static_cast<unsigned char>(c), absl::kZeroPad2));
    }
  }
  return out;
}

// PUTs carry the idempotency key, so every failure where the provider may or may not have
// started is safe to retry: the same key returns the first operation. GETs are reads.
http::Classifier SoundpieceClassifier() {
  return [base = http::DefaultClassifier()](
             const absl::StatusOr<http::Response>& result) mutable -> http::RetryDecision {
    if (result.ok() && result->status >= 200 && result->status < 300) {
      // A cut-off or garbled 2xx: ask again (same key) rather than fail the call.
      const auto doc = nlohmann::json::parse(result->body, nullptr, /*allow_exceptions=*/false);
      if (doc.is_discarded() || !doc.is_object()) return {true, "bad_response", std::nullopt};
      return {};
    }
    if (result.ok() && result->status >= 500) {
      http::RetryDecision decision{true, "http_5xx", std::nullopt};
      if (auto header = result->Header("Retry-After")) {
        decision.server_delay = http::ParseRetryAfter(*header);
      }
      return decision;
    }
    return base(result);
  };
}

// A transport failure after which the PUT may have reached Soundpiece (not a connection that
// was never made, not a request refused before it was sent).
bool MayHaveBeenProcessed(const absl::Status& status) {
  return !http::FailedBeforeSending(status) && status.code() != absl::StatusCode::kInvalidArgument;
}

// Retries (same idempotency key) are spent and the answer still cannot be read: the operation
// may exist and be charged. Re-submitting with the same key later is safe, but the engine does
// not do it blindly.
absl::Status SubmitOutcomeUnknown(absl::string_view what, const ErrorContext& context,
                                  int http_status) {
  std::map<std::string, std::string> metadata = {{"account", context.account},
                                                 {"route", context.route}};
  if (http_status > 0) metadata["http_status"] = absl::StrCat(http_status);
  return OutcomeUnknownError(absl::StrCat(what, "; the operation may exist and be charged"),
                             kDomain, metadata);
}

}  // namespace

class SoundpieceAdapter::Impl : public std::enable_shared_from_this<Impl> {
 public:
  Impl(SoundpieceOptions options, http::Client* client)
      : options_(std::move(options)), client_(client) {
    while (absl::EndsWith(options_.base_url, "/")) options_.base_url.pop_back();
  }

  const SoundpieceOptions& options() const { return options_; }

  void Submit(const SubmitRequest& request, Callback<UpstreamStatus> done) {
    const musicgw::v1::TaskKind task = TaskKindOf(request.request);
    const Route* route = RouteForTask(task);
    if (route == nullptr) {
      return Later(std::move(done), InvalidFieldError("task", "Soundpiece cannot run this task"));
    }
    ErrorContext context{options_.account, route->name, /*is_submit=*/true, task};
    if (request.idempotency_key.empty()) {
      return Later(std::move(done),
                   absl::InternalError("Soundpiece submissions need an idempotency key"));
    }
    auto body = BuildSubmitBody(request.request, request.idempotency_key, options_.callback_url);
    if (!body.ok()) return Later(std::move(done), body.status());
    if (request.validate_only) {
      // No dry run upstream: the request was checked and encoded, nothing is sent.
      return Later(std::move(done), UpstreamStatus{});
    }
    const absl::Time deadline = Deadline(request.deadline);
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) {
      return Later(std::move(done), absl::DeadlineExceededError("no time left to submit"));
    }
    http::Request http;
    http.method = "PUT";
    http.url = absl::StrCat(options_.base_url, "/v1/", route->name);
    http.body = std::move(*body);
    http.timeout = std::min(options_.request_timeout, left);
    http.endpoint = absl::StrCat("soundpiece:", route->name, ":put");
    Send(std::move(http), std::min(options_.retry.max_total, left), context, std::move(done),
         /*quick_read=*/false, route);
  }

  void Poll(const PollRequest& request, Callback<UpstreamStatus> done) {
    const Route* route = RouteForTask(request.task);
    if (route == nullptr) {
      return Later(std::move(done), absl::InternalError("poll for a task Soundpiece does not run"));
    }
    ErrorContext context{options_.account, route->name, /*is_submit=*/false, request.task};
    if (request.upstream_id.empty()) {
      return Later(std::move(done), absl::InternalError("poll without an upstream id"));
    }
    const absl::Duration left = Deadline(request.deadline) - absl::Now();
    if (left <= absl::ZeroDuration()) {
      return Later(std::move(done), absl::DeadlineExceededError("no time left to poll"));
    }
    const bool wait = request.wait && left >= kMinLongPollBudget;
    http::Request http;
    http.url = absl::StrCat(options_.base_url, "/v1/", route->name,
                            "?id=", QueryEscape(request.upstream_id), wait ? "&wait=true" : "");
    http.timeout = std::min(wait ? options_.long_poll_timeout : options_.request_timeout, left);
    http.endpoint = absl::StrCat("soundpiece:", route->name, wait ? ":poll" : ":get");
    // A failed long-poll may be retried once more within its own time; a quick read keeps to
    // the usual total.
    const absl::Duration total =
        std::min(left, options_.retry.max_total +
                           (wait ? options_.long_poll_timeout : absl::ZeroDuration()));
    Send(std::move(http), total, context, std::move(done), /*quick_read=*/!wait, route);
  }

  void Cancel(Callback<bool> done) { Later(std::move(done), false); }

  void ReadQuota(Callback<std::vector<QuotaFigure>> done) {
    QuotaFigure figure;
    figure.resource = "credits";
    {
      absl::MutexLock lock(&mu_);
      if (last_402_ > absl::Now() - options_.quota_memory) figure.remaining = 0;
    }
    Later(std::move(done), std::vector<QuotaFigure>{figure});
  }

  absl::Time last_quota_exhausted() const {
    absl::MutexLock lock(&mu_);
    return last_402_;
  }

 private:
  absl::Time Deadline(absl::Time requested) const {
    return std::min(requested, absl::Now() + options_.default_deadline);
  }

  // Delivers on the loop thread, never inline in the caller.
  template <typename T>
  void Later(Callback<T> done, std::type_identity_t<absl::StatusOr<T>> result) {
    client_->RunAfter(absl::ZeroDuration(),
                      [done = std::move(done), result = std::move(result)]() mutable {
                        std::move(done)(std::move(result));
                      });
  }

  void Send(http::Request http, absl::Duration total, ErrorContext context,
            Callback<UpstreamStatus> done, bool quick_read, const Route* route) {
    http.provider = "soundpiece";
    http.connect_timeout = options_.connect_timeout;
    http.headers = {{"Authorization", absl::StrCat("Bearer ", options_.api_key)},
                    {"Accept", "application/json"}};
    if (!http.body.empty()) http.headers.emplace_back("Content-Type", "application/json");
    http::RetryPolicy policy = options_.retry;
    policy.max_total = std::max(total, absl::Milliseconds(1));
    std::weak_ptr<Impl> weak = weak_from_this();
    http::SendWithRetry(
        *client_, std::move(http), policy, SoundpieceClassifier(),
        [weak, context = std::move(context), done = std::move(done), quick_read,
         route](absl::StatusOr<http::Response> result) mutable {
          auto self = weak.lock();
          std::move(done)(self != nullptr
                              ? self->Interpret(std::move(result), context, quick_read, *route)
                              : absl::CancelledError("Soundpiece adapter stopped"));
        });
  }

  absl::StatusOr<UpstreamStatus> Interpret(absl::StatusOr<http::Response> result,
                                           const ErrorContext& context, bool quick_read,
                                           const Route& route) {
    if (!result.ok()) {
      if (context.is_submit && MayHaveBeenProcessed(result.status())) {
        return SubmitOutcomeUnknown(
            absl::StrCat(result.status().code() == absl::StatusCode::kDeadlineExceeded
                             ? "Soundpiece did not answer the submission in time"
                             : "the connection to Soundpiece broke after the submission was sent",
                         " (", result.status().message(), ")"),
            context, 0);
      }
      return MapTransportError(result.status(), context);
    }
    if (context.is_submit && result->status >= 500) {
      const absl::Status mapped = MapHttpError(result->status, result->body, std::nullopt, context);
      return SubmitOutcomeUnknown(absl::StrCat("Soundpiece answered the submission with HTTP ",
                                               result->status, " (", mapped.message(), ")"),
                                  context, result->status);
    }
    if (result->status < 200 || result->status >= 300) {
      if (result->status == 402) {
        absl::MutexLock lock(&mu_);
        last_402_ = absl::Now();
      }
      std::optional<absl::Duration> retry_after;
      if (auto header = result->Header("Retry-After")) {
        retry_after = http::ParseRetryAfter(*header);
      }
      return MapHttpError(result->status, result->body, retry_after, context);
    }
    auto status = ParseOperation(result->body, route);
    if (!status.ok()) {
      if (context.is_submit) {
        return SubmitOutcomeUnknown(
            absl::StrCat("Soundpiece answered the submission with HTTP ", result->status,
                         " but an unreadable body (", status.status().message(), ")"),
            context, result->status);
      }
      return BadResponseError(status.status(), context);
    }
    if (context.is_submit) {
      absl::MutexLock lock(&mu_);
      last_402_ = absl::InfinitePast();  // the account has credits again
    }
    if (status->phase == UpstreamStatus::Phase::kRunning) {
      // After a long-poll the next one can start at once; it waits server-side.
      status->next_poll_after = quick_read ? kQuickPollInterval : absl::ZeroDuration();
    }
    return status;
  }

  SoundpieceOptions options_;
  http::Client* const client_;
  mutable absl::Mutex mu_;
  absl::Time last_402_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
};

absl::StatusOr<SoundpieceOptions> SoundpieceOptionsFromConfig(
    const config::ProviderConfig& config) {
  if (config.type != musicgw::v1::PROVIDER_SOUNDPIECE) {
    return absl::InvalidArgumentError("not a Soundpiece provider account");
  }
  const std::string dialect = absl::AsciiStrToLower(config.dialect);
  if (!dialect.empty() && dialect != "v1" && dialect != "soundpiece-v1") {
    return absl::InvalidArgumentError(
        absl::StrCat("Soundpiece dialect must be \"v1\" (got \"", config.dialect, "\")"));
  }
  SoundpieceOptions options;
  if (!config.name.empty()) options.account = config.name;
  if (!config.base_url.empty()) options.base_url = config.base_url;
  options.api_key = config.api_key;
  options.callback_url = config.callback_url;
  options.webhook_secrets = config.webhook_secrets;
  return options;
}

absl::StatusOr<std::unique_ptr<SoundpieceAdapter>> SoundpieceAdapter::Create(
    SoundpieceOptions options, http::Client* client) {
  if (client == nullptr)
    return absl::InvalidArgumentError("Soundpiece adapter needs an HTTP client");
  if (options.api_key.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("Soundpiece account '", options.account, "' has no API key"));
  }
  if (!IsHttpUrl(options.base_url)) {
    return absl::InvalidArgumentError(
        absl::StrCat("Soundpiece account '", options.account, "': base_url must be http(s)"));
  }
  if (!options.callback_url.empty() && !IsHttpUrl(options.callback_url)) {
    return absl::InvalidArgumentError(
        absl::StrCat("Soundpiece account '", options.account, "': callback_url must be http(s)"));
  }
  auto impl = std::make_shared<Impl>(std::move(options), client);
  return std::unique_ptr<SoundpieceAdapter>(new SoundpieceAdapter(std::move(impl)));
}

SoundpieceAdapter::SoundpieceAdapter(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
SoundpieceAdapter::~SoundpieceAdapter() = default;

const std::string& SoundpieceAdapter::account() const { return impl_->options().account; }

absl::Status SoundpieceAdapter::CheckRequest(const musicgw::v1::GenerateRequest& request) const {
  if (RouteForTask(TaskKindOf(request)) == nullptr) {
    return InvalidFieldError("task", "Soundpiece cannot run this task");
  }
  return CheckCapabilities(musicgw::v1::PROVIDER_SOUNDPIECE, request);
}

void SoundpieceAdapter::Submit(SubmitRequest request, Callback<UpstreamStatus> done) {
  impl_->Submit(request, std::move(done));
}

void SoundpieceAdapter::Poll(PollRequest request, Callback<UpstreamStatus> done) {
  impl_->Poll(request, std::move(done));
}

void SoundpieceAdapter::Cancel(PollRequest request, Callback<bool> done) {
  impl_->Cancel(std::move(done));
}

void SoundpieceAdapter::ReadQuota(Callback<std::vector<QuotaFigure>> done) {
  impl_->ReadQuota(std::move(done));
}

std::vector<std::string> SoundpieceAdapter::webhook_paths() const {
  if (impl_->options().webhook_secrets.empty()) return {};
  return {absl::StrCat("/webhooks/soundpiece/", impl_->options().account), "/webhooks/soundpiece"};
}

absl::StatusOr<std::unique_ptr<WebhookHandler>> SoundpieceAdapter::CreateWebhookHandler(
    const WebhookSettings& settings) {
  if (impl_->options().webhook_secrets.empty()) return nullptr;
  WebhookHandlerOptions options;
  options.account = impl_->options().account;
  options.verifier.secrets = impl_->options().webhook_secrets;
  options.verifier.tolerance = settings.tolerance;
  auto handler = SoundpieceWebhookHandler::Create(std::move(options));
  if (!handler.ok()) {
    return absl::Status(handler.status().code(),
                        absl::StrCat("Soundpiece account '", impl_->options().account,
                                     "' webhook_secrets: ", handler.status().message()));
  }
  return std::unique_ptr<WebhookHandler>(std::move(*handler));
}

absl::Time SoundpieceAdapter::last_quota_exhausted() const { return impl_->last_quota_exhausted(); }

}  // namespace musicgw::adapters::soundpiece
