// The operations engine: a facade that wires the units and answers the RPC-shaped calls.
//  - Router: which provider account serves a request (health, quota, fallback).
//  - Tracker (one per live operation, registered in LiveTrackers): the state machine; commits
//    each change to the ledger, then publishes it on the ChangeFeed.
//  - WatchHub: subscribes to the feed and fans changes out to watchers, with heartbeats.
//  - SnapshotCache: recently read operations for Get, kept current by the feed.
//  - AssetHost: downloads. page_token: ListOperations paging. LedgerHealth: LedgerStatus().
// Threads: callers (gRPC threads) run these calls against the ledger; adapter and HTTP
// callbacks arrive on the HTTP loop thread and only post to the executor, whose workers run
// every tracker step and timer.
#include "services/operations/engine.h"

#include <algorithm>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "adapters/capabilities.h"
#include "common/errors.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "common/time_util.h"
#include "services/operations/asset_host.h"
#include "services/operations/change_feed.h"
#include "services/operations/custody.h"
#include "services/operations/eta_estimator.h"
#include "services/operations/executor.h"
#include "services/operations/ids.h"
#include "services/operations/operation_errors.h"
#include "services/operations/page_token.h"
#include "services/operations/snapshot_cache.h"
#include "services/operations/tracker.h"
#include "services/operations/watch_hub.h"

namespace musicgw::operations {
namespace {

// A typed watch as WatchEvents, for engines without shared snapshots.
class SharingStream final : public EventStream<WatchEvent> {
 public:
  explicit SharingStream(std::unique_ptr<EventStream<musicgw::v1::OperationEvent>> inner)
      : inner_(std::move(inner)) {}
  std::optional<WatchEvent> Next(bool* finished, absl::Status* final_status) override {
    std::optional<musicgw::v1::OperationEvent> event = inner_->Next(finished, final_status);
    if (!event.has_value()) return std::nullopt;
    return FromOperationEvent(*std::move(event));
  }
  void SetWakeup(absl::AnyInvocable<void()> wake) override { inner_->SetWakeup(std::move(wake)); }

 private:
  std::unique_ptr<EventStream<musicgw::v1::OperationEvent>> inner_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<EventStream<WatchEvent>>> OperationsEngine::WatchShared(
    const std::string& tenant, absl::string_view name, int64_t after_sequence) {
  auto stream = Watch(tenant, name, after_sequence);
  if (!stream.ok()) return stream.status();
  return std::unique_ptr<EventStream<WatchEvent>>(
      std::make_unique<SharingStream>(*std::move(stream)));
}

namespace {

namespace v1 = musicgw::v1;
using adapters::ProviderAdapter;
using adapters::UpstreamStatus;

class EngineImpl final : public OperationsEngine, public std::enable_shared_from_this<EngineImpl> {
 public:
  EngineImpl(EngineOptions options, std::unique_ptr<OperationStore> store,
             const std::vector<ProviderAdapter*>& adapters, http::Client* http)
      : options_(std::move(options)),
        clock_(options_.clock != nullptr ? *options_.clock : Clock::Real()),
        store_(std::move(store)),
        router_(std::make_shared<Router>(
            adapters,
            RouterOptions{options_.failure_threshold, options_.failure_cooldown,
                          options_.default_quota_backoff},
            clock_)),
        executor_(
            std::make_shared<Executor>(options_.worker_threads, clock_, options_.background_nice)),
        watch_executor_(std::make_shared<Executor>(1, clock_)),
        custody_(std::make_shared<AssetCustody>(options_, clock_, store_, executor_, http,
                                                options_.asset_store)),
        feed_(NewInProcessChangeFeed()),
        env_(std::make_shared<TrackerEnv>(options_, clock_, store_, router_, executor_, feed_)),
        hub_(std::make_shared<WatchHub>(
            WatchHubOptions{options_.watch_heartbeat, options_.watch_buffer}, clock_,
            watch_executor_, store_)),
        assets_(std::make_shared<AssetHost>(options_, clock_, store_, router_, executor_, http)),
        snapshots_(std::make_shared<SnapshotCache>(SnapshotCacheOptions{}, clock_)) {
    feed_->Subscribe(hub_.get());
    feed_->Subscribe(snapshots_.get());
    // Asset facts change in the ledger outside the feed: the cached snapshot goes stale.
    std::weak_ptr<SnapshotCache> weak_snapshots = snapshots_;
    auto forget = [weak_snapshots](const std::string& id) {
      if (auto snapshots = weak_snapshots.lock()) snapshots->Forget(id);
    };
    custody_->SetOnAssetsChanged(forget);
    assets_->SetOnAssetsChanged(forget);
    env_->custody = custody_;
    assets_->SetCustody(custody_);
    std::weak_ptr<AssetHost> weak_assets = assets_;
    custody_->SetUrlRefresher(
        [weak_assets](const std::string& id, int index,
                      absl::AnyInvocable<void(absl::StatusOr<UpstreamOutput>) &&> done) {
          auto assets = weak_assets.lock();
          if (assets == nullptr) return std::move(done)(ShuttingDown());
          assets->RefreshUrl(id, index, std::move(done));
        });
  }

