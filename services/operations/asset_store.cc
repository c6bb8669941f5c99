#include "services/operations/asset_store.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace musicgw::operations {
namespace {

namespace fs = std::filesystem;

absl::Status ErrnoStatus(absl::string_view what, int error) {
  // Disk full and quota are conditions an operator fixes; the rest is an I/O failure.
  const absl::StatusCode code = (error == ENOSPC || error == EDQUOT)
                                    ? absl::StatusCode::kResourceExhausted
                                    : absl::StatusCode::kUnavailable;
  return absl::Status(code, absl::StrCat("asset store: ", what, ": ", std::strerror(error)));
}

bool IsDigest(absl::string_view sha256) {
  return sha256.size() == 64 &&
         sha256.find_first_not_of("0123456789abcdef") == absl::string_view::npos;
}

std::string Hex(const unsigned char* data, unsigned int size) {
  std::string out;
  out.reserve(size * 2);
  for (unsigned int i = 0; i < size; ++i) absl::StrAppendFormat(&out, "%02x", data[i]);
  return out;
}

class FileReader final : public AssetReader {
 public:
  FileReader(int fd, int64_t size) : fd_(fd), size_(size) {}
  ~FileReader() override { close(fd_); }
  FileReader(const FileReader&) = delete;
  FileReader& operator=(const FileReader&) = delete;

  int64_t size() const override { return size_; }
  absl::Status ReadAt(int64_t offset, int64_t max_bytes, std::string* out) override {
    out->clear();
    if (offset >= size_) return absl::OkStatus();
    out->resize(static_cast<size_t>(std::min(max_bytes, size_ - offset)));
    auto got = ReadInto(offset, absl::MakeSpan(out->data(), out->size()));
    if (!got.ok()) return got.status();
    out->resize(*got);
    return absl::OkStatus();
  }

  absl::StatusOr<size_t> ReadInto(int64_t offset, absl::Span<char> out) override {
    if (offset >= size_) return 0;
    const size_t want =
        static_cast<size_t>(std::min<int64_t>(static_cast<int64_t>(out.size()), size_ - offset));
    size_t got = 0;
    while (got < want) {
      const ssize_t n = pread(fd_, out.data() + got, want - got,
                              static_cast<off_t>(offset + static_cast<int64_t>(got)));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return ErrnoStatus("read", errno);
      if (n == 0) break;
      got += static_cast<size_t>(n);
    }
    return got;
  }

 private:
  const int fd_;
  const int64_t size_;
};

class FileWriter final : public AssetWriter {
 public:
  FileWriter(int fd, std::string temp_path, fs::path root)
      : fd_(fd), temp_path_(std::move(temp_path)), root_(std::move(root)), sha_(EVP_MD_CTX_new()) {
    EVP_DigestInit_ex(sha_, EVP_sha256(), nullptr);
  }
  ~FileWriter() override {
    if (fd_ >= 0) {
      close(fd_);
      unlink(temp_path_.c_str());
    }
    EVP_MD_CTX_free(sha_);
  }
  FileWriter(const FileWriter&) = delete;
  FileWriter& operator=(const FileWriter&) = delete;

