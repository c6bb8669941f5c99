// File: custody.h
// Asset custody: the gateway's own copy of every output. When an operation succeeds the tracker
// asks FetchBeforeSuccess to fetch each output once into the AssetStore (bounded by
// custody_fetch_timeout) and commits SUCCEEDED with the size and digest it learnt. An output it
// could not fetch stays pending in the ledger (durable: a restart resumes it) and is retried in
// the background with exponential backoff; Download streams from the provider meanwhile. A
// sweeper deletes the bytes once the tenant's retention has ended and no held asset still
// references them.
//
// Thread-safe. Runs on the engine's executor (ledger writes, fsync) and the HTTP loop (bytes).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "adapters/http/http_client.h"
#include "common/clock.h"
#include "services/operations/asset_store.h"
#include "services/operations/engine.h"
#include "services/operations/executor.h"
#include "services/operations/operation_store.h"

namespace musicgw::operations {

// Fresh URL for output `index` of an operation (AssetHost::RefreshUrl).
using UrlRefresher =
    std::function<void(const std::string& operation_id, int index,
                       absl::AnyInvocable<void(absl::StatusOr<UpstreamOutput>) &&>)>;

// The outcome label of one fetch (metrics): a bounded set.
inline constexpr absl::string_view kCustodyStored = "stored";
inline constexpr absl::string_view kCustodyUpstreamError = "upstream_error";
inline constexpr absl::string_view kCustodyTimeout = "timeout";
inline constexpr absl::string_view kCustodyStoreError = "store_error";

struct CustodyStats {
  int64_t held_bytes = 0;
  int64_t pending = 0;
  absl::Duration oldest_pending_age = absl::ZeroDuration();
};

class AssetCustody final : public std::enable_shared_from_this<AssetCustody> {
 public:
  // `assets` null: custody is off (every call is a no-op, downloads stream from the provider).
  AssetCustody(const EngineOptions& options, const Clock& clock,
               std::shared_ptr<OperationStore> store, std::shared_ptr<Executor> executor,
               http::Client* http, std::shared_ptr<AssetStore> assets);

  bool enabled() const { return assets_ != nullptr && http_ != nullptr; }
  // Background retries need fresh provider URLs; set once before Start.
  void SetUrlRefresher(UrlRefresher refresher) { refresher_ = std::move(refresher); }
  // Told when the background pass changes an operation's asset facts in the ledger.
  void SetOnAssetsChanged(std::function<void(const std::string& operation_id)> changed) {
    on_assets_changed_ = std::move(changed);
  }
  // Schedules the retry-and-sweep pass every custody_sweep_interval (first one at once).
  void Start();
  // No more fetches or passes; fetches in flight are abandoned (their rows stay pending).
  void Shutdown();

  // Records outputs 0..n-1 of `operation_id` as pending, then fetches each once. `done` runs
  // once on the executor with one entry per output: its stored object, or nullopt when custody
  // failed (the row stays pending for the background retry). With custody off, `done` gets
  // nullopt for every output at once.
  void FetchBeforeSuccess(
      const std::string& operation_id, const std::string& tenant, musicgw::v1::Provider provider,
      const std::vector<UpstreamOutput>& outputs,
      absl::AnyInvocable<void(std::vector<std::optional<StoredObject>>) &&> done);

  // The held copy of one output; `reader` null when custody does not hold it (pending, never
  // fetched, or its file is missing). NOT_FOUND with reason ASSET_EXPIRED when the tenant's
  // retention ended. Other errors: the ledger or the store could not be read.
  struct Held {
    std::unique_ptr<AssetReader> reader;
    std::string sha256;
  };
  absl::StatusOr<Held> OpenHeld(const std::string& operation_id, int index);

  // One retry-and-sweep pass now (tests drive it with a fake clock; Start schedules it).
  void RunPass();
  CustodyStats Stats() const;

 private:
  class Fetch;
  // The stored object, or why not with the outcome label (kCustody*).
  using FetchDone =
      absl::AnyInvocable<void(absl::StatusOr<StoredObject>, absl::string_view outcome) &&>;

  // Streams `url` into a new object; `done` runs once on the executor.
  void FetchOne(const UpstreamOutput& output, musicgw::v1::Provider provider, FetchDone done);
  absl::Time RetentionEnd(const std::string& tenant) const;
  // Records the outcome of one fetch: held (ledger) or deferred with backoff; counts it.
  // Returns whether the output is now held.
  bool Outcome(const std::string& operation_id, int index, const std::string& tenant, int attempts,
               const absl::StatusOr<StoredObject>& result, absl::string_view outcome);
  void RetryOne(const CustodyRecord& row);
  void RetryDue();
  void Sweep();
  void RefreshStats();
  void SchedulePass();

  const EngineOptions options_;
  const Clock& clock_;
  const std::shared_ptr<OperationStore> store_;
  const std::shared_ptr<Executor> executor_;
  http::Client* const http_;
  const std::shared_ptr<AssetStore> assets_;
  UrlRefresher refresher_;
  std::function<void(const std::string& operation_id)> on_assets_changed_;

  mutable absl::Mutex mu_;
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  // "id/index" of background fetches in flight (not started twice by overlapping passes).
  absl::flat_hash_set<std::string> in_flight_ ABSL_GUARDED_BY(mu_);
  CustodySummary summary_ ABSL_GUARDED_BY(mu_);
};

}  // namespace musicgw::operations
