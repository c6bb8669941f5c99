// The tracker's conversation with the provider: submit (recorded before it is sent), accept or
// reject with fallback, terminal answers, and polling with backoff.
#include <algorithm>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "adapters/submit_outcome.h"
#include "common/errors.h"
#include "common/log.h"
#include "common/time_util.h"
#include "services/operations/ids.h"
#include "services/operations/operation_errors.h"
#include "services/operations/tracker.h"

namespace musicgw::operations {

namespace v1 = musicgw::v1;
using adapters::ProviderAdapter;
using adapters::UpstreamStatus;

namespace {

bool FallbackEligible(absl::StatusCode code, bool idempotent) {
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

}  // namespace

// Records SUBMITTING, then calls the adapter.
void Tracker::SubmitLocked(bool resubmit, Effects* effects) {
  ProviderAdapter* adapter = e_->router->adapter(slot_);
  v1::Operation next = op_;
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
  if (!Commit(std::move(next), effects).ok()) {
    ScheduleKickLocked(absl::Seconds(1));
    return;
  }
  adapters::SubmitRequest request;
  request.operation_id = id_;
  request.request_id = request_id_;
  request.idempotency_key = idempotency_key_;
  request.request = op_.request();
  const absl::Time deadline = FromProtoTimestamp(op_.deadline());
  request.deadline = adapter->synchronous()
                         ? deadline
                         : std::min(deadline, e_->clock.Now() + e_->options.submit_timeout);
  submit_in_flight_ = true;
  const int slot = slot_;
  std::weak_ptr<TrackerEnv> weak = env_;
  adapter->Submit(std::move(request),
                  [self = shared_from_this(), weak, slot](absl::StatusOr<UpstreamStatus> result) {
                    // Held while the step is posted: the engine (and its executor) may be going
                    // away.
                    const std::shared_ptr<TrackerEnv> env = weak.lock();
                    if (env == nullptr) return;
                    self->Post([slot, result = std::move(result)](
                                   Tracker& t) mutable { t.OnSubmitted(slot, std::move(result)); },
                               absl::ZeroDuration());
                  });
}

void Tracker::OnSubmitted(int slot, absl::StatusOr<UpstreamStatus> result) {
  Effects effects;
  {
    absl::MutexLock lock(&mu_);
    submit_in_flight_ = false;
    if (op_.done()) {
      // Cancelled or timed out meanwhile: the answer still says what was created and paid.
      if (op_.submission() == v1::SUBMISSION_STATE_SUBMITTING && !e_->live.stopped()) {
        LateSubmitAnswerLocked(slot, result, &effects);
      }
    } else if (stopped_) {
      return;  // shutting down: the ledger keeps SUBMITTING for the next start
    } else if (result.ok()) {
      e_->router->RecordSuccess(slot);
      if (result->phase == UpstreamStatus::Phase::kRunning) {
        AcceptLocked(*result, &effects);
      } else {
        ApplyTerminalLocked(*result, &effects);
      }
    } else {
      RejectLocked(slot, result.status(), &effects);
    }
  }
  Apply(effects);
}

bool Tracker::OutcomeUnknownLocked(int slot, const absl::Status& status) const {
  if (adapters::IsOutcomeUnknown(status)) return true;
  // Without idempotency keys a timed-out request may have reached the provider.
  return !e_->router->adapter(slot)->idempotent_submit() &&
         status.code() == absl::StatusCode::kDeadlineExceeded;
}

void Tracker::LateSubmitAnswerLocked(int slot, const absl::StatusOr<UpstreamStatus>& result,
                                     Effects* effects) {
  v1::Operation next = op_;
  v1::ProviderAttempt* attempt =
      next.attempts_size() > 0 ? next.mutable_attempts(next.attempts_size() - 1) : nullptr;
  std::optional<std::vector<UpstreamOutput>> outputs;
  const bool was_charged = charged_;
  bool accepted = false;
  if (result.ok()) {
    e_->router->RecordSuccess(slot);
    accepted = true;
    charged_ = true;
    next.set_submission(v1::SUBMISSION_STATE_ACCEPTED);
    if (!result->upstream_id.empty()) next.set_upstream_id(result->upstream_id);
    if (attempt != nullptr) {
      attempt->set_upstream_id(result->upstream_id);
      attempt->set_outcome("accepted after the operation ended");
    }
    if (result->phase == UpstreamStatus::Phase::kSucceeded) {
      next.clear_outputs();
      outputs = AddOutputs(*result, &next);
    }
  } else {
    e_->router->RecordFailure(slot, result.status(), &op_.request());
    if (OutcomeUnknownLocked(slot, result.status())) {
      charged_ = true;
      next.set_submission(v1::SUBMISSION_STATE_POSSIBLY_SUBMITTED);
      if (attempt != nullptr) attempt->set_outcome("outcome unknown");
    } else {
      next.set_submission(v1::SUBMISSION_STATE_REJECTED);
      if (attempt != nullptr) {
        attempt->set_outcome(
            absl::StrCat("rejected: ", absl::StatusCodeToString(result.status().code())));
      }
    }
  }
  if (!Commit(std::move(next), effects, std::move(outputs)).ok()) {
    charged_ = was_charged;
    // Keep the answer: it may be the only record of the upstream id.
    submit_in_flight_ = true;
    Post([slot, result](Tracker& t) { t.OnSubmitted(slot, result); }, absl::Seconds(1));
    return;
  }
  if (!accepted || result->phase != UpstreamStatus::Phase::kRunning) return;
  // Tell the provider to stop where its dialect allows; it says whether it was told.
  adapters::PollRequest stop;
  stop.operation_id = id_;
  stop.upstream_id = op_.upstream_id();
  stop.task = op_.task();
  stop.deadline = e_->clock.Now() + e_->options.cancel_notify_timeout;
  stop.wait = false;
  std::weak_ptr<TrackerEnv> weak = env_;
  e_->router->adapter(slot)->Cancel(
      stop, [self = shared_from_this(), weak](absl::StatusOr<bool> told) {
        // Held while the step is posted: the engine may be going away.
        const std::shared_ptr<TrackerEnv> env = weak.lock();
        if (env == nullptr || !told.ok() || !*told) return;
        self->Post(
            [](Tracker& t) {
              Effects notified;
              {
                absl::MutexLock lock(&t.mu_);
                if (t.op_.state() != v1::OPERATION_STATE_CANCELLED) return;
                v1::Operation next = t.op_;
                next.mutable_cancellation()->set_provider_notified(true);
                if (!t.Commit(std::move(next), &notified).ok()) return;
              }
              t.Apply(notified);
            },
            absl::ZeroDuration());
      });
  if (op_.state() == v1::OPERATION_STATE_CANCELLED) FollowUpLocked();
}

std::vector<UpstreamOutput> Tracker::AddOutputs(const UpstreamStatus& status,
                                                v1::Operation* next) const {
  std::vector<UpstreamOutput> outputs;
  for (size_t i = 0; i < status.outputs.size(); ++i) {
    const adapters::ProviderOutput& out = status.outputs[i];
    v1::Asset* asset = next->add_outputs();
    asset->set_name(AssetName(id_, static_cast<int>(i)));
    asset->set_kind(out.kind);
    asset->set_title(out.title);
    asset->set_duration_seconds(out.duration_seconds);
    asset->set_format(out.format);
    asset->set_content_type(out.content_type);
    asset->set_bpm(out.bpm);
    asset->set_key(out.key);
    // Custody's facts are in the very first SUCCEEDED snapshot.
    if (custody_.has_value() && i < custody_->size() && (*custody_)[i].has_value()) {
      asset->set_size_bytes((*custody_)[i]->size_bytes);
      asset->set_sha256((*custody_)[i]->sha256);
      asset->set_in_custody(true);
    }
    outputs.push_back(UpstreamOutput{out.url, out.url_expire_time});
  }
  return outputs;
}

void Tracker::FollowUpLocked() {
  following_up_ = true;
  SchedulePollLocked(absl::ZeroDuration());
}

void Tracker::OnFollowUpPolled(const absl::StatusOr<UpstreamStatus>& result, Effects* effects) {
  if (e_->clock.Now() >= FromProtoTimestamp(op_.deadline())) {
    following_up_ = false;  // the provider did not finish in the operation's time
    return;
  }
  if (!result.ok()) {
    ++consecutive_errors_;
    if (consecutive_errors_ >= kMaxPermanentPollErrors) {
      following_up_ = false;
      return;
    }
    const int exponent = std::min(consecutive_errors_ - 1, 10);
    SchedulePollLocked(
        std::min(e_->options.max_poll_interval, e_->options.min_poll_interval * (1 << exponent)));
    return;
  }
  consecutive_errors_ = 0;
  if (result->phase == UpstreamStatus::Phase::kRunning) {
    SchedulePollLocked(PollDelay(result->next_poll_after, e_->clock.Now() - last_poll_start_));
    return;
  }
  following_up_ = false;
  if (result->phase != UpstreamStatus::Phase::kSucceeded) return;
  // The provider finished the cancelled work anyway: its outputs were paid for.
  v1::Operation next = op_;
  next.clear_outputs();
  std::vector<UpstreamOutput> outputs = AddOutputs(*result, &next);
  if (!Commit(std::move(next), effects, std::move(outputs)).ok()) {
    following_up_ = true;
    SchedulePollLocked(absl::Seconds(1));
  }
}

void Tracker::AcceptLocked(const UpstreamStatus& status, Effects* effects) {
  v1::Operation next = op_;
  next.set_state(v1::OPERATION_STATE_RUNNING);
  next.set_submission(v1::SUBMISSION_STATE_ACCEPTED);
  next.set_upstream_id(status.upstream_id);
  if (next.attempts_size() > 0) {
    auto* attempt = next.mutable_attempts(next.attempts_size() - 1);
    attempt->set_upstream_id(status.upstream_id);
    attempt->set_outcome("accepted");
  }
  const bool was_charged = charged_;
  charged_ = true;  // both providers charge on acceptance
  if (!Commit(std::move(next), effects).ok()) {
    charged_ = was_charged;
    // Keep the answer: it is the only record of the upstream id.
    submit_in_flight_ = true;
    Post([slot = slot_, status](Tracker& t) { t.OnSubmitted(slot, status); }, absl::Seconds(1));
    return;
  }
  e_->live.SetUpstream(op_.provider(), status.upstream_id, id_);
  SchedulePollLocked(PollDelay(status.next_poll_after, absl::ZeroDuration()));
}

void Tracker::RejectLocked(int slot, const absl::Status& status, Effects* effects) {
  e_->router->RecordFailure(slot, status, &op_.request());
  ProviderAdapter* adapter = e_->router->adapter(slot);
  const std::string code = absl::StatusCodeToString(status.code());
  if (OutcomeUnknownLocked(slot, status)) {
    // The provider may have created and charged for the work: never REJECTED, never re-sent,
    // no fallback (which would pay a second provider).
    FailPossiblySubmittedLocked(status, effects);
    return;
  }
  if (op_.request().allow_fallback() &&
      FallbackEligible(status.code(), adapter->idempotent_submit())) {
    const int next_slot = e_->router->PickFallback(op_);
    if (next_slot >= 0) {
      ProviderAdapter* next_adapter = e_->router->adapter(next_slot);
      v1::Operation next = op_;
      next.mutable_attempts(next.attempts_size() - 1)
          ->set_outcome(absl::StrCat("rejected: ", code));
      next.set_submission(v1::SUBMISSION_STATE_NOT_SUBMITTED);
      next.set_provider(next_adapter->provider());
      next.set_provider_account(next_adapter->account());
      next.clear_upstream_id();
      if (!Commit(std::move(next), effects).ok()) {
        ScheduleKickLocked(absl::Seconds(1));
        return;
      }
      if (e_->options.observer != nullptr) {
        e_->options.observer->OnFallback(adapter->provider(), next_adapter->provider());
      }
      slot_ = next_slot;
      SubmitLocked(/*resubmit=*/false, effects);
      return;
    }
  }
  FailLocked(status, v1::SUBMISSION_STATE_REJECTED, effects, absl::StrCat("rejected: ", code));
}

void Tracker::ApplyTerminalLocked(const UpstreamStatus& status, Effects* effects) {
  if (status.phase == UpstreamStatus::Phase::kSucceeded && !status.outputs.empty() &&
      e_->custody != nullptr && e_->custody->enabled() && !custody_.has_value()) {
    StartCustodyLocked(status);
    return;
  }
  v1::Operation next = op_;
  next.set_submission(v1::SUBMISSION_STATE_ACCEPTED);
  if (!status.upstream_id.empty()) next.set_upstream_id(status.upstream_id);
  if (next.attempts_size() > 0) {
    auto* attempt = next.mutable_attempts(next.attempts_size() - 1);
    if (!status.upstream_id.empty()) attempt->set_upstream_id(status.upstream_id);
    attempt->set_outcome("accepted");
  }
  std::optional<std::vector<UpstreamOutput>> outputs;
  const bool was_charged = charged_;
  if (status.phase == UpstreamStatus::Phase::kSucceeded) {
    next.set_state(v1::OPERATION_STATE_SUCCEEDED);
    next.clear_outputs();
    outputs = AddOutputs(status, &next);
    charged_ = true;
  } else {
    next.set_state(v1::OPERATION_STATE_FAILED);
    const absl::Status error =
        status.error.ok() ? WithErrorInfo(absl::UnknownError("the provider reported a failure"),
                                          "PROVIDER_FAILED", kGatewayDomain)
                          : status.error;
    *next.mutable_error() = ToRpcStatus(error);
  }
  if (!Commit(std::move(next), effects, std::move(outputs)).ok()) {
    charged_ = was_charged;
    Post(
        [status](Tracker& t) {
          Effects retry_effects;
          {
            absl::MutexLock lock(&t.mu_);
            if (t.stopped_ || t.op_.done()) return;
            t.ApplyTerminalLocked(status, &retry_effects);
          }
          t.Apply(retry_effects);
        },
        absl::Seconds(1));
  }
}

// Fetches every output into the asset store before SUCCEEDED is committed (bounded by
// custody_fetch_timeout, off the tracker's lock); then applies `status` again with what custody
// stored. The URLs are stored first so the background retry can use them after a failure.
void Tracker::StartCustodyLocked(const UpstreamStatus& status) {
  if (custody_in_flight_) return;
  custody_in_flight_ = true;
  std::vector<UpstreamOutput> outputs;
  outputs.reserve(status.outputs.size());
  for (const auto& out : status.outputs) {
    outputs.push_back(UpstreamOutput{out.url, out.url_expire_time});
  }
  absl::Status stored = e_->store->SetUpstreamOutputs(id_, outputs);
  if (!stored.ok()) {
    log::Warning("could not store asset URLs", {{"operation", id_}, {"error", stored.ToString()}});
  }
  std::weak_ptr<Tracker> weak = weak_from_this();
  e_->custody->FetchBeforeSuccess(id_, tenant_, op_.provider(), outputs,
                                  [weak, status](std::vector<std::optional<StoredObject>> results) {
                                    auto self = weak.lock();
                                    if (self == nullptr) return;
                                    self->Post(
                                        [status, results = std::move(results)](Tracker& t) mutable {
                                          Effects effects;
                                          {
                                            absl::MutexLock lock(&t.mu_);
                                            t.custody_in_flight_ = false;
                                            if (t.stopped_ || t.op_.done()) return;
                                            t.custody_ = std::move(results);
                                            t.ApplyTerminalLocked(status, &effects);
                                          }
                                          t.Apply(effects);
                                        },
                                        absl::ZeroDuration());
                                  });
}

// Start-to-start spacing between polls: what the provider suggests, bounded; an instant answer
// without a suggestion waits min_poll_interval (no hot loop on a non-long-polling provider).
absl::Duration Tracker::PollDelay(absl::Duration suggested, absl::Duration elapsed) const {
  absl::Duration delay = std::min(suggested, e_->options.max_poll_interval);
  if (delay <= absl::ZeroDuration()) {
    delay = std::max(absl::ZeroDuration(), e_->options.min_poll_interval - elapsed);
  }
  return delay;
}

void Tracker::SchedulePollLocked(absl::Duration delay) {
  const uint64_t generation = ++generation_;
  Post(
      [generation](Tracker& t) {
        absl::MutexLock lock(&t.mu_);
        if (t.generation_ != generation || !t.PollingAllowedLocked()) return;
        t.PollLocked();
      },
      delay);
}

void Tracker::PollLocked() {
  if (poll_in_flight_ || !PollingAllowedLocked() || slot_ < 0) return;
  poll_in_flight_ = true;
  nudge_pending_ = false;
  const absl::Time now = e_->clock.Now();
  last_poll_start_ = now;
  adapters::PollRequest request;
  request.operation_id = id_;
  request.upstream_id = op_.upstream_id();
  request.task = op_.task();
  request.deadline = std::min(FromProtoTimestamp(op_.deadline()), now + e_->options.poll_timeout);
  request.wait = true;
  const int slot = slot_;
  std::weak_ptr<TrackerEnv> weak = env_;
  e_->router->adapter(slot)->Poll(std::move(request), [self = shared_from_this(), weak, slot](
                                                          absl::StatusOr<UpstreamStatus> result) {
    // Held while the step is posted: the engine (and its executor) may be going away.
    const std::shared_ptr<TrackerEnv> env = weak.lock();
    if (env == nullptr) return;
    self->Post([slot, result = std::move(result)](Tracker& t) { t.OnPolled(slot, result); },
               absl::ZeroDuration());
  });
}

void Tracker::OnPolled(int slot, const absl::StatusOr<UpstreamStatus>& result) {
  Effects effects;
  {
    absl::MutexLock lock(&mu_);
    poll_in_flight_ = false;
    if (!PollingAllowedLocked()) return;
    if (following_up_) {
      OnFollowUpPolled(result, &effects);
    } else {
      OnLivePolledLocked(slot, result, &effects);
    }
  }
  Apply(effects);
}

void Tracker::OnLivePolledLocked(int slot, const absl::StatusOr<UpstreamStatus>& result,
                                 Effects* effects) {
  const absl::Duration elapsed = e_->clock.Now() - last_poll_start_;
  if (result.ok()) {
    e_->router->RecordSuccess(slot);
    consecutive_errors_ = 0;
    if (result->phase != UpstreamStatus::Phase::kRunning) {
      ApplyTerminalLocked(*result, effects);
    } else if (nudge_pending_) {
      ++generation_;
      PollLocked();
    } else {
      SchedulePollLocked(PollDelay(result->next_poll_after, elapsed));
    }
    return;
  }
  const absl::Status& status = result.status();
  e_->router->RecordFailure(slot, status);
  ++consecutive_errors_;
  const absl::StatusCode code = status.code();
  const bool permanent = code == absl::StatusCode::kNotFound ||
                         code == absl::StatusCode::kInvalidArgument ||
                         code == absl::StatusCode::kPermissionDenied;
  if (permanent && consecutive_errors_ >= kMaxPermanentPollErrors) {
    FailLocked(status, std::nullopt, effects);
  } else {
    // Exponential backoff with jitter, within the poll interval bounds.
    const int exponent = std::min(consecutive_errors_ - 1, 10);
    absl::Duration backoff =
        std::min(e_->options.max_poll_interval, e_->options.min_poll_interval * (1 << exponent));
    thread_local std::mt19937 rng{std::random_device{}()};
    backoff = backoff * std::uniform_real_distribution<double>(0.5, 1.0)(rng);
    SchedulePollLocked(backoff);
  }
}

}  // namespace musicgw::operations
