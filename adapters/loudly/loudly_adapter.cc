#include "adapters/loudly/loudly_adapter.h"

#include <algorithm>
#include <deque>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "adapters/http/retry.h"
#include "adapters/loudly/loudly_call.h"
#include "adapters/loudly/loudly_catalog.h"
#include "adapters/loudly/loudly_token.h"
#include "common/crypto.h"
#include "common/errors.h"
#include "common/log.h"
#include "common/status_macros.h"

namespace musicgw::adapters::loudly {
namespace {

constexpr size_t kMaxStoredResults = 1024;

bool IsSafeId(absl::string_view id) {
  return !id.empty() && id.size() <= 128 && std::all_of(id.begin(), id.end(), [](char c) {
    return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_';
  });
}

// First and last day of `now`'s UTC month, as the limits endpoint wants them.
std::pair<std::string, std::string> CurrentMonth(absl::Time now) {
  const absl::CivilDay today = absl::ToCivilDay(now, absl::UTCTimeZone());
  const absl::CivilMonth month(today);
  const absl::CivilDay first(month);
  const absl::CivilDay last = absl::CivilDay(month + 1) - 1;
  return {absl::FormatCivilTime(first), absl::FormatCivilTime(last)};
}

}  // namespace

class LoudlyAdapter::Impl : public std::enable_shared_from_this<Impl> {
 public:
  Impl(LoudlyOptions options, http::Client* client, std::shared_ptr<TokenSource> tokens)
      : options_(std::move(options)), client_(client), tokens_(std::move(tokens)) {
    catalog_ = options_.catalog;
  }

  const LoudlyOptions& options() const { return options_; }
  TokenSource* tokens() const { return tokens_.get(); }

  // Delivers on the loop thread: adapter callbacks never run inline in the caller.
  template <typename T>
  void Post(Callback<T> done, absl::StatusOr<T> value) {
    client_->RunAfter(absl::ZeroDuration(),
                      [done = std::move(done), value = std::move(value)]() mutable {
                        std::move(done)(std::move(value));
                      });
  }

  ErrorContext Context() const {
    ErrorContext context{options_.account, {}};
    if (!options_.api_key.empty()) context.secrets.push_back(options_.api_key);
    if (tokens_ != nullptr) {
      for (auto& secret : tokens_->Secrets()) context.secrets.push_back(std::move(secret));
    }
    return context;
  }

  http::Request NewRequest(std::string method, absl::string_view path, std::string endpoint) {
    http::Request request;
    request.method = std::move(method);
    request.url = absl::StrCat(options_.base_url, path);
    request.headers = {{"Accept", "application/json"}};
    request.timeout = options_.request_timeout;
    request.endpoint = std::move(endpoint);
    request.provider = "loudly";
    return request;
  }

  // Sends with the dialect's credentials and the retry policy; `done` gets a 2xx response or
  // the mapped error. Web: a 401 renews the token and retries once.
  void Call(http::Request request, CallKind kind, http::RetryPolicy policy,
            Callback<http::Response> done) {
    if (options_.dialect == Dialect::kB2B) {
      request.headers.emplace_back("API-KEY", options_.api_key);
      http::SendWithRetry(
          *client_, std::move(request), policy, LoudlyClassifier(kind),
          [self = shared_from_this(), kind,
           done = std::move(done)](absl::StatusOr<http::Response> result) mutable {
            std::move(done)(CheckResponse(std::move(result), self->Context(), kind));
          });
      return;
    }
    tokens_->Get([self = shared_from_this(), request = std::move(request), kind, policy,
                  done = std::move(done)](absl::StatusOr<std::string> token) mutable {
      if (!token.ok()) {
        // Get answers inline only with a cached token, so this runs on the loop thread.
        std::move(done)(token.status());
        return;
      }
      self->SendWeb(std::move(request), kind, policy, *std::move(token), /*renewed=*/false,
                    std::move(done));
    });
  }

  void SendWeb(http::Request request, CallKind kind, http::RetryPolicy policy, std::string token,
               bool renewed, Callback<http::Response> done) {
    http::Request attempt = request;
    attempt.headers.emplace_back("Authorization", absl::StrCat("Bearer ", token));
    http::SendWithRetry(
        *client_, std::move(attempt), policy, LoudlyClassifier(kind),
        [self = shared_from_this(), request = std::move(request), kind, policy,
         token = std::move(token), renewed,
         done = std::move(done)](absl::StatusOr<http::Response> result) mutable {
          if (result.ok() && result->status == 401 && !renewed) {
            self->tokens_->Renew(
                token, [self, request = std::move(request), kind, policy,
                        done = std::move(done)](absl::StatusOr<std::string> fresh) mutable {
                  if (!fresh.ok()) {
                    std::move(done)(fresh.status());
                    return;
                  }
                  self->SendWeb(std::move(request), kind, policy, *std::move(fresh),
                                /*renewed=*/true, std::move(done));
                });
            return;
          }
          std::move(done)(CheckResponse(std::move(result), self->Context(), kind));
        });
  }

