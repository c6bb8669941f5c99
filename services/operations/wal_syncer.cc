#include "services/operations/wal_syncer.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"

namespace musicgw::operations {

absl::StatusOr<std::unique_ptr<WalSyncer>> WalSyncer::Open(const std::string& wal_path,
                                                           LedgerSyncStats* stats,
                                                           std::function<void()> before_sync) {
  // Read-only is enough: fdatasync flushes the file's dirty pages whichever descriptor asks.
  const int fd = ::open(wal_path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return absl::UnavailableError(
        absl::StrCat("ledger: cannot open the write-ahead log: ", std::strerror(errno)));
  }
  // The log's directory entry must be on disk too, or a power loss can take the file with it.
  const size_t slash = wal_path.rfind('/');
  const std::string dir = slash == std::string::npos ? "." : wal_path.substr(0, slash + 1);
  const int dir_fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  const bool dir_synced = dir_fd >= 0 && ::fsync(dir_fd) == 0;
  const int dir_error = errno;
  if (dir_fd >= 0) ::close(dir_fd);
  if (!dir_synced) {
    ::close(fd);
    return absl::UnavailableError(
        absl::StrCat("ledger: cannot sync the directory of the log: ", std::strerror(dir_error)));
  }
  return std::make_unique<WalSyncer>(fd, stats, std::move(before_sync));
}

WalSyncer::~WalSyncer() { ::close(fd_); }

absl::Status WalSyncer::failure() const {
  absl::MutexLock lock(&mu_);
  return failure_;
}

bool WalSyncer::NotSyncing() const { return !syncing_; }

absl::Status WalSyncer::SyncCommitted() {
  mu_.Lock();
  // Numbered after the caller's commit finished: a sync started once this number is taken
  // covers that commit.
  const int64_t mine = ++requested_;
  if (stats_ != nullptr) stats_->durable_writes.fetch_add(1, std::memory_order_relaxed);
  while (failure_.ok() && synced_ < mine) {
    if (syncing_) {
      // That sync may have started before this commit: wait for it, then look again.
      mu_.Await(absl::Condition(this, &WalSyncer::NotSyncing));
      continue;
    }
    syncing_ = true;
    const int64_t covered = requested_;
    mu_.Unlock();
    if (before_sync_) before_sync_();
    const int rc = ::fdatasync(fd_);
    const int error = rc == 0 ? 0 : errno;
    if (stats_ != nullptr) stats_->syncs.fetch_add(1, std::memory_order_relaxed);
    mu_.Lock();
    syncing_ = false;
    if (rc == 0) {
      synced_ = covered;
    } else {
      failure_ = absl::InternalError(
          absl::StrCat("ledger: syncing the write-ahead log failed (", std::strerror(error),
                       "); its writes are refused until the gateway restarts"));
    }
  }
  absl::Status result = failure_;
  mu_.Unlock();
  return result;
}

}  // namespace musicgw::operations