  ~EngineImpl() override {
    if (options_.replica_link != nullptr) options_.replica_link->Stop();
    executor_->Stop();
    watch_executor_->Stop();
    feed_->Unsubscribe(hub_.get());
    feed_->Unsubscribe(snapshots_.get());
  }

  absl::Status Start() override {
    {
      absl::MutexLock lock(&mu_);
      if (shutdown_) return ShuttingDown();
      if (started_) return absl::OkStatus();
      started_ = true;
    }
    if (options_.replica_link != nullptr) {
      std::weak_ptr<EngineImpl> weak = weak_from_this();
      options_.replica_link->Start(
          feed_.get(),
          [weak](v1::Provider provider, absl::string_view upstream_id) {
            if (auto self = weak.lock()) self->OnNudge(provider, upstream_id);
          },
          [weak](absl::string_view id) {
            if (auto self = weak.lock()) self->OnCancelRequest(std::string(id));
          });
    }
    const absl::Time now = clock_.Now();
    auto live = store_->ClaimLive(options_.replica_id, now + options_.lease);
    if (!live.ok()) return env_->ledger.NoteWrite(live.status());
    renewed_at_ = now;
    const size_t adopted = AdoptAll(*std::move(live), PendingCancels());
    if (adopted > 0) log::Info("resumed live operations", {{"count", static_cast<long>(adopted)}});
    // The next claim is due when another replica's lease runs out, if that comes before the
    // renewal (the first maintenance prunes and probes then).
    ScheduleMaintenance(NextClaimDelay(now, MaintenancePeriod()));
    custody_->Start();
    return absl::OkStatus();
  }

  void Shutdown() override {
    {
      absl::MutexLock lock(&mu_);
      if (shutdown_) return;
      shutdown_ = true;
    }
    const absl::Status status = ShuttingDown();
    for (auto& tracker : env_->live.Stop()) tracker->Stop(status);
    if (options_.replica_link != nullptr) options_.replica_link->Stop();
    hub_->Shutdown(status);
    assets_->Shutdown(status);
    custody_->Shutdown();
    feed_->Unsubscribe(hub_.get());
    feed_->Unsubscribe(snapshots_.get());
    executor_->Stop();
    watch_executor_->Stop();
  }

  absl::StatusOr<v1::Operation> Generate(const std::string& tenant,
                                         const v1::GenerateRequest& request) override {
    if (IsShutdown()) return ShuttingDown();
    const std::string hash = RequestFingerprint(request);
    if (!request.validate_only()) {
      auto existing = store_->FindByRequestId(tenant, request.request_id());
      if (existing.ok()) return SameOrReused(*existing, hash);
      if (!absl::IsNotFound(existing.status())) return FromStore(existing.status());
    }
    MUSICGW_ASSIGN_OR_RETURN(v1::Operation op, Routed(request));
    if (request.validate_only()) return op;  // not stored: no name

    const absl::Time now = clock_.Now();
    const std::string id = NewOperationId(now);
    op.set_name(OperationName(id));
    op.set_state(v1::OPERATION_STATE_QUEUED);
    *op.mutable_create_time() = ToProtoTimestamp(now);
    *op.mutable_update_time() = ToProtoTimestamp(now);
    *op.mutable_deadline() = ToProtoTimestamp(now + options_.operation_deadline);
    *op.mutable_suggested_poll_interval() = ToProtoDuration(options_.suggested_poll_interval);
    op.set_sequence(1);

    OperationRecord record;
    record.tenant = tenant;
    record.request_id = request.request_id();
    record.request_hash = hash;
    record.operation = op;
    record.owner = options_.replica_id;
    record.lease_until = now + options_.lease;
    std::vector<BudgetCheck> budgets;
    if (options_.budgets) budgets = options_.budgets(tenant, op.task(), now);
    auto created = store_->Create(record, budgets);
    MUSICGW_RETURN_IF_ERROR(env_->ledger.NoteWrite(created.status()));
    if (!created->created) return SameOrReused(created->record, hash);
    if (options_.observer != nullptr) {
      options_.observer->OnStateChange(op.provider(), op.task(), v1::OPERATION_STATE_UNSPECIFIED,
                                       v1::OPERATION_STATE_QUEUED);
    }
    Adopt(std::move(created->record), /*recovering=*/false);
    return op;
  }