  // The policy for one call, its total time capped by `deadline`; nullopt when it has passed.
  std::optional<http::RetryPolicy> PolicyUntil(absl::Time deadline, absl::Duration total) const {
    http::RetryPolicy policy = options_.retry;
    policy.max_total = std::min(total, deadline - absl::Now());
    if (policy.max_total <= absl::ZeroDuration()) return std::nullopt;
    return policy;
  }

  void Submit(const SubmitRequest& submit, Callback<UpstreamStatus> done) {
    const bool web = options_.dialect == Dialect::kWeb;
    absl::StatusOr<Form> form =
        web ? EncodeWebBundle(submit.request)
            : EncodeB2BSong(submit.request, submit.validate_only, options_.b2b_instruments);
    if (!form.ok()) return Post(std::move(done), absl::StatusOr<UpstreamStatus>(form.status()));
    if (web && submit.validate_only) {
      // The web dialect has no dry run: the request was checked locally and goes no further.
      UpstreamStatus checked;
      checked.phase = UpstreamStatus::Phase::kSucceeded;
      return Post(std::move(done), absl::StatusOr<UpstreamStatus>(std::move(checked)));
    }
    const absl::Duration budget = web ? options_.retry.max_total : options_.sync_timeout;
    std::optional<http::RetryPolicy> policy = PolicyUntil(submit.deadline, budget);
    if (!policy.has_value()) {
      return Post(std::move(done), absl::StatusOr<UpstreamStatus>(absl::DeadlineExceededError(
                                       "the operation's deadline passed before submission")));
    }
    const EncodedBody body =
        options_.form_urlencoded
            ? EncodeFormUrlencoded(*form)
            : EncodeMultipart(*form, absl::StrCat("----musicgw", RandomHex(12)));
    http::Request request =
        web ? NewRequest("POST", "/ai/vega/bundles", "loudly:vega.bundles:post")
            : NewRequest("POST", B2BSongPath(submit.request),
                         submit.request.has_parametric_music() ? "loudly:ai.songs:post"
                                                               : "loudly:ai.prompt.songs:post");
    request.headers.emplace_back("Content-Type", body.content_type);
    request.body = body.body;
    if (!web) request.timeout = policy->max_total;  // one blocking generation
    Call(std::move(request), CallKind::kGenerate, *policy,
         [self = shared_from_this(), web, dry_run = submit.validate_only,
          done = std::move(done)](absl::StatusOr<http::Response> response) mutable {
           std::move(done)(web ? self->OnBundleCreated(std::move(response))
                               : self->OnSongGenerated(std::move(response), dry_run));
         });
  }

  absl::StatusOr<UpstreamStatus> OnBundleCreated(absl::StatusOr<http::Response> response) {
    if (!response.ok()) return response.status();
    auto bundle = ParseBundle(response->body);
    if (!bundle.ok()) {
      // A 200 means the bundle was created: its id is lost, not the money.
      return GenerationOutcomeUnknown(
          absl::StrCat("Loudly answered the bundle request with HTTP ", response->status,
                       " but an unreadable body (", bundle.status().message(), ")"),
          Context(), response->status);
    }
    if (bundle->status.phase == UpstreamStatus::Phase::kRunning) {
      bundle->status.next_poll_after = options_.min_poll_interval;
    }
    return std::move(bundle->status);
  }

  absl::StatusOr<UpstreamStatus> OnSongGenerated(absl::StatusOr<http::Response> response,
                                                 bool dry_run) {
    if (!response.ok()) return response.status();
    auto song = ParseAiSong(response->body);
    if (!song.ok()) {
      if (dry_run) return BadResponseError("song", song.status(), Context());
      // A 200 means the song was generated and charged: only its description is lost.
      return GenerationOutcomeUnknown(
          absl::StrCat("Loudly answered the song request with HTTP ", response->status,
                       " but an unreadable body (", song.status().message(), ")"),
          Context(), response->status);
    }
    if (!dry_run && !song->upstream_id.empty()) Remember(*song);
    return song;
  }

  void Remember(const UpstreamStatus& status) {
    absl::MutexLock lock(&mu_);
    auto [it, inserted] = results_.insert_or_assign(status.upstream_id, status);
    if (!inserted) return;
    order_.push_back(status.upstream_id);
    while (order_.size() > kMaxStoredResults) {
      results_.erase(order_.front());
      order_.pop_front();
    }
  }

