// File: asset_host.h
// Downloads of operation outputs: checks the asset belongs to the tenant and is ready, serves
// the gateway's own copy when custody holds it (CustodyStream: local reads at any offset, the
// digest known, whatever the provider's URL does), otherwise streams it from the provider's
// URL (DownloadPipe), refreshes expired URLs through the routed adapter, and records the size
// and digest a complete download learnt. After the tenant's retention: NOT_FOUND ASSET_EXPIRED.
//
// Thread-safe. Held by downloads weakly (DownloadHost), so it may go first.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "adapters/http/http_client.h"
#include "common/clock.h"
#include "musicgw/v1/musicgw.pb.h"
#include "services/operations/custody.h"
#include "services/operations/download_stream.h"
#include "services/operations/engine.h"
#include "services/operations/event_stream.h"
#include "services/operations/executor.h"
#include "services/operations/operation_store.h"
#include "services/operations/router.h"

namespace musicgw::operations {

class AssetHost final : public DownloadHost, public std::enable_shared_from_this<AssetHost> {
 public:
  // `http` may be null (downloads then fail FAILED_PRECONDITION); not owned.
  AssetHost(const EngineOptions& options, const Clock& clock, std::shared_ptr<OperationStore> store,
            std::shared_ptr<Router> router, std::shared_ptr<Executor> executor, http::Client* http);

  // AssetInfo, then data chunks from `offset`, of the tenant's asset named `asset`.
  absl::StatusOr<std::unique_ptr<EventStream<musicgw::v1::DownloadChunk>>> Open(
      const std::string& tenant, absl::string_view asset, int64_t offset);
  // Custody to serve held copies from (set once before serving; may stay unset).
  void SetCustody(std::shared_ptr<AssetCustody> custody) { custody_ = std::move(custody); }
  // Told when a download records an asset's facts in the ledger.
  void SetOnAssetsChanged(std::function<void(const std::string& operation_id)> changed) {
    on_assets_changed_ = std::move(changed);
  }
  // Ends every open download with `status`; later Opens fail with it.
  void Shutdown(const absl::Status& status);
  int64_t open_downloads() const { return open_->load(); }

  // DownloadHost.
  void PostTask(absl::AnyInvocable<void() &&> task, absl::Duration delay) override;
  void RefreshUrl(const std::string& operation_id, int index,
                  absl::AnyInvocable<void(absl::StatusOr<UpstreamOutput>) &&> done) override;
  void RecordAssetFacts(const std::string& operation_id, int index, int64_t size,
                        const std::string& sha256, absl::AnyInvocable<void() &&> recorded) override;
  void OnDownloadBytes(musicgw::v1::Provider provider, int64_t bytes) override;

 private:
  const int chunk_bytes_;
  const int custody_chunk_bytes_;
  const int buffer_bytes_;
  const absl::Duration transfer_timeout_;
  EngineObserver* const observer_;
  const Clock& clock_;
  const std::shared_ptr<OperationStore> store_;
  const std::shared_ptr<Router> router_;
  const std::shared_ptr<Executor> executor_;
  http::Client* const http_;
  const std::shared_ptr<std::atomic<int64_t>> open_;
  std::shared_ptr<AssetCustody> custody_;
  std::function<void(const std::string& operation_id)> on_assets_changed_;

  absl::Mutex mu_;
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status shutdown_status_ ABSL_GUARDED_BY(mu_);
  std::vector<std::weak_ptr<DownloadPipe>> downloads_ ABSL_GUARDED_BY(mu_);
};

}  // namespace musicgw::operations
