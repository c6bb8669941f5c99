// File: tracker.h
// One live operation's state machine: submit (recorded before it is sent), accept or reject
// (with fallback to another account), poll and long-poll, webhook nudges, the deadline, and the
// cancel protocol. Every change is committed to the ledger first (compare-and-set on its
// sequence), then published on the change feed, in sequence order; waiters hear the final
// state.
//
// Threads: adapter callbacks only post to the executor; every step runs there. Lock order:
// Tracker::publish_mu_ -> Tracker::mu_ -> (router | store | LiveTrackers).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "adapters/provider.h"
#include "common/clock.h"
#include "musicgw/v1/musicgw.pb.h"
#include "services/operations/change_feed.h"
#include "services/operations/custody.h"
#include "services/operations/engine.h"
#include "services/operations/executor.h"
#include "services/operations/ledger_health.h"
#include "services/operations/live_trackers.h"
#include "services/operations/operation_store.h"
#include "services/operations/router.h"

namespace musicgw::operations {

// What every tracker shares. Owned by the engine; trackers hold it weakly, so a provider answer
// arriving after the engine is gone does nothing.
struct TrackerEnv {
  TrackerEnv(EngineOptions options_in, const Clock& clock_in,
             std::shared_ptr<OperationStore> store_in, std::shared_ptr<Router> router_in,
             std::shared_ptr<Executor> executor_in, std::shared_ptr<ChangeFeed> feed_in)
      : options(std::move(options_in)),
        clock(clock_in),
        store(std::move(store_in)),
        router(std::move(router_in)),
        executor(std::move(executor_in)),
        feed(std::move(feed_in)) {}

  const EngineOptions options;
  const Clock& clock;
  const std::shared_ptr<OperationStore> store;
  const std::shared_ptr<Router> router;
  const std::shared_ptr<Executor> executor;
  const std::shared_ptr<ChangeFeed> feed;
  LedgerHealth ledger;
  LiveTrackers live;
  // Set once by the engine before any tracker starts; fetches outputs before SUCCEEDED.
  std::shared_ptr<AssetCustody> custody;
};

class Tracker final : public std::enable_shared_from_this<Tracker> {
 public:
  // `record` is live; `env` outlives every step that runs (steps find it gone otherwise).
  Tracker(OperationRecord record, std::weak_ptr<TrackerEnv> env, TrackerEnv* env_ptr);

  const std::string& id() const { return id_; }
  const std::string& tenant() const { return tenant_; }

  // Registers with env->live and schedules the first step and the deadline. `recovering`: the
  // record comes from the ledger after a restart. `cancel_reason`: a cancel was requested (on
  // another replica) before this one took the operation over; it is applied instead of the
  // first step, so nothing is submitted.
  void Start(bool recovering, std::optional<std::string> cancel_reason = std::nullopt);
  // The latest committed snapshot.
  musicgw::v1::Operation Snapshot() const;
  // A verified webhook for this operation's upstream job.
  void OnProviderUpdate(const adapters::UpstreamStatus& status);
  // Asks the provider to stop (waiting up to cancel_notify_timeout for its answer), then
  // records CANCELLED. Calls `done` once.
  void Cancel(absl::string_view reason, OperationCallback done);
  // Calls `done` once: when the operation is done, or after `timeout` with its latest snapshot.
  void Wait(absl::Duration timeout, OperationCallback done);
  // Shutdown: no more provider calls or changes here (the operation stays live in the ledger);
  // waiters hear `status`.
  void Stop(const absl::Status& status);

 private:
  class Waiter;
  // What to do once mu_ is released.
  struct Effects {
    std::vector<std::shared_ptr<Waiter>> waiters;
    bool done = false;
    // Another replica owns the operation now: retire without it being done.
    bool lost = false;
  };