  void Poll(const PollRequest& poll, Callback<UpstreamStatus> done) {
    if (options_.dialect == Dialect::kB2B) {
      absl::StatusOr<UpstreamStatus> result = LookUp(poll.upstream_id);
      return Post(std::move(done), std::move(result));
    }
    if (!IsSafeId(poll.upstream_id)) {
      return Post(std::move(done), absl::StatusOr<UpstreamStatus>(
                                       absl::InvalidArgumentError("not a Loudly bundle id")));
    }
    std::optional<http::RetryPolicy> policy = PolicyUntil(poll.deadline, options_.retry.max_total);
    if (!policy.has_value()) {
      return Post(std::move(done), absl::StatusOr<UpstreamStatus>(absl::DeadlineExceededError(
                                       "the operation's deadline passed")));
    }
    http::Request request =
        NewRequest("GET", absl::StrCat("/ai/vega/bundles/", poll.upstream_id, "?limit=10"),
                   "loudly:vega.bundles:get");
    Call(std::move(request), CallKind::kRead, *policy,
         [self = shared_from_this(),
          done = std::move(done)](absl::StatusOr<http::Response> response) mutable {
           std::move(done)(self->OnBundleRead(std::move(response)));
         });
  }

  absl::StatusOr<UpstreamStatus> OnBundleRead(absl::StatusOr<http::Response> response) {
    if (!response.ok()) return response.status();
    auto bundle = ParseBundle(response->body);
    if (!bundle.ok()) return BadResponseError("bundle", bundle.status(), Context());
    if (bundle->status.phase == UpstreamStatus::Phase::kRunning) {
      const absl::Duration age =
          bundle->created_at.has_value() ? absl::Now() - *bundle->created_at : absl::ZeroDuration();
      bundle->status.next_poll_after =
          NextPollInterval(age, options_.min_poll_interval, options_.max_poll_interval);
    }
    return std::move(bundle->status);
  }

  absl::StatusOr<UpstreamStatus> LookUp(const std::string& upstream_id) {
    absl::MutexLock lock(&mu_);
    auto it = results_.find(upstream_id);
    if (it != results_.end()) return it->second;
    return WithErrorInfo(
        absl::FailedPreconditionError(
            "Loudly's public API cannot look a song up by id; its result is only known to "
            "the process whose Submit received it"),
        "PROVIDER_NO_LOOKUP", kDomain, {{"account", options_.account}});
  }

  void ReadQuota(Callback<std::vector<QuotaFigure>> done) {
    const bool web = options_.dialect == Dialect::kWeb;
    std::string path = "/users/limits";
    if (!web) {
      auto [from, to] = CurrentMonth(absl::Now());
      path = absl::StrCat("/api/account/limits?date_from=", from, "&date_to=", to);
    }
    http::Request request =
        NewRequest("GET", path, web ? "loudly:users.limits:get" : "loudly:account.limits:get");
    Call(std::move(request), CallKind::kRead, options_.retry,
         [self = shared_from_this(), web,
          done = std::move(done)](absl::StatusOr<http::Response> response) mutable {
           if (!response.ok()) return std::move(done)(response.status());
           auto figures = web ? ParseWebLimits(response->body) : ParseB2BLimits(response->body);
           if (!figures.ok()) {
             return std::move(done)(BadResponseError("limits", figures.status(), self->Context()));
           }
           std::move(done)(std::move(figures));
         });
  }

  // --- catalog (B2B) ---

  struct CatalogRead {
    std::optional<std::vector<std::string>> genres;
    std::optional<std::vector<musicgw::v1::SongStructure>> structures;
    std::optional<std::string> prompt;
    absl::Status genres_error;
    int pending = 3;
    Callback<ProviderCatalog> done;
  };