  void ValidateOnly(const std::string& tenant, const v1::GenerateRequest& request,
                    OperationCallback done) override {
    if (IsShutdown()) return std::move(done)(ShuttingDown());
    auto routed = Routed(request);
    if (!routed.ok()) return std::move(done)(routed.status());
    const int slot = router_->SlotFor(*routed);
    // The routed account checks the request too where it has a dry run (Loudly B2B test=true:
    // no quota spent); the other adapters encode it and send nothing.
    adapters::SubmitRequest submit;
    submit.request_id = request.request_id();
    submit.idempotency_key = absl::StrCat("validate-only-", request.request_id());
    submit.request = request;
    submit.deadline = clock_.Now() + absl::Seconds(30);
    submit.validate_only = true;
    router_->adapter(slot)->Submit(
        std::move(submit), [op = *std::move(routed), done = std::move(done)](
                               const absl::StatusOr<UpstreamStatus>& checked) mutable {
          std::move(done)(checked.ok() ? absl::StatusOr<v1::Operation>(std::move(op))
                                       : absl::StatusOr<v1::Operation>(checked.status()));
        });
  }

  absl::StatusOr<v1::Operation> Get(const std::string& tenant, absl::string_view name) override {
    MUSICGW_ASSIGN_OR_RETURN(std::string id, ParseOperationName(name));
    const SnapshotCache::Hit hit = snapshots_->Find(id, tenant);
    if (hit.foreign) return OperationNotFound(name);
    if (hit.operation != nullptr) return *hit.operation;
    const uint64_t stamp = snapshots_->BeginRead();
    MUSICGW_ASSIGN_OR_RETURN(OperationRecord record, Lookup(tenant, name));
    snapshots_->Offer(id, tenant, record.operation, stamp);
    return std::move(record.operation);
  }

  absl::StatusOr<v1::ListOperationsResponse> List(
      const std::string& tenant, const v1::ListOperationsRequest& request) override {
    MUSICGW_ASSIGN_OR_RETURN(const int page_size, ResolvePageSize(request.page_size()));
    const PageScope scope(tenant, request);
    ListQuery query;
    query.tenant = tenant;
    query.states = scope.states;
    query.provider = scope.provider;
    query.task = scope.task;
    query.limit = page_size + 1;
    if (!request.page_token().empty()) {
      MUSICGW_ASSIGN_OR_RETURN(query.before_id, DecodePageToken(scope, request.page_token()));
    }
    auto records = store_->List(query);
    if (!records.ok()) return FromStore(records.status());
    v1::ListOperationsResponse response;
    if (static_cast<int>(records->size()) > page_size) {
      records->resize(page_size);
      response.set_next_page_token(EncodePageToken(scope, records->back().id()));
    }
    for (auto& record : *records) *response.add_operations() = std::move(record.operation);
    return response;
  }

  void Cancel(const std::string& tenant, absl::string_view name, absl::string_view reason,
              OperationCallback done) override {
    auto record = Lookup(tenant, name);
    if (!record.ok()) return std::move(done)(record.status());
    if (record->operation.done()) return std::move(done)(OperationAlreadyDone(record->operation));
    std::shared_ptr<Tracker> tracker = env_->live.Find(record->id());
    if (tracker == nullptr) {
      if (IsShutdown()) return std::move(done)(ShuttingDown());
      // A tracker retires after committing the end, so it may have finished since the read.
      auto latest = Lookup(tenant, name);
      if (!latest.ok()) return std::move(done)(latest.status());
      if (latest->operation.done()) {
        return std::move(done)(OperationAlreadyDone(latest->operation));
      }
      if (options_.replica_link == nullptr) return std::move(done)(NotTrackedHere());
      return CancelElsewhere(*std::move(latest), reason, std::move(done));
    }
    tracker->Cancel(reason, std::move(done));
  }

  void Wait(const std::string& tenant, absl::string_view name, absl::Duration timeout,
            OperationCallback done) override {
    auto record = Lookup(tenant, name);
    if (!record.ok()) return std::move(done)(record.status());
    if (record->operation.done()) return std::move(done)(std::move(record->operation));
    std::shared_ptr<Tracker> tracker = env_->live.Find(record->id());
    if (tracker == nullptr && !IsShutdown()) {
      // A tracker retires after committing the end, so it may have finished since the read.
      auto latest = Lookup(tenant, name);
      if (!latest.ok()) return std::move(done)(latest.status());
      if (latest->operation.done() || options_.replica_link == nullptr) {
        return std::move(done)(std::move(latest->operation));
      }
      // Another replica tracks it: its changes arrive through the feed.
      const std::string id = latest->id();
      return WaitElsewhere(id, std::move(latest->operation), timeout, std::move(done));
    }
    if (tracker == nullptr || IsShutdown()) return std::move(done)(std::move(record->operation));
    tracker->Wait(timeout, std::move(done));
  }

