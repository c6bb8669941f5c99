// File: eta_estimator.h
// Operation.estimated_done_time: when a live operation will probably be done, from the ledger's
// history of the same provider account and task. The statistic is the median of the most recent
// successful durations (create to done): one slow or fast outlier does not move it. The time the
// operation has already run is subtracted, and an operation that has outlasted the median is
// given `overdue_margin` from now, so a live estimate is never in the past.
//
// Thread-safe. Non-empty histories are cached per provider account and task for `cache_ttl`
// (on the clock), so serving a snapshot rarely reads the ledger.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "common/clock.h"
#include "musicgw/v1/musicgw.pb.h"
#include "services/operations/event_stream.h"
#include "services/operations/operation_store.h"
#include "services/operations/watch_stream.h"

namespace musicgw::operations {

struct EtaOptions {
  // How many recent successful operations the median is taken over.
  int history = 21;
  // How long a history read from the ledger is reused.
  absl::Duration cache_ttl = absl::Seconds(30);
  // The estimate for an operation that has run longer than the median: this long from now.
  absl::Duration overdue_margin = absl::Seconds(5);
};

// The median of `durations`; nullopt when empty.
std::optional<absl::Duration> MedianDuration(absl::Span<const absl::Duration> durations);

// When an operation started at `start` will probably be done at `now`, given the `typical`
// duration: start + typical, or now + overdue_margin once that has passed. Never before now.
absl::Time EstimateDoneTime(absl::Duration typical, absl::Time start, absl::Time now,
                            absl::Duration overdue_margin);

class EtaEstimator {
 public:
  // `store` and `clock` must outlive the estimator.
  EtaEstimator(OperationStore& store, const Clock& clock, EtaOptions options = {});

  // Sets operation->estimated_done_time on a live operation with history; clears it otherwise
  // (done, no provider account yet, no history, or the ledger unreadable: an estimate is never
  // worth failing a read for).
  void Annotate(musicgw::v1::Operation* operation);

 private:
  using Key = std::tuple<int, std::string, int>;  // provider, account, task
  struct Entry {
    std::optional<absl::Duration> typical;
    absl::Time read_time;
  };

  std::optional<absl::Duration> Typical(const musicgw::v1::Operation& operation);

  OperationStore& store_;
  const Clock& clock_;
  const EtaOptions options_;
  absl::Mutex mu_;
  absl::flat_hash_map<Key, Entry> cache_ ABSL_GUARDED_BY(mu_);
};

// `stream` with every event's operation annotated by `eta` (which must outlive the stream).
std::unique_ptr<EventStream<musicgw::v1::OperationEvent>> WithEstimates(
    std::unique_ptr<EventStream<musicgw::v1::OperationEvent>> stream, EtaEstimator& eta);
// The same for shared snapshots: each is annotated once, when first serialized (so every
// watcher of a change sends the same estimate).
std::unique_ptr<EventStream<WatchEvent>> WithEstimates(
    std::unique_ptr<EventStream<WatchEvent>> stream, EtaEstimator& eta);

}  // namespace musicgw::operations