  void Kick(bool recovering);
  void ScheduleKickLocked(absl::Duration delay) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Commit(musicgw::v1::Operation next, Effects* effects,
                      std::optional<std::vector<UpstreamOutput>> outputs = std::nullopt)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Publishes committed changes in order, retires a done tracker, answers waiters.
  void Apply(const Effects& effects) ABSL_LOCKS_EXCLUDED(mu_);
  void FailLocked(const absl::Status& error, std::optional<musicgw::v1::SubmissionState> submission,
                  Effects* effects, absl::string_view attempt_outcome = "")
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FailDeadlineLocked(Effects* effects) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FailOutcomeUnknownLocked(absl::string_view why, Effects* effects)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The provider may have created (and charged for) the work: POSSIBLY_SUBMITTED, charged,
  // FAILED with ProviderOutcomeUnknown(cause). No fallback, no re-submission.
  void FailPossiblySubmittedLocked(const absl::Status& cause, Effects* effects)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // True when a Submit error means the provider may have processed the request.
  bool OutcomeUnknownLocked(int slot, const absl::Status& status) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The answer to a submission that arrived after the operation ended (cancelled, or past its
  // deadline): recorded all the same (upstream id, submission state, charged, outputs).
  void LateSubmitAnswerLocked(int slot, const absl::StatusOr<adapters::UpstreamStatus>& result,
                              Effects* effects) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Adds `status`'s outputs to `next` as assets; returns where their bytes are.
  std::vector<UpstreamOutput> AddOutputs(const adapters::UpstreamStatus& status,
                                         musicgw::v1::Operation* next) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A cancelled operation whose work the provider accepted and runs on: polls until it
  // finishes, so the paid outputs are attached.
  void FollowUpLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void OnFollowUpPolled(const absl::StatusOr<adapters::UpstreamStatus>& result, Effects* effects)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Polls may run: the operation is live, or done and followed up.
  bool PollingAllowedLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return following_up_ || (!stopped_ && !op_.done());
  }
  void ScheduleDeadline(absl::Time deadline);
  void OnDeadline();
  void SubmitLocked(bool resubmit, Effects* effects) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void OnSubmitted(int slot, absl::StatusOr<adapters::UpstreamStatus> result);
  void AcceptLocked(const adapters::UpstreamStatus& status, Effects* effects)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RejectLocked(int slot, const absl::Status& status, Effects* effects)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ApplyTerminalLocked(const adapters::UpstreamStatus& status, Effects* effects)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void StartCustodyLocked(const adapters::UpstreamStatus& status)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Duration PollDelay(absl::Duration suggested, absl::Duration elapsed) const;
  void SchedulePollLocked(absl::Duration delay) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void PollLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void OnPolled(int slot, const absl::StatusOr<adapters::UpstreamStatus>& result);
  void OnLivePolledLocked(int slot, const absl::StatusOr<adapters::UpstreamStatus>& result,
                          Effects* effects) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<musicgw::v1::Operation> RecordCancel(absl::string_view reason,
                                                      bool provider_notified);
  // Runs `step` on the executor while the engine lives.
  void Post(absl::AnyInvocable<void(Tracker&) &&> step, absl::Duration delay);

  static constexpr int kMaxPermanentPollErrors = 5;

  const std::string id_;
  const std::string tenant_;
  const std::weak_ptr<TrackerEnv> env_;
  // Valid while env_ can be locked; every step holds that lock.
  TrackerEnv* const e_;

  // Held while publishing, so changes leave in the order they were committed.
  absl::Mutex publish_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  mutable absl::Mutex mu_;
  musicgw::v1::Operation op_ ABSL_GUARDED_BY(mu_);
  // Committed snapshots not yet published.
  std::vector<std::shared_ptr<const musicgw::v1::Operation>> outbox_ ABSL_GUARDED_BY(mu_);
  std::string request_id_ ABSL_GUARDED_BY(mu_);
  std::string idempotency_key_ ABSL_GUARDED_BY(mu_);
  bool charged_ ABSL_GUARDED_BY(mu_) = false;
  int slot_ ABSL_GUARDED_BY(mu_) = -1;
  bool submit_in_flight_ ABSL_GUARDED_BY(mu_) = false;
  bool poll_in_flight_ ABSL_GUARDED_BY(mu_) = false;
  bool nudge_pending_ ABSL_GUARDED_BY(mu_) = false;
  // Bumped to invalidate scheduled polls.
  uint64_t generation_ ABSL_GUARDED_BY(mu_) = 0;
  int consecutive_errors_ ABSL_GUARDED_BY(mu_) = 0;
  // No more provider calls or changes: done, cancelling, or shutting down.
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelling_ ABSL_GUARDED_BY(mu_) = false;
  // The ledger refused a write as another replica's (fencing): stopped for good here.
  bool lost_ ABSL_GUARDED_BY(mu_) = false;
  // Done (cancelled), but the provider runs the paid work on: polled until it finishes.
  bool following_up_ ABSL_GUARDED_BY(mu_) = false;
  absl::Time last_poll_start_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  // Asset custody before SUCCEEDED: the fetch is running; then what it stored, per output.
  bool custody_in_flight_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<std::vector<std::optional<StoredObject>>> custody_ ABSL_GUARDED_BY(mu_);
  std::vector<std::shared_ptr<Waiter>> waiters_ ABSL_GUARDED_BY(mu_);
};

}  // namespace musicgw::operations
