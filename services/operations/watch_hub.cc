#include "services/operations/watch_hub.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/errors.h"
#include "common/log.h"
#include "common/status_macros.h"

namespace musicgw::operations {

namespace v1 = musicgw::v1;

namespace {

// Drops watchers whose reader is gone or whose stream is over.
void Prune(std::vector<std::weak_ptr<WatchState>>& watchers) {
  watchers.erase(std::remove_if(watchers.begin(), watchers.end(),
                                [](const std::weak_ptr<WatchState>& weak) {
                                  auto state = weak.lock();
                                  return state == nullptr || state->over();
                                }),
                 watchers.end());
}

}  // namespace

WatchHub::WatchHub(WatchHubOptions options, const Clock& clock, std::shared_ptr<Executor> executor,
                   std::shared_ptr<OperationStore> store)
    : options_(options),
      clock_(clock),
      executor_(std::move(executor)),
      store_(std::move(store)),
      open_(std::make_shared<std::atomic<int64_t>>(0)) {}

absl::StatusOr<std::unique_ptr<EventStream<v1::OperationEvent>>> WatchHub::Open(
    const std::string& operation_id, int64_t after_sequence,
    absl::FunctionRef<absl::StatusOr<v1::Operation>()> current) {
  MUSICGW_ASSIGN_OR_RETURN(std::shared_ptr<WatchState> state,
                           Subscribe(operation_id, after_sequence, current));
  return StreamOf<v1::OperationEvent>(std::move(state));
}

absl::StatusOr<std::unique_ptr<EventStream<WatchEvent>>> WatchHub::OpenShared(
    const std::string& operation_id, int64_t after_sequence,
    absl::FunctionRef<absl::StatusOr<v1::Operation>()> current) {
  MUSICGW_ASSIGN_OR_RETURN(std::shared_ptr<WatchState> state,
                           Subscribe(operation_id, after_sequence, current));
  return StreamOf<WatchEvent>(std::move(state));
}

template <typename Event>
std::unique_ptr<EventStream<Event>> WatchHub::StreamOf(std::shared_ptr<WatchState> state) {
  open_->fetch_add(1);
  auto counter = open_;
  return std::make_unique<WatchStream<Event>>(std::move(state),
                                              [counter] { counter->fetch_sub(1); });
}

absl::StatusOr<std::shared_ptr<WatchState>> WatchHub::Subscribe(
    const std::string& operation_id, int64_t after_sequence,
    absl::FunctionRef<absl::StatusOr<v1::Operation>()> current) {
  auto state = std::make_shared<WatchState>(options_.buffer, clock_);
  {
    absl::MutexLock lock(&mu_);
    if (shutdown_) return shutdown_status_;
    MUSICGW_ASSIGN_OR_RETURN(const v1::Operation op, current());
    MUSICGW_RETURN_IF_ERROR(Fill(*state, op, after_sequence));
    if (!op.done()) {
      // Subscribed whoever tracks it: a cross-process feed brings other replicas' changes.
      Watchers& watchers = by_operation_[operation_id];
      Prune(watchers);
      watchers.push_back(state);
    }
    if (all_.size() >= prune_at_) {
      Prune(all_);
      prune_at_ = std::max<size_t>(64, 2 * all_.size());
    }
    all_.push_back(state);
    ArmLocked(clock_.Now() + options_.heartbeat);
  }
  return state;
}

absl::Status WatchHub::Fill(WatchState& state, const v1::Operation& current,
                            int64_t after_sequence) {
  if (after_sequence < 0) return InvalidFieldError("after_sequence", "must not be negative");
  if (after_sequence > current.sequence()) {
    return InvalidFieldError(
        "after_sequence",
        absl::StrCat("is ahead of the operation (at sequence ", current.sequence(), ")"));
  }
  auto snapshot =
      std::make_shared<const SharedSnapshot>(std::make_shared<const v1::Operation>(current));
  if (after_sequence == 0) {
    state.Push(snapshot, v1::OperationEvent::KIND_SNAPSHOT);
  } else if (after_sequence < current.sequence()) {
    OperationRecord record;
    record.operation.set_name(current.name());
    auto events = store_->EventsAfter(record.id(), after_sequence);
    if (events.ok() && !events->empty() && events->front().sequence == after_sequence + 1) {
      for (auto& event : *events) {
        if (event.sequence > current.sequence()) break;
        state.Push(std::make_shared<const SharedSnapshot>(
                       std::make_shared<const v1::Operation>(std::move(event.operation))),
                   v1::OperationEvent::KIND_CHANGE, /*replay=*/true);
      }
    } else {
      // The missed events were pruned: the latest state stands in for them.
      state.Push(snapshot, v1::OperationEvent::KIND_CHANGE, /*replay=*/true,
                 /*coalesced=*/true);
    }
  }
  // Later changes start after `current`, whether or not anything was queued for it.
  state.SkipTo(current.sequence());
  if (current.done()) state.EndAfterQueue();
  return absl::OkStatus();
}

void WatchHub::OnChange(const Change& change) {
  if (change.snapshot == nullptr) return CatchUp(change.operation_id, change.sequence);
  Deliver(change.operation_id, {change.snapshot});
}

void WatchHub::OnResync() {
  std::vector<std::string> ids;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [id, watchers] : by_operation_) ids.push_back(id);
  }
  for (const std::string& id : ids) CatchUp(id, 0);
}

