// File: engine.h
// The operations engine: the durable ledger, idempotent Generate, one tracker per live
// operation, fan-out of changes to watchers, and downloads. Transport-neutral: the gRPC
// handlers in services/gateway call it with an authenticated tenant and a validated request.
//
// Thread-safe.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "adapters/http/http_client.h"
#include "adapters/provider.h"
#include "common/clock.h"
#include "musicgw/v1/musicgw.pb.h"
#include "services/operations/asset_store.h"
#include "services/operations/event_stream.h"
#include "services/operations/operation_store.h"
#include "services/operations/replica_link.h"
#include "services/operations/router.h"
// Callers open the ledger they hand to CreateOperationsEngine with OpenSqliteOperationStore.
#include "services/operations/sqlite_store.h"
#include "services/operations/watch_stream.h"

namespace musicgw::operations {

// Hooks for metrics (the metrics module implements it with prometheus-cpp; the engine stays
// metrics-free). Every argument is a bounded label or a number, never an id. Called from engine
// threads and the HTTP loop thread; must not block.
class EngineObserver {
 public:
  virtual ~EngineObserver() = default;
  // An operation changed state (QUEUED->RUNNING, RUNNING->SUCCEEDED, ...). `from` is
  // OPERATION_STATE_UNSPECIFIED for a newly created operation.
  virtual void OnStateChange(musicgw::v1::Provider provider, musicgw::v1::TaskKind task,
                             musicgw::v1::OperationState from, musicgw::v1::OperationState to) {}
  // An operation became done. `code` is its error code (OK when SUCCEEDED).
  virtual void OnCompleted(musicgw::v1::Provider provider, musicgw::v1::TaskKind task,
                           musicgw::v1::OperationState outcome, absl::StatusCode code) {}
  // Generate -> SUCCEEDED latency of one operation.
  virtual void OnSucceededLatency(musicgw::v1::Provider provider, musicgw::v1::TaskKind task,
                                  absl::Duration latency) {}
  // Bytes of asset data streamed from a provider.
  virtual void OnDownloadBytes(musicgw::v1::Provider provider, int64_t bytes) {}
  // A submission was routed to another provider after `from` rejected it.
  virtual void OnFallback(musicgw::v1::Provider from, musicgw::v1::Provider to) {}
  // One asset custody fetch ended: `outcome` is "stored", "upstream_error", "timeout" or
  // "store_error" (custody.h).
  virtual void OnCustodyFetch(absl::string_view outcome) {}
  // A done operation's record changed: the answer to its submission arrived after it was
  // cancelled, or the provider finished the cancelled work anyway. What it was charged may have
  // changed (quota and credit figures are stale).
  virtual void OnLateChange(musicgw::v1::Provider provider, musicgw::v1::TaskKind task) {}
  // A committed change wrote webhook messages to the outbox (EngineOptions::outbox): they are
  // due now. Changes that wrote none are not announced here.
  virtual void OnOutboxWritten() {}
};

// A tenant's budgets for one task kind at `now` (from the gateway's configuration).
using BudgetResolver = std::function<std::vector<BudgetCheck>(
    const std::string& tenant, musicgw::v1::TaskKind task, absl::Time now)>;

// The answer of an asynchronous engine call, called once.
using OperationCallback = absl::AnyInvocable<void(absl::StatusOr<musicgw::v1::Operation>) &&>;

struct EngineOptions {
  // SQLite ledger file; ":memory:" only for tests that do not restart. (Used by callers that
  // open the store with OpenSqliteOperationStore; the engine takes the store it is given.)
  std::string ledger_path = "musicgw-ledger.db";
  // A live operation fails with DEADLINE_EXCEEDED after this long.
  absl::Duration operation_deadline = absl::Minutes(15);
  // WatchOperation heartbeat interval.
  absl::Duration watch_heartbeat = absl::Seconds(15);
  // Events buffered per watcher before coalescing to the latest snapshot.
  int watch_buffer = 16;
  // Download chunk size in bytes.
  int download_chunk_bytes = 256 * 1024;
  // Bytes buffered per download before the upstream transfer is paused.
  int download_buffer_bytes = 1024 * 1024;
  // Poll interval bounds for providers without long-poll.
  absl::Duration min_poll_interval = absl::Milliseconds(500);
  absl::Duration max_poll_interval = absl::Seconds(10);