  absl::StatusOr<std::unique_ptr<EventStream<v1::OperationEvent>>> Watch(
      const std::string& tenant, absl::string_view name, int64_t after_sequence) override {
    if (after_sequence < 0) return InvalidFieldError("after_sequence", "must not be negative");
    MUSICGW_ASSIGN_OR_RETURN(OperationRecord record, Lookup(tenant, name));
    if (IsShutdown()) return ShuttingDown();
    const std::string id = record.id();
    return hub_->Open(id, after_sequence, [&] { return Current(id, record); });
  }

  // The latest committed state of operation `id` (read as `record`), for a new watch.
  absl::StatusOr<v1::Operation> Current(const std::string& id, const OperationRecord& record) {
    if (auto tracker = env_->live.Find(id)) return tracker->Snapshot();
    if (record.operation.done()) return record.operation;
    // Not tracked here (any more): the ledger has the latest state.
    auto latest = store_->Get(id);
    if (!latest.ok()) return FromStore(latest.status());
    return std::move(latest->operation);
  }

  absl::StatusOr<std::unique_ptr<EventStream<WatchEvent>>> WatchShared(
      const std::string& tenant, absl::string_view name, int64_t after_sequence) override {
    if (after_sequence < 0) return InvalidFieldError("after_sequence", "must not be negative");
    MUSICGW_ASSIGN_OR_RETURN(OperationRecord record, Lookup(tenant, name));
    if (IsShutdown()) return ShuttingDown();
    const std::string id = record.id();
    return hub_->OpenShared(id, after_sequence, [&] { return Current(id, record); });
  }

  absl::StatusOr<std::unique_ptr<EventStream<v1::DownloadChunk>>> Download(
      const std::string& tenant, absl::string_view asset, int64_t offset) override {
    if (IsShutdown()) return ShuttingDown();
    return assets_->Open(tenant, asset, offset);
  }

  void OnProviderUpdate(v1::Provider provider, const UpstreamStatus& status) override {
    if (auto tracker = env_->live.FindByUpstream(provider, status.upstream_id)) {
      return tracker->OnProviderUpdate(status);
    }
    if (options_.replica_link == nullptr) return;
    // Another replica tracks it (or will, after a failover): it polls at once when nudged.
    const absl::Status nudged = store_->Nudge(provider, status.upstream_id);
    if (!nudged.ok()) {
      log::Warning("could not pass a webhook on to the replica tracking its operation",
                   {{"error", nudged.ToString()}});
    }
  }

  void UpdateQuota(const ProviderAdapter* adapter,
                   const std::vector<adapters::QuotaFigure>& figures) override {
    router_->UpdateQuota(adapter, figures);
  }

  std::vector<ProviderState> ProviderStates() const override { return router_->States(); }

  EngineStats Stats() const override {
    EngineStats stats;
    stats.live_operations = env_->live.size();
    stats.live_by_state = env_->live.Counts();
    stats.open_watchers = hub_->open_watches();
    stats.open_downloads = assets_->open_downloads();
    const CustodyStats custody = custody_->Stats();
    stats.custody_held_bytes = custody.held_bytes;
    stats.custody_pending = custody.pending;
    stats.custody_oldest_pending_age = custody.oldest_pending_age;
    stats.background_queued = executor_->Queued();
    return stats;
  }

  absl::Status LedgerStatus() const override { return env_->ledger.status(); }

  absl::StatusOr<BudgetUsage> ReadBudget(const std::string& tenant, v1::TaskKind task,
                                         absl::Time period_start) override {
    auto usage = store_->ReadBudget(tenant, task, period_start);
    if (!usage.ok()) return FromStore(usage.status());
    return usage;
  }

  absl::StatusOr<std::map<v1::TaskKind, int64_t>> ChargedOperations(v1::Provider provider,
                                                                    const std::string& account,
                                                                    absl::Time since) override {
    auto counts = store_->CountCharged(provider, account, since);
    if (!counts.ok()) return FromStore(counts.status());
    return counts;
  }

 private:
  bool IsShutdown() const {
    absl::MutexLock lock(&mu_);
    return shutdown_;
  }

  // The operation `request` would become, routed (the one routing decision) but not stored.
  absl::StatusOr<v1::Operation> Routed(const v1::GenerateRequest& request) const {
    MUSICGW_ASSIGN_OR_RETURN(const int slot, router_->Route(request));
    const ProviderAdapter* adapter = router_->adapter(slot);
    v1::Operation op;
    op.set_task(adapters::TaskKindOf(request));
    op.set_provider(adapter->provider());
    op.set_provider_account(adapter->account());
    *op.mutable_request() = request;
    op.mutable_request()->clear_validate_only();
    op.set_submission(v1::SUBMISSION_STATE_NOT_SUBMITTED);
    return op;
  }

