// File: engine.h
// The operations engine: the durable ledger, idempotent Generate, one tracker per live
// operation, fan-out of changes to watchers, and downloads. Transport-neutral: the gRPC
// handlers in services/gateway call it with an authenticated tenant and a validated request.
//
// Thread-safe.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "adapters/provider.h"
#include "musicgw/v1/musicgw.pb.h"
#include "services/operations/event_stream.h"

namespace musicgw::operations {

struct EngineOptions {
  // SQLite ledger file; ":memory:" only for tests that do not restart.
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
};

class OperationsEngine {
 public:
  virtual ~OperationsEngine() = default;

  // Resumes tracking every non-terminal operation in the ledger.
  virtual absl::Status Start() = 0;
  // Stops trackers, ends every open watch and download with UNAVAILABLE "server shutting down".
  virtual void Shutdown() = 0;

  // `request` is already validated. Stores the operation before any provider call and returns
  // it (QUEUED), or the existing one for the same tenant + request_id. ALREADY_EXISTS (reason
  // REQUEST_ID_REUSED) when that request_id came with a different request.
  virtual absl::StatusOr<musicgw::v1::Operation> Generate(
      const std::string& tenant, const musicgw::v1::GenerateRequest& request) = 0;
  // NOT_FOUND unless the operation exists and belongs to `tenant`.
  virtual absl::StatusOr<musicgw::v1::Operation> Get(const std::string& tenant,
                                                     absl::string_view name) = 0;
  virtual absl::StatusOr<musicgw::v1::ListOperationsResponse> List(
      const std::string& tenant, const musicgw::v1::ListOperationsRequest& request) = 0;
  virtual absl::StatusOr<musicgw::v1::Operation> Cancel(const std::string& tenant,
                                                        absl::string_view name,
                                                        absl::string_view reason) = 0;
  // Calls `done` once: when the operation is done, or after `timeout` with its latest snapshot.
  virtual void Wait(const std::string& tenant, absl::string_view name, absl::Duration timeout,
                    absl::AnyInvocable<void(absl::StatusOr<musicgw::v1::Operation>) &&> done) = 0;
  // Snapshot (or every change after `after_sequence`), then changes, heartbeats, end at done.
  virtual absl::StatusOr<std::unique_ptr<EventStream<musicgw::v1::OperationEvent>>> Watch(
      const std::string& tenant, absl::string_view name, int64_t after_sequence) = 0;
  // AssetInfo, then data chunks from `offset`.
  virtual absl::StatusOr<std::unique_ptr<EventStream<musicgw::v1::DownloadChunk>>> Download(
      const std::string& tenant, absl::string_view asset, int64_t offset) = 0;

  // A verified provider callback (webhook): update the operation with upstream id
  // `status.upstream_id` at once. Polling stays the source of truth.
  virtual void OnProviderUpdate(musicgw::v1::Provider provider,
                                const adapters::UpstreamStatus& status) = 0;
};

}  // namespace musicgw::operations
