#include "services/operations/tracker.h"

#include <algorithm>
#include <atomic>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/errors.h"
#include "common/log.h"
#include "common/provider_names.h"
#include "common/time_util.h"
#include "services/operations/ids.h"
#include "services/operations/operation_errors.h"

namespace musicgw::operations {

namespace v1 = musicgw::v1;
using adapters::ProviderAdapter;
using adapters::UpstreamStatus;

namespace {

bool IsTerminal(v1::OperationState state) {
  return state == v1::OPERATION_STATE_SUCCEEDED || state == v1::OPERATION_STATE_FAILED ||
         state == v1::OPERATION_STATE_CANCELLED;
}

}  // namespace

// Calls `done` once.
class Tracker::Waiter {
 public:
  explicit Waiter(OperationCallback done) : done_(std::move(done)) {}
  void Fire(absl::StatusOr<v1::Operation> result) {
    OperationCallback done;
    {
      absl::MutexLock lock(&mu_);
      done = std::move(done_);
      done_ = nullptr;
    }
    if (done) std::move(done)(std::move(result));
  }

 private:
  absl::Mutex mu_;
  OperationCallback done_ ABSL_GUARDED_BY(mu_);
};

Tracker::Tracker(OperationRecord record, std::weak_ptr<TrackerEnv> env, TrackerEnv* env_ptr)
    : id_(record.id()), tenant_(record.tenant), env_(std::move(env)), e_(env_ptr) {
  absl::MutexLock lock(&mu_);
  op_ = std::move(record.operation);
  request_id_ = record.request_id;
  idempotency_key_ = ProviderIdempotencyKey(record.tenant, record.request_id);
  charged_ = record.charged;
  slot_ = e_->router->SlotFor(op_);
}

void Tracker::Post(absl::AnyInvocable<void(Tracker&) &&> step, absl::Duration delay) {
  std::weak_ptr<TrackerEnv> weak = env_;
  e_->executor->PostAfter(delay,
                          [self = shared_from_this(), weak, step = std::move(step)]() mutable {
                            auto env = weak.lock();
                            if (env == nullptr) return;
                            std::move(step)(*self);
                          });
}

void Tracker::Start(bool recovering, std::optional<std::string> cancel_reason) {
  v1::Provider provider;
  v1::OperationState state;
  std::string upstream_id;
  absl::Time deadline;
  {
    absl::MutexLock lock(&mu_);
    provider = op_.provider();
    state = op_.done() ? v1::OPERATION_STATE_UNSPECIFIED : op_.state();
    upstream_id = op_.upstream_id();
    deadline = FromProtoTimestamp(op_.deadline());
  }
  if (!e_->live.Add(shared_from_this(), provider, state, upstream_id)) return;
  ScheduleDeadline(deadline);
  if (cancel_reason.has_value()) {
    Cancel(*cancel_reason, [](const absl::StatusOr<v1::Operation>&) {});
    return;
  }
  Post([recovering](Tracker& t) { t.Kick(recovering); }, absl::ZeroDuration());
}

v1::Operation Tracker::Snapshot() const {
  absl::MutexLock lock(&mu_);
  return op_;
}

// Decides the next step from the ledger state (start, restart, or after a ledger error).
void Tracker::Kick(bool recovering) {
  Effects effects;
  {
    absl::MutexLock lock(&mu_);
    if (stopped_ || op_.done() || submit_in_flight_ || poll_in_flight_) return;
    if (e_->clock.Now() >= FromProtoTimestamp(op_.deadline())) {
      FailDeadlineLocked(&effects);
    } else if (slot_ < 0) {
      FailLocked(WithErrorInfo(absl::FailedPreconditionError(absl::StrCat(
                                   ProviderEnumName(op_.provider()), " account ",
                                   op_.provider_account(), " is no longer configured")),
                               "PROVIDER_NOT_CONFIGURED", kGatewayDomain),
                 std::nullopt, &effects);
    } else {
      switch (op_.submission()) {
        case v1::SUBMISSION_STATE_UNSPECIFIED:
        case v1::SUBMISSION_STATE_NOT_SUBMITTED:
          SubmitLocked(/*resubmit=*/false, &effects);
          break;
        case v1::SUBMISSION_STATE_SUBMITTING:
          if (e_->router->adapter(slot_)->idempotent_submit()) {
            // The provider dedupes on the idempotency key: re-sending cannot start a second job.
            SubmitLocked(/*resubmit=*/true, &effects);
          } else {
            FailOutcomeUnknownLocked(recovering ? "the gateway restarted" : "the ledger failed",
                                     &effects);
          }
          break;
        case v1::SUBMISSION_STATE_ACCEPTED:
          PollLocked();
          break;
        case v1::SUBMISSION_STATE_POSSIBLY_SUBMITTED:
          FailOutcomeUnknownLocked("the gateway restarted", &effects);
          break;
        case v1::SUBMISSION_STATE_REJECTED:
        default:
          FailLocked(WithErrorInfo(absl::UnknownError("the provider rejected the submission"),
                                   "PROVIDER_REJECTED", kGatewayDomain),
                     std::nullopt, &effects);
          break;
      }
    }
  }
  Apply(effects);
}

void Tracker::ScheduleKickLocked(absl::Duration delay) {
  Post([](Tracker& t) { t.Kick(/*recovering=*/false); }, delay);
}

// Writes `next` (sequence + 1) to the ledger and queues it for publishing. On error nothing
// changes.
absl::Status Tracker::Commit(v1::Operation next, Effects* effects,
                             std::optional<std::vector<UpstreamOutput>> outputs) {
  const absl::Time now = e_->clock.Now();
  next.set_sequence(op_.sequence() + 1);
  *next.mutable_update_time() = ToProtoTimestamp(now);
  if (IsTerminal(next.state())) {
    next.set_done(true);
    *next.mutable_done_time() = ToProtoTimestamp(now);
  }
  OperationUpdate update;
  update.operation = next;
  update.expected_sequence = op_.sequence();
  update.charged = charged_;
  update.upstream_outputs = std::move(outputs);
  update.owner = e_->options.replica_id;
  // Progress at a provider that dedupes submissions needs no fsync of its own: if a power loss
  // takes it back, the tracker re-submits with the same idempotency key (or polls again) and
  // gets the same job. A done state, and every step at a provider without idempotency keys,
  // is on disk before it is published.
  update.wait_durable =
      next.done() || slot_ < 0 || !e_->router->adapter(slot_)->idempotent_submit();
  if (e_->options.outbox) update.outbox = e_->options.outbox(tenant_, op_, next);
  const bool wrote_outbox = !update.outbox.empty();
  absl::Status status = e_->ledger.NoteWrite(e_->store->Update(update));
  if (absl::IsAborted(status)) {
    // Another replica took the operation over after our lease ran out (or wrote it): this
    // replica's view is stale, and it must make no more provider calls or changes for it.
    log::Warning("operation taken over by another replica; no longer tracked here",
                 {{"operation", id_}});
    stopped_ = true;
    lost_ = true;
    ++generation_;
    for (auto& waiter : waiters_) effects->waiters.push_back(std::move(waiter));
    waiters_.clear();
    effects->lost = true;
    return status;
  }
  if (!status.ok()) {
    log::Error("ledger update failed",
               {{"operation", id_}, {"error", std::string(status.message())}});
    return status;
  }
  const v1::OperationState from = op_.state();
  // A done operation may still change (a late submission answer, outputs attached after a
  // cancel); it is announced as done only once.
  const bool was_done = op_.done();
  if (op_.provider() != next.provider() || from != next.state()) {
    if (!op_.done()) e_->live.Count(op_.provider(), from, -1);
    if (!next.done()) e_->live.Count(next.provider(), next.state(), +1);
  }
  op_ = std::move(next);
  if (EngineObserver* observer = e_->options.observer) {
    if (from != op_.state()) observer->OnStateChange(op_.provider(), op_.task(), from, op_.state());
    if (op_.done() && !was_done) {
      observer->OnCompleted(op_.provider(), op_.task(), op_.state(),
                            static_cast<absl::StatusCode>(op_.error().code()));
      if (op_.state() == v1::OPERATION_STATE_SUCCEEDED) {
        observer->OnSucceededLatency(op_.provider(), op_.task(),
                                     now - FromProtoTimestamp(op_.create_time()));
      }
    }
  }
  if (was_done && e_->options.observer != nullptr) {
    e_->options.observer->OnLateChange(op_.provider(), op_.task());
  }
  if (wrote_outbox && e_->options.observer != nullptr) e_->options.observer->OnOutboxWritten();
  outbox_.push_back(std::make_shared<const v1::Operation>(op_));
  if (op_.done() && !was_done) {
    stopped_ = true;
    ++generation_;
    for (auto& waiter : waiters_) effects->waiters.push_back(std::move(waiter));
    waiters_.clear();
    effects->done = true;
  }
  return absl::OkStatus();
}

void Tracker::Apply(const Effects& effects) {
  if (effects.lost) {
    v1::Operation op = Snapshot();
    if (e_->live.Retire(this, op.provider(), op.upstream_id())) {
      e_->live.Count(op.provider(), op.state(), -1);
    }
    for (auto& waiter : effects.waiters) waiter->Fire(NotTrackedHere());
  }
  std::optional<v1::Operation> done_op;
  {
    absl::MutexLock publish(&publish_mu_);
    std::vector<std::shared_ptr<const v1::Operation>> outbox;
    {
      absl::MutexLock lock(&mu_);
      outbox.swap(outbox_);
      if (effects.done) done_op = op_;
    }
    if (done_op.has_value()) {
      // Retired before the done change is published: a watch opened meanwhile reads the done
      // state from the ledger.
      e_->live.Retire(this, done_op->provider(), done_op->upstream_id());
    }
    for (auto& snapshot : outbox) {
      e_->feed->Publish(Change{id_, snapshot->sequence(), std::move(snapshot)});
    }
  }
  if (done_op.has_value()) {
    for (auto& waiter : effects.waiters) waiter->Fire(*done_op);
  }
}

// Fails the operation with `error`; `submission` overrides the submission state.
void Tracker::FailLocked(const absl::Status& error, std::optional<v1::SubmissionState> submission,
                         Effects* effects, absl::string_view attempt_outcome) {
  v1::Operation next = op_;
  next.set_state(v1::OPERATION_STATE_FAILED);
  *next.mutable_error() = ToRpcStatus(error);
  if (submission.has_value()) next.set_submission(*submission);
  if (!attempt_outcome.empty() && next.attempts_size() > 0) {
    next.mutable_attempts(next.attempts_size() - 1)->set_outcome(std::string(attempt_outcome));
  }
  if (!Commit(std::move(next), effects).ok()) ScheduleKickLocked(absl::Seconds(1));
}

void Tracker::FailDeadlineLocked(Effects* effects) {
  absl::Status error =
      absl::DeadlineExceededError("the provider did not finish the operation before its deadline");
  error = WithErrorInfo(std::move(error), "OPERATION_DEADLINE_EXCEEDED", kGatewayDomain,
                        {{"provider", ProviderEnumName(op_.provider())}});
  FailLocked(error, std::nullopt, effects);
}

void Tracker::FailOutcomeUnknownLocked(absl::string_view why, Effects* effects) {
  const std::string provider = ProviderEnumName(op_.provider());
  absl::Status error = absl::FailedPreconditionError(absl::StrCat(
      why, " while a submission to ", provider,
      " was in flight; that provider has no idempotency keys, so it may have started (and "
      "charged for) the work. The gateway does not re-submit; check with the provider before "
      "retrying with a new request_id."));
  error = WithErrorInfo(std::move(error), "SUBMISSION_OUTCOME_UNKNOWN", kGatewayDomain,
                        {{"provider", provider}});
  charged_ = true;  // budgets and credits assume the provider charged
  FailLocked(error, v1::SUBMISSION_STATE_POSSIBLY_SUBMITTED, effects, "outcome unknown");
}

void Tracker::FailPossiblySubmittedLocked(const absl::Status& cause, Effects* effects) {
  charged_ = true;  // budgets and credits assume the provider charged
  FailLocked(ProviderOutcomeUnknown(op_.provider(), op_.provider_account(), cause),
             v1::SUBMISSION_STATE_POSSIBLY_SUBMITTED, effects, "outcome unknown");
}

void Tracker::ScheduleDeadline(absl::Time deadline) {
  // Weak: a done operation's tracker must not live on until its deadline.
  std::weak_ptr<Tracker> weak = weak_from_this();
  std::weak_ptr<TrackerEnv> weak_env = env_;
  e_->executor->PostAfter(deadline - e_->clock.Now(), [weak, weak_env] {
    auto env = weak_env.lock();
    auto tracker = weak.lock();
    if (env != nullptr && tracker != nullptr) tracker->OnDeadline();
  });
}

void Tracker::OnDeadline() {
  Effects effects;
  {
    absl::MutexLock lock(&mu_);
    if (stopped_ || op_.done()) return;
    const absl::Time deadline = FromProtoTimestamp(op_.deadline());
    if (e_->clock.Now() < deadline) {  // timers may fire a hair early
      ScheduleDeadline(deadline);
      return;
    }
    FailDeadlineLocked(&effects);
  }
  Apply(effects);
}

void Tracker::OnProviderUpdate(const UpstreamStatus& status) {
  Post(
      [status](Tracker& t) {
        Effects effects;
        {
          absl::MutexLock lock(&t.mu_);
          if (t.stopped_ || t.op_.done() || t.op_.submission() != v1::SUBMISSION_STATE_ACCEPTED ||
              t.op_.upstream_id() != status.upstream_id) {
            return;  // a duplicate or stale callback
          }
          if (status.phase != UpstreamStatus::Phase::kRunning) {
            t.ApplyTerminalLocked(status, &effects);
          } else if (t.poll_in_flight_) {
            t.nudge_pending_ = true;
          } else {
            ++t.generation_;
            t.PollLocked();
          }
        }
        t.Apply(effects);
      },
      absl::ZeroDuration());
}

void Tracker::Wait(absl::Duration timeout, OperationCallback done) {
  auto waiter = std::make_shared<Waiter>(std::move(done));
  std::optional<v1::Operation> now_op;
  {
    absl::MutexLock lock(&mu_);
    // A cancellation in progress answers its waiters when it commits.
    if (!op_.done() && (!stopped_ || cancelling_)) {
      waiters_.push_back(waiter);
    } else {
      now_op = op_;
    }
  }
  if (now_op.has_value()) return waiter->Fire(*std::move(now_op));
  std::weak_ptr<Tracker> weak = weak_from_this();
  std::weak_ptr<TrackerEnv> weak_env = env_;
  e_->executor->PostAfter(timeout, [weak, weak_env, waiter] {
    auto env = weak_env.lock();
    auto tracker = weak.lock();
    if (env == nullptr || tracker == nullptr) return waiter->Fire(ShuttingDown());
    v1::Operation op;
    {
      absl::MutexLock lock(&tracker->mu_);
      auto& waiters = tracker->waiters_;
      waiters.erase(std::remove(waiters.begin(), waiters.end(), waiter), waiters.end());
      op = tracker->op_;
    }
    waiter->Fire(std::move(op));
  });
}

void Tracker::Stop(const absl::Status& status) {
  std::vector<std::shared_ptr<Waiter>> waiters;
  {
    absl::MutexLock lock(&mu_);
    // The operation stays live in the ledger: the next Start() resumes it.
    stopped_ = true;
    following_up_ = false;
    ++generation_;
    waiters.swap(waiters_);
  }
  for (auto& waiter : waiters) waiter->Fire(status);
}

void Tracker::Cancel(absl::string_view reason, OperationCallback done) {
  ProviderAdapter* adapter = nullptr;
  adapters::PollRequest poll;
  {
    absl::MutexLock lock(&mu_);
    if (op_.done()) return std::move(done)(OperationAlreadyDone(op_));
    if (cancelling_) {
      return std::move(done)(
          WithErrorInfo(absl::AbortedError("a cancellation is already in progress"),
                        "CANCEL_IN_PROGRESS", kGatewayDomain));
    }
    if (e_->live.stopped()) return std::move(done)(ShuttingDown());
    cancelling_ = true;
    stopped_ = true;  // in-flight provider answers are ignored from here on
    ++generation_;
    if (!op_.upstream_id().empty() && slot_ >= 0) {
      adapter = e_->router->adapter(slot_);
      poll.operation_id = id_;
      poll.upstream_id = op_.upstream_id();
      poll.task = op_.task();
      poll.deadline = e_->clock.Now() + e_->options.cancel_notify_timeout;
      poll.wait = false;
    }
  }
  if (adapter == nullptr) return std::move(done)(RecordCancel(reason, /*provider_notified=*/false));
  // Whichever comes first, the provider's answer or the timeout, records the cancellation; if
  // the executor stops before either, the caller still hears back.
  struct Pending {
    std::atomic<bool> finished{false};
    OperationCallback done;
    ~Pending() {
      if (!finished.exchange(true)) std::move(done)(ShuttingDown());
    }
  };
  auto pending = std::make_shared<Pending>();
  pending->done = std::move(done);
  auto finish = [pending, reason = std::string(reason)](Tracker& t, bool notified) {
    if (pending->finished.exchange(true)) return;
    std::move(pending->done)(t.RecordCancel(reason, notified));
  };
  std::weak_ptr<TrackerEnv> weak = env_;
  adapter->Cancel(poll, [self = shared_from_this(), weak, finish](absl::StatusOr<bool> told) {
    const bool notified = told.ok() && *told;
    // Held while the step is posted: the engine (and its executor) may be going away.
    const std::shared_ptr<TrackerEnv> env = weak.lock();
    if (env == nullptr) return;
    self->Post([finish, notified](Tracker& t) { finish(t, notified); }, absl::ZeroDuration());
  });
  Post([finish](Tracker& t) { finish(t, false); }, e_->options.cancel_notify_timeout);
}

absl::StatusOr<v1::Operation> Tracker::RecordCancel(absl::string_view reason,
                                                    bool provider_notified) {
  Effects effects;
  absl::StatusOr<v1::Operation> result;
  {
    absl::MutexLock lock(&mu_);
    cancelling_ = false;
    v1::Operation next = op_;
    next.set_state(v1::OPERATION_STATE_CANCELLED);
    absl::Status error = absl::CancelledError(reason.empty() ? "cancelled by the client"
                                                             : absl::StrCat("cancelled: ", reason));
    error = WithErrorInfo(std::move(error), "CANCELLED_BY_CLIENT", kGatewayDomain);
    *next.mutable_error() = ToRpcStatus(error);
    if (op_.submission() == v1::SUBMISSION_STATE_SUBMITTING && !submit_in_flight_) {
      // A submission was in flight on a replica that died (this one took the operation over
      // with a cancel pending): it is not re-sent, and it may have created paid work.
      next.set_submission(v1::SUBMISSION_STATE_POSSIBLY_SUBMITTED);
      charged_ = true;
    }
    auto* cancellation = next.mutable_cancellation();
    cancellation->set_reason(std::string(reason));
    cancellation->set_provider_notified(provider_notified);
    *cancellation->mutable_cancel_time() = ToProtoTimestamp(e_->clock.Now());
    absl::Status status = Commit(std::move(next), &effects);
    if (status.ok()) {
      result = op_;
      // The provider runs accepted work on (neither can stop it): the user paid for it.
      if (op_.submission() == v1::SUBMISSION_STATE_ACCEPTED && op_.outputs_size() == 0) {
        FollowUpLocked();
      }
    } else {
      result = lost_ ? NotTrackedHere() : status;
      if (!lost_) {
        // The ledger refused: keep tracking as before.
        stopped_ = false;
        ScheduleKickLocked(absl::Seconds(1));
      }
    }
  }
  Apply(effects);
  return result;
}

}  // namespace musicgw::operations