  absl::StatusOr<OperationRecord> Lookup(const std::string& tenant, absl::string_view name) {
    MUSICGW_ASSIGN_OR_RETURN(std::string id, ParseOperationName(name));
    auto record = store_->Get(id);
    // Another tenant's operation is indistinguishable from a missing one.
    if ((record.ok() && record->tenant != tenant) || absl::IsNotFound(record.status())) {
      return OperationNotFound(name);
    }
    if (!record.ok()) return FromStore(record.status());
    return record;
  }

  static absl::StatusOr<v1::Operation> SameOrReused(const OperationRecord& record,
                                                    const std::string& hash) {
    if (record.request_hash != hash) {
      return WithErrorInfo(
          absl::AlreadyExistsError(
              "request_id was already used with a different request; use a new request_id"),
          "REQUEST_ID_REUSED", kGatewayDomain,
          {{"request_id", record.request_id}, {"operation", record.operation.name()}});
    }
    return record.operation;
  }

  // Waits for an operation another replica tracks: follows its changes through the watch hub
  // until one is done, or answers the latest after `timeout`.
  void WaitElsewhere(const std::string& id, v1::Operation latest, absl::Duration timeout,
                     OperationCallback done) {
    struct RemoteWait {
      absl::Mutex mu;
      OperationCallback done ABSL_GUARDED_BY(mu);
      std::unique_ptr<EventStream<v1::OperationEvent>> stream ABSL_GUARDED_BY(mu);
      v1::Operation latest ABSL_GUARDED_BY(mu);
    };
    auto wait = std::make_shared<RemoteWait>();
    const int64_t sequence = latest.sequence();
    auto stream =
        hub_->Open(id, sequence, [&]() -> absl::StatusOr<v1::Operation> { return latest; });
    if (!stream.ok()) return std::move(done)(stream.status());
    // Answers once; the stream is closed on the executor (a wake-up may be running it).
    auto answer = [executor = executor_](RemoteWait& w, absl::StatusOr<v1::Operation> result) {
      OperationCallback callback;
      std::shared_ptr<EventStream<v1::OperationEvent>> closing;
      {
        absl::MutexLock lock(&w.mu);
        callback = std::move(w.done);
        w.done = nullptr;
        closing = std::move(w.stream);
      }
      // The last reference goes to the executor: destroying the stream waits for a running
      // wake-up, which may be this very call.
      if (closing != nullptr) executor->Post([closing = std::move(closing)] {});
      if (callback) std::move(callback)(std::move(result));
    };
    // Reads what the stream has; answers on the done change or the stream's end.
    auto drain = [answer](const std::shared_ptr<RemoteWait>& w) {
      std::optional<absl::StatusOr<v1::Operation>> result;
      {
        absl::MutexLock lock(&w->mu);
        if (w->stream == nullptr) return;
        bool finished = false;
        absl::Status status;
        while (auto event = w->stream->Next(&finished, &status)) {
          if (!event->has_operation()) continue;  // a heartbeat
          w->latest = event->operation();
          if (w->latest.done()) break;
        }
        if (w->latest.done()) {
          result = w->latest;
        } else if (finished) {
          result = status.ok() ? absl::StatusOr<v1::Operation>(w->latest)
                               : absl::StatusOr<v1::Operation>(status);
        }
      }
      if (result.has_value()) answer(*w, *std::move(result));
    };
    // The wake-up is set before the lock is taken: it runs under the stream's wake lock and
    // takes wait->mu itself. It cannot fire before the first Next (in drain, below).
    std::unique_ptr<EventStream<v1::OperationEvent>> owned = *std::move(stream);
    std::weak_ptr<RemoteWait> weak = wait;
    owned->SetWakeup([weak, drain] {
      if (auto w = weak.lock()) drain(w);
    });
    {
      absl::MutexLock lock(&wait->mu);
      wait->done = std::move(done);
      wait->latest = std::move(latest);
      wait->stream = std::move(owned);
    }
    // A change committed between the read and the subscription was announced to nobody here.
    hub_->OnChange(Change{id, 0, nullptr});
    drain(wait);
    executor_->PostAfter(timeout, [wait, answer] {
      v1::Operation latest;
      {
        absl::MutexLock lock(&wait->mu);
        latest = wait->latest;
      }
      answer(*wait, std::move(latest));
    });
  }

