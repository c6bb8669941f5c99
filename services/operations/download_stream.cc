#include "services/operations/download_stream.h"

#include <algorithm>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/errors.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "services/operations/operation_errors.h"

namespace musicgw::operations {
namespace {

// Every failure the client sees names its reason: a status from the provider or the engine
// keeps its own, the transfer's own failures get DOWNLOAD_FAILED (OFFSET_OUT_OF_RANGE).
absl::Status Reasoned(const absl::Status& status) {
  google::rpc::ErrorInfo info;
  if (status.ok() || GetErrorInfo(status, &info)) return status;
  return WithErrorInfo(
      status,
      status.code() == absl::StatusCode::kOutOfRange ? "OFFSET_OUT_OF_RANGE" : "DOWNLOAD_FAILED",
      kGatewayDomain);
}

constexpr int kMaxRetries = 3;    // consecutive transfer failures without progress
constexpr int kMaxRefreshes = 3;  // URL refreshes per download
// A URL this close to expiry is refreshed before use.
constexpr absl::Duration kExpiryMargin = absl::Seconds(10);

const char* ProviderLabel(musicgw::v1::Provider provider) {
  switch (provider) {
    case musicgw::v1::PROVIDER_LOUDLY:
      return "loudly";
    case musicgw::v1::PROVIDER_SOUNDPIECE:
      return "soundpiece";
    default:
      return "other";
  }
}

// http::FindHeader lives in the HTTP client's library; the engine needs only this.
std::optional<std::string> Header(const http::Headers& headers, absl::string_view name) {
  for (const auto& [key, value] : headers) {
    if (absl::EqualsIgnoreCase(key, name)) return value;
  }
  return std::nullopt;
}

// "bytes start-end/total" -> start and total (-1 when "*").
bool ParseContentRange(absl::string_view value, int64_t* start, int64_t* total) {
  value = absl::StripAsciiWhitespace(value);
  if (!absl::ConsumePrefix(&value, "bytes ")) return false;
  const std::pair<absl::string_view, absl::string_view> range_total =
      absl::StrSplit(value, absl::MaxSplits('/', 1));
  const std::pair<absl::string_view, absl::string_view> first_last =
      absl::StrSplit(range_total.first, absl::MaxSplits('-', 1));
  if (!absl::SimpleAtoi(first_last.first, start)) return false;
  if (range_total.second == "*") {
    *total = -1;
    return true;
  }
  return absl::SimpleAtoi(range_total.second, total);
}

}  // namespace

DownloadPipe::DownloadPipe(DownloadSpec spec, http::Client* http, std::weak_ptr<DownloadHost> host)
    : http_(http),
      host_(std::move(host)),
      spec_(std::move(spec)),
      received_offset_(spec_.offset),
      delivered_offset_(spec_.offset) {
  if (spec_.asset.size_bytes() > 0) total_ = spec_.asset.size_bytes();
  // The digest is computed only while it is unknown: once known, no hashing on the path.
  if (spec_.offset == 0 && spec_.asset.sha256().empty()) {
    sha_ = EVP_MD_CTX_new();
    if (sha_ != nullptr && EVP_DigestInit_ex(sha_, EVP_sha256(), nullptr) != 1) {
      EVP_MD_CTX_free(sha_);
      sha_ = nullptr;
    }
  }
}

DownloadPipe::~DownloadPipe() {
  if (sha_ != nullptr) EVP_MD_CTX_free(sha_);
}

bool DownloadPipe::EndedLocked() const { return closed_ || complete_ || !error_.ok(); }

bool DownloadPipe::OwedLocked() {
  if (!waiting_) return false;
  waiting_ = false;
  return true;
}

void DownloadPipe::RunWake() {
  absl::MutexLock lock(&wake_mu_);
  if (wake_) wake_();
}

void DownloadPipe::SetWakeup(absl::AnyInvocable<void()> wake) {
  absl::MutexLock lock(&wake_mu_);
  wake_ = std::move(wake);
}

int64_t DownloadPipe::max_buffered_bytes() const {
  absl::MutexLock lock(&mu_);
  return max_buffered_;
}

void DownloadPipe::Start() {
  bool refresh;
  {
    absl::MutexLock lock(&mu_);
    if (total_ >= 0 && spec_.offset >= total_) {
      // Nothing left to send: the info alone (size known from an earlier download).
      info_ready_ = true;
      info_.set_asset(spec_.asset.name());
      info_.set_content_type(spec_.asset.content_type());
      info_.set_size_bytes(total_);
      info_.set_sha256(spec_.asset.sha256());
      info_.set_offset(spec_.offset);
      info_.set_format(spec_.asset.format());
      complete_ = true;
      return;
    }
    refresh = spec_.upstream.url.empty() ||
              spec_.upstream.url_expire_time <
                  (spec_.clock != nullptr ? *spec_.clock : Clock::Real()).Now() + kExpiryMargin;
    if (refresh) ++refreshes_;
  }
  if (refresh) {
    Refresh();
  } else {
    StartTransfer();
  }
}

void DownloadPipe::StartTransfer() {
  std::shared_ptr<http::StreamHandle> previous;  // destroyed after the lock is released
  absl::MutexLock lock(&mu_);
  if (EndedLocked()) return;
  http::Request request;
  request.method = "GET";
  request.url = spec_.upstream.url;
  if (received_offset_ > 0) {
    request.headers.emplace_back("Range", absl::StrCat("bytes=", received_offset_, "-"));
  }
  request.timeout = spec_.transfer_timeout;
  request.endpoint = "asset:download";
  request.provider = ProviderLabel(spec_.provider);
  action_ = Action::kNone;
  action_status_ = absl::OkStatus();
  skip_ = 0;
  transfer_bytes_ = 0;
  paused_ = false;
  self_ = shared_from_this();
  previous = std::move(handle_);
  handle_ = std::shared_ptr<http::StreamHandle>(http_->Stream(std::move(request), this));
}

void DownloadPipe::Refresh() {
  auto host = host_.lock();
  if (host == nullptr) {
    Fail(ShuttingDown());
    return;
  }
  std::string operation_id;
  int index;
  {
    absl::MutexLock lock(&mu_);
    if (EndedLocked()) return;
    operation_id = spec_.operation_id;
    index = spec_.index;
  }
  std::weak_ptr<DownloadPipe> weak = weak_from_this();
  host->RefreshUrl(operation_id, index, [weak](absl::StatusOr<UpstreamOutput> output) {
    auto self = weak.lock();
    if (self == nullptr) return;
    if (!output.ok()) {
      self->Fail(absl::Status(
          output.status().code() == absl::StatusCode::kNotFound ? absl::StatusCode::kUnavailable
                                                                : output.status().code(),
          absl::StrCat("could not refresh the asset URL: ", output.status().message())));
      return;
    }
    {
      absl::MutexLock lock(&self->mu_);
      self->spec_.upstream = *std::move(output);
    }
    self->StartTransfer();
  });
}

bool DownloadPipe::OnHeaders(int status, const http::Headers& headers) {
  bool owed = false;
  {
    absl::MutexLock lock(&mu_);
    if (EndedLocked()) return false;
    int64_t total = -1;
    if (status == 200) {
      // The provider ignored (or was not sent) a Range: drop what we already have.
      skip_ = received_offset_;
      const auto length = Header(headers, "Content-Length");
      int64_t value;
      if (length.has_value() && absl::SimpleAtoi(*length, &value)) total = value;
    } else if (status == 206) {
      int64_t start = 0;
      const auto range = Header(headers, "Content-Range");
      if (!range.has_value() || !ParseContentRange(*range, &start, &total) ||
          start > received_offset_) {
        action_ = Action::kFail;
        action_status_ = absl::DataLossError("provider sent an unexpected byte range");
        return false;
      }
      skip_ = received_offset_ - start;
    } else if (status == 416) {
      action_ = Action::kFail;
      action_status_ = absl::OutOfRangeError(
          absl::StrCat("offset ", received_offset_, " is beyond the end of the asset"));
      return false;
    } else if (status == 401 || status == 403 || status == 404 || status == 410) {
      action_ = Action::kRefresh;  // expired or revoked signed URL
      action_status_ = absl::UnavailableError(absl::StrCat("asset URL answered HTTP ", status));
      return false;
    } else if (status == 408 || status == 429 || status >= 500) {
      action_ = Action::kRetry;
      action_status_ = absl::UnavailableError(absl::StrCat("asset URL answered HTTP ", status));
      return false;
    } else {
      action_ = Action::kFail;
      action_status_ = absl::UnavailableError(absl::StrCat("asset URL answered HTTP ", status));
      return false;
    }
    if (total >= 0) total_ = total;
    if (total_ >= 0 && spec_.offset > total_) {
      action_ = Action::kFail;
      action_status_ = absl::OutOfRangeError(absl::StrCat(
          "offset ", spec_.offset, " is beyond the end of the asset (", total_, " bytes)"));
      return false;
    }
    if (!info_ready_) {
      info_ready_ = true;
      info_.set_asset(spec_.asset.name());
      std::string content_type = spec_.asset.content_type();
      if (content_type.empty()) {
        content_type = Header(headers, "Content-Type").value_or("");
      }
      info_.set_content_type(content_type);
      info_.set_size_bytes(std::max<int64_t>(0, total_));
      info_.set_sha256(spec_.asset.sha256());
      info_.set_offset(spec_.offset);
      info_.set_format(spec_.asset.format());
      owed = OwedLocked();
    }
  }
  if (owed) RunWake();
  return true;
}

bool DownloadPipe::OnData(absl::string_view data) {
  bool owed = false;
  bool more = true;
  int64_t report = 0;
  musicgw::v1::Provider provider;
  {
    absl::MutexLock lock(&mu_);
    if (EndedLocked()) return false;
    if (skip_ > 0) {
      const int64_t n = std::min<int64_t>(skip_, static_cast<int64_t>(data.size()));
      data.remove_prefix(static_cast<size_t>(n));
      skip_ -= n;
    }
    if (!data.empty()) {
      if (buffer_pos_ > 0 && buffer_pos_ >= buffer_.size() / 2) {
        buffer_.erase(0, buffer_pos_);
        buffer_pos_ = 0;
      }
      buffer_.append(data.data(), data.size());
      if (sha_ != nullptr) EVP_DigestUpdate(sha_, data.data(), data.size());
      received_offset_ += static_cast<int64_t>(data.size());
      transfer_bytes_ += static_cast<int64_t>(data.size());
      unreported_bytes_ += static_cast<int64_t>(data.size());
      max_buffered_ = std::max<int64_t>(max_buffered_, static_cast<int64_t>(BufferedLocked()));
      if (unreported_bytes_ >= (1 << 20)) {
        report = unreported_bytes_;
        unreported_bytes_ = 0;
      }
      owed = OwedLocked();
    }
    if (BufferedLocked() >= static_cast<size_t>(std::max(1, spec_.buffer_bytes))) {
      paused_ = true;
      more = false;
    }
    provider = spec_.provider;
  }
  if (report > 0) {
    if (auto host = host_.lock()) host->OnDownloadBytes(provider, report);
  }
  if (owed) RunWake();
  return more;
}

void DownloadPipe::RetryOrFailLocked(const absl::Status& why,
                                     const std::shared_ptr<DownloadHost>& host) {
  if (transfer_bytes_ > 0) retries_ = 0;  // progress was made: the budget starts over
  if (host == nullptr) {
    error_ = ShuttingDown();
    return;
  }
  if (++retries_ > kMaxRetries) {
    error_ = absl::UnavailableError(
        absl::StrCat("asset transfer failed after ", kMaxRetries, " retries: ", why.message()));
    return;
  }
  std::weak_ptr<DownloadPipe> weak = weak_from_this();
  host->PostTask(
      [weak] {
        if (auto self = weak.lock()) self->StartTransfer();
      },
      absl::Milliseconds(100) * (1 << (retries_ - 1)));
}

void DownloadPipe::OnComplete(absl::Status status) {
  std::shared_ptr<DownloadPipe> keep;
  std::shared_ptr<http::StreamHandle> handle;
  auto host = host_.lock();
  bool owed = false;
  bool refresh = false;
  int64_t report = 0;
  std::string digest;
  int64_t size = 0;
  musicgw::v1::Provider provider;
  std::string operation_id;
  int index;
  {
    absl::MutexLock lock(&mu_);
    provider = spec_.provider;
    operation_id = spec_.operation_id;
    index = spec_.index;
    keep = std::move(self_);
    handle = std::move(handle_);
    if (!EndedLocked()) {
      if (action_ == Action::kFail) {
        error_ = action_status_;
      } else if (action_ == Action::kRefresh) {
        if (++refreshes_ > kMaxRefreshes) {
          error_ = action_status_;
        } else {
          refresh = true;
        }
      } else if (action_ == Action::kRetry) {
        RetryOrFailLocked(action_status_, host);
      } else if (!status.ok()) {
        RetryOrFailLocked(status, host);
      } else if (total_ >= 0 && received_offset_ < total_) {
        RetryOrFailLocked(absl::UnavailableError("asset transfer ended early"), host);
      } else {
        complete_ = true;
        if (total_ < 0) total_ = received_offset_;
        if (sha_ != nullptr) {
          unsigned char md[EVP_MAX_MD_SIZE];
          unsigned int md_len = 0;
          EVP_DigestFinal_ex(sha_, md, &md_len);
          EVP_MD_CTX_free(sha_);
          sha_ = nullptr;
          digest =
              absl::BytesToHexString(absl::string_view(reinterpret_cast<const char*>(md), md_len));
          size = received_offset_;
          facts_pending_ = host != nullptr;
        }
      }
      owed = EndedLocked() && OwedLocked();
    }
    report = unreported_bytes_;
    unreported_bytes_ = 0;
  }
  if (host != nullptr) {
    if (report > 0) host->OnDownloadBytes(provider, report);
    if (!digest.empty()) {
      std::weak_ptr<DownloadPipe> weak = weak_from_this();
      host->RecordAssetFacts(operation_id, index, size, digest, [weak] {
        if (auto self = weak.lock()) self->OnFactsRecorded();
      });
    }
    if (refresh) {
      std::weak_ptr<DownloadPipe> weak = weak_from_this();
      host->PostTask(
          [weak] {
            if (auto self = weak.lock()) self->Refresh();
          },
          absl::ZeroDuration());
    }
    // Never drop the handle (or, through `keep`, this pipe) inside the client's own callback.
    host->PostTask([keep = std::move(keep), handle = std::move(handle)] {}, absl::ZeroDuration());
  }
  if (owed) RunWake();
}

void DownloadPipe::Close() {
  {
    // After this, no wake-up runs (a running one finishes first).
    absl::MutexLock lock(&wake_mu_);
    wake_ = nullptr;
  }
  std::shared_ptr<http::StreamHandle> handle;
  {
    absl::MutexLock lock(&mu_);
    if (closed_) return;
    closed_ = true;
    handle = handle_;
    buffer_.clear();
    buffer_pos_ = 0;
  }
  if (handle != nullptr) handle->Cancel();
}

void DownloadPipe::Fail(absl::Status status) {
  std::shared_ptr<http::StreamHandle> handle;
  bool owed;
  {
    absl::MutexLock lock(&mu_);
    if (EndedLocked()) return;
    error_ = std::move(status);
    buffer_.clear();
    buffer_pos_ = 0;
    handle = handle_;
    owed = OwedLocked();
  }
  if (handle != nullptr) handle->Cancel();
  if (owed) RunWake();
}

std::optional<musicgw::v1::DownloadChunk> DownloadPipe::Next(bool* finished,
                                                             absl::Status* final_status) {
  std::shared_ptr<http::StreamHandle> resume;
  std::optional<musicgw::v1::DownloadChunk> chunk;
  {
    absl::MutexLock lock(&mu_);
    if (!info_sent_) {
      if (info_ready_ && error_.ok()) {
        info_sent_ = true;
        chunk.emplace();
        *chunk->mutable_info() = info_;
        chunk->set_offset(spec_.offset);
        return chunk;
      }
      if (!error_.ok() || closed_) {
        *finished = true;
        *final_status = closed_ ? absl::CancelledError("download closed") : Reasoned(error_);
        return std::nullopt;
      }
      waiting_ = true;
      return std::nullopt;
    }
    const size_t available = BufferedLocked();
    const size_t chunk_bytes = static_cast<size_t>(std::max(1, spec_.chunk_bytes));
    if (available >= chunk_bytes || (available > 0 && (complete_ || paused_ || !error_.ok()))) {
      const size_t n = std::min(available, chunk_bytes);
      chunk.emplace();
      chunk->set_data(buffer_.data() + buffer_pos_, n);
      chunk->set_offset(delivered_offset_);
      delivered_offset_ += static_cast<int64_t>(n);
      buffer_pos_ += n;
      if (buffer_pos_ == buffer_.size()) {
        buffer_.clear();
        buffer_pos_ = 0;
      }
      if (paused_ && BufferedLocked() <= static_cast<size_t>(std::max(1, spec_.buffer_bytes)) / 2) {
        paused_ = false;
        resume = handle_;
      }
    } else if (complete_ && !facts_pending_) {
      *finished = true;
      *final_status = absl::OkStatus();
      return std::nullopt;
    } else if (!error_.ok()) {
      *finished = true;
      *final_status = Reasoned(error_);
      return std::nullopt;
    } else {
      waiting_ = true;
      return std::nullopt;
    }
  }
  if (resume != nullptr) resume->Resume();
  return chunk;
}

void DownloadPipe::OnFactsRecorded() {
  bool owed = false;
  {
    absl::MutexLock lock(&mu_);
    facts_pending_ = false;
    owed = OwedLocked();
  }
  if (owed) RunWake();
}

CustodyStream::CustodyStream(v1::Asset asset, std::unique_ptr<AssetReader> reader,
                             std::string sha256, int64_t offset, int chunk_bytes,
                             std::shared_ptr<std::atomic<int64_t>> open)
    : asset_(std::move(asset)),
      reader_(std::move(reader)),
      sha256_(std::move(sha256)),
      offset_(offset),
      chunk_bytes_(std::max(chunk_bytes, 4096)),
      open_(std::move(open)) {
  if (open_ != nullptr) open_->fetch_add(1);
}

CustodyStream::~CustodyStream() {
  if (open_ != nullptr) open_->fetch_sub(1);
}

std::optional<v1::DownloadChunk> CustodyStream::Next(bool* finished, absl::Status* final_status) {
  if (!info_sent_) {
    info_sent_ = true;
    return InfoChunk();
  }
  if (done_) {
    *finished = true;
    *final_status = status_;
    return std::nullopt;
  }
  v1::DownloadChunk chunk;
  // A local read straight into the message: no buffer, no hashing (the digest is the name).
  std::string* data = chunk.mutable_data();
  status_ = reader_->ReadAt(offset_, chunk_bytes_, data);
  if (!status_.ok() || data->empty()) {
    done_ = true;
    *finished = true;
    *final_status = status_;
    return std::nullopt;
  }
  chunk.set_offset(offset_);
  offset_ += static_cast<int64_t>(data->size());
  return chunk;
}

v1::DownloadChunk CustodyStream::InfoChunk() const {
  v1::DownloadChunk chunk;
  v1::AssetInfo* info = chunk.mutable_info();
  info->set_asset(asset_.name());
  info->set_content_type(asset_.content_type());
  info->set_size_bytes(reader_->size());
  info->set_sha256(sha256_);
  info->set_offset(offset_);
  info->set_format(asset_.format());
  info->set_in_custody(true);
  chunk.set_offset(offset_);
  return chunk;
}

int64_t CustodyStream::NextDataSize() const {
  return std::clamp<int64_t>(reader_->size() - offset_, 0, chunk_bytes_);
}

absl::Status CustodyStream::ReadData(absl::Span<char> out) {
  MUSICGW_ASSIGN_OR_RETURN(const size_t got, reader_->ReadInto(offset_, out));
  // The object is immutable (named by its digest): a short read means the disk lost bytes.
  if (got != out.size()) {
    return absl::DataLossError(absl::StrCat("asset store: object ended at ", offset_ + got, " of ",
                                            reader_->size(), " bytes"));
  }
  offset_ += static_cast<int64_t>(got);
  return absl::OkStatus();
}

}  // namespace musicgw::operations