  // Worker threads for ledger writes and fan-out (adapter callbacks never block the HTTP loop).
  // A write blocks its thread until the ledger has it on disk, and writes from other threads
  // share that sync (SQLite group commit), so this is more than the cores.
  int worker_threads = 8;
  // The nice value of those workers (operations.background_nice): below the RPC threads, so a
  // tenant's calls are answered first while another tenant's accepted work waits for a core.
  int background_nice = 0;
  // This replica's name in the ledger's owner column, and how long its claim on live
  // operations lasts without renewal.
  // Leases are renewed every lease/3; a replica that could not renew for most of a lease stops
  // tracking (another takes over just after the lease ran out).
  std::string replica_id = "local";
  absl::Duration lease = absl::Minutes(2);
  // While the ledger refuses writes, a probe write is tried this often (LedgerStatus()).
  absl::Duration ledger_probe_interval = absl::Seconds(5);
  // Change events and cancel requests of done operations are pruned after this long.
  absl::Duration event_retention = absl::Hours(24);
  // How long to wait for a submission's answer from an asynchronous provider (the adapter
  // retries inside it). Synchronous providers get the whole operation deadline.
  absl::Duration submit_timeout = absl::Minutes(2);
  // A long poll's deadline (the adapter's own long-poll is shorter).
  absl::Duration poll_timeout = absl::Seconds(60);
  // Provider health: this many consecutive failures put an adapter in cooldown.
  int failure_threshold = 3;
  absl::Duration failure_cooldown = absl::Seconds(30);
  // Quota exhaustion without RetryInfo blocks routing to that adapter this long.
  absl::Duration default_quota_backoff = absl::Seconds(60);
  // Cancel waits this long for the adapter to say whether the provider was told.
  absl::Duration cancel_notify_timeout = absl::Seconds(2);
  // What Operation.suggested_poll_interval says.
  absl::Duration suggested_poll_interval = absl::Seconds(2);
  // A download's upstream transfer limit (curl's whole-transfer timeout).
  absl::Duration download_timeout = absl::Minutes(30);
  // Asset custody (custody.h): the store every output is fetched into once its operation
  // succeeds; null: no custody, downloads stream from the provider.
  std::shared_ptr<AssetStore> asset_store;
  // Chunk size of a download served from custody (local reads: larger chunks, fewer messages).
  int custody_chunk_bytes = 1024 * 1024;
  // One custody fetch's whole-transfer limit (SUCCEEDED waits for it at most this long).
  absl::Duration custody_fetch_timeout = absl::Seconds(60);
  // Background retries of failed fetches: exponential backoff between these bounds.
  absl::Duration custody_retry_initial = absl::Seconds(10);
  absl::Duration custody_retry_max = absl::Minutes(30);
  // How often pending fetches are retried and expired assets swept.
  absl::Duration custody_sweep_interval = absl::Seconds(30);
  // How long a tenant's assets are held after they were fetched; unset: the default for all.
  std::function<absl::Duration(const std::string& tenant)> asset_retention;
  absl::Duration default_asset_retention = absl::Hours(24 * 30);
  // Tenant budgets checked atomically at Generate; none when empty.
  BudgetResolver budgets;
  // Replicas sharing the ledger: other replicas' changes reach this one's watchers, and a
  // webhook for an operation another replica tracks is passed on. Null on a single node.
  std::shared_ptr<ReplicaLink> replica_link;
  // The webhook messages a state change announces (services/notify), written to the ledger's
  // outbox in the same transaction as the change; none when unset. Gets the tenant, the stored
  // snapshot and the new one; must not block.
  std::function<std::vector<OutboxMessage>(const std::string& tenant,
                                           const musicgw::v1::Operation& from,
                                           const musicgw::v1::Operation& to)>
      outbox;
  // Metrics hooks (not owned, may be null).
  EngineObserver* observer = nullptr;
  // The time source of routing, trackers, watches and timers (not owned; null: Clock::Real()).
  const Clock* clock = nullptr;
};

// Live operations of one provider in one state (QUEUED, RUNNING).
struct LiveCount {
  musicgw::v1::Provider provider = musicgw::v1::PROVIDER_UNSPECIFIED;
  musicgw::v1::OperationState state = musicgw::v1::OPERATION_STATE_UNSPECIFIED;
  int64_t count = 0;
};

struct EngineStats {
  int64_t live_operations = 0;
  // The same operations by provider and state, resumed ones included (only non-zero entries).
  std::vector<LiveCount> live_by_state;
  int64_t open_watchers = 0;
  int64_t open_downloads = 0;
  // Asset custody: distinct bytes held, fetches pending and the age of the oldest one (as of
  // the last custody pass).
  int64_t custody_held_bytes = 0;
  int64_t custody_pending = 0;
  absl::Duration custody_oldest_pending_age = absl::ZeroDuration();
  // Background tasks (ledger writes, provider calls, fan-out) waiting for a worker.
  int64_t background_queued = 0;
};

class OperationsEngine {
 public:
  virtual ~OperationsEngine() = default;

  // Resumes tracking every non-terminal operation in the ledger.
  virtual absl::Status Start() = 0;
  // Stops trackers, ends every open watch and download with UNAVAILABLE "server shutting down".
  // Live operations stay live in the ledger; the next Start() resumes them.
  virtual void Shutdown() = 0;