  // Cancel of an operation another replica tracks (or will, after a takeover): the request is
  // recorded in the ledger and announced; the tracking replica applies it as if the cancel had
  // arrived there, and the answer is the outcome, followed through the change feed. Nothing here
  // calls the provider, so a cancel can never cause a submission.
  void CancelElsewhere(OperationRecord record, absl::string_view reason, OperationCallback done) {
    const std::string id = record.id();
    const absl::Status requested = store_->RequestCancel(id, reason, clock_.Now());
    if (!requested.ok()) {
      env_->ledger.NoteWrite(requested).IgnoreError();
      return std::move(done)(FromStore(requested));
    }
    // Long enough for the owner to tell the provider, or for a dead owner's lease to run out
    // and a survivor to take over and apply it; the caller's own deadline usually ends first.
    const absl::Duration timeout =
        options_.lease + options_.cancel_notify_timeout + absl::Seconds(5);
    WaitElsewhere(id, std::move(record.operation), timeout,
                  [done = std::move(done)](absl::StatusOr<v1::Operation> outcome) mutable {
                    if (!outcome.ok()) return std::move(done)(std::move(outcome));
                    if (!outcome->done()) return std::move(done)(CancelPending());
                    // It ended some other way first, as with a local cancel that comes late.
                    if (outcome->state() != v1::OPERATION_STATE_CANCELLED) {
                      return std::move(done)(OperationAlreadyDone(*outcome));
                    }
                    std::move(done)(std::move(outcome));
                  });
  }

  // This replica's pending cancel requests (made on other replicas), by operation id. Empty on
  // a single node, or when they cannot be read now (the next maintenance reads them again).
  std::map<std::string, std::string> PendingCancels() {
    if (options_.replica_link == nullptr) return {};
    auto pending = store_->PendingCancels(options_.replica_id);
    if (!pending.ok()) {
      log::Warning("could not read pending cancel requests",
                   {{"error", pending.status().ToString()}});
      return {};
    }
    return *std::move(pending);
  }

  // Applies a cancel requested on another replica to an operation tracked here.
  static void ApplyCancel(Tracker& tracker, const std::string& reason) {
    // Answers (already cancelling, done) only matter to the replica that asked, which follows
    // the outcome through the ledger.
    tracker.Cancel(reason, [](const absl::StatusOr<v1::Operation>&) {});
  }

  // Registers a tracker for a live record (unless one exists) and starts it; with
  // `cancel_reason`, the cancel requested meanwhile is applied instead of its next step.
  void Adopt(OperationRecord record, bool recovering,
             std::optional<std::string> cancel_reason = std::nullopt) {
    auto tracker = std::make_shared<Tracker>(std::move(record), env_, env_.get());
    tracker->Start(recovering, std::move(cancel_reason));
  }

  // Adopts the claimed records not tracked here yet, and applies pending cancel requests to
  // them and to those tracked already; returns how many were adopted.
  size_t AdoptAll(std::vector<OperationRecord> records,
                  const std::map<std::string, std::string>& cancels) {
    size_t adopted = 0;
    for (OperationRecord& record : records) {
      const std::string id = record.id();
      auto cancel = cancels.find(id);
      if (auto tracker = env_->live.Find(id)) {
        if (cancel != cancels.end()) ApplyCancel(*tracker, cancel->second);
        continue;
      }
      Adopt(std::move(record), /*recovering=*/true,
            cancel != cancels.end() ? std::optional<std::string>(cancel->second) : std::nullopt);
      ++adopted;
    }
    return adopted;
  }

  // Another replica recorded a cancel request (announced to all): the one tracking the
  // operation applies it. Off the listener's thread, which must not wait on the ledger.
  void OnCancelRequest(std::string id) {
    std::weak_ptr<EngineImpl> weak = weak_from_this();
    executor_->Post([weak, id = std::move(id)] {
      auto self = weak.lock();
      if (self == nullptr) return;
      std::shared_ptr<Tracker> tracker = self->env_->live.Find(id);
      if (tracker == nullptr) return;
      const std::map<std::string, std::string> pending = self->PendingCancels();
      auto cancel = pending.find(id);
      if (cancel != pending.end()) ApplyCancel(*tracker, cancel->second);
    });
  }

  // Another replica passed on a webhook: the tracker polls at once.
  void OnNudge(v1::Provider provider, absl::string_view upstream_id) {
    auto tracker = env_->live.FindByUpstream(provider, upstream_id);
    if (tracker == nullptr) return;
    UpstreamStatus status;
    status.upstream_id = std::string(upstream_id);
    status.phase = UpstreamStatus::Phase::kRunning;
    tracker->OnProviderUpdate(status);
  }

  // Renews this replica's leases and claims live operations nobody holds (unowned, or a dead
  // replica's whose lease ran out), in one ledger round trip per batch. When renewal keeps
  // failing until the lease is nearly over, stops tracking everything: another replica may
  // take over after that, and this one must not act on its stale view.
  void RenewAndClaim(absl::Time now, absl::Duration period) {
    auto claimed = store_->ClaimLive(options_.replica_id, now + options_.lease);
    if (claimed.ok()) {
      renewed_at_ = now;
      const size_t adopted = AdoptAll(*std::move(claimed), PendingCancels());
      if (adopted > 0) {
        log::Info("took over live operations", {{"count", static_cast<long>(adopted)}});
      }
      return;
    }
    env_->ledger.NoteWrite(claimed.status()).IgnoreError();
    log::Warning("ledger lease renewal failed", {{"error", claimed.status().ToString()}});
    if (now + period < renewed_at_ + options_.lease) return;
    std::vector<std::shared_ptr<Tracker>> trackers = env_->live.TakeAll();
    if (trackers.empty()) return;
    log::Warning("leases could not be renewed; no longer tracking this replica's operations",
                 {{"count", static_cast<long>(trackers.size())}});
    const absl::Status status = NotTrackedHere();
    for (auto& tracker : trackers) tracker->Stop(status);
  }

