#include "services/operations/custody.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/errors.h"
#include "common/log.h"
#include "common/provider_names.h"

namespace musicgw::operations {

namespace v1 = musicgw::v1;

namespace {

// Rows handled per pass: bounded work per tick, the rest waits for the next one.
constexpr int kBatch = 32;

std::string Key(const std::string& operation_id, int index) {
  return absl::StrCat(operation_id, "/", index);
}

}  // namespace

// One output streamed into a new object. Owned by itself from Begin until OnComplete has
// handed the outcome to the executor.
class AssetCustody::Fetch final : public http::StreamHandler,
                                  public std::enable_shared_from_this<Fetch> {
 public:
  Fetch(std::unique_ptr<AssetWriter> writer, std::shared_ptr<Executor> executor, http::Client* http,
        FetchDone done)
      : executor_(std::move(executor)),
        http_(http),
        done_(std::move(done)),
        writer_(std::move(writer)) {}

  void Begin(http::Request request) {
    std::unique_ptr<http::StreamHandle> handle;
    {
      absl::MutexLock lock(&mu_);
      self_ = shared_from_this();
    }
    handle = http_->Stream(std::move(request), this);
    absl::MutexLock lock(&mu_);
    handle_ = std::shared_ptr<http::StreamHandle>(std::move(handle));
  }

  bool OnHeaders(int status, const http::Headers& /*headers*/) override {
    if (status == 200) return true;
    absl::MutexLock lock(&mu_);
    error_ = absl::Status(status == 404 || status == 410 ? absl::StatusCode::kNotFound
                                                         : absl::StatusCode::kUnavailable,
                          absl::StrCat("the provider answered HTTP ", status, " for the asset"));
    outcome_ = kCustodyUpstreamError;
    return false;
  }

  bool OnData(absl::string_view data) override {
    absl::MutexLock lock(&mu_);
    if (!error_.ok()) return true;  // a cancel is on its way
    // A plain write into the page cache; the fsync runs on the executor at Commit.
    absl::Status status = writer_->Append(data);
    if (!status.ok()) {
      error_ = status;
      outcome_ = kCustodyStoreError;
      std::weak_ptr<Fetch> weak = weak_from_this();
      http_->RunAfter(absl::ZeroDuration(), [weak] {
        if (auto self = weak.lock()) {
          std::shared_ptr<http::StreamHandle> handle;
          {
            absl::MutexLock lock(&self->mu_);
            handle = self->handle_;
          }
          if (handle != nullptr) handle->Cancel();
        }
      });
    }
    return true;
  }

  void OnComplete(absl::Status status) override {
    std::shared_ptr<Fetch> keep;
    std::shared_ptr<http::StreamHandle> handle;
    {
      absl::MutexLock lock(&mu_);
      keep = std::move(self_);
      handle = std::move(handle_);
      if (error_.ok() && !status.ok()) {
        error_ = status;
        outcome_ = status.code() == absl::StatusCode::kDeadlineExceeded ? kCustodyTimeout
                                                                        : kCustodyUpstreamError;
      }
    }
    executor_->Post([keep] { keep->Finish(); });
  }

 private:
  void Finish() {
    absl::Status error;
    absl::string_view outcome;
    std::unique_ptr<AssetWriter> writer;
    {
      absl::MutexLock lock(&mu_);
      error = error_;
      outcome = outcome_;
      writer = std::move(writer_);
    }
    if (!error.ok()) return std::move(done_)(error, outcome);
    absl::StatusOr<StoredObject> object = writer->Commit();
    std::move(done_)(object, object.ok() ? kCustodyStored : kCustodyStoreError);
  }

  const std::shared_ptr<Executor> executor_;
  http::Client* const http_;
  FetchDone done_;

  absl::Mutex mu_;
  std::unique_ptr<AssetWriter> writer_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<Fetch> self_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<http::StreamHandle> handle_ ABSL_GUARDED_BY(mu_);
  absl::Status error_ ABSL_GUARDED_BY(mu_);
  absl::string_view outcome_ ABSL_GUARDED_BY(mu_) = kCustodyStored;
};

AssetCustody::AssetCustody(const EngineOptions& options, const Clock& clock,
                           std::shared_ptr<OperationStore> store,
                           std::shared_ptr<Executor> executor, http::Client* http,
                           std::shared_ptr<AssetStore> assets)
    : options_(options),
      clock_(clock),
      store_(std::move(store)),
      executor_(std::move(executor)),
      http_(http),
      assets_(std::move(assets)) {}

void AssetCustody::Start() {
  if (!enabled()) return;
  std::weak_ptr<AssetCustody> weak = weak_from_this();
  executor_->Post([weak] {
    if (auto self = weak.lock()) self->RunPass();
  });
}

void AssetCustody::Shutdown() {
  absl::MutexLock lock(&mu_);
  stopped_ = true;
}

void AssetCustody::SchedulePass() {
  std::weak_ptr<AssetCustody> weak = weak_from_this();
  executor_->PostAfter(options_.custody_sweep_interval, [weak] {
    if (auto self = weak.lock()) self->RunPass();
  });
}

void AssetCustody::RunPass() {
  {
    absl::MutexLock lock(&mu_);
    if (stopped_) return;
  }
  RetryDue();
  Sweep();
  RefreshStats();
  SchedulePass();
}

absl::Time AssetCustody::RetentionEnd(const std::string& tenant) const {
  absl::Duration retention = options_.default_asset_retention;
  if (options_.asset_retention) retention = options_.asset_retention(tenant);
  return clock_.Now() + retention;
}

void AssetCustody::FetchOne(const UpstreamOutput& output, v1::Provider provider, FetchDone done) {
  auto writer = assets_->NewWriter();
  if (!writer.ok()) return std::move(done)(writer.status(), kCustodyStoreError);
  http::Request request;
  request.method = "GET";
  request.url = output.url;
  request.timeout = options_.custody_fetch_timeout;
  request.endpoint = "asset:custody";
  request.provider = std::string(ProviderSlug(provider));
  auto fetch = std::make_shared<Fetch>(*std::move(writer), executor_, http_, std::move(done));
  fetch->Begin(std::move(request));
}

bool AssetCustody::Outcome(const std::string& operation_id, int index, const std::string& tenant,
                           int attempts, const absl::StatusOr<StoredObject>& result,
                           absl::string_view outcome) {
  bool held = false;
  if (result.ok()) {
    absl::Status recorded = store_->RecordCustody(operation_id, index, result->size_bytes,
                                                  result->sha256, RetentionEnd(tenant));
    if (recorded.ok()) {
      held = true;
      if (on_assets_changed_) on_assets_changed_(operation_id);
    } else {
      log::Warning("could not record asset custody",
                   {{"operation", operation_id}, {"error", recorded.ToString()}});
      outcome = kCustodyStoreError;
    }
  }
  if (!held) {
    // Exponential backoff: initial, 2x, 4x, ... up to the maximum.
    const int exponent = std::min(std::max(attempts - 1, 0), 20);
    const absl::Duration backoff =
        std::min(options_.custody_retry_max, options_.custody_retry_initial * (1 << exponent));
    absl::Status deferred =
        store_->DeferCustody(operation_id, index, attempts, clock_.Now() + backoff);
    log::Warning("asset custody fetch failed; retrying in the background",
                 {{"operation", operation_id},
                  {"outcome", std::string(outcome)},
                  {"error", result.ok() ? std::string("ledger") : result.status().ToString()},
                  {"retry_in", absl::FormatDuration(backoff)}});
    if (!deferred.ok()) {
      log::Warning("could not defer asset custody",
                   {{"operation", operation_id}, {"error", deferred.ToString()}});
    }
  }
  if (options_.observer != nullptr) options_.observer->OnCustodyFetch(outcome);
  return held;
}

void AssetCustody::FetchBeforeSuccess(
    const std::string& operation_id, const std::string& tenant, v1::Provider provider,
    const std::vector<UpstreamOutput>& outputs,
    absl::AnyInvocable<void(std::vector<std::optional<StoredObject>>) &&> done) {
  const size_t count = outputs.size();
  auto shared_done =
      std::make_shared<absl::AnyInvocable<void(std::vector<std::optional<StoredObject>>) &&>>(
          std::move(done));
  const auto none = [shared_done, count] {
    std::move (*shared_done)(std::vector<std::optional<StoredObject>>(count));
  };
  if (!enabled() || count == 0) return executor_->Post(none);
  // Durable before the first byte: after a crash the fetch is resumed, by the tracker (the
  // operation is still live) or by the background pass. The background pass leaves it alone
  // while this fetch may still run.
  const absl::Time now = clock_.Now();
  absl::Status pending = store_->AddPendingCustody(
      operation_id, tenant, static_cast<int>(count), now,
      now + options_.custody_fetch_timeout + options_.custody_retry_initial);
  if (!pending.ok()) {
    log::Warning("could not record pending asset custody",
                 {{"operation", operation_id}, {"error", pending.ToString()}});
    return executor_->Post(none);
  }
  struct Gather {
    absl::Mutex mu;
    std::vector<std::optional<StoredObject>> results;
    size_t remaining;
  };
  auto gather = std::make_shared<Gather>();
  gather->results.resize(count);
  gather->remaining = count;
  std::weak_ptr<AssetCustody> weak = weak_from_this();
  for (size_t i = 0; i < count; ++i) {
    const int index = static_cast<int>(i);
    FetchOne(outputs[i], provider,
             [weak, gather, shared_done, operation_id, tenant, index](
                 const absl::StatusOr<StoredObject>& result, absl::string_view outcome) {
               auto self = weak.lock();
               const bool held = self != nullptr && self->Outcome(operation_id, index, tenant,
                                                                  /*attempts=*/1, result, outcome);
               bool last = false;
               {
                 absl::MutexLock lock(&gather->mu);
                 if (held) gather->results[static_cast<size_t>(index)] = *result;
                 last = --gather->remaining == 0;
               }
               if (last) std::move (*shared_done)(std::move(gather->results));
             });
  }
}

void AssetCustody::RetryDue() {
  auto due = store_->DueCustody(clock_.Now(), kBatch);
  if (!due.ok()) {
    log::Warning("could not read pending asset custody", {{"error", due.status().ToString()}});
    return;
  }
  for (const CustodyRecord& row : *due) RetryOne(row);
}

void AssetCustody::RetryOne(const CustodyRecord& row) {
  const std::string key = Key(row.operation_id, row.index);
  {
    absl::MutexLock lock(&mu_);
    if (stopped_ || !in_flight_.insert(key).second) return;
  }
  std::weak_ptr<AssetCustody> weak = weak_from_this();
  const int attempts = row.attempts + 1;
  auto finish = [weak, row, key, attempts](const absl::StatusOr<StoredObject>& result,
                                           absl::string_view outcome) {
    auto self = weak.lock();
    if (self == nullptr) return;
    self->Outcome(row.operation_id, row.index, row.tenant, attempts, result, outcome);
    absl::MutexLock lock(&self->mu_);
    self->in_flight_.erase(key);
  };
  auto record = store_->Get(row.operation_id);
  if (!record.ok() || !record->operation.done()) {
    // A live operation's tracker fetches its outputs itself when it succeeds.
    absl::MutexLock lock(&mu_);
    in_flight_.erase(key);
    if (record.ok() || absl::IsNotFound(record.status())) {
      store_
          ->DeferCustody(row.operation_id, row.index, row.attempts,
                         clock_.Now() + options_.custody_retry_initial)
          .IgnoreError();
    }
    return;
  }
  const v1::Provider provider = record->operation.provider();
  const bool have_url = row.index < static_cast<int>(record->upstream_outputs.size()) &&
                        !record->upstream_outputs[row.index].url.empty();
  // The stored URL first; after a failure, or once it expired, a fresh one from the provider.
  if (have_url && row.attempts == 0 &&
      record->upstream_outputs[row.index].url_expire_time > clock_.Now()) {
    return FetchOne(record->upstream_outputs[row.index], provider, std::move(finish));
  }
  if (!refresher_) {
    return std::move(finish)(absl::FailedPreconditionError("no fresh asset URL"),
                             kCustodyUpstreamError);
  }
  auto shared_finish = std::make_shared<decltype(finish)>(std::move(finish));
  refresher_(row.operation_id, row.index,
             [weak, provider, shared_finish](absl::StatusOr<UpstreamOutput> fresh) {
               auto self = weak.lock();
               if (self == nullptr) return;
               if (!fresh.ok()) return (*shared_finish)(fresh.status(), kCustodyUpstreamError);
               self->FetchOne(*fresh, provider, std::move(*shared_finish));
             });
}

void AssetCustody::Sweep() {
  auto expired = store_->ExpireCustody(clock_.Now(), kBatch * 4);
  if (!expired.ok()) {
    log::Warning("could not expire asset custody", {{"error", expired.status().ToString()}});
    return;
  }
  for (const CustodyRecord& row : *expired) {
    if (on_assets_changed_) on_assets_changed_(row.operation_id);
    // Another asset with the same bytes, still within its retention, keeps the object.
    auto refs = store_->CountHeldDigest(row.sha256);
    if (!refs.ok() || *refs > 0) continue;
    absl::Status removed = assets_->Remove(row.sha256);
    if (!removed.ok()) {
      log::Warning("could not delete an expired asset", {{"error", removed.ToString()}});
    }
  }
}

void AssetCustody::RefreshStats() {
  auto summary = store_->ReadCustodySummary();
  if (!summary.ok()) return;
  absl::MutexLock lock(&mu_);
  summary_ = *summary;
}

CustodyStats AssetCustody::Stats() const {
  CustodyStats stats;
  absl::MutexLock lock(&mu_);
  stats.held_bytes = summary_.held_bytes;
  stats.pending = summary_.pending;
  if (summary_.pending > 0) {
    stats.oldest_pending_age =
        std::max(absl::ZeroDuration(), clock_.Now() - summary_.oldest_pending);
  }
  return stats;
}

absl::StatusOr<AssetCustody::Held> AssetCustody::OpenHeld(const std::string& operation_id,
                                                          int index) {
  Held held;
  if (!enabled()) return held;
  auto rows = store_->GetCustody(operation_id);
  if (!rows.ok()) return rows.status();
  for (const CustodyRecord& row : *rows) {
    if (row.index != index) continue;
    if (row.state == CustodyState::kExpired) {
      return WithErrorInfo(
          absl::NotFoundError(absl::StrCat(
              "the asset was deleted when its retention ended at ",
              absl::FormatTime(absl::RFC3339_sec, row.expire_time, absl::UTCTimeZone()))),
          "ASSET_EXPIRED", kGatewayDomain);
    }
    if (row.state != CustodyState::kHeld) break;
    auto reader = assets_->Open(row.sha256);
    if (absl::IsNotFound(reader.status())) break;
    if (!reader.ok()) return reader.status();
    held.reader = *std::move(reader);
    held.sha256 = row.sha256;
    break;
  }
  return held;
}

}  // namespace musicgw::operations