  // `request` is already validated. Stores the operation before any provider call and returns
  // it (QUEUED), or the existing one for the same tenant + request_id. ALREADY_EXISTS (reason
  // REQUEST_ID_REUSED) when that request_id came with a different request. With validate_only:
  // routes and checks, stores nothing, returns an Operation without a name.
  virtual absl::StatusOr<musicgw::v1::Operation> Generate(
      const std::string& tenant, const musicgw::v1::GenerateRequest& request) = 0;
  // validate_only: routes `request` exactly as Generate would (the one routing decision), then
  // lets the routed account check it (a provider dry run where it has one). Stores nothing;
  // `done` gets the Operation without a name, or why the request would fail.
  virtual void ValidateOnly(const std::string& tenant, const musicgw::v1::GenerateRequest& request,
                            OperationCallback done) {
    std::move(done)(Generate(tenant, request));
  }
  // NOT_FOUND unless the operation exists and belongs to `tenant`.
  virtual absl::StatusOr<musicgw::v1::Operation> Get(const std::string& tenant,
                                                     absl::string_view name) = 0;
  virtual absl::StatusOr<musicgw::v1::ListOperationsResponse> List(
      const std::string& tenant, const musicgw::v1::ListOperationsRequest& request) = 0;
  // Stops tracking and records CANCELLED with `reason`, after asking the provider to stop (its
  // answer waited for up to cancel_notify_timeout, without blocking the caller). Calls `done`
  // once, possibly inline. An operation another replica tracks is cancelled there (through the
  // ledger), and `done` hears the outcome.
  virtual void Cancel(const std::string& tenant, absl::string_view name, absl::string_view reason,
                      OperationCallback done) = 0;
  // Cancel, blocking until it is recorded (for tools and tests; the server uses the callback).
  absl::StatusOr<musicgw::v1::Operation> CancelAndWait(const std::string& tenant,
                                                       absl::string_view name,
                                                       absl::string_view reason);
  // Calls `done` once: when the operation is done, or after `timeout` with its latest snapshot.
  // May call it inline (operation already done, or an error).
  virtual void Wait(const std::string& tenant, absl::string_view name, absl::Duration timeout,
                    OperationCallback done) = 0;
  // Snapshot (or every change after `after_sequence`), then changes, heartbeats, end at done.
  virtual absl::StatusOr<std::unique_ptr<EventStream<musicgw::v1::OperationEvent>>> Watch(
      const std::string& tenant, absl::string_view name, int64_t after_sequence) = 0;
  // The same watch, its events sharing their snapshots with every other watcher of the change
  // (a transport serializes each snapshot once). By default: Watch's events, one snapshot each.
  virtual absl::StatusOr<std::unique_ptr<EventStream<WatchEvent>>> WatchShared(
      const std::string& tenant, absl::string_view name, int64_t after_sequence);
  // AssetInfo, then data chunks from `offset`.
  virtual absl::StatusOr<std::unique_ptr<EventStream<musicgw::v1::DownloadChunk>>> Download(
      const std::string& tenant, absl::string_view asset, int64_t offset) = 0;

  // A verified provider callback (webhook): update the operation with upstream id
  // `status.upstream_id` at once; when another replica tracks it, that one is nudged to poll.
  // Polling stays the source of truth.
  virtual void OnProviderUpdate(musicgw::v1::Provider provider,
                                const adapters::UpstreamStatus& status) = 0;

  // The latest quota figures read from `adapter`'s account (from the quota monitor). Routing
  // sends no request whose quota resources (ProviderAdapter::QuotaResources) all read zero
  // until the figure's reset time passes or a later read shows some left: such a Generate
  // goes to the other provider when it allows fallback, else fails RESOURCE_EXHAUSTED.
  virtual void UpdateQuota(const adapters::ProviderAdapter* adapter,
                           const std::vector<adapters::QuotaFigure>& figures) = 0;

  // Routing's view of each adapter, in routing order (for ListProviders and metrics).
  virtual std::vector<ProviderState> ProviderStates() const = 0;
  virtual EngineStats Stats() const = 0;
  // OK while the ledger accepts writes; UNAVAILABLE (ErrorInfo LEDGER_UNAVAILABLE) after a
  // write failed, until one succeeds again. Health reports NOT_SERVING while it is not OK.
  virtual absl::Status LedgerStatus() const { return absl::OkStatus(); }
  // Operations a provider account charged for since `since`, by task (its credit spend).
  virtual absl::StatusOr<std::map<musicgw::v1::TaskKind, int64_t>> ChargedOperations(
      musicgw::v1::Provider provider, const std::string& account, absl::Time since) = 0;
  // A tenant's use of one budget period (for GetQuota's tenant_budgets).
  virtual absl::StatusOr<BudgetUsage> ReadBudget(const std::string& tenant,
                                                 musicgw::v1::TaskKind task,
                                                 absl::Time period_start) = 0;
};

// Builds the engine. `adapters` are in routing order and `http` serves downloads; neither is
// owned, both must outlive the engine (http may be null when downloads are not needed).
// Call Start() before serving.
absl::StatusOr<std::unique_ptr<OperationsEngine>> CreateOperationsEngine(
    EngineOptions options, std::unique_ptr<OperationStore> store,
    const std::vector<adapters::ProviderAdapter*>& adapters, http::Client* http);

}  // namespace musicgw::operations
