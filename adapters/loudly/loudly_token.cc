#include "adapters/loudly/loudly_token.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "adapters/http/retry.h"
#include "adapters/loudly/loudly_call.h"
#include "common/crypto.h"
#include "common/errors.h"
#include "common/log.h"
#include "nlohmann/json.hpp"

namespace musicgw::adapters::loudly {
namespace {

// A shared access token with less life than this left is refreshed rather than taken.
constexpr absl::Duration kMinTokenLife = absl::Seconds(1);

absl::Status ErrnoError(absl::string_view what, const std::string& path) {
  return absl::InternalError(absl::StrCat(what, " ", path, ": ", std::strerror(errno)));
}

std::string Folder(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

// The provider refused the grant itself: a configuration fault, not a transient one.
bool IsGrantRejected(const absl::Status& status) {
  return status.code() == absl::StatusCode::kUnauthenticated ||
         status.code() == absl::StatusCode::kInvalidArgument;
}

}  // namespace

absl::StatusOr<std::string> ReadTokenState(const std::string& path, const std::string& client_id) {
  std::ifstream in(path, std::ios::binary);
  if (!in.is_open()) {
    if (errno == ENOENT) return absl::NotFoundError(absl::StrCat("no token state at ", path));
    return ErrnoError("cannot read", path);
  }
  std::stringstream buffer;
  buffer << in.rdbuf();
  const nlohmann::json doc = nlohmann::json::parse(buffer.str(), nullptr, false);
  if (doc.is_discarded() || !doc.is_object() || !doc.contains("refresh_token") ||
      !doc["refresh_token"].is_string() || doc["refresh_token"].get<std::string>().empty()) {
    return absl::DataLossError(absl::StrCat("token state ", path, " is not readable"));
  }
  if (doc.contains("client_id") && doc["client_id"].is_string() &&
      doc["client_id"].get<std::string>() != client_id) {
    return absl::FailedPreconditionError(
        absl::StrCat("token state ", path, " belongs to another OAuth client"));
  }
  return doc["refresh_token"].get<std::string>();
}

absl::Status WriteTokenState(const std::string& path, const std::string& client_id,
                             const std::string& refresh_token) {
  nlohmann::json doc;
  doc["refresh_token"] = refresh_token;
  doc["client_id"] = client_id;
  doc["saved_at"] = absl::FormatTime(absl::RFC3339_sec, absl::Now(), absl::UTCTimeZone());
  const std::string text = doc.dump() + "\n";
  const std::string temp = absl::StrCat(path, ".tmp.", RandomHex(6));
  const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return ErrnoError("cannot create", temp);
  // The mode given to open() is filtered by the umask; set it explicitly.
  bool ok = ::fchmod(fd, 0600) == 0;
  size_t written = 0;
  while (ok && written < text.size()) {
    const ssize_t n = ::write(fd, text.data() + written, text.size() - written);
    if (n < 0 && errno == EINTR) continue;
    ok = n > 0;
    if (ok) written += static_cast<size_t>(n);
  }
  ok = ok && ::fsync(fd) == 0;
  ok = (::close(fd) == 0) && ok;
  if (!ok || ::rename(temp.c_str(), path.c_str()) != 0) {
    absl::Status status = ErrnoError("cannot write", path);
    ::unlink(temp.c_str());
    return status;
  }
  // Make the rename itself durable (best effort: some filesystems refuse fsync on folders).
  const int dir = ::open(Folder(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir >= 0) {
    ::fsync(dir);
    ::close(dir);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<TokenSource>> TokenSource::Create(http::Client* client,
                                                                 TokenSourceOptions options) {
  if (client == nullptr) return absl::InvalidArgumentError("no HTTP client");
  if (options.client_id.empty()) {
    return absl::InvalidArgumentError("the Loudly web dialect needs client_id");
  }
  std::string refresh_token = options.refresh_token;
  if (!options.state_file.empty()) {
    auto persisted = ReadTokenState(options.state_file, options.client_id);
    if (persisted.ok()) {
      refresh_token = *std::move(persisted);
    } else if (!absl::IsNotFound(persisted.status())) {
      log::Warning("loudly: ignoring the token state file",
                   {{"account", options.account}, {"why", persisted.status().message()}});
    }
  }
  if (refresh_token.empty()) {
    return absl::InvalidArgumentError(
        "the Loudly web dialect needs a refresh token (configured or in token_state_file)");
  }
  return std::make_shared<TokenSource>(client, std::move(options), std::move(refresh_token));
}

TokenSource::TokenSource(http::Client* client, TokenSourceOptions options,
                         std::string refresh_token)
    : client_(client), options_(std::move(options)), refresh_token_(std::move(refresh_token)) {}

void TokenSource::Get(Callback<std::string> done) {
  std::string token;
  {
    absl::MutexLock lock(&mu_);
    if (!access_token_.empty() && absl::Now() < refresh_at_) token = access_token_;
  }
  if (!token.empty()) {
    std::move(done)(std::move(token));
    return;
  }
  Refresh(std::move(done));
}

void TokenSource::Renew(const std::string& rejected, Callback<std::string> done) {
  std::string token;
  {
    absl::MutexLock lock(&mu_);
    if (!access_token_.empty() && access_token_ != rejected && absl::Now() < refresh_at_) {
      token = access_token_;
    } else if (access_token_ == rejected) {
      // The rejected token must not be handed out again while the refresh runs, nor taken
      // back from the shared store.
      access_token_.clear();
      rejected_ = rejected;
    }
  }
  if (!token.empty()) {
    std::move(done)(std::move(token));
    return;
  }
  Refresh(std::move(done));
}

void TokenSource::Refresh(Callback<std::string> done) {
  std::string refresh_token;
  std::string stale;
  {
    absl::MutexLock lock(&mu_);
    waiters_.push_back(std::move(done));
    if (refreshing_) return;
    refreshing_ = true;
    refresh_token = refresh_token_;
    // Renew cleared a rejected token; otherwise this one is about to expire.
    stale = access_token_.empty() ? rejected_ : access_token_;
  }
  if (options_.shared != nullptr) {
    RefreshShared(std::move(refresh_token), std::move(stale));
    return;
  }
  Exchange(std::move(refresh_token),
           [self = shared_from_this()](absl::StatusOr<TokenGrant> grant, const std::string& used) {
             if (!grant.ok()) {
               self->Finish(grant.status());
               return;
             }
             // Persist the rotated refresh token before anyone can use the access token it came
             // with: the old refresh token is dead once the provider rotated it.
             if (!grant->refresh_token.empty() && grant->refresh_token != used &&
                 !self->options_.state_file.empty()) {
               absl::Status saved = WriteTokenState(self->options_.state_file,
                                                    self->options_.client_id, grant->refresh_token);
               if (!saved.ok()) {
                 log::Error(
                     "loudly: could not persist the rotated refresh token; a restart may fail to "
                     "authenticate",
                     {{"account", self->options_.account}, {"why", saved.message()}});
               }
             }
             self->Install(grant->refresh_token, grant->access_token, grant->expiry);
             self->Finish(grant->access_token);
           });
}

void TokenSource::RefreshShared(std::string refresh_token, std::string stale) {
  adapters::SharedCredential seed;
  seed.refresh_token = std::move(refresh_token);
  const std::string key = absl::StrCat("loudly/", options_.account, "/", options_.client_id);
  options_.shared->UpdateLocked(
      key, std::move(seed),
      [self = shared_from_this(), stale = std::move(stale)](
          const adapters::SharedCredential& current,
          Callback<adapters::SharedCredential> done) mutable {
        // Another replica refreshed since this one read its token: use the new one.
        if (!current.access_token.empty() && current.access_token != stale &&
            absl::Now() + kMinTokenLife < current.access_expiry) {
          std::move(done)(current);
          return;
        }
        self->Exchange(current.refresh_token,
                       [current, done = std::move(done)](absl::StatusOr<TokenGrant> grant,
                                                         const std::string& /*used*/) mutable {
                         if (!grant.ok()) {
                           std::move(done)(grant.status());
                           return;
                         }
                         adapters::SharedCredential next;
                         next.refresh_token = grant->refresh_token.empty() ? current.refresh_token
                                                                           : grant->refresh_token;
                         next.access_token = grant->access_token;
                         next.access_expiry = grant->expiry;
                         std::move(done)(std::move(next));
                       });
      },
      [self = shared_from_this()](absl::StatusOr<adapters::SharedCredential> credential) {
        if (!credential.ok()) {
          // Never the secrets: the store's and the exchange's errors name none.
          self->Finish(credential.status());
          return;
        }
        self->Install(credential->refresh_token, credential->access_token,
                      credential->access_expiry);
        self->Finish(credential->access_token);
      });
}

void TokenSource::Install(const std::string& refresh_token, const std::string& access_token,
                          absl::Time expiry) {
  const absl::Time now = absl::Now();
  // Short-lived tokens (tests, misconfigured servers) must not refresh on every call.
  const absl::Duration margin =
      std::min(options_.refresh_margin, std::max(absl::ZeroDuration(), expiry - now) / 4);
  absl::MutexLock lock(&mu_);
  if (!refresh_token.empty()) refresh_token_ = refresh_token;
  access_token_ = access_token;
  rejected_.clear();
  refresh_at_ = expiry - margin;
}

void TokenSource::Exchange(std::string refresh_token, Exchanged done) {
  const EncodedBody body = EncodeFormUrlencoded({{"client_id", options_.client_id},
                                                 {"grant_type", "refresh_token"},
                                                 {"refresh_token", refresh_token}});
  http::Request request;
  request.method = "POST";
  request.url = absl::StrCat(options_.base_url, "/oauth/v2/token");
  request.headers = {{"Content-Type", body.content_type}, {"Accept", "application/json"}};
  request.body = body.body;
  request.timeout = options_.request_timeout;
  request.endpoint = "loudly:oauth.token:post";
  request.provider = "loudly";
  http::SendWithRetry(*client_, std::move(request), options_.retry,
                      LoudlyClassifier(CallKind::kRead),
                      [self = shared_from_this(), used = std::move(refresh_token),
                       done = std::move(done)](absl::StatusOr<http::Response> result) mutable {
                        self->OnExchanged(used, std::move(result), std::move(done));
                      });
}

void TokenSource::OnExchanged(const std::string& used_token, absl::StatusOr<http::Response> result,
                              Exchanged done) {
  ErrorContext context{options_.account, Secrets()};
  context.secrets.push_back(used_token);
  auto response = CheckResponse(std::move(result), context);
  absl::StatusOr<TokenGrant> grant =
      response.ok() ? ParseTokenResponse(response->body, absl::Now()) : response.status();
  if (response.ok() && !grant.ok()) {
    grant = BadResponseError("token response", grant.status(), context);
  }
  if (grant.ok()) {
    absl::MutexLock lock(&mu_);
    tried_configured_ = false;
    ++refreshes_;
  }
  if (grant.ok()) {
    log::Info("loudly: access token refreshed",
              {{"account", options_.account},
               {"expires_in_s",
                static_cast<long long>(absl::ToInt64Seconds(grant->expiry - absl::Now()))}});
    std::move(done)(std::move(grant), used_token);
    return;
  }
  const absl::Status& status = grant.status();
  if (!IsGrantRejected(status)) {
    std::move(done)(status, used_token);
    return;
  }
  bool fallback = false;
  {
    absl::MutexLock lock(&mu_);
    if (!tried_configured_ && !options_.refresh_token.empty() &&
        used_token != options_.refresh_token) {
      tried_configured_ = true;
      fallback = true;
    }
  }
  if (fallback) {
    log::Warning("loudly: the current refresh token was rejected; trying the configured one",
                 {{"account", options_.account}});
    Exchange(options_.refresh_token, std::move(done));
    return;
  }
  google::rpc::ErrorInfo info;
  GetErrorInfo(status, &info);
  std::map<std::string, std::string> metadata(info.metadata().begin(), info.metadata().end());
  std::move(done)(
      WithErrorInfo(absl::UnauthenticatedError(absl::StrCat(
                        "Loudly refused to renew the gateway's OAuth token for provider account '",
                        options_.account,
                        "' (a gateway configuration problem for its operator: the refresh token or "
                        "client_id is invalid; the caller's API key is not at fault)")),
                    "PROVIDER_AUTH_FAILED", kDomain, metadata),
      used_token);
}

void TokenSource::Finish(const absl::StatusOr<std::string>& result) {
  Waiters waiters;
  {
    absl::MutexLock lock(&mu_);
    waiters.swap(waiters_);
    refreshing_ = false;
  }
  for (auto& waiter : waiters) std::move(waiter)(result);
}

int64_t TokenSource::refreshes() const {
  absl::MutexLock lock(&mu_);
  return refreshes_;
}

std::vector<std::string> TokenSource::Secrets() const {
  absl::MutexLock lock(&mu_);
  std::vector<std::string> secrets = {refresh_token_, access_token_};
  if (!options_.refresh_token.empty()) secrets.push_back(options_.refresh_token);
  return secrets;
}

}  // namespace musicgw::adapters::loudly
