// File: fake_adapter.h
// A scripted ProviderAdapter standing in for a provider in engine tests. It models the
// provider's side too: "jobs" it created (deduplicated by idempotency key when idempotent), so a
// test can tell how many upstream jobs a request really started. Callbacks arrive on its own
// thread after `latency`, never inline, like a real adapter's.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "adapters/capabilities.h"
#include "adapters/provider.h"
#include "services/operations/executor.h"

namespace musicgw::operations::testing {

class FakeAdapter final : public adapters::ProviderAdapter {
 public:
  using UpstreamStatus = adapters::UpstreamStatus;

  struct Options {
    musicgw::v1::Provider provider = musicgw::v1::PROVIDER_SOUNDPIECE;
    std::string account = "fake";
    bool synchronous = false;
    bool idempotent = true;
    absl::Duration latency = absl::Milliseconds(1);
    std::vector<std::string> quota_resources;
    // Per task, ahead of quota_resources.
    std::map<musicgw::v1::TaskKind, std::vector<std::string>> quota_resources_by_task;
  };

  // What Submit does when no scripted result is queued.
  enum class SubmitMode {
    kAnswer,      // create (or find) the job and answer
    kHang,        // create the job, never answer (the gateway dies waiting)
    kDropBefore,  // record the call, create nothing, never answer (dies before sending)
    kHold,        // create the job, keep the answer until ReleaseHeld() (a slow provider)
  };

  explicit FakeAdapter(Options options) : options_(std::move(options)), executor_(1) {}
  FakeAdapter() : FakeAdapter(Options()) {}
  ~FakeAdapter() override { executor_.Stop(); }

  // ---- scripting ----
  void SetSubmitMode(SubmitMode mode) {
    absl::MutexLock lock(&mu_);
    submit_mode_ = mode;
  }
  // Delivers the answers SubmitMode::kHold kept, in order.
  void ReleaseHeld() {
    std::vector<std::pair<adapters::Callback<UpstreamStatus>, absl::StatusOr<UpstreamStatus>>> held;
    {
      absl::MutexLock lock(&mu_);
      held.swap(held_);
    }
    for (auto& [done, result] : held) Deliver(std::move(done), std::move(result));
  }
  // Results for the next Submit calls, in order (before the mode applies).
  void PushSubmitResult(absl::StatusOr<UpstreamStatus> result) {
    absl::MutexLock lock(&mu_);
    submit_results_.push_back(std::move(result));
  }
  // Results for the next Poll(wait=true) calls, in order (before the job model applies).
  void PushPollResult(absl::StatusOr<UpstreamStatus> result) {
    absl::MutexLock lock(&mu_);
    poll_results_.push_back(std::move(result));
  }
  // A job succeeds on its n-th poll (n >= 1); 0: never.
  void SetPollsToFinish(int n) {
    absl::MutexLock lock(&mu_);
    polls_to_finish_ = n;
  }
  void SetNextPollAfter(absl::Duration d) {
    absl::MutexLock lock(&mu_);
    next_poll_after_ = d;
  }
  // Jobs finish failed with this error instead of succeeding.
  void SetJobError(absl::Status error) {
    absl::MutexLock lock(&mu_);
    job_error_ = std::move(error);
  }
  void SetOutputs(std::vector<adapters::ProviderOutput> outputs) {
    absl::MutexLock lock(&mu_);
    outputs_ = std::move(outputs);
  }
  void SetCancelAnswer(bool told) {
    absl::MutexLock lock(&mu_);
    cancel_answer_ = told;
  }
  // Cancel calls are recorded and never answered (a provider that hangs).
  void SetCancelHangs() {
    absl::MutexLock lock(&mu_);
    cancel_hangs_ = true;
  }

