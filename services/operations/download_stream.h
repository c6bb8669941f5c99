// File: download_stream.h
// One Download: streams an asset from the provider's URL through a bounded buffer. The upstream
// transfer is paused when the buffer is full and resumed when the reader drains it, so memory
// stays constant whatever the file size. Expired or refused URLs are refreshed through the
// engine (adapter Poll(wait=false)) and the transfer continues at the current offset; transient
// failures resume with a Range request.
#pragma once

#include <openssl/evp.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "adapters/http/http_client.h"
#include "common/clock.h"
#include "musicgw/v1/musicgw.pb.h"
#include "services/operations/asset_store.h"
#include "services/operations/event_stream.h"
#include "services/operations/operation_store.h"

namespace musicgw::operations {

// What a download needs from the engine. Held weakly: the engine may go first.
class DownloadHost {
 public:
  virtual ~DownloadHost() = default;
  virtual void PostTask(absl::AnyInvocable<void() &&> task, absl::Duration delay) = 0;
  // Fresh URL for asset `index` of the operation.
  virtual void RefreshUrl(const std::string& operation_id, int index,
                          absl::AnyInvocable<void(absl::StatusOr<UpstreamOutput>) &&> done) = 0;
  // Stores what a complete download learnt; calls `recorded` once afterwards (also when the
  // write failed or the host went away first), so the stream ends only after the ledger has it.
  virtual void RecordAssetFacts(const std::string& operation_id, int index, int64_t size,
                                const std::string& sha256,
                                absl::AnyInvocable<void() &&> recorded) = 0;
  virtual void OnDownloadBytes(musicgw::v1::Provider provider, int64_t bytes) = 0;
};

struct DownloadSpec {
  std::string operation_id;
  int index = 0;
  musicgw::v1::Asset asset;  // name, content type, format, size and sha256 where known
  musicgw::v1::Provider provider = musicgw::v1::PROVIDER_UNSPECIFIED;
  UpstreamOutput upstream;
  int64_t offset = 0;
  int chunk_bytes = 256 * 1024;
  int buffer_bytes = 1024 * 1024;
  absl::Duration transfer_timeout = absl::Minutes(30);
  // Judges URL expiry (not owned; null: Clock::Real()).
  const Clock* clock = nullptr;
};

class DownloadPipe final : public http::StreamHandler,
                           public std::enable_shared_from_this<DownloadPipe> {
 public:
  DownloadPipe(DownloadSpec spec, http::Client* http, std::weak_ptr<DownloadHost> host);
  ~DownloadPipe() override;

  // Starts fetching (refreshing the URL first when it has expired).
  void Start();
  // The reader is gone: stops the upstream transfer; no wake-up after return.
  void Close();
  // Ends the stream at once (shutdown).
  void Fail(absl::Status status);

  std::optional<musicgw::v1::DownloadChunk> Next(bool* finished, absl::Status* final_status);
  void SetWakeup(absl::AnyInvocable<void()> wake);

  // The most bytes ever held in the buffer (tests check that memory stays bounded).
  int64_t max_buffered_bytes() const;

  // http::StreamHandler (loop thread).
  bool OnHeaders(int status, const http::Headers& headers) override;
  bool OnData(absl::string_view data) override;
  void OnComplete(absl::Status status) override;

 private:
  enum class Action { kNone, kRetry, kRefresh, kFail };

  void StartTransfer();
  void Refresh();
  void RunWake();
  void OnFactsRecorded();
  bool EndedLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool OwedLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  size_t BufferedLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return buffer_.size() - buffer_pos_;
  }
  // Fails the download unless retries remain; returns the task to schedule, if any.
  void RetryOrFailLocked(const absl::Status& why, const std::shared_ptr<DownloadHost>& host)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  http::Client* const http_;
  const std::weak_ptr<DownloadHost> host_;

