// The operations engine. Threads:
//  - callers (gRPC threads) run Generate/Get/List/Cancel/Watch/Download against the ledger;
//  - adapter and HTTP callbacks arrive on the HTTP loop thread and only post to the executor;
//  - the executor's workers run every tracker step: ledger write first, then fan-out.
// Lock order: Tracker::mu -> (EngineImpl::mu_ | slots_mu_ | store) -> WatchState. EngineImpl::mu_
// is never held while taking a Tracker::mu.
#include "services/operations/engine.h"

#include <algorithm>
#include <atomic>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "adapters/capabilities.h"
#include "common/crypto.h"
#include "common/errors.h"
#include "common/log.h"
#include "common/provider_names.h"
#include "common/status_macros.h"
#include "common/time_util.h"
#include "services/operations/download_stream.h"
#include "services/operations/executor.h"
#include "services/operations/ids.h"
#include "services/operations/router.h"
#include "services/operations/watch_stream.h"

namespace musicgw::operations {
namespace {

namespace v1 = musicgw::v1;
using adapters::ProviderAdapter;
using adapters::UpstreamStatus;

bool IsTerminal(v1::OperationState state) {
  return state == v1::OPERATION_STATE_SUCCEEDED || state == v1::OPERATION_STATE_FAILED ||
         state == v1::OPERATION_STATE_CANCELLED;
}

absl::Status NotFound(absl::string_view name) {
  return absl::NotFoundError(absl::StrCat(name, " not found"));
}

absl::Status ShuttingDown() { return absl::UnavailableError("server shutting down"); }

// Calls `done` once.
class Waiter {
 public:
  explicit Waiter(absl::AnyInvocable<void(absl::StatusOr<v1::Operation>) &&> done)
      : done_(std::move(done)) {}
  void Fire(absl::StatusOr<v1::Operation> result) {
    absl::AnyInvocable<void(absl::StatusOr<v1::Operation>) &&> done;
    {
      absl::MutexLock lock(&mu_);
      done = std::move(done_);
      done_ = nullptr;
    }
    if (done) std::move(done)(std::move(result));
  }

 private:
  absl::Mutex mu_;
  absl::AnyInvocable<void(absl::StatusOr<v1::Operation>) &&> done_ ABSL_GUARDED_BY(mu_);
};

// The one tracker of a live operation.
struct Tracker {
  Tracker(std::string id_in, std::string tenant_in)
      : id(std::move(id_in)), tenant(std::move(tenant_in)) {}
  const std::string id;
  const std::string tenant;