  // ---- observation ----
  int submit_calls() const {
    absl::MutexLock lock(&mu_);
    return submit_calls_;
  }
  int poll_calls() const {
    absl::MutexLock lock(&mu_);
    return poll_calls_;
  }
  int refresh_polls() const {
    absl::MutexLock lock(&mu_);
    return refresh_polls_;
  }
  int cancel_calls() const {
    absl::MutexLock lock(&mu_);
    return cancel_calls_;
  }
  int upstream_jobs() const {
    absl::MutexLock lock(&mu_);
    return static_cast<int>(jobs_.size());
  }
  std::vector<std::string> idempotency_keys() const {
    absl::MutexLock lock(&mu_);
    return keys_;
  }
  bool WaitForSubmitCalls(int n, absl::Duration timeout) const {
    absl::MutexLock lock(&mu_);
    auto reached = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return submit_calls_ >= n; };
    return mu_.AwaitWithTimeout(absl::Condition(&reached), timeout);
  }
  bool WaitForPollCalls(int n, absl::Duration timeout) const {
    absl::MutexLock lock(&mu_);
    auto reached = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return poll_calls_ >= n; };
    return mu_.AwaitWithTimeout(absl::Condition(&reached), timeout);
  }

  // ---- ProviderAdapter ----
  musicgw::v1::Provider provider() const override { return options_.provider; }
  const std::string& account() const override { return options_.account; }
  std::string dialect() const override { return "fake"; }
  bool idempotent_submit() const override { return options_.idempotent; }
  bool synchronous() const override { return options_.synchronous; }
  absl::Status CheckRequest(const musicgw::v1::GenerateRequest&) const override {
    return absl::OkStatus();
  }
  std::vector<std::string> QuotaResources(
      const musicgw::v1::GenerateRequest& request) const override {
    auto it = options_.quota_resources_by_task.find(adapters::TaskKindOf(request));
    return it != options_.quota_resources_by_task.end() ? it->second : options_.quota_resources;
  }

  void Submit(adapters::SubmitRequest request, adapters::Callback<UpstreamStatus> done) override {
    absl::StatusOr<UpstreamStatus> result;
    {
      absl::MutexLock lock(&mu_);
      ++submit_calls_;
      keys_.push_back(request.idempotency_key);
      if (!submit_results_.empty()) {
        result = std::move(submit_results_.front());
        submit_results_.pop_front();
      } else {
        if (submit_mode_ == SubmitMode::kDropBefore) return;
        std::string id;
        auto existing = by_key_.find(request.idempotency_key);
        if (options_.idempotent && existing != by_key_.end()) {
          id = existing->second;
        } else {
          id = absl::StrCat("up-", options_.account, "-", jobs_.size() + 1);
          jobs_[id] = 0;
          by_key_[request.idempotency_key] = id;
        }
        if (submit_mode_ == SubmitMode::kHang) return;
        if (options_.synchronous) {
          result = FinishedLocked(id);
        } else {
          UpstreamStatus status;
          status.upstream_id = id;
          status.next_poll_after = next_poll_after_;
          result = status;
        }
      }
      if (submit_mode_ == SubmitMode::kHold) {
        held_.emplace_back(std::move(done), std::move(result));
        return;
      }
    }
    Deliver(std::move(done), std::move(result));
  }

  void Poll(adapters::PollRequest request, adapters::Callback<UpstreamStatus> done) override {
    absl::StatusOr<UpstreamStatus> result;
    {
      absl::MutexLock lock(&mu_);
      if (!request.wait) {
        ++refresh_polls_;
        result = FinishedLocked(request.upstream_id);
      } else {
        ++poll_calls_;
        if (!poll_results_.empty()) {
          result = std::move(poll_results_.front());
          poll_results_.pop_front();
        } else if (jobs_.count(request.upstream_id) == 0) {
          result = absl::NotFoundError("no such job");
        } else {
          const int polls = ++jobs_[request.upstream_id];
          if (polls_to_finish_ > 0 && polls >= polls_to_finish_) {
            result = FinishedLocked(request.upstream_id);
          } else {
            UpstreamStatus status;
            status.upstream_id = request.upstream_id;
            status.next_poll_after = next_poll_after_;
            result = status;
          }
        }
      }
    }
    Deliver(std::move(done), std::move(result));
  }

  void Cancel(adapters::PollRequest, adapters::Callback<bool> done) override {
    bool told;
    {
      absl::MutexLock lock(&mu_);
      ++cancel_calls_;
      told = cancel_answer_;
      if (cancel_hangs_) {
        hung_cancels_.push_back(std::move(done));
        return;
      }
    }
    executor_.PostAfter(options_.latency,
                        [done = std::move(done), told]() mutable { std::move(done)(told); });
  }

  void ReadQuota(adapters::Callback<std::vector<adapters::QuotaFigure>> done) override {
    executor_.Post([done = std::move(done)]() mutable {
      std::move(done)(std::vector<adapters::QuotaFigure>{});
    });
  }

 private:
  UpstreamStatus FinishedLocked(const std::string& id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    UpstreamStatus status;
    status.upstream_id = id;
    if (!job_error_.ok()) {
      status.phase = UpstreamStatus::Phase::kFailed;
      status.error = job_error_;
    } else {
      status.phase = UpstreamStatus::Phase::kSucceeded;
      status.outputs = outputs_;
      if (status.outputs.empty()) {
        adapters::ProviderOutput output;
        output.title = "fake";
        output.duration_seconds = 30;
        output.format = musicgw::v1::AUDIO_FORMAT_FLAC;
        output.content_type = "audio/flac";
        output.url = "http://127.0.0.1:9/unused";
        status.outputs.push_back(output);
      }
    }
    return status;
  }

  void Deliver(adapters::Callback<UpstreamStatus> done, absl::StatusOr<UpstreamStatus> result) {
    executor_.PostAfter(options_.latency,
                        [done = std::move(done), result = std::move(result)]() mutable {
                          std::move(done)(std::move(result));
                        });
  }

  const Options options_;
  mutable absl::Mutex mu_;
  SubmitMode submit_mode_ ABSL_GUARDED_BY(mu_) = SubmitMode::kAnswer;
  std::vector<std::pair<adapters::Callback<UpstreamStatus>, absl::StatusOr<UpstreamStatus>>> held_
      ABSL_GUARDED_BY(mu_);
  std::deque<absl::StatusOr<UpstreamStatus>> submit_results_ ABSL_GUARDED_BY(mu_);
  std::deque<absl::StatusOr<UpstreamStatus>> poll_results_ ABSL_GUARDED_BY(mu_);
  int polls_to_finish_ ABSL_GUARDED_BY(mu_) = 2;
  absl::Duration next_poll_after_ ABSL_GUARDED_BY(mu_) = absl::Milliseconds(5);
  absl::Status job_error_ ABSL_GUARDED_BY(mu_);
  std::vector<adapters::ProviderOutput> outputs_ ABSL_GUARDED_BY(mu_);
  bool cancel_answer_ ABSL_GUARDED_BY(mu_) = false;
  bool cancel_hangs_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<adapters::Callback<bool>> hung_cancels_ ABSL_GUARDED_BY(mu_);
  int submit_calls_ ABSL_GUARDED_BY(mu_) = 0;
  int poll_calls_ ABSL_GUARDED_BY(mu_) = 0;
  int refresh_polls_ ABSL_GUARDED_BY(mu_) = 0;
  int cancel_calls_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::string, int> jobs_ ABSL_GUARDED_BY(mu_);  // upstream id -> polls so far
  std::map<std::string, std::string> by_key_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> keys_ ABSL_GUARDED_BY(mu_);
  // Last member: stopped first in the destructor, while the state above is alive.
  Executor executor_;
};

}  // namespace musicgw::operations::testing
