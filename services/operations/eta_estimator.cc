#include "services/operations/eta_estimator.h"

#include <algorithm>
#include <utility>

#include "common/time_util.h"

namespace musicgw::operations {

namespace v1 = musicgw::v1;

std::optional<absl::Duration> MedianDuration(absl::Span<const absl::Duration> durations) {
  if (durations.empty()) return std::nullopt;
  std::vector<absl::Duration> sorted(durations.begin(), durations.end());
  std::sort(sorted.begin(), sorted.end());
  const size_t mid = sorted.size() / 2;
  if (sorted.size() % 2 == 1) return sorted[mid];
  return (sorted[mid - 1] + sorted[mid]) / 2;
}

absl::Time EstimateDoneTime(absl::Duration typical, absl::Time start, absl::Time now,
                            absl::Duration overdue_margin) {
  // A start in the future (clock skew between replicas) counts as now.
  const absl::Duration elapsed = std::max(now - start, absl::ZeroDuration());
  const absl::Duration remaining = typical - elapsed;
  return now + std::max(remaining, overdue_margin);
}

EtaEstimator::EtaEstimator(OperationStore& store, const Clock& clock, EtaOptions options)
    : store_(store), clock_(clock), options_(options) {}

void EtaEstimator::Annotate(v1::Operation* operation) {
  if (operation->done() || operation->provider_account().empty() || !operation->has_create_time()) {
    operation->clear_estimated_done_time();
    return;
  }
  const std::optional<absl::Duration> typical = Typical(*operation);
  if (!typical.has_value()) {
    operation->clear_estimated_done_time();
    return;
  }
  const absl::Time now = clock_.Now();
  *operation->mutable_estimated_done_time() = ToProtoTimestamp(EstimateDoneTime(
      *typical, FromProtoTimestamp(operation->create_time()), now, options_.overdue_margin));
}

std::optional<absl::Duration> EtaEstimator::Typical(const v1::Operation& operation) {
  Key key{operation.provider(), operation.provider_account(), operation.task()};
  const absl::Time now = clock_.Now();
  {
    absl::MutexLock lock(&mu_);
    auto it = cache_.find(key);
    if (it != cache_.end() && now - it->second.read_time < options_.cache_ttl) {
      return it->second.typical;
    }
  }
  // Read outside the lock: a slow ledger must not serialize every snapshot read.
  auto durations = store_.RecentDurations(operation.provider(), operation.provider_account(),
                                          operation.task(), options_.history);
  if (!durations.ok()) return std::nullopt;
  std::optional<absl::Duration> typical = MedianDuration(*durations);
  // No history is not cached: the first success of an account and task counts at once (and
  // an empty index range is cheap to read).
  if (!typical.has_value()) return std::nullopt;
  absl::MutexLock lock(&mu_);
  cache_[std::move(key)] = Entry{typical, now};
  return typical;
}

namespace {

class EstimatingStream final : public EventStream<v1::OperationEvent> {
 public:
  EstimatingStream(std::unique_ptr<EventStream<v1::OperationEvent>> inner, EtaEstimator& eta)
      : inner_(std::move(inner)), eta_(eta) {}

  std::optional<v1::OperationEvent> Next(bool* finished, absl::Status* final_status) override {
    std::optional<v1::OperationEvent> event = inner_->Next(finished, final_status);
    if (event.has_value() && event->has_operation()) eta_.Annotate(event->mutable_operation());
    return event;
  }
  void SetWakeup(absl::AnyInvocable<void()> wake) override { inner_->SetWakeup(std::move(wake)); }

 private:
  std::unique_ptr<EventStream<v1::OperationEvent>> inner_;
  EtaEstimator& eta_;
};

class EstimatingSharedStream final : public EventStream<WatchEvent> {
 public:
  EstimatingSharedStream(std::unique_ptr<EventStream<WatchEvent>> inner, EtaEstimator& eta)
      : inner_(std::move(inner)), eta_(eta) {}

  std::optional<WatchEvent> Next(bool* finished, absl::Status* final_status) override {
    std::optional<WatchEvent> event = inner_->Next(finished, final_status);
    if (event.has_value() && event->snapshot != nullptr) {
      event->snapshot->Encoded([this](v1::Operation* operation) { eta_.Annotate(operation); });
    }
    return event;
  }
  void SetWakeup(absl::AnyInvocable<void()> wake) override { inner_->SetWakeup(std::move(wake)); }

 private:
  std::unique_ptr<EventStream<WatchEvent>> inner_;
  EtaEstimator& eta_;
};

}  // namespace

std::unique_ptr<EventStream<WatchEvent>> WithEstimates(
    std::unique_ptr<EventStream<WatchEvent>> stream, EtaEstimator& eta) {
  return std::make_unique<EstimatingSharedStream>(std::move(stream), eta);
}

std::unique_ptr<EventStream<v1::OperationEvent>> WithEstimates(
    std::unique_ptr<EventStream<v1::OperationEvent>> stream, EtaEstimator& eta) {
  return std::make_unique<EstimatingStream>(std::move(stream), eta);
}

}  // namespace musicgw::operations