  absl::Mutex mu;
  v1::Operation op ABSL_GUARDED_BY(mu);
  std::string request_id ABSL_GUARDED_BY(mu);
  std::string idempotency_key ABSL_GUARDED_BY(mu);
  bool charged ABSL_GUARDED_BY(mu) = false;
  int slot ABSL_GUARDED_BY(mu) = -1;
  bool submit_in_flight ABSL_GUARDED_BY(mu) = false;
  bool poll_in_flight ABSL_GUARDED_BY(mu) = false;
  bool nudge_pending ABSL_GUARDED_BY(mu) = false;
  // Bumped to invalidate scheduled polls.
  uint64_t generation ABSL_GUARDED_BY(mu) = 0;
  int consecutive_errors ABSL_GUARDED_BY(mu) = 0;
  // No more provider calls or changes: done, cancelling, or shutting down.
  bool stopped ABSL_GUARDED_BY(mu) = false;
  bool cancelling ABSL_GUARDED_BY(mu) = false;
  absl::Time last_poll_start ABSL_GUARDED_BY(mu) = absl::InfinitePast();
  std::vector<std::weak_ptr<WatchState>> watchers ABSL_GUARDED_BY(mu);
  std::vector<std::shared_ptr<Waiter>> waiters ABSL_GUARDED_BY(mu);
};

// What to do once a tracker's lock is released.
struct Effects {
  std::vector<std::shared_ptr<WatchState>> wake;
  std::vector<std::shared_ptr<Waiter>> waiters;
  std::optional<v1::Operation> done_op;
  bool retire = false;
};

class EngineImpl final : public OperationsEngine,
                         public DownloadHost,
                         public std::enable_shared_from_this<EngineImpl> {
 public:
  EngineImpl(EngineOptions options, std::unique_ptr<OperationStore> store,
             const std::vector<ProviderAdapter*>& adapters, http::Client* http)
      : options_(std::move(options)),
        store_(std::move(store)),
        http_(http),
        clock_(options_.clock != nullptr ? *options_.clock : Clock::Real()),
        router_(std::make_unique<Router>(
            adapters,
            RouterOptions{options_.failure_threshold, options_.failure_cooldown,
                          options_.default_quota_backoff},
            clock_)),
        executor_(std::make_unique<Executor>(options_.worker_threads, clock_)),
        open_watchers_(std::make_shared<std::atomic<int64_t>>(0)),
        open_downloads_(std::make_shared<std::atomic<int64_t>>(0)) {}

  ~EngineImpl() override { executor_->Stop(); }

  // ---- OperationsEngine ----

  absl::Status Start() override {
    {
      absl::MutexLock lock(&mu_);
      if (shutdown_) return ShuttingDown();
      if (started_) return absl::OkStatus();
      started_ = true;
    }
    MUSICGW_ASSIGN_OR_RETURN(std::vector<OperationRecord> live,
                             store_->ClaimLive(options_.replica_id, clock_.Now() + options_.lease));
    for (OperationRecord& record : live) Adopt(std::move(record), /*recovering=*/true);
    if (!live.empty()) {
      log::Info("resumed live operations", {{"count", static_cast<long>(live.size())}});
    }
    ScheduleMaintenance(absl::ZeroDuration());
    return absl::OkStatus();
  }

  void Shutdown() override {
    std::vector<std::shared_ptr<Tracker>> trackers;
    std::vector<std::weak_ptr<DownloadPipe>> downloads;
    std::vector<std::weak_ptr<WatchState>> watches;
    {
      absl::MutexLock lock(&mu_);
      if (shutdown_) return;
      shutdown_ = true;
      for (auto& [id, tracker] : live_) trackers.push_back(tracker);
      downloads.swap(downloads_);
      watches.swap(watches_);
    }
    const absl::Status status = ShuttingDown();
    std::vector<std::shared_ptr<Waiter>> waiters;
    for (auto& t : trackers) {
      absl::MutexLock lock(&t->mu);
      // The operation stays live in the ledger: the next Start() resumes it.
      t->stopped = true;
      ++t->generation;
      for (auto& w : t->waiters) waiters.push_back(std::move(w));
      t->waiters.clear();
      t->watchers.clear();
    }
    for (auto& weak : watches) {
      if (auto state = weak.lock()) {
        if (state->Finish(status)) state->RunWake();
      }
    }
    for (auto& waiter : waiters) waiter->Fire(status);
    for (auto& weak : downloads) {
      if (auto pipe = weak.lock()) pipe->Fail(status);
    }
    executor_->Stop();
  }

  absl::StatusOr<v1::Operation> Generate(const std::string& tenant,
                                         const v1::GenerateRequest& request) override {
    if (IsShutdown()) return ShuttingDown();
    const std::string hash = RequestFingerprint(request);
    if (!request.validate_only()) {
      auto existing = store_->FindByRequestId(tenant, request.request_id());
      if (existing.ok()) return SameOrReused(*existing, hash);
      if (!absl::IsNotFound(existing.status())) return existing.status();
    }
    MUSICGW_ASSIGN_OR_RETURN(const int slot, router_->Route(request));
    ProviderAdapter* adapter = router_->adapter(slot);
    const absl::Time now = clock_.Now();
    v1::Operation op;
    op.set_task(adapters::TaskKindOf(request));
    op.set_provider(adapter->provider());
    op.set_provider_account(adapter->account());
    *op.mutable_request() = request;
    op.mutable_request()->clear_validate_only();
    op.set_submission(v1::SUBMISSION_STATE_NOT_SUBMITTED);
    if (request.validate_only()) return op;  // not stored: no name

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
    MUSICGW_ASSIGN_OR_RETURN(CreateResult created, store_->Create(record, budgets));
    if (!created.created) return SameOrReused(created.record, hash);
    if (options_.observer != nullptr) {
      options_.observer->OnStateChange(op.provider(), op.task(), v1::OPERATION_STATE_UNSPECIFIED,
                                       v1::OPERATION_STATE_QUEUED);
    }
    Adopt(std::move(created.record), /*recovering=*/false);
    return op;
  }

  absl::StatusOr<v1::Operation> Get(const std::string& tenant, absl::string_view name) override {
    MUSICGW_ASSIGN_OR_RETURN(OperationRecord record, Lookup(tenant, name));
    return std::move(record.operation);
  }

  absl::StatusOr<v1::ListOperationsResponse> List(
      const std::string& tenant, const v1::ListOperationsRequest& request) override {
    if (request.page_size() < 0) return InvalidFieldError("page_size", "must not be negative");
    const int page_size = request.page_size() == 0 ? 50 : std::min(request.page_size(), 1000);
    ListQuery query;
    query.tenant = tenant;
    std::vector<int> states;
    for (int state : request.states()) states.push_back(state);
    std::sort(states.begin(), states.end());
    states.erase(std::unique(states.begin(), states.end()), states.end());
    for (int state : states) query.states.push_back(static_cast<v1::OperationState>(state));
    query.provider = request.provider();
    query.task = request.task();
    query.limit = page_size + 1;
    // Page tokens are bound to the tenant and the filters, so a token cannot change them.
    const std::string filter_key =
        Sha256Hex(absl::StrCat(tenant, "|", absl::StrJoin(states, ","), "|",
                               static_cast<int>(query.provider), "|", static_cast<int>(query.task)))
            .substr(0, 16);
    if (!request.page_token().empty()) {
      std::string decoded;
      std::vector<std::string> parts;
      if (absl::WebSafeBase64Unescape(request.page_token(), &decoded)) {
        parts = absl::StrSplit(decoded, ':');
      }
      if (parts.size() != 3 || parts[0] != "v1" || !IsOperationId(parts[2])) {
        return InvalidFieldError("page_token", "is not a token this server issued");
      }
      if (parts[1] != filter_key) {
        return InvalidFieldError("page_token", "was issued for different filters");
      }
      query.before_id = parts[2];
    }
    MUSICGW_ASSIGN_OR_RETURN(std::vector<OperationRecord> records, store_->List(query));
    v1::ListOperationsResponse response;
    const bool more = static_cast<int>(records.size()) > page_size;
    if (more) {
      records.resize(page_size);
      response.set_next_page_token(
          absl::WebSafeBase64Escape(absl::StrCat("v1:", filter_key, ":", records.back().id())));
    }
    for (auto& record : records) *response.add_operations() = std::move(record.operation);
    return response;
  }

  void Cancel(const std::string& tenant, absl::string_view name, absl::string_view reason,
              absl::AnyInvocable<void(absl::StatusOr<v1::Operation>) &&> done) override {
    auto record = Lookup(tenant, name);
    if (!record.ok()) return std::move(done)(record.status());
    if (record->operation.done()) return std::move(done)(AlreadyDone(record->operation));
    std::shared_ptr<Tracker> t = FindLive(record->id());
    if (t == nullptr) {
      return std::move(done)(
          absl::UnavailableError("the operation is not tracked by this server; retry"));
    }
    ProviderAdapter* adapter = nullptr;
    adapters::PollRequest poll;
    {
      absl::MutexLock lock(&t->mu);
      if (t->op.done()) return std::move(done)(AlreadyDone(t->op));
      if (t->cancelling) {
        return std::move(done)(absl::AbortedError("a cancellation is already in progress"));
      }
      if (IsShutdown()) return std::move(done)(ShuttingDown());
      t->cancelling = true;
      t->stopped = true;  // in-flight provider answers are ignored from here on
      ++t->generation;
      if (!t->op.upstream_id().empty() && t->slot >= 0) {
        adapter = router_->adapter(t->slot);
        poll.operation_id = t->id;
        poll.upstream_id = t->op.upstream_id();
        poll.task = t->op.task();
        poll.deadline = clock_.Now() + options_.cancel_notify_timeout;
        poll.wait = false;
      }
    }
    if (adapter == nullptr) {
      return std::move(done)(RecordCancel(t, reason, /*provider_notified=*/false));
    }
    // Whichever comes first, the provider's answer or the timeout, records the cancellation;
    // if the executor stops before either, the caller still hears back.
    struct Pending {
      std::atomic<bool> finished{false};
      absl::AnyInvocable<void(absl::StatusOr<v1::Operation>) &&> done;
      ~Pending() {
        if (!finished.exchange(true)) std::move(done)(ShuttingDown());
      }
    };
    auto pending = std::make_shared<Pending>();
    pending->done = std::move(done);
    std::weak_ptr<EngineImpl> weak = weak_from_this();
    auto finish = [weak, t, pending, reason = std::string(reason)](bool notified) {
      if (pending->finished.exchange(true)) return;
      auto self = weak.lock();
      std::move(pending->done)(self == nullptr ? absl::StatusOr<v1::Operation>(ShuttingDown())
                                               : self->RecordCancel(t, reason, notified));
    };
    adapter->Cancel(poll, [weak, finish](absl::StatusOr<bool> told) {
      const bool notified = told.ok() && *told;
      if (auto self = weak.lock()) self->executor_->Post([finish, notified] { finish(notified); });
    });
    executor_->PostAfter(options_.cancel_notify_timeout, [finish] { finish(false); });
  }

  absl::StatusOr<v1::Operation> RecordCancel(const std::shared_ptr<Tracker>& t,
                                             absl::string_view reason, bool provider_notified) {
    Effects effects;
    absl::StatusOr<v1::Operation> result;
    {
      absl::MutexLock lock(&t->mu);
      t->cancelling = false;
      v1::Operation next = t->op;
      next.set_state(v1::OPERATION_STATE_CANCELLED);
      absl::Status error = absl::CancelledError(
          reason.empty() ? "cancelled by the client" : absl::StrCat("cancelled: ", reason));
      error = WithErrorInfo(std::move(error), "CANCELLED_BY_CLIENT", kGatewayDomain);
      *next.mutable_error() = ToRpcStatus(error);
      auto* cancellation = next.mutable_cancellation();
      cancellation->set_reason(std::string(reason));
      cancellation->set_provider_notified(provider_notified);
      *cancellation->mutable_cancel_time() = ToProtoTimestamp(clock_.Now());
      absl::Status status = Commit(*t, std::move(next), &effects);
      if (status.ok()) {
        result = t->op;
      } else {
        // The ledger refused: keep tracking as before.
        t->stopped = false;
        ScheduleKickLocked(t, absl::Seconds(1));
        result = absl::UnavailableError(
            absl::StrCat("could not record the cancellation: ", status.message()));
      }
    }
    Apply(t, std::move(effects));
    return result;
  }

  void Wait(const std::string& tenant, absl::string_view name, absl::Duration timeout,
            absl::AnyInvocable<void(absl::StatusOr<v1::Operation>) &&> done) override {
    auto record = Lookup(tenant, name);
    if (!record.ok()) return std::move(done)(record.status());
    if (record->operation.done()) return std::move(done)(std::move(record->operation));
    std::shared_ptr<Tracker> t = FindLive(record->id());
    if (t == nullptr || IsShutdown()) return std::move(done)(std::move(record->operation));
    auto waiter = std::make_shared<Waiter>(std::move(done));
    std::optional<v1::Operation> now_op;
    {
      absl::MutexLock lock(&t->mu);
      // A cancellation in progress answers its waiters when it commits.
      if (!t->op.done() && (!t->stopped || t->cancelling)) {
        t->waiters.push_back(waiter);
      } else {
        now_op = t->op;
      }
    }
    if (now_op.has_value()) return waiter->Fire(*std::move(now_op));
    std::weak_ptr<EngineImpl> weak = weak_from_this();
    std::weak_ptr<Tracker> weak_tracker = t;
    executor_->PostAfter(timeout, [weak, weak_tracker, waiter] {
      auto self = weak.lock();
      auto tracker = weak_tracker.lock();
      if (self == nullptr || tracker == nullptr) return waiter->Fire(ShuttingDown());
      v1::Operation op;
      {
        absl::MutexLock lock(&tracker->mu);
        auto& waiters = tracker->waiters;
        waiters.erase(std::remove(waiters.begin(), waiters.end(), waiter), waiters.end());
        op = tracker->op;
      }
      waiter->Fire(std::move(op));
    });
  }

  absl::StatusOr<std::unique_ptr<EventStream<v1::OperationEvent>>> Watch(
      const std::string& tenant, absl::string_view name, int64_t after_sequence) override {
    if (after_sequence < 0) return InvalidFieldError("after_sequence", "must not be negative");
    MUSICGW_ASSIGN_OR_RETURN(OperationRecord record, Lookup(tenant, name));
    if (IsShutdown()) return ShuttingDown();
    auto state = std::make_shared<WatchState>(options_.watch_buffer);
    std::shared_ptr<Tracker> t = record.operation.done() ? nullptr : FindLive(record.id());
    if (t != nullptr) {
      absl::MutexLock lock(&t->mu);
      MUSICGW_RETURN_IF_ERROR(Fill(*state, t->op, after_sequence));
      if (!t->op.done() && !t->stopped) t->watchers.push_back(state);
    } else {
      // Done (or tracked by another replica): the ledger has the latest state.
      MUSICGW_RETURN_IF_ERROR(Fill(*state, record.operation, after_sequence));
    }
    {
      absl::MutexLock lock(&mu_);
      // Shutdown may have run meanwhile; it ends only the watches it found.
      if (shutdown_) return ShuttingDown();
      if (watches_.size() >= 2 * watches_gc_at_) {
        watches_.erase(std::remove_if(watches_.begin(), watches_.end(),
                                      [](const std::weak_ptr<WatchState>& w) {
                                        auto s = w.lock();
                                        return s == nullptr || s->over();
                                      }),
                       watches_.end());
        watches_gc_at_ = std::max<size_t>(64, watches_.size());
      }
      watches_.push_back(state);
    }
    ScheduleHeartbeat(state, options_.watch_heartbeat);
    open_watchers_->fetch_add(1);
    auto counter = open_watchers_;
    return std::unique_ptr<EventStream<v1::OperationEvent>>(
        std::make_unique<WatchStream>(state, [counter] { counter->fetch_sub(1); }));
  }

  absl::StatusOr<std::unique_ptr<EventStream<v1::DownloadChunk>>> Download(
      const std::string& tenant, absl::string_view asset, int64_t offset) override {
    MUSICGW_ASSIGN_OR_RETURN(AssetRef ref, ParseAssetName(asset));
    if (offset < 0) return InvalidFieldError("offset", "must not be negative");
    auto record = store_->Get(ref.operation_id);
    if (!record.ok() || record->tenant != tenant) {
      if (record.ok() || absl::IsNotFound(record.status())) return NotFound(asset);
      return record.status();
    }
    const v1::Operation& op = record->operation;
    if (op.state() != v1::OPERATION_STATE_SUCCEEDED) {
      return WithErrorInfo(absl::FailedPreconditionError(
                               absl::StrCat("operation is ", v1::OperationState_Name(op.state()),
                                            "; only SUCCEEDED operations "
                                            "have assets to download")),
                           "OPERATION_NOT_SUCCEEDED", kGatewayDomain);
    }
    if (ref.index >= op.outputs_size()) return NotFound(asset);
    const v1::Asset& a = op.outputs(ref.index);
    if (a.size_bytes() > 0 && offset > a.size_bytes()) {
      return absl::OutOfRangeError(absl::StrCat(
          "offset ", offset, " is beyond the end of the asset (", a.size_bytes(), " bytes)"));
    }
    if (http_ == nullptr) return absl::FailedPreconditionError("downloads are not configured");
    if (IsShutdown()) return ShuttingDown();
    DownloadSpec spec;
    spec.operation_id = ref.operation_id;
    spec.index = ref.index;
    spec.asset = a;
    spec.provider = op.provider();
    if (ref.index < static_cast<int>(record->upstream_outputs.size())) {
      spec.upstream = record->upstream_outputs[ref.index];
    }
    spec.offset = offset;
    spec.chunk_bytes = options_.download_chunk_bytes;
    spec.buffer_bytes = options_.download_buffer_bytes;
    spec.transfer_timeout = options_.download_timeout;
    auto pipe = std::make_shared<DownloadPipe>(
        std::move(spec), http_,
        std::weak_ptr<DownloadHost>(std::static_pointer_cast<DownloadHost>(shared_from_this())));
    {
      absl::MutexLock lock(&mu_);
      downloads_.erase(
          std::remove_if(downloads_.begin(), downloads_.end(),
                         [](const std::weak_ptr<DownloadPipe>& p) { return p.expired(); }),
          downloads_.end());
      downloads_.push_back(pipe);
    }
    open_downloads_->fetch_add(1);
    pipe->Start();
    auto counter = open_downloads_;
    return std::unique_ptr<EventStream<v1::DownloadChunk>>(
        std::make_unique<DownloadStream>(pipe, [counter] { counter->fetch_sub(1); }));
  }

  void OnProviderUpdate(v1::Provider provider, const UpstreamStatus& status) override {
    std::shared_ptr<Tracker> t;
    {
      absl::MutexLock lock(&mu_);
      auto it = by_upstream_.find(UpstreamKey(provider, status.upstream_id));
      if (it == by_upstream_.end()) return;
      auto live = live_.find(it->second);
      if (live == live_.end()) return;
      t = live->second;
    }
    std::weak_ptr<EngineImpl> weak = weak_from_this();
    executor_->Post([weak, t, status] {
      auto self = weak.lock();
      if (self == nullptr) return;
      Effects effects;
      {
        absl::MutexLock lock(&t->mu);
        if (t->stopped || t->op.done() || t->op.submission() != v1::SUBMISSION_STATE_ACCEPTED ||
            t->op.upstream_id() != status.upstream_id) {
          return;  // a duplicate or stale callback
        }
        if (status.phase != UpstreamStatus::Phase::kRunning) {
          self->ApplyTerminalLocked(t, status, &effects);
        } else if (t->poll_in_flight) {
          t->nudge_pending = true;
        } else {
          ++t->generation;
          self->PollLocked(t);
        }
      }
      self->Apply(t, std::move(effects));
    });
  }

  void UpdateQuota(const ProviderAdapter* adapter,
                   const std::vector<adapters::QuotaFigure>& figures) override {
    router_->UpdateQuota(adapter, figures);
  }

  std::vector<ProviderState> ProviderStates() const override { return router_->States(); }

  EngineStats Stats() const override {
    EngineStats stats;
    {
      absl::MutexLock lock(&mu_);
      stats.live_operations = static_cast<int64_t>(live_.size());
    }
    {
      absl::MutexLock lock(&counts_mu_);
      for (const auto& [key, count] : live_counts_) {
        if (count <= 0) continue;
        stats.live_by_state.push_back({static_cast<v1::Provider>(key.first),
                                       static_cast<v1::OperationState>(key.second), count});
      }
    }
    stats.open_watchers = open_watchers_->load();
    stats.open_downloads = open_downloads_->load();
    return stats;
  }

  absl::StatusOr<BudgetUsage> ReadBudget(const std::string& tenant, v1::TaskKind task,
                                         absl::Time period_start) override {
    return store_->ReadBudget(tenant, task, period_start);
  }

  absl::StatusOr<std::map<v1::TaskKind, int64_t>> ChargedOperations(v1::Provider provider,
                                                                    const std::string& account,
                                                                    absl::Time since) override {
    return store_->CountCharged(provider, account, since);
  }

  // ---- DownloadHost ----

  void PostTask(absl::AnyInvocable<void() &&> task, absl::Duration delay) override {
    executor_->PostAfter(delay, std::move(task));
  }

  void RefreshUrl(const std::string& operation_id, int index,
                  absl::AnyInvocable<void(absl::StatusOr<UpstreamOutput>) &&> done) override {
    std::weak_ptr<EngineImpl> weak = weak_from_this();
    auto shared_done =
        std::make_shared<absl::AnyInvocable<void(absl::StatusOr<UpstreamOutput>) &&>>(
            std::move(done));
    executor_->Post([weak, operation_id, index, shared_done] {
      auto self = weak.lock();
      if (self == nullptr) return std::move(*shared_done)(ShuttingDown());
      auto record = self->store_->Get(operation_id);
      if (!record.ok()) return std::move(*shared_done)(record.status());
      const int slot = self->router_->SlotFor(record->operation);
      if (slot < 0) {
        return std::move(*shared_done)(
            absl::FailedPreconditionError("the operation's provider is no longer configured"));
      }
      adapters::PollRequest poll;
      poll.operation_id = operation_id;
      poll.upstream_id = record->operation.upstream_id();
      poll.task = record->operation.task();
      poll.deadline = self->clock_.Now() + absl::Seconds(30);
      poll.wait = false;
      self->router_->adapter(slot)->Poll(
          poll, [weak, operation_id, index, shared_done](absl::StatusOr<UpstreamStatus> status) {
            auto self = weak.lock();
            if (self == nullptr) return std::move(*shared_done)(ShuttingDown());
            self->executor_->Post(
                [self, operation_id, index, shared_done, status = std::move(status)]() mutable {
                  if (!status.ok()) return std::move(*shared_done)(status.status());
                  if (status->phase != UpstreamStatus::Phase::kSucceeded ||
                      index >= static_cast<int>(status->outputs.size())) {
                    return std::move(*shared_done)(
                        absl::FailedPreconditionError("the provider no longer reports this asset"));
                  }
                  std::vector<UpstreamOutput> outputs;
                  for (const auto& output : status->outputs) {
                    outputs.push_back(UpstreamOutput{output.url, output.url_expire_time});
                  }
                  absl::Status stored = self->store_->SetUpstreamOutputs(operation_id, outputs);
                  if (!stored.ok()) {
                    log::Warning("could not store refreshed asset URLs",
                                 {{"operation", operation_id}, {"error", stored.ToString()}});
                  }
                  std::move (*shared_done)(outputs[index]);
                });
          });
    });
  }

  void RecordAssetFacts(const std::string& operation_id, int index, int64_t size,
                        const std::string& sha256) override {
    std::weak_ptr<EngineImpl> weak = weak_from_this();
    executor_->Post([weak, operation_id, index, size, sha256] {
      auto self = weak.lock();
      if (self == nullptr) return;
      absl::Status status = self->store_->SetAssetFacts(operation_id, index, size, sha256);
      if (!status.ok()) {
        log::Warning("could not store asset digest",
                     {{"operation", operation_id}, {"error", status.ToString()}});
      }
    });
  }

  void OnDownloadBytes(v1::Provider provider, int64_t bytes) override {
    if (options_.observer != nullptr) options_.observer->OnDownloadBytes(provider, bytes);
  }

 private:
  static std::string UpstreamKey(v1::Provider provider, absl::string_view upstream_id) {
    return absl::StrCat(static_cast<int>(provider), "/", upstream_id);
  }

  bool IsShutdown() const {
    absl::MutexLock lock(&mu_);
    return shutdown_;
  }

  absl::StatusOr<OperationRecord> Lookup(const std::string& tenant, absl::string_view name) {
    MUSICGW_ASSIGN_OR_RETURN(std::string id, ParseOperationName(name));
    auto record = store_->Get(id);
    // Another tenant's operation is indistinguishable from a missing one.
    if (record.ok() && record->tenant != tenant) return NotFound(name);
    if (!record.ok() && absl::IsNotFound(record.status())) return NotFound(name);
    return record;
  }

  static absl::Status AlreadyDone(const v1::Operation& op) {
    return WithErrorInfo(
        absl::FailedPreconditionError(
            absl::StrCat("operation is already done (", v1::OperationState_Name(op.state()), ")")),
        "OPERATION_DONE", kGatewayDomain);
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

  std::shared_ptr<Tracker> FindLive(const std::string& id) {
    absl::MutexLock lock(&mu_);
    auto it = live_.find(id);
    return it == live_.end() ? nullptr : it->second;
  }

  // ---- live counts ----

  void CountLive(v1::Provider provider, v1::OperationState state, int delta) {
    if (state == v1::OPERATION_STATE_UNSPECIFIED) return;
    absl::MutexLock lock(&counts_mu_);
    live_counts_[{static_cast<int>(provider), static_cast<int>(state)}] += delta;
  }

  // ---- trackers ----

  // Registers a tracker for a live record (unless one exists) and starts it.
  void Adopt(OperationRecord record, bool recovering) {
    auto t = std::make_shared<Tracker>(record.id(), record.tenant);
    {
      absl::MutexLock lock(&t->mu);
      t->op = std::move(record.operation);
      t->request_id = record.request_id;
      t->idempotency_key = ProviderIdempotencyKey(record.tenant, record.request_id);
      t->charged = record.charged;
      t->slot = router_->SlotFor(t->op);
    }
    std::string upstream_key;
    v1::Provider initial_provider;
    v1::OperationState initial_state;
    {
      absl::MutexLock lock(&t->mu);
      initial_provider = t->op.provider();
      initial_state = t->op.done() ? v1::OPERATION_STATE_UNSPECIFIED : t->op.state();
      if (!t->op.upstream_id().empty()) {
        upstream_key = UpstreamKey(t->op.provider(), t->op.upstream_id());
      }
    }
    {
      absl::MutexLock lock(&mu_);
      if (shutdown_ || live_.count(t->id) > 0) return;
      live_.emplace(t->id, t);
      CountLive(initial_provider, initial_state, +1);
      if (!upstream_key.empty()) by_upstream_[upstream_key] = t->id;
    }
    std::weak_ptr<EngineImpl> weak = weak_from_this();
    executor_->Post([weak, t, recovering] {
      if (auto self = weak.lock()) self->Kick(t, recovering);
    });
    absl::Time deadline;
    {
      absl::MutexLock lock(&t->mu);
      deadline = FromProtoTimestamp(t->op.deadline());
    }
    // Weak: a done operation's tracker must not live on until its deadline.
    std::weak_ptr<Tracker> weak_tracker = t;
    executor_->PostAfter(deadline - clock_.Now(), [weak, weak_tracker] {
      auto self = weak.lock();
      auto tracker = weak_tracker.lock();
      if (self != nullptr && tracker != nullptr) self->OnDeadline(tracker);
    });
  }

  // Decides the next step from the ledger state (start, restart, or after a ledger error).
  void Kick(const std::shared_ptr<Tracker>& t, bool recovering) {
    Effects effects;
    {
      absl::MutexLock lock(&t->mu);
      if (t->stopped || t->op.done() || t->submit_in_flight || t->poll_in_flight) return;
      if (clock_.Now() >= FromProtoTimestamp(t->op.deadline())) {
        FailDeadlineLocked(t, &effects);
      } else if (t->slot < 0) {
        FailLocked(t,
                   WithErrorInfo(absl::FailedPreconditionError(absl::StrCat(
                                     ProviderEnumName(t->op.provider()), " account ",
                                     t->op.provider_account(), " is no longer configured")),
                                 "PROVIDER_NOT_CONFIGURED", kGatewayDomain),
                   std::nullopt, &effects);
      } else {
        switch (t->op.submission()) {
          case v1::SUBMISSION_STATE_UNSPECIFIED:
          case v1::SUBMISSION_STATE_NOT_SUBMITTED:
            SubmitLocked(t, /*resubmit=*/false, &effects);
            break;
          case v1::SUBMISSION_STATE_SUBMITTING:
            if (router_->adapter(t->slot)->idempotent_submit()) {
              // The provider dedupes on the idempotency key: re-sending cannot start a second job.
              SubmitLocked(t, /*resubmit=*/true, &effects);
            } else {
              FailOutcomeUnknownLocked(
                  t, recovering ? "the gateway restarted" : "the ledger failed", &effects);
            }
            break;
          case v1::SUBMISSION_STATE_ACCEPTED:
            PollLocked(t);
            break;
          case v1::SUBMISSION_STATE_POSSIBLY_SUBMITTED:
            FailOutcomeUnknownLocked(t, "the gateway restarted", &effects);
            break;
          case v1::SUBMISSION_STATE_REJECTED:
          default:
            FailLocked(t, absl::UnknownError("the provider rejected the submission"), std::nullopt,
                       &effects);
            break;
        }
      }
    }
    Apply(t, std::move(effects));
  }

  void ScheduleKickLocked(const std::shared_ptr<Tracker>& t, absl::Duration delay)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(t->mu) {
    std::weak_ptr<EngineImpl> weak = weak_from_this();
    executor_->PostAfter(delay, [weak, t] {
      if (auto self = weak.lock()) self->Kick(t, /*recovering=*/false);
    });
  }

  // Writes `next` (sequence + 1) to the ledger, then announces it. On error nothing changes.
  absl::Status Commit(Tracker& t, v1::Operation next, Effects* effects,
                      std::optional<std::vector<UpstreamOutput>> outputs = std::nullopt)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(t.mu) {
    const absl::Time now = clock_.Now();
    next.set_sequence(t.op.sequence() + 1);
    *next.mutable_update_time() = ToProtoTimestamp(now);
    if (IsTerminal(next.state())) {
      next.set_done(true);
      *next.mutable_done_time() = ToProtoTimestamp(now);
    }
    OperationUpdate update;
    update.operation = next;
    update.expected_sequence = t.op.sequence();
    update.charged = t.charged;
    update.upstream_outputs = std::move(outputs);
    absl::Status status = store_->Update(update);
    if (!status.ok()) {
      log::Error("ledger update failed",
                 {{"operation", t.id}, {"error", std::string(status.message())}});
      return status;
    }
    const v1::OperationState from = t.op.state();
    if (t.op.provider() != next.provider() || from != next.state()) {
      if (!t.op.done()) CountLive(t.op.provider(), from, -1);
      if (!next.done()) CountLive(next.provider(), next.state(), +1);
    }
    t.op = std::move(next);
    if (EngineObserver* observer = options_.observer) {
      if (from != t.op.state()) {
        observer->OnStateChange(t.op.provider(), t.op.task(), from, t.op.state());
      }
      if (t.op.done()) {
        observer->OnCompleted(t.op.provider(), t.op.task(), t.op.state(),
                              static_cast<absl::StatusCode>(t.op.error().code()));
        if (t.op.state() == v1::OPERATION_STATE_SUCCEEDED) {
          observer->OnSucceededLatency(t.op.provider(), t.op.task(),
                                       now - FromProtoTimestamp(t.op.create_time()));
        }
      }
    }
    auto snapshot = std::make_shared<const v1::Operation>(t.op);
    auto& watchers = t.watchers;
    for (auto it = watchers.begin(); it != watchers.end();) {
      auto state = it->lock();
      if (state == nullptr || state->over()) {
        it = watchers.erase(it);
        continue;
      }
      if (state->Push(snapshot, v1::OperationEvent::KIND_CHANGE)) {
        effects->wake.push_back(std::move(state));
      }
      ++it;
    }
    if (t.op.done()) {
      t.stopped = true;
      ++t.generation;
      watchers.clear();
      for (auto& waiter : t.waiters) effects->waiters.push_back(std::move(waiter));
      t.waiters.clear();
      effects->done_op = t.op;
      effects->retire = true;
    }
    return absl::OkStatus();
  }

  void Apply(const std::shared_ptr<Tracker>& t, Effects effects) {
    if (effects.retire) {
      absl::MutexLock lock(&mu_);
      auto it = live_.find(t->id);
      if (it != live_.end() && it->second == t) live_.erase(it);
      if (effects.done_op.has_value() && !effects.done_op->upstream_id().empty()) {
        by_upstream_.erase(
            UpstreamKey(effects.done_op->provider(), effects.done_op->upstream_id()));
      }
    }
    for (auto& state : effects.wake) state->RunWake();
    if (effects.done_op.has_value()) {
      for (auto& waiter : effects.waiters) waiter->Fire(*effects.done_op);
    }
  }

  // Fails the operation with `error`; `submission` overrides the submission state.
  void FailLocked(const std::shared_ptr<Tracker>& t, const absl::Status& error,
                  std::optional<v1::SubmissionState> submission, Effects* effects,
                  absl::string_view attempt_outcome = "") ABSL_EXCLUSIVE_LOCKS_REQUIRED(t->mu) {
    v1::Operation next = t->op;
    next.set_state(v1::OPERATION_STATE_FAILED);
    *next.mutable_error() = ToRpcStatus(error);
    if (submission.has_value()) next.set_submission(*submission);
    if (!attempt_outcome.empty() && next.attempts_size() > 0) {
      next.mutable_attempts(next.attempts_size() - 1)->set_outcome(std::string(attempt_outcome));
    }
    if (!Commit(*t, std::move(next), effects).ok()) ScheduleKickLocked(t, absl::Seconds(1));
  }

  void FailDeadlineLocked(const std::shared_ptr<Tracker>& t, Effects* effects)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(t->mu) {
    absl::Status error = absl::DeadlineExceededError(
        "the provider did not finish the operation before its deadline");
    error = WithErrorInfo(std::move(error), "OPERATION_DEADLINE_EXCEEDED", kGatewayDomain,
                          {{"provider", ProviderEnumName(t->op.provider())}});
    FailLocked(t, error, std::nullopt, effects);
  }

  void FailOutcomeUnknownLocked(const std::shared_ptr<Tracker>& t, absl::string_view why,
                                Effects* effects) ABSL_EXCLUSIVE_LOCKS_REQUIRED(t->mu) {
    const std::string provider = ProviderEnumName(t->op.provider());
    absl::Status error = absl::FailedPreconditionError(absl::StrCat(
        why, " while a submission to ", provider,
        " was in flight; that provider has no idempotency keys, so it may have started (and "
        "charged for) the work. The gateway does not re-submit; check with the provider before "
        "retrying with a new request_id."));
    error = WithErrorInfo(std::move(error), "SUBMISSION_OUTCOME_UNKNOWN", kGatewayDomain,
                          {{"provider", provider}});
    FailLocked(t, error, v1::SUBMISSION_STATE_POSSIBLY_SUBMITTED, effects, "outcome unknown");
  }

  void OnDeadline(const std::shared_ptr<Tracker>& t) {
    Effects effects;
    {
      absl::MutexLock lock(&t->mu);
      if (t->stopped || t->op.done()) return;
      const absl::Time deadline = FromProtoTimestamp(t->op.deadline());
      if (clock_.Now() < deadline) {  // timers may fire a hair early
        std::weak_ptr<EngineImpl> weak = weak_from_this();
        executor_->PostAfter(deadline - clock_.Now(), [weak, t] {
          if (auto self = weak.lock()) self->OnDeadline(t);
        });
        return;
      }
      FailDeadlineLocked(t, &effects);
    }
    Apply(t, std::move(effects));
  }

  // Records SUBMITTING, then calls the adapter.
  void SubmitLocked(const std::shared_ptr<Tracker>& t, bool resubmit, Effects* effects)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(t->mu) {
    ProviderAdapter* adapter = router_->adapter(t->slot);
    v1::Operation next = t->op;
    next.set_submission(v1::SUBMISSION_STATE_SUBMITTING);
    next.set_provider(adapter->provider());
    next.set_provider_account(adapter->account());
    if (!resubmit || next.attempts_size() == 0) {
      auto* attempt = next.add_attempts();
      attempt->set_provider(adapter->provider());
      attempt->set_account(adapter->account());
      attempt->set_outcome("submitting");
    } else {
      next.mutable_attempts(next.attempts_size() - 1)
          ->set_outcome("re-submitting with the same idempotency key after a restart");
    }
    if (!Commit(*t, std::move(next), effects).ok()) {
      ScheduleKickLocked(t, absl::Seconds(1));
      return;
    }
    adapters::SubmitRequest request;
    request.operation_id = t->id;
    request.request_id = t->request_id;
    request.idempotency_key = t->idempotency_key;
    request.request = t->op.request();
    const absl::Time deadline = FromProtoTimestamp(t->op.deadline());
    request.deadline = adapter->synchronous()
                           ? deadline
                           : std::min(deadline, clock_.Now() + options_.submit_timeout);
    t->submit_in_flight = true;
    std::weak_ptr<EngineImpl> weak = weak_from_this();
    const int slot = t->slot;
    adapter->Submit(std::move(request), [weak, t, slot](absl::StatusOr<UpstreamStatus> result) {
      auto self = weak.lock();
      if (self == nullptr) return;
      self->executor_->Post([weak, t, slot, result = std::move(result)]() mutable {
        if (auto self = weak.lock()) self->OnSubmitted(t, slot, std::move(result));
      });
    });
  }

  static bool FallbackEligible(absl::StatusCode code, bool idempotent) {
    switch (code) {
      case absl::StatusCode::kUnavailable:
      case absl::StatusCode::kResourceExhausted:
      case absl::StatusCode::kUnauthenticated:
      case absl::StatusCode::kPermissionDenied:
      case absl::StatusCode::kFailedPrecondition:
      case absl::StatusCode::kInternal:
        return true;
      case absl::StatusCode::kDeadlineExceeded:
        return idempotent;
      default:
        return false;
    }
  }

  void OnSubmitted(const std::shared_ptr<Tracker>& t, int slot,
                   absl::StatusOr<UpstreamStatus> result) {
    Effects effects;
    {
      absl::MutexLock lock(&t->mu);
      t->submit_in_flight = false;
      if (t->stopped || t->op.done()) return;  // cancelled or timed out meanwhile
      if (result.ok()) {
        router_->RecordSuccess(slot);
        if (result->phase == UpstreamStatus::Phase::kRunning) {
          AcceptLocked(t, *result, &effects);
        } else {
          ApplyTerminalLocked(t, *result, &effects);
        }
      } else {
        RejectLocked(t, slot, result.status(), &effects);
      }
    }
    Apply(t, std::move(effects));
  }

  void AcceptLocked(const std::shared_ptr<Tracker>& t, const UpstreamStatus& status,
                    Effects* effects) ABSL_EXCLUSIVE_LOCKS_REQUIRED(t->mu) {
    v1::Operation next = t->op;
    next.set_state(v1::OPERATION_STATE_RUNNING);
    next.set_submission(v1::SUBMISSION_STATE_ACCEPTED);
    next.set_upstream_id(status.upstream_id);
    if (next.attempts_size() > 0) {
      auto* attempt = next.mutable_attempts(next.attempts_size() - 1);
      attempt->set_upstream_id(status.upstream_id);
      attempt->set_outcome("accepted");
    }
    const bool was_charged = t->charged;
    t->charged = true;  // both providers charge on acceptance
    if (!Commit(*t, std::move(next), effects).ok()) {
      t->charged = was_charged;
      // Keep the answer: it is the only record of the upstream id.
      std::weak_ptr<EngineImpl> weak = weak_from_this();
      const int slot = t->slot;
      t->submit_in_flight = true;
      executor_->PostAfter(absl::Seconds(1), [weak, t, slot, status] {
        if (auto self = weak.lock()) self->OnSubmitted(t, slot, status);
      });
      return;
    }
    {
      absl::MutexLock lock(&mu_);
      by_upstream_[UpstreamKey(t->op.provider(), status.upstream_id)] = t->id;
    }
    SchedulePollLocked(t, PollDelay(status.next_poll_after, absl::ZeroDuration()));
  }

  void RejectLocked(const std::shared_ptr<Tracker>& t, int slot, const absl::Status& status,
                    Effects* effects) ABSL_EXCLUSIVE_LOCKS_REQUIRED(t->mu) {
    router_->RecordFailure(slot, status, &t->op.request());
    ProviderAdapter* adapter = router_->adapter(slot);
    const std::string code = absl::StatusCodeToString(status.code());
    if (!adapter->idempotent_submit() && status.code() == absl::StatusCode::kDeadlineExceeded) {
      // The request may have reached the provider: without idempotency keys we cannot know.
      FailOutcomeUnknownLocked(t, "the submission timed out", effects);
      return;
    }
    if (t->op.request().allow_fallback() &&
        FallbackEligible(status.code(), adapter->idempotent_submit())) {
      const int next_slot = router_->PickFallback(t->op);
      if (next_slot >= 0) {
        ProviderAdapter* next_adapter = router_->adapter(next_slot);
        v1::Operation next = t->op;
        next.mutable_attempts(next.attempts_size() - 1)
            ->set_outcome(absl::StrCat("rejected: ", code));
        next.set_submission(v1::SUBMISSION_STATE_NOT_SUBMITTED);
        next.set_provider(next_adapter->provider());
        next.set_provider_account(next_adapter->account());
        next.clear_upstream_id();
        if (!Commit(*t, std::move(next), effects).ok()) {
          ScheduleKickLocked(t, absl::Seconds(1));
          return;
        }
        if (options_.observer != nullptr) {
          options_.observer->OnFallback(adapter->provider(), next_adapter->provider());
        }
        t->slot = next_slot;
        SubmitLocked(t, /*resubmit=*/false, effects);
        return;
      }
    }
    FailLocked(t, status, v1::SUBMISSION_STATE_REJECTED, effects, absl::StrCat("rejected: ", code));
  }

  void ApplyTerminalLocked(const std::shared_ptr<Tracker>& t, const UpstreamStatus& status,
                           Effects* effects) ABSL_EXCLUSIVE_LOCKS_REQUIRED(t->mu) {
    v1::Operation next = t->op;
    next.set_submission(v1::SUBMISSION_STATE_ACCEPTED);
    if (!status.upstream_id.empty()) next.set_upstream_id(status.upstream_id);
    if (next.attempts_size() > 0) {
      auto* attempt = next.mutable_attempts(next.attempts_size() - 1);
      if (!status.upstream_id.empty()) attempt->set_upstream_id(status.upstream_id);
      attempt->set_outcome("accepted");
    }
    std::optional<std::vector<UpstreamOutput>> outputs;
    const bool was_charged = t->charged;
    if (status.phase == UpstreamStatus::Phase::kSucceeded) {
      next.set_state(v1::OPERATION_STATE_SUCCEEDED);
      next.clear_outputs();
      outputs.emplace();
      for (size_t i = 0; i < status.outputs.size(); ++i) {
        const adapters::ProviderOutput& out = status.outputs[i];
        v1::Asset* asset = next.add_outputs();
        asset->set_name(AssetName(t->id, static_cast<int>(i)));
        asset->set_kind(out.kind);
        asset->set_title(out.title);
        asset->set_duration_seconds(out.duration_seconds);
        asset->set_format(out.format);
        asset->set_content_type(out.content_type);
        asset->set_bpm(out.bpm);
        asset->set_key(out.key);
        outputs->push_back(UpstreamOutput{out.url, out.url_expire_time});
      }
      t->charged = true;
    } else {
      next.set_state(v1::OPERATION_STATE_FAILED);
      const absl::Status error =
          status.error.ok() ? absl::UnknownError("the provider reported a failure") : status.error;
      *next.mutable_error() = ToRpcStatus(error);
    }
    if (!Commit(*t, std::move(next), effects, std::move(outputs)).ok()) {
      t->charged = was_charged;
      std::weak_ptr<EngineImpl> weak = weak_from_this();
      executor_->PostAfter(absl::Seconds(1), [weak, t, status] {
        auto self = weak.lock();
        if (self == nullptr) return;
        Effects retry_effects;
        {
          absl::MutexLock lock(&t->mu);
          if (t->stopped || t->op.done()) return;
          self->ApplyTerminalLocked(t, status, &retry_effects);
        }
        self->Apply(t, std::move(retry_effects));
      });
    }
  }

  // Start-to-start spacing between polls: what the provider suggests, bounded; an instant
  // answer without a suggestion waits min_poll_interval (no hot loop on a non-long-polling
  // provider).
  absl::Duration PollDelay(absl::Duration suggested, absl::Duration elapsed) const {
    absl::Duration delay = std::min(suggested, options_.max_poll_interval);
    if (delay <= absl::ZeroDuration()) {
      delay = std::max(absl::ZeroDuration(), options_.min_poll_interval - elapsed);
    }
    return delay;
  }

  void SchedulePollLocked(const std::shared_ptr<Tracker>& t, absl::Duration delay)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(t->mu) {
    const uint64_t generation = ++t->generation;
    std::weak_ptr<EngineImpl> weak = weak_from_this();
    executor_->PostAfter(delay, [weak, t, generation] {
      auto self = weak.lock();
      if (self == nullptr) return;
      absl::MutexLock lock(&t->mu);
      if (t->generation != generation || t->stopped || t->op.done()) return;
      self->PollLocked(t);
    });
  }

  void PollLocked(const std::shared_ptr<Tracker>& t) ABSL_EXCLUSIVE_LOCKS_REQUIRED(t->mu) {
    if (t->poll_in_flight || t->stopped || t->slot < 0) return;
    t->poll_in_flight = true;
    t->nudge_pending = false;
    t->last_poll_start = clock_.Now();
    adapters::PollRequest request;
    request.operation_id = t->id;
    request.upstream_id = t->op.upstream_id();
    request.task = t->op.task();
    request.deadline =
        std::min(FromProtoTimestamp(t->op.deadline()), clock_.Now() + options_.poll_timeout);
    request.wait = true;
    std::weak_ptr<EngineImpl> weak = weak_from_this();
    const int slot = t->slot;
    router_->adapter(slot)->Poll(
        std::move(request), [weak, t, slot](absl::StatusOr<UpstreamStatus> result) {
          auto self = weak.lock();
          if (self == nullptr) return;
          self->executor_->Post([weak, t, slot, result = std::move(result)]() mutable {
            if (auto self = weak.lock()) self->OnPolled(t, slot, std::move(result));
          });
        });
  }

  void OnPolled(const std::shared_ptr<Tracker>& t, int slot,
                absl::StatusOr<UpstreamStatus> result) {
    Effects effects;
    {
      absl::MutexLock lock(&t->mu);
      t->poll_in_flight = false;
      if (t->stopped || t->op.done()) return;
      const absl::Duration elapsed = clock_.Now() - t->last_poll_start;
      if (result.ok()) {
        router_->RecordSuccess(slot);
        t->consecutive_errors = 0;
        if (result->phase != UpstreamStatus::Phase::kRunning) {
          ApplyTerminalLocked(t, *result, &effects);
        } else if (t->nudge_pending) {
          ++t->generation;
          PollLocked(t);
        } else {
          SchedulePollLocked(t, PollDelay(result->next_poll_after, elapsed));
        }
      } else {
        const absl::Status& status = result.status();
        router_->RecordFailure(slot, status);
        ++t->consecutive_errors;
        const absl::StatusCode code = status.code();
        const bool permanent = code == absl::StatusCode::kNotFound ||
                               code == absl::StatusCode::kInvalidArgument ||
                               code == absl::StatusCode::kPermissionDenied;
        if (permanent && t->consecutive_errors >= kMaxPermanentPollErrors) {
          FailLocked(t, status, std::nullopt, &effects);
        } else {
          // Exponential backoff with jitter, within the poll interval bounds.
          const int exponent = std::min(t->consecutive_errors - 1, 10);
          absl::Duration backoff =
              std::min(options_.max_poll_interval, options_.min_poll_interval * (1 << exponent));
          thread_local std::mt19937 rng{std::random_device{}()};
          backoff = backoff * std::uniform_real_distribution<double>(0.5, 1.0)(rng);
          SchedulePollLocked(t, backoff);
        }
      }
    }
    Apply(t, std::move(effects));
  }

  // ---- watch helpers ----

  // Queues what a new watcher sees first.
  absl::Status Fill(WatchState& state, const v1::Operation& current, int64_t after_sequence) {
    if (after_sequence > current.sequence()) {
      return InvalidFieldError(
          "after_sequence",
          absl::StrCat("is ahead of the operation (at sequence ", current.sequence(), ")"));
    }
    auto snapshot = std::make_shared<const v1::Operation>(current);
    if (after_sequence == 0) {
      state.Push(snapshot, v1::OperationEvent::KIND_SNAPSHOT);
    } else if (after_sequence < current.sequence()) {
      auto events = store_->EventsAfter(RecordIdOf(current), after_sequence);
      if (events.ok() && !events->empty() && events->front().sequence == after_sequence + 1) {
        for (auto& event : *events) {
          if (event.sequence > current.sequence()) break;
          state.Push(std::make_shared<const v1::Operation>(std::move(event.operation)),
                     v1::OperationEvent::KIND_CHANGE, /*replay=*/true);
        }
      } else {
        // The missed events were pruned: the latest state stands in for them.
        state.Push(snapshot, v1::OperationEvent::KIND_CHANGE, /*replay=*/true,
                   /*coalesced=*/true);
      }
    }
    if (current.done()) state.EndAfterQueue();
    return absl::OkStatus();
  }

  static std::string RecordIdOf(const v1::Operation& op) {
    OperationRecord record;
    record.operation.set_name(op.name());
    return record.id();
  }

  void ScheduleHeartbeat(const std::shared_ptr<WatchState>& state, absl::Duration delay) {
    std::weak_ptr<EngineImpl> weak = weak_from_this();
    std::weak_ptr<WatchState> weak_state = state;
    executor_->PostAfter(delay, [weak, weak_state] {
      auto self = weak.lock();
      auto state = weak_state.lock();
      if (self == nullptr || state == nullptr) return;
      absl::Duration next;
      if (state->Heartbeat(self->clock_.Now(), self->options_.watch_heartbeat, &next))
        state->RunWake();
      if (next != absl::InfiniteDuration()) self->ScheduleHeartbeat(state, next);
    });
  }

  // ---- maintenance ----

  void ScheduleMaintenance(absl::Duration delay) {
    std::weak_ptr<EngineImpl> weak = weak_from_this();
    executor_->PostAfter(delay, [weak] {
      auto self = weak.lock();
      if (self == nullptr) return;
      const absl::Time now = self->clock_.Now();
      absl::Status renewed =
          self->store_->RenewLeases(self->options_.replica_id, now + self->options_.lease);
      if (!renewed.ok())
        log::Warning("ledger lease renewal failed", {{"error", renewed.ToString()}});
      if (now - self->last_prune_ >= std::min(self->options_.event_retention, absl::Hours(1))) {
        self->last_prune_ = now;
        auto pruned = self->store_->PruneEvents(now - self->options_.event_retention);
        if (!pruned.ok()) {
          log::Warning("ledger event pruning failed", {{"error", pruned.status().ToString()}});
        }
      }
      self->ScheduleMaintenance(std::max(absl::Seconds(1), self->options_.lease / 3));
    });
  }

  static constexpr int kMaxPermanentPollErrors = 5;

  const EngineOptions options_;
  const std::unique_ptr<OperationStore> store_;
  http::Client* const http_;
  const Clock& clock_;
  const std::unique_ptr<Router> router_;
  const std::unique_ptr<Executor> executor_;

  mutable absl::Mutex mu_;
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;
  absl::flat_hash_map<std::string, std::shared_ptr<Tracker>> live_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, std::string> by_upstream_ ABSL_GUARDED_BY(mu_);
  std::vector<std::weak_ptr<DownloadPipe>> downloads_ ABSL_GUARDED_BY(mu_);
  std::vector<std::weak_ptr<WatchState>> watches_ ABSL_GUARDED_BY(mu_);
  size_t watches_gc_at_ ABSL_GUARDED_BY(mu_) = 64;

  // A leaf lock: (provider, state) -> live operations, kept where states change.
  mutable absl::Mutex counts_mu_;
  std::map<std::pair<int, int>, int64_t> live_counts_ ABSL_GUARDED_BY(counts_mu_);

  absl::Time last_prune_ = absl::InfinitePast();  // maintenance task only (one at a time)
  const std::shared_ptr<std::atomic<int64_t>> open_watchers_;
  const std::shared_ptr<std::atomic<int64_t>> open_downloads_;
};

// What callers own: shuts the engine down on destruction. Callbacks in flight hold only weak
// references to the implementation.
class EngineHandle final : public OperationsEngine {
 public:
  explicit EngineHandle(std::shared_ptr<EngineImpl> impl) : impl_(std::move(impl)) {}
  ~EngineHandle() override { impl_->Shutdown(); }

  absl::Status Start() override { return impl_->Start(); }
  void Shutdown() override { impl_->Shutdown(); }
  absl::StatusOr<v1::Operation> Generate(const std::string& tenant,
                                         const v1::GenerateRequest& request) override {
    return impl_->Generate(tenant, request);
  }
  absl::StatusOr<v1::Operation> Get(const std::string& tenant, absl::string_view name) override {
    return impl_->Get(tenant, name);
  }
  absl::StatusOr<v1::ListOperationsResponse> List(
      const std::string& tenant, const v1::ListOperationsRequest& request) override {
    return impl_->List(tenant, request);
  }
  void Cancel(const std::string& tenant, absl::string_view name, absl::string_view reason,
              absl::AnyInvocable<void(absl::StatusOr<v1::Operation>) &&> done) override {
    impl_->Cancel(tenant, name, reason, std::move(done));
  }
  void Wait(const std::string& tenant, absl::string_view name, absl::Duration timeout,
            absl::AnyInvocable<void(absl::StatusOr<v1::Operation>) &&> done) override {
    impl_->Wait(tenant, name, timeout, std::move(done));
  }
  absl::StatusOr<std::unique_ptr<EventStream<v1::OperationEvent>>> Watch(
      const std::string& tenant, absl::string_view name, int64_t after_sequence) override {
    return impl_->Watch(tenant, name, after_sequence);
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
  std::shared_ptr<EngineImpl> impl_;
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
  auto impl = std::make_shared<EngineImpl>(std::move(options), std::move(store), adapters, http);
  return std::unique_ptr<OperationsEngine>(std::make_unique<EngineHandle>(std::move(impl)));
}

}  // namespace musicgw::operations