  void RefreshCatalog(Callback<ProviderCatalog> done) {
    if (options_.dialect != Dialect::kB2B) {
      return Post(std::move(done), absl::StatusOr<ProviderCatalog>(absl::UnimplementedError(
                                       "the Loudly web dialect publishes no catalog")));
    }
    auto read = std::make_shared<CatalogRead>();
    read->done = std::move(done);
    auto get = [this, read](const char* path, const char* endpoint, auto store) {
      Call(NewRequest("GET", path, endpoint), CallKind::kRead, options_.retry,
           [self = shared_from_this(), read,
            store](absl::StatusOr<http::Response> response) mutable {
             {
               absl::MutexLock lock(&self->mu_);
               store(*read, std::move(response));
               if (--read->pending > 0) return;
             }
             self->OnCatalogRead(*read);
           });
    };
    get("/api/ai/genres", "loudly:ai.genres:get",
        [](CatalogRead& read, absl::StatusOr<http::Response> response) {
          auto genres = response.ok() ? ParseGenres(response->body)
                                      : absl::StatusOr<std::vector<std::string>>(response.status());
          if (genres.ok()) {
            read.genres = *std::move(genres);
          } else {
            read.genres_error = genres.status();
          }
        });
    get("/api/ai/structures", "loudly:ai.structures:get",
        [](CatalogRead& read, absl::StatusOr<http::Response> response) {
          if (!response.ok()) return;
          if (auto structures = ParseStructures(response->body); structures.ok()) {
            read.structures = *std::move(structures);
          }
        });
    get("/api/ai/prompt/random", "loudly:ai.prompt.random:get",
        [](CatalogRead& read, absl::StatusOr<http::Response> response) {
          if (!response.ok()) return;
          if (auto prompt = ParseRandomPrompt(response->body); prompt.ok()) {
            read.prompt = *std::move(prompt);
          }
        });
  }

  void OnCatalogRead(CatalogRead& read) {
    ProviderCatalog snapshot;
    {
      absl::MutexLock lock(&mu_);
      if (read.genres.has_value()) {
        catalog_.genres = *std::move(read.genres);
        catalog_.read_time = absl::Now();
      }
      if (read.structures.has_value()) catalog_.structures = *std::move(read.structures);
      if (read.prompt.has_value()) catalog_.example_prompt = *std::move(read.prompt);
      snapshot = catalog_;
    }
    if (!read.genres_error.ok()) {
      log::Warning("loudly: could not read the genre catalog; keeping the cached one",
                   {{"account", options_.account}, {"why", read.genres_error.message()}});
      std::move(read.done)(read.genres_error);
      return;
    }
    std::move(read.done)(std::move(snapshot));
  }

  ProviderCatalog catalog() const {
    absl::MutexLock lock(&mu_);
    return catalog_;
  }

  void Start() {
    {
      absl::MutexLock lock(&mu_);
      if (started_ || stopped_) return;
      started_ = true;
    }
    if (options_.dialect != Dialect::kB2B) return;
    RefreshAndReschedule();
  }

  void Stop() {
    absl::MutexLock lock(&mu_);
    stopped_ = true;
  }

  void RefreshAndReschedule() {
    RefreshCatalog([weak = weak_from_this()](const absl::StatusOr<ProviderCatalog>&) {
      auto self = weak.lock();
      if (self == nullptr || self->options_.catalog_refresh_interval <= absl::ZeroDuration()) {
        return;
      }
      {
        absl::MutexLock lock(&self->mu_);
        if (self->stopped_) return;
      }
      self->client_->RunAfter(self->options_.catalog_refresh_interval, [weak]() {
        auto self = weak.lock();
        if (self == nullptr) return;
        {
          absl::MutexLock lock(&self->mu_);
          if (self->stopped_) return;
        }
        self->RefreshAndReschedule();
      });
    });
  }

 private:
  const LoudlyOptions options_;
  http::Client* const client_;
  const std::shared_ptr<TokenSource> tokens_;  // web dialect only

  mutable absl::Mutex mu_;
  ProviderCatalog catalog_ ABSL_GUARDED_BY(mu_);
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  // B2B results by song id, oldest first in order_.
  absl::flat_hash_map<std::string, UpstreamStatus> results_ ABSL_GUARDED_BY(mu_);
  std::deque<std::string> order_ ABSL_GUARDED_BY(mu_);
};

absl::StatusOr<LoudlyOptions> LoudlyOptionsFromConfig(const config::ProviderConfig& config) {
  LoudlyOptions options;
  options.account = config.name.empty() ? "loudly" : config.name;
  const std::string dialect = absl::AsciiStrToLower(config.dialect);
  if (dialect == "web" || dialect == "loudly-web") {
    options.dialect = Dialect::kWeb;
  } else if (dialect.empty() || dialect == "b2b" || dialect == "loudly-b2b") {
    options.dialect = Dialect::kB2B;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown Loudly dialect \"", config.dialect, "\" (web or b2b)"));
  }
  if (!config.base_url.empty()) options.base_url = config.base_url;
  options.api_key = config.api_key;
  options.client_id = config.client_id;
  options.refresh_token = config.refresh_token;
  options.token_state_file = config.token_state_file;
  options.sync_timeout = config.sync_timeout;
  options.catalog.genres = config.catalog_genres;
  for (const auto& [id, name] : config.catalog_structures) {
    musicgw::v1::SongStructure structure;
    structure.set_id(id);
    structure.set_name(name);
    options.catalog.structures.push_back(std::move(structure));
  }
  return options;
}