  // Lease renewal, event pruning, and while a ledger write has failed, a probe write so
  // LedgerStatus() recovers without client traffic.
  void ScheduleMaintenance(absl::Duration delay) {
    std::weak_ptr<EngineImpl> weak = weak_from_this();
    executor_->PostAfter(delay, [weak] {
      if (auto self = weak.lock()) self->Maintain();
    });
  }

  // How often leases are renewed: well before they run out.
  absl::Duration MaintenancePeriod() const {
    return std::max(absl::Milliseconds(100), options_.lease / 3);
  }

  // Until the next claim: the renewal period, or sooner, just after the earliest lease another
  // replica holds runs out. A dead replica's operations are so taken over within one lease of
  // its last renewal, not up to a renewal period after that.
  absl::Duration NextClaimDelay(absl::Time now, absl::Duration period) {
    // A lease counts as run out only once the clock is past it.
    constexpr absl::Duration kPastExpiry = absl::Milliseconds(20);
    auto expiry = store_->NextLeaseExpiry(options_.replica_id);
    if (!expiry.ok() || *expiry == absl::InfiniteFuture()) return period;
    return std::clamp(*expiry - now + kPastExpiry, kPastExpiry, period);
  }

  void Maintain() {
    const absl::Time now = clock_.Now();
    const absl::Duration period = MaintenancePeriod();
    RenewAndClaim(now, period);
    if (now - last_prune_ >= std::min(options_.event_retention, absl::Hours(1))) {
      last_prune_ = now;
      auto pruned = store_->PruneEvents(now - options_.event_retention);
      if (!pruned.ok()) {
        log::Warning("ledger event pruning failed", {{"error", pruned.status().ToString()}});
      }
    }
    absl::Duration next = env_->ledger.status().ok() ? NextClaimDelay(now, period) : period;
    if (!env_->ledger.status().ok()) {
      env_->ledger.NoteWrite(store_->ProbeWrite()).IgnoreError();
      if (!env_->ledger.status().ok()) next = std::min(next, options_.ledger_probe_interval);
    }
    ScheduleMaintenance(next);
  }

  const EngineOptions options_;
  const Clock& clock_;
  const std::shared_ptr<OperationStore> store_;
  const std::shared_ptr<Router> router_;
  const std::shared_ptr<Executor> executor_;
  // The watch hub's own thread (heartbeats to every idle stream): never in the way of trackers.
  const std::shared_ptr<Executor> watch_executor_;
  const std::shared_ptr<AssetCustody> custody_;
  const std::shared_ptr<ChangeFeed> feed_;
  const std::shared_ptr<TrackerEnv> env_;
  const std::shared_ptr<WatchHub> hub_;
  const std::shared_ptr<AssetHost> assets_;
  const std::shared_ptr<SnapshotCache> snapshots_;  // Get's recently read operations

  mutable absl::Mutex mu_;
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;
  // Maintenance task only (one at a time), and Start() before it.
  absl::Time last_prune_ = absl::InfinitePast();
  absl::Time renewed_at_ = absl::InfinitePast();
};

// What callers own: shuts the engine down on destruction. Callbacks in flight hold only weak
// references to the implementation.
class EngineHandle final : public OperationsEngine {
 public:
  // Snapshots leave through here, so this is where they get their estimates (`eta`).
  EngineHandle(std::shared_ptr<EngineImpl> impl, std::shared_ptr<EtaEstimator> eta)
      : impl_(std::move(impl)), eta_(std::move(eta)) {}
  ~EngineHandle() override { impl_->Shutdown(); }

