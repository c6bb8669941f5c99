#include <utility>
#include <vector>

#include "services/metrics/metrics.h"

namespace musicgw::metrics {

namespace v1 = ::musicgw::v1;

EngineObserverFanOut::EngineObserverFanOut(std::vector<operations::EngineObserver*> observers)
    : observers_(std::move(observers)) {
  observers_.erase(std::remove(observers_.begin(), observers_.end(), nullptr), observers_.end());
}
void EngineObserverFanOut::OnStateChange(v1::Provider provider, v1::TaskKind task,
                                         v1::OperationState from, v1::OperationState to) {
  for (auto* observer : observers_) observer->OnStateChange(provider, task, from, to);
}
void EngineObserverFanOut::OnCompleted(v1::Provider provider, v1::TaskKind task,
                                       v1::OperationState outcome, absl::StatusCode code) {
  for (auto* observer : observers_) observer->OnCompleted(provider, task, outcome, code);
}
void EngineObserverFanOut::OnSucceededLatency(v1::Provider provider, v1::TaskKind task,
                                              absl::Duration latency) {
  for (auto* observer : observers_) observer->OnSucceededLatency(provider, task, latency);
}
void EngineObserverFanOut::OnDownloadBytes(v1::Provider provider, int64_t bytes) {
  for (auto* observer : observers_) observer->OnDownloadBytes(provider, bytes);
}
void EngineObserverFanOut::OnFallback(v1::Provider from, v1::Provider to) {
  for (auto* observer : observers_) observer->OnFallback(from, to);
}
void EngineObserverFanOut::OnCustodyFetch(absl::string_view outcome) {
  for (auto* observer : observers_) observer->OnCustodyFetch(outcome);
}

void EngineObserverFanOut::OnLateChange(v1::Provider provider, v1::TaskKind task) {
  for (auto* observer : observers_) observer->OnLateChange(provider, task);
}

void EngineObserverFanOut::OnOutboxWritten() {
  for (auto* observer : observers_) observer->OnOutboxWritten();
}

}  // namespace musicgw::metrics
