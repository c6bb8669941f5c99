#include "services/operations/quota_monitor.h"

#include <algorithm>
#include <utility>

#include "common/log.h"

namespace musicgw::operations {

// Shared with pending callbacks, so a callback that outlives the monitor finds `stopped`.
struct QuotaMonitor::State {
  absl::Mutex mu;
  bool stopped ABSL_GUARDED_BY(mu) = false;
  std::vector<AccountQuota> accounts ABSL_GUARDED_BY(mu);
  // Per account: a read is in flight / a quick refresh is already scheduled.
  std::vector<char> reading ABSL_GUARDED_BY(mu);
  std::vector<char> refresh_pending ABSL_GUARDED_BY(mu);
};

QuotaMonitor::QuotaMonitor(std::vector<adapters::ProviderAdapter*> adapters, http::Client* timers,
                           absl::Duration interval, const Clock& clock)
    : adapters_(std::move(adapters)),
      timers_(timers),
      interval_(interval),
      clock_(clock),
      state_(std::make_shared<State>()) {
  absl::MutexLock lock(&state_->mu);
  for (const auto* adapter : adapters_) {
    AccountQuota quota;
    quota.provider = adapter->provider();
    quota.account = adapter->account();
    state_->accounts.push_back(std::move(quota));
  }
  state_->reading.assign(adapters_.size(), 0);
  state_->refresh_pending.assign(adapters_.size(), 0);
}

QuotaMonitor::~QuotaMonitor() { Stop(); }

void QuotaMonitor::Start() {
  for (size_t i = 0; i < adapters_.size(); ++i) Read(i, /*periodic=*/true);
}

void QuotaMonitor::Stop() {
  absl::MutexLock lock(&state_->mu);
  state_->stopped = true;
}

void QuotaMonitor::RefreshSoon(musicgw::v1::Provider provider) {
  for (size_t i = 0; i < adapters_.size(); ++i) {
    if (adapters_[i]->provider() != provider) continue;
    {
      absl::MutexLock lock(&state_->mu);
      if (state_->stopped || state_->refresh_pending[i]) continue;
      state_->refresh_pending[i] = 1;
    }
    // A short delay folds a burst of completions into one read.
    timers_->RunAfter(absl::Milliseconds(500), [this, i, state = state_]() {
      {
        absl::MutexLock lock(&state->mu);
        state->refresh_pending[i] = 0;
        if (state->stopped) return;
      }
      Read(i, /*periodic=*/false);
    });
  }
}

void QuotaMonitor::Schedule(size_t index, absl::Duration delay) {
  timers_->RunAfter(delay, [this, index, state = state_]() {
    {
      absl::MutexLock lock(&state->mu);
      if (state->stopped) return;
    }
    Read(index, /*periodic=*/true);
  });
}

void QuotaMonitor::Read(size_t index, bool periodic) {
  {
    absl::MutexLock lock(&state_->mu);
    if (state_->stopped) return;
    if (state_->reading[index]) {
      // A refresh is in flight; keep the periodic chain alive without a second read.
      if (periodic) Schedule(index, interval_);
      return;
    }
    state_->reading[index] = 1;
  }
  if (share_ == nullptr) {
    ReadProvider(index, periodic);
    return;
  }
  const absl::Time now = clock_.Now();
  share_->ClaimReader(now, now + lease_,
                      [this, index, periodic, state = state_](absl::StatusOr<bool> reader) {
                        {
                          absl::MutexLock lock(&state->mu);
                          if (state->stopped) {
                            state->reading[index] = 0;
                            return;
                          }
                        }
                        if (reader.ok() && *reader) {
                          ReadProvider(index, periodic);
                        } else {
                          // Without the lease (or the ledger): what the reader published.
                          LoadShared(index, periodic);
                        }
                      });
}

void QuotaMonitor::LoadShared(size_t index, bool periodic) {
  share_->Load(adapters_[index]->provider(), adapters_[index]->account(),
               [this, index, periodic, state = state_](absl::StatusOr<AccountQuota> shared) {
                 bool found = false;
                 {
                   absl::MutexLock lock(&state->mu);
                   state->reading[index] = 0;
                   if (state->stopped) return;
                   AccountQuota& account = state->accounts[index];
                   found = shared.ok();
                   if (found && shared->read_time > account.read_time) {
                     if (listener_) listener_(adapters_[index], &shared->figures);
                     account.figures = std::move(shared->figures);
                     account.read_time = shared->read_time;
                     account.last_error = std::move(shared->last_error);
                   }
                 }
                 // Until the reader has published, look again soon.
                 if (periodic) {
                   Schedule(index, found ? interval_ : std::min(interval_, absl::Seconds(1)));
                 }
               });
}

void QuotaMonitor::ReadProvider(size_t index, bool periodic) {
  adapters_[index]->ReadQuota([this, index, periodic, state = state_](
                                  absl::StatusOr<std::vector<adapters::QuotaFigure>> figures) {
    {
      absl::MutexLock lock(&state->mu);
      state->reading[index] = 0;
      if (state->stopped) return;
      AccountQuota& account = state->accounts[index];
      if (figures.ok()) {
        // As read: every replica completes the figures itself (listener).
        std::vector<adapters::QuotaFigure> raw;
        if (share_ != nullptr) raw = *figures;
        // Under the lock, so no call is under way once Stop() returns.
        if (listener_) listener_(adapters_[index], &*figures);
        account.figures = std::move(*figures);
        // Stamped after the listener ran: a read_time is never earlier than its listener call.
        account.read_time = clock_.Now();
        account.last_error.clear();
        if (share_ != nullptr) {
          AccountQuota published = account;
          published.figures = std::move(raw);
          share_->Publish(std::move(published));
        }
      } else {
        account.last_error = std::string(figures.status().message());
      }
    }
    if (!figures.ok()) {
      log::Warning("quota read failed",
                   {{"provider", musicgw::v1::Provider_Name(adapters_[index]->provider())},
                    {"account", adapters_[index]->account()},
                    {"error", std::string(figures.status().message())}});
    }
    if (periodic) Schedule(index, interval_);
  });
}

std::vector<AccountQuota> QuotaMonitor::Snapshot() const {
  absl::MutexLock lock(&state_->mu);
  return state_->accounts;
}

}  // namespace musicgw::operations