  mutable absl::Mutex mu_;
  DownloadSpec spec_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<http::StreamHandle> handle_ ABSL_GUARDED_BY(mu_);
  // Keeps this pipe alive while a transfer is in flight (the handler must outlive OnComplete).
  std::shared_ptr<DownloadPipe> self_ ABSL_GUARDED_BY(mu_);
  std::string buffer_ ABSL_GUARDED_BY(mu_);
  size_t buffer_pos_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t max_buffered_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t received_offset_ ABSL_GUARDED_BY(mu_);   // file offset of the next byte to receive
  int64_t delivered_offset_ ABSL_GUARDED_BY(mu_);  // file offset of the next byte to hand out
  int64_t skip_ ABSL_GUARDED_BY(mu_) = 0;          // bytes to drop (provider ignored Range)
  int64_t total_ ABSL_GUARDED_BY(mu_) = -1;        // file size, -1 unknown
  int64_t transfer_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t unreported_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  Action action_ ABSL_GUARDED_BY(mu_) = Action::kNone;
  absl::Status action_status_ ABSL_GUARDED_BY(mu_);
  int retries_ ABSL_GUARDED_BY(mu_) = 0;
  int refreshes_ ABSL_GUARDED_BY(mu_) = 0;
  bool paused_ ABSL_GUARDED_BY(mu_) = false;
  bool info_ready_ ABSL_GUARDED_BY(mu_) = false;
  bool info_sent_ ABSL_GUARDED_BY(mu_) = false;
  musicgw::v1::AssetInfo info_ ABSL_GUARDED_BY(mu_);
  bool complete_ ABSL_GUARDED_BY(mu_) = false;  // every byte received
  // The digest of a complete download is being stored: the stream ends after that.
  bool facts_pending_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status error_ ABSL_GUARDED_BY(mu_);  // non-OK: the download failed
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  bool waiting_ ABSL_GUARDED_BY(mu_) = false;
  // SHA-256 over the whole file, only when the download started at offset 0.
  EVP_MD_CTX* sha_ ABSL_GUARDED_BY(mu_) = nullptr;

  absl::Mutex wake_mu_;
  absl::AnyInvocable<void()> wake_ ABSL_GUARDED_BY(wake_mu_);
};

class DownloadStream final : public EventStream<musicgw::v1::DownloadChunk> {
 public:
  DownloadStream(std::shared_ptr<DownloadPipe> pipe, std::function<void()> on_close)
      : pipe_(std::move(pipe)), on_close_(std::move(on_close)) {}
  ~DownloadStream() override {
    pipe_->Close();
    if (on_close_) on_close_();
  }
  std::optional<musicgw::v1::DownloadChunk> Next(bool* finished,
                                                 absl::Status* final_status) override {
    return pipe_->Next(finished, final_status);
  }
  void SetWakeup(absl::AnyInvocable<void()> wake) override { pipe_->SetWakeup(std::move(wake)); }
  const DownloadPipe& pipe() const { return *pipe_; }

 private:
  std::shared_ptr<DownloadPipe> pipe_;
  std::function<void()> on_close_;
};

// One Download served from the gateway's own copy (asset custody): AssetInfo with the size
// and the digest, then the bytes from `offset`, read from the store on demand. Every Next() has
// a message or the end, so it never needs a wake-up. Counts itself in `open` while it lives.
class CustodyStream final : public EventStream<musicgw::v1::DownloadChunk> {
 public:
  CustodyStream(musicgw::v1::Asset asset, std::unique_ptr<AssetReader> reader, std::string sha256,
                int64_t offset, int chunk_bytes, std::shared_ptr<std::atomic<int64_t>> open);
  ~CustodyStream() override;
  CustodyStream(const CustodyStream&) = delete;
  CustodyStream& operator=(const CustodyStream&) = delete;

  std::optional<musicgw::v1::DownloadChunk> Next(bool* finished,
                                                 absl::Status* final_status) override;
  void SetWakeup(absl::AnyInvocable<void()> /*wake*/) override {}

  // For a transport that frames the data messages itself, reading each chunk straight into the
  // buffer it sends (in place of Next()): the first message, then per data message its offset,
  // its size (0: the end) and ReadData() into a buffer of exactly that size.
  musicgw::v1::DownloadChunk InfoChunk() const;
  int64_t data_offset() const { return offset_; }
  int64_t NextDataSize() const;
  absl::Status ReadData(absl::Span<char> out);

 private:
  const musicgw::v1::Asset asset_;
  const std::unique_ptr<AssetReader> reader_;
  const std::string sha256_;
  int64_t offset_;
  const int chunk_bytes_;
  const std::shared_ptr<std::atomic<int64_t>> open_;
  bool info_sent_ = false;
  bool done_ = false;
  absl::Status status_;
};

}  // namespace musicgw::operations