  absl::Status Append(absl::string_view bytes) override {
    if (fd_ < 0) return absl::FailedPreconditionError("asset store: writer already finished");
    EVP_DigestUpdate(sha_, bytes.data(), bytes.size());
    size_ += static_cast<int64_t>(bytes.size());
    while (!bytes.empty()) {
      const ssize_t n = write(fd_, bytes.data(), bytes.size());
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return ErrnoStatus("write", errno);
      bytes.remove_prefix(static_cast<size_t>(n));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<StoredObject> Commit() override {
    if (fd_ < 0) return absl::FailedPreconditionError("asset store: writer already finished");
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int length = 0;
    EVP_DigestFinal_ex(sha_, digest, &length);
    StoredObject object{Hex(digest, length), size_};
    // The bytes reach the disk before the name does: a crash leaves a whole object or none.
    if (fsync(fd_) != 0) return ErrnoStatus("fsync", errno);
    close(fd_);
    fd_ = -1;
    const fs::path dir = root_ / object.sha256.substr(0, 2);
    std::error_code error;
    fs::create_directories(dir, error);
    if (error) {
      unlink(temp_path_.c_str());
      return ErrnoStatus("mkdir", error.value());
    }
    const fs::path final_path = dir / object.sha256;
    if (rename(temp_path_.c_str(), final_path.c_str()) != 0) {
      const int saved = errno;
      unlink(temp_path_.c_str());
      return ErrnoStatus("rename", saved);
    }
    // The rename itself is durable once the directory is synced.
    if (const int dir_fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC); dir_fd >= 0) {
      fsync(dir_fd);
      close(dir_fd);
    }
    return object;
  }

 private:
  int fd_;
  const std::string temp_path_;
  const fs::path root_;
  EVP_MD_CTX* const sha_;
  int64_t size_ = 0;
};

class DirectoryAssetStore final : public AssetStore {
 public:
  explicit DirectoryAssetStore(fs::path root) : root_(std::move(root)) {}

  absl::StatusOr<std::unique_ptr<AssetWriter>> NewWriter() override {
    thread_local std::mt19937_64 rng{std::random_device{}()};
    const std::string temp =
        (root_ / "tmp" / absl::StrFormat("%016x.%d", rng(), getpid())).string();
    const int fd = open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
    if (fd < 0) return ErrnoStatus("create", errno);
    return std::unique_ptr<AssetWriter>(std::make_unique<FileWriter>(fd, temp, root_));
  }

  absl::StatusOr<std::unique_ptr<AssetReader>> Open(absl::string_view sha256) override {
    if (!IsDigest(sha256)) return absl::InvalidArgumentError("asset store: not a SHA-256 digest");
    const std::string path = PathOf(sha256);
    const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      if (errno == ENOENT) return absl::NotFoundError("asset store: object not held");
      return ErrnoStatus("open", errno);
    }
    struct stat st {};
    if (fstat(fd, &st) != 0) {
      const int saved = errno;
      close(fd);
      return ErrnoStatus("stat", saved);
    }
    return std::unique_ptr<AssetReader>(std::make_unique<FileReader>(fd, st.st_size));
  }

  absl::Status Remove(absl::string_view sha256) override {
    if (!IsDigest(sha256)) return absl::InvalidArgumentError("asset store: not a SHA-256 digest");
    if (unlink(PathOf(sha256).c_str()) != 0 && errno != ENOENT) return ErrnoStatus("unlink", errno);
    return absl::OkStatus();
  }

  std::string Describe() const override { return absl::StrCat("dir:", root_.string()); }

 private:
  std::string PathOf(absl::string_view sha256) const {
    return (root_ / std::string(sha256.substr(0, 2)) / std::string(sha256)).string();
  }

  const fs::path root_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<AssetStore>> OpenDirectoryAssetStore(const std::string& root) {
  if (root.empty()) return absl::InvalidArgumentError("asset store: empty directory path");
  std::error_code error;
  const fs::path base(root);
  fs::create_directories(base / "tmp", error);
  if (error) {
    return absl::FailedPreconditionError(
        absl::StrCat("asset store: cannot create ", root, ": ", error.message()));
  }
  // Temporary files are never adopted: a writer that died before Commit left them. Only old
  // ones go, since other replicas sharing the directory may be writing theirs right now (a
  // fetch is bounded far below an hour).
  const auto cutoff = fs::file_time_type::clock::now() - std::chrono::hours(1);
  for (const auto& entry : fs::directory_iterator(base / "tmp", error)) {
    std::error_code ignored;
    if (entry.last_write_time(ignored) < cutoff) fs::remove(entry.path(), ignored);
  }
  return std::unique_ptr<AssetStore>(std::make_unique<DirectoryAssetStore>(base));
}

}  // namespace musicgw::operations
