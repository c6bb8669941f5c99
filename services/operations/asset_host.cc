#include "services/operations/asset_host.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/errors.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "services/operations/ids.h"
#include "services/operations/operation_errors.h"

namespace musicgw::operations {

namespace v1 = musicgw::v1;
using adapters::UpstreamStatus;

AssetHost::AssetHost(const EngineOptions& options, const Clock& clock,
                     std::shared_ptr<OperationStore> store, std::shared_ptr<Router> router,
                     std::shared_ptr<Executor> executor, http::Client* http)
    : chunk_bytes_(options.download_chunk_bytes),
      custody_chunk_bytes_(options.custody_chunk_bytes),
      buffer_bytes_(options.download_buffer_bytes),
      transfer_timeout_(options.download_timeout),
      observer_(options.observer),
      clock_(clock),
      store_(std::move(store)),
      router_(std::move(router)),
      executor_(std::move(executor)),
      http_(http),
      open_(std::make_shared<std::atomic<int64_t>>(0)) {}

absl::StatusOr<std::unique_ptr<EventStream<v1::DownloadChunk>>> AssetHost::Open(
    const std::string& tenant, absl::string_view asset, int64_t offset) {
  MUSICGW_ASSIGN_OR_RETURN(AssetRef ref, ParseAssetName(asset));
  if (offset < 0) return InvalidFieldError("offset", "must not be negative");
  auto record = store_->Get(ref.operation_id);
  // Another tenant's asset is indistinguishable from a missing one.
  if ((record.ok() && record->tenant != tenant) || absl::IsNotFound(record.status())) {
    return AssetNotFound(asset);
  }
  if (!record.ok()) return FromStore(record.status());
  const v1::Operation& op = record->operation;
  // A cancelled operation has assets when the provider finished the paid work anyway.
  const bool has_assets = op.state() == v1::OPERATION_STATE_SUCCEEDED ||
                          (op.state() == v1::OPERATION_STATE_CANCELLED && op.outputs_size() > 0);
  if (!has_assets) {
    return WithErrorInfo(absl::FailedPreconditionError(
                             absl::StrCat("operation is ", v1::OperationState_Name(op.state()),
                                          "; only SUCCEEDED operations "
                                          "have assets to download")),
                         "OPERATION_NOT_SUCCEEDED", kGatewayDomain);
  }
  if (ref.index >= op.outputs_size()) return AssetNotFound(asset);
  const v1::Asset& a = op.outputs(ref.index);
  if (a.size_bytes() > 0 && offset > a.size_bytes()) {
    return WithErrorInfo(
        absl::OutOfRangeError(absl::StrCat("offset ", offset, " is beyond the end of the asset (",
                                           a.size_bytes(), " bytes)")),
        "OFFSET_OUT_OF_RANGE", kGatewayDomain);
  }
  if (custody_ != nullptr && custody_->enabled()) {
    auto held = custody_->OpenHeld(ref.operation_id, ref.index);
    if (held.ok() && held->reader != nullptr) {
      if (offset > held->reader->size()) {
        return WithErrorInfo(absl::OutOfRangeError(absl::StrCat("offset ", offset,
                                                                " is beyond the end of the asset (",
                                                                held->reader->size(), " bytes)")),
                             "OFFSET_OUT_OF_RANGE", kGatewayDomain);
      }
      return std::unique_ptr<EventStream<v1::DownloadChunk>>(std::make_unique<CustodyStream>(
          a, std::move(held->reader), held->sha256, offset, custody_chunk_bytes_, open_));
    }
    if (absl::IsNotFound(held.status())) return held.status();  // retention ended
    if (!held.ok()) {
      // The provider still has the bytes: a ledger or disk hiccup here is no reason to fail.
      log::Warning("asset custody unreadable; streaming from the provider",
                   {{"operation", ref.operation_id}, {"error", held.status().ToString()}});
    }
  }
  if (http_ == nullptr) {
    return WithErrorInfo(absl::FailedPreconditionError("downloads are not configured"),
                         "DOWNLOADS_NOT_CONFIGURED", kGatewayDomain);
  }
  DownloadSpec spec;
  spec.operation_id = ref.operation_id;
  spec.index = ref.index;
  spec.asset = a;
  spec.provider = op.provider();
  if (ref.index < static_cast<int>(record->upstream_outputs.size())) {
    spec.upstream = record->upstream_outputs[ref.index];
  }
  spec.offset = offset;
  spec.chunk_bytes = chunk_bytes_;
  spec.buffer_bytes = buffer_bytes_;
  spec.transfer_timeout = transfer_timeout_;
  spec.clock = &clock_;
  auto pipe = std::make_shared<DownloadPipe>(
      std::move(spec), http_,
      std::weak_ptr<DownloadHost>(std::static_pointer_cast<DownloadHost>(shared_from_this())));
  {
    absl::MutexLock lock(&mu_);
    if (shutdown_) return shutdown_status_;
    downloads_.erase(
        std::remove_if(downloads_.begin(), downloads_.end(),
                       [](const std::weak_ptr<DownloadPipe>& p) { return p.expired(); }),
        downloads_.end());
    downloads_.push_back(pipe);
  }
  open_->fetch_add(1);
  pipe->Start();
  auto counter = open_;
  return std::unique_ptr<EventStream<v1::DownloadChunk>>(
      std::make_unique<DownloadStream>(pipe, [counter] { counter->fetch_sub(1); }));
}

void AssetHost::Shutdown(const absl::Status& status) {
  std::vector<std::weak_ptr<DownloadPipe>> downloads;
  {
    absl::MutexLock lock(&mu_);
    if (shutdown_) return;
    shutdown_ = true;
    shutdown_status_ = status;
    downloads.swap(downloads_);
  }
  for (auto& weak : downloads) {
    if (auto pipe = weak.lock()) pipe->Fail(status);
  }
}

void AssetHost::PostTask(absl::AnyInvocable<void() &&> task, absl::Duration delay) {
  executor_->PostAfter(delay, std::move(task));
}

void AssetHost::RefreshUrl(const std::string& operation_id, int index,
                           absl::AnyInvocable<void(absl::StatusOr<UpstreamOutput>) &&> done) {
  std::weak_ptr<AssetHost> weak = weak_from_this();
  auto shared_done = std::make_shared<absl::AnyInvocable<void(absl::StatusOr<UpstreamOutput>) &&>>(
      std::move(done));
  executor_->Post([weak, operation_id, index, shared_done] {
    auto self = weak.lock();
    if (self == nullptr) return std::move(*shared_done)(ShuttingDown());
    auto record = self->store_->Get(operation_id);
    if (!record.ok()) return std::move(*shared_done)(FromStore(record.status()));
    const int slot = self->router_->SlotFor(record->operation);
    if (slot < 0) {
      return std::move(*shared_done)(WithErrorInfo(
          absl::FailedPreconditionError("the operation's provider is no longer configured"),
          "PROVIDER_NOT_CONFIGURED", kGatewayDomain));
    }
    adapters::PollRequest poll;
    poll.operation_id = operation_id;
    poll.upstream_id = record->operation.upstream_id();
    poll.task = record->operation.task();
    poll.deadline = self->clock_.Now() + absl::Seconds(30);
    poll.wait = false;
    self->router_->adapter(slot)->Poll(
        poll, [weak, operation_id, index, shared_done](absl::StatusOr<UpstreamStatus> status) {
          auto self = weak.lock();
          if (self == nullptr) return std::move(*shared_done)(ShuttingDown());
          self->executor_->Post(
              [self, operation_id, index, shared_done, status = std::move(status)]() mutable {
                if (!status.ok()) return std::move(*shared_done)(status.status());
                if (status->phase != UpstreamStatus::Phase::kSucceeded ||
                    index >= static_cast<int>(status->outputs.size())) {
                  return std::move(*shared_done)(WithErrorInfo(
                      absl::FailedPreconditionError("the provider no longer reports this asset"),
                      "ASSET_GONE_UPSTREAM", kGatewayDomain));
                }
                std::vector<UpstreamOutput> outputs;
                for (const auto& output : status->outputs) {
                  outputs.push_back(UpstreamOutput{output.url, output.url_expire_time});
                }
                absl::Status stored = self->store_->SetUpstreamOutputs(operation_id, outputs);
                if (!stored.ok()) {
                  log::Warning("could not store refreshed asset URLs",
                               {{"operation", operation_id}, {"error", stored.ToString()}});
                }
                std::move (*shared_done)(outputs[index]);
              });
        });
  });
}

void AssetHost::RecordAssetFacts(const std::string& operation_id, int index, int64_t size,
                                 const std::string& sha256,
                                 absl::AnyInvocable<void() &&> recorded) {
  // Calls `recorded` when destroyed: after the write, or when the task is dropped unrun.
  struct Recorded {
    absl::AnyInvocable<void() &&> done;
    ~Recorded() {
      if (done) std::move(done)();
    }
  };
  auto guard = std::make_shared<Recorded>();
  guard->done = std::move(recorded);
  std::weak_ptr<AssetHost> weak = weak_from_this();
  executor_->Post([weak, operation_id, index, size, sha256, guard] {
    auto self = weak.lock();
    if (self == nullptr) return;
    absl::Status status = self->store_->SetAssetFacts(operation_id, index, size, sha256);
    if (status.ok() && self->on_assets_changed_) self->on_assets_changed_(operation_id);
    if (!status.ok()) {
      log::Warning("could not store asset digest",
                   {{"operation", operation_id}, {"error", status.ToString()}});
    }
  });
}

void AssetHost::OnDownloadBytes(v1::Provider provider, int64_t bytes) {
  if (observer_ != nullptr) observer_->OnDownloadBytes(provider, bytes);
}

}  // namespace musicgw::operations