absl::StatusOr<std::unique_ptr<LoudlyAdapter>> LoudlyAdapter::Create(LoudlyOptions options,
                                                                     http::Client* client) {
  if (client == nullptr) return absl::InvalidArgumentError("no HTTP client");
  while (absl::EndsWith(options.base_url, "/")) options.base_url.pop_back();
  if (!absl::StartsWith(options.base_url, "http://") &&
      !absl::StartsWith(options.base_url, "https://")) {
    return absl::InvalidArgumentError("Loudly base_url must be an http or https URL");
  }
  if (options.sync_timeout <= absl::ZeroDuration()) options.sync_timeout = absl::Seconds(180);
  if (options.dialect == Dialect::kWeb && options.catalog.genres.empty()) {
    options.catalog.genres = ShippedCatalog().genres;
  }
  if (options.dialect == Dialect::kWeb && options.catalog.structures.empty()) {
    options.catalog.structures = ShippedCatalog().structures;
  }
  std::shared_ptr<TokenSource> tokens;
  if (options.dialect == Dialect::kB2B) {
    if (options.api_key.empty()) {
      return absl::InvalidArgumentError("the Loudly B2B dialect needs api_key");
    }
  } else {
    TokenSourceOptions token_options;
    token_options.base_url = options.base_url;
    token_options.account = options.account;
    token_options.client_id = options.client_id;
    token_options.refresh_token = options.refresh_token;
    token_options.state_file = options.token_state_file;
    token_options.shared = options.shared_credentials;
    token_options.refresh_margin = options.token_refresh_margin;
    token_options.request_timeout = options.request_timeout;
    token_options.retry = options.retry;
    MUSICGW_ASSIGN_OR_RETURN(tokens, TokenSource::Create(client, std::move(token_options)));
  }
  auto impl = std::make_shared<Impl>(options, client, std::move(tokens));
  return std::unique_ptr<LoudlyAdapter>(new LoudlyAdapter(std::move(options), std::move(impl)));
}

LoudlyAdapter::LoudlyAdapter(LoudlyOptions options, std::shared_ptr<Impl> impl)
    : options_(std::move(options)), impl_(std::move(impl)) {}

LoudlyAdapter::~LoudlyAdapter() { impl_->Stop(); }

const std::string& LoudlyAdapter::account() const { return options_.account; }

std::string LoudlyAdapter::dialect() const { return DialectName(options_.dialect); }

bool LoudlyAdapter::synchronous() const { return options_.dialect == Dialect::kB2B; }

void LoudlyAdapter::Start() { impl_->Start(); }

void LoudlyAdapter::Stop() { impl_->Stop(); }

absl::Status LoudlyAdapter::CheckRequest(const musicgw::v1::GenerateRequest& request) const {
  if (!request.has_parametric_music() && !request.has_text_to_music()) {
    return InvalidFieldError("task", "Loudly generates parametric_music and text_to_music only");
  }
  return CheckAgainstCatalog(request, impl_->catalog());
}

void LoudlyAdapter::Submit(SubmitRequest request, Callback<UpstreamStatus> done) {
  impl_->Submit(request, std::move(done));
}

void LoudlyAdapter::Poll(PollRequest request, Callback<UpstreamStatus> done) {
  impl_->Poll(request, std::move(done));
}

void LoudlyAdapter::Cancel(PollRequest request, Callback<bool> done) {
  impl_->Post(std::move(done), absl::StatusOr<bool>(false));
}

void LoudlyAdapter::ReadQuota(Callback<std::vector<QuotaFigure>> done) {
  impl_->ReadQuota(std::move(done));
}

std::vector<std::string> LoudlyAdapter::QuotaResources(
    const musicgw::v1::GenerateRequest& request) const {
  if (options_.dialect == Dialect::kWeb) return {"generate_vega_song"};
  if (request.has_parametric_music()) return {"GENERATE_SONG_VEGA_1"};
  if (request.has_text_to_music()) return {"GENERATE_VEGA_SONG_WITH_PROMPT"};
  return {};
}

ProviderCatalog LoudlyAdapter::catalog() const { return impl_->catalog(); }

void LoudlyAdapter::RefreshCatalog(Callback<ProviderCatalog> done) {
  impl_->RefreshCatalog(std::move(done));
}

int64_t LoudlyAdapter::token_refreshes() const {
  return impl_->tokens() == nullptr ? 0 : impl_->tokens()->refreshes();
}

}  // namespace musicgw::adapters::loudly