void WatchHub::CatchUp(const std::string& operation_id, int64_t sequence) {
  int64_t from = -1;
  {
    absl::MutexLock lock(&mu_);
    auto it = by_operation_.find(operation_id);
    if (it == by_operation_.end()) return;
    for (const auto& weak : it->second) {
      auto state = weak.lock();
      if (state == nullptr || state->over()) continue;
      const int64_t position = state->position();
      if (from < 0 || position < from) from = position;
    }
  }
  // Nobody to tell, or every watcher has it (this replica's own change, published locally).
  if (from < 0 || (sequence > 0 && sequence <= from)) return;
  auto events = store_->EventsAfter(operation_id, from);
  if (!events.ok()) {
    // Read again shortly from the same position: the change that announced it may be the last.
    log::Warning("watch: could not read the changes of an operation",
                 {{"operation", operation_id}, {"error", events.status().ToString()}});
    std::weak_ptr<WatchHub> weak = weak_from_this();
    executor_->PostAfter(absl::Milliseconds(500), [weak, operation_id] {
      if (auto self = weak.lock()) self->CatchUp(operation_id, 0);
    });
    return;
  }
  std::vector<std::shared_ptr<const v1::Operation>> snapshots;
  snapshots.reserve(events->size());
  for (auto& event : *events) {
    snapshots.push_back(std::make_shared<const v1::Operation>(std::move(event.operation)));
  }
  if (!snapshots.empty()) Deliver(operation_id, snapshots);
}

void WatchHub::Deliver(const std::string& operation_id,
                       const std::vector<std::shared_ptr<const v1::Operation>>& snapshots) {
  std::vector<std::shared_ptr<WatchState>> wake;
  // One shared snapshot per change, whatever the number of watchers.
  std::vector<WatchState::Snapshot> shared;
  shared.reserve(snapshots.size());
  for (const auto& snapshot : snapshots) {
    shared.push_back(std::make_shared<const SharedSnapshot>(snapshot));
  }
  {
    absl::MutexLock lock(&mu_);
    auto it = by_operation_.find(operation_id);
    if (it == by_operation_.end()) return;
    for (const auto& weak : it->second) {
      auto state = weak.lock();
      if (state == nullptr) continue;
      bool owed = false;
      // Push drops what the watcher has already: a change is never sent twice to one stream.
      for (const auto& snapshot : shared) {
        owed = state->Push(snapshot, v1::OperationEvent::KIND_CHANGE) || owed;
      }
      if (owed) wake.push_back(std::move(state));
    }
    if (snapshots.back()->done()) {
      by_operation_.erase(it);
    } else {
      Prune(it->second);
    }
  }
  for (auto& state : wake) state->RunWake();
}

void WatchHub::Shutdown(const absl::Status& status) {
  Watchers all;
  {
    absl::MutexLock lock(&mu_);
    if (shutdown_) return;
    shutdown_ = true;
    shutdown_status_ = status;
    all.swap(all_);
    by_operation_.clear();
    ++timer_generation_;
    timer_at_ = absl::InfiniteFuture();
  }
  for (auto& weak : all) {
    if (auto state = weak.lock()) {
      if (state->Finish(status)) state->RunWake();
    }
  }
}

absl::Time WatchHub::next_heartbeat() const {
  absl::MutexLock lock(&mu_);
  return timer_at_;
}

void WatchHub::ArmLocked(absl::Time at) {
  if (shutdown_ || at >= timer_at_) return;
  timer_at_ = at;
  const uint64_t generation = ++timer_generation_;
  std::weak_ptr<WatchHub> weak = weak_from_this();
  executor_->PostAfter(at - clock_.Now(), [weak, generation] {
    auto self = weak.lock();
    if (self == nullptr) return;
    {
      absl::MutexLock lock(&self->mu_);
      if (self->timer_generation_ != generation) return;  // re-armed earlier, or shut down
      self->timer_at_ = absl::InfiniteFuture();
    }
    self->Tick();
  });
}

void WatchHub::Tick() {
  std::vector<std::shared_ptr<WatchState>> states;
  {
    absl::MutexLock lock(&mu_);
    Prune(all_);
    states.reserve(all_.size());
    for (const auto& weak : all_) {
      if (auto state = weak.lock()) states.push_back(std::move(state));
    }
  }
  const absl::Time now = clock_.Now();
  // Watchers that fall due within one slack are served by this tick: every watcher left has
  // more than `slack` to go, so the timer fires at most interval/slack times per interval
  // (each tick walks every watcher) instead of once per watcher.
  const absl::Duration slack = options_.heartbeat / 16;
  absl::Duration soonest = absl::InfiniteDuration();
  for (const auto& state : states) {
    absl::Duration next;
    if (state->Heartbeat(now, options_.heartbeat, slack, &next)) state->RunWake();
    soonest = std::min(soonest, next);
  }
  if (soonest == absl::InfiniteDuration()) return;
  absl::MutexLock lock(&mu_);
  ArmLocked(now + std::max(soonest, absl::Milliseconds(1)));
}

}  // namespace musicgw::operations