  absl::Status Start() override { return impl_->Start(); }
  void Shutdown() override { impl_->Shutdown(); }
  absl::StatusOr<v1::Operation> Generate(const std::string& tenant,
                                         const v1::GenerateRequest& request) override {
    return Estimated(impl_->Generate(tenant, request));
  }
  void ValidateOnly(const std::string& tenant, const v1::GenerateRequest& request,
                    OperationCallback done) override {
    impl_->ValidateOnly(tenant, request, std::move(done));
  }
  absl::StatusOr<v1::Operation> Get(const std::string& tenant, absl::string_view name) override {
    return Estimated(impl_->Get(tenant, name));
  }
  absl::StatusOr<v1::ListOperationsResponse> List(
      const std::string& tenant, const v1::ListOperationsRequest& request) override {
    auto response = impl_->List(tenant, request);
    if (response.ok()) {
      for (auto& operation : *response->mutable_operations()) eta_->Annotate(&operation);
    }
    return response;
  }
  void Cancel(const std::string& tenant, absl::string_view name, absl::string_view reason,
              OperationCallback done) override {
    impl_->Cancel(tenant, name, reason, std::move(done));
  }
  void Wait(const std::string& tenant, absl::string_view name, absl::Duration timeout,
            OperationCallback done) override {
    impl_->Wait(
        tenant, name, timeout,
        [eta = eta_, done = std::move(done)](absl::StatusOr<v1::Operation> operation) mutable {
          if (operation.ok()) eta->Annotate(&*operation);
          std::move(done)(std::move(operation));
        });
  }
  absl::StatusOr<std::unique_ptr<EventStream<v1::OperationEvent>>> Watch(
      const std::string& tenant, absl::string_view name, int64_t after_sequence) override {
    auto stream = impl_->Watch(tenant, name, after_sequence);
    if (!stream.ok()) return stream;
    return WithEstimates(*std::move(stream), *eta_);
  }
  absl::StatusOr<std::unique_ptr<EventStream<WatchEvent>>> WatchShared(
      const std::string& tenant, absl::string_view name, int64_t after_sequence) override {
    auto stream = impl_->WatchShared(tenant, name, after_sequence);
    if (!stream.ok()) return stream;
    return WithEstimates(*std::move(stream), *eta_);
  }
  absl::StatusOr<std::unique_ptr<EventStream<v1::DownloadChunk>>> Download(
      const std::string& tenant, absl::string_view asset, int64_t offset) override {
    return impl_->Download(tenant, asset, offset);
  }
  void OnProviderUpdate(v1::Provider provider, const UpstreamStatus& status) override {
    impl_->OnProviderUpdate(provider, status);
  }
  std::vector<ProviderState> ProviderStates() const override { return impl_->ProviderStates(); }
  EngineStats Stats() const override { return impl_->Stats(); }
  absl::Status LedgerStatus() const override { return impl_->LedgerStatus(); }
  void UpdateQuota(const adapters::ProviderAdapter* adapter,
                   const std::vector<adapters::QuotaFigure>& figures) override {
    impl_->UpdateQuota(adapter, figures);
  }
  absl::StatusOr<BudgetUsage> ReadBudget(const std::string& tenant, v1::TaskKind task,
                                         absl::Time period_start) override {
    return impl_->ReadBudget(tenant, task, period_start);
  }
  absl::StatusOr<std::map<v1::TaskKind, int64_t>> ChargedOperations(v1::Provider provider,
                                                                    const std::string& account,
                                                                    absl::Time since) override {
    return impl_->ChargedOperations(provider, account, since);
  }

 private:
  absl::StatusOr<v1::Operation> Estimated(absl::StatusOr<v1::Operation> operation) {
    if (operation.ok()) eta_->Annotate(&*operation);
    return operation;
  }

  std::shared_ptr<EngineImpl> impl_;
  std::shared_ptr<EtaEstimator> eta_;  // reads the store impl_ owns
};

}  // namespace

absl::StatusOr<v1::Operation> OperationsEngine::CancelAndWait(const std::string& tenant,
                                                              absl::string_view name,
                                                              absl::string_view reason) {
  absl::Notification recorded;
  absl::StatusOr<v1::Operation> result;
  Cancel(tenant, name, reason, [&](absl::StatusOr<v1::Operation> operation) {
    result = std::move(operation);
    recorded.Notify();
  });
  recorded.WaitForNotification();
  return result;
}

absl::StatusOr<std::unique_ptr<OperationsEngine>> CreateOperationsEngine(
    EngineOptions options, std::unique_ptr<OperationStore> store,
    const std::vector<adapters::ProviderAdapter*>& adapters, http::Client* http) {
  if (store == nullptr) return absl::InvalidArgumentError("an operation store is required");
  if (adapters.empty()) return absl::InvalidArgumentError("at least one provider is required");
  for (auto* adapter : adapters) {
    if (adapter == nullptr) return absl::InvalidArgumentError("null provider adapter");
  }
  if (options.watch_buffer < 1 || options.download_chunk_bytes < 1 ||
      options.download_buffer_bytes < 1 || options.worker_threads < 1) {
    return absl::InvalidArgumentError("engine buffer sizes and worker threads must be positive");
  }
  auto eta = std::make_shared<EtaEstimator>(
      *store, options.clock != nullptr ? *options.clock : Clock::Real());
  auto impl = std::make_shared<EngineImpl>(std::move(options), std::move(store), adapters, http);
  return std::unique_ptr<OperationsEngine>(
      std::make_unique<EngineHandle>(std::move(impl), std::move(eta)));
}

}  // namespace musicgw::operations
