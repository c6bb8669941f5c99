// File: asset_store.h
// The gateway's own copy of asset bytes, content-addressed by SHA-256: an object's name is the
// lower-case hex digest of its bytes, so writing the same bytes twice is harmless and no two
// writers ever need to coordinate. `AssetStore` is the interface (another backend can follow);
// `OpenDirectoryAssetStore` is the embedded one: one file per object under a directory.
//
// Multi-replica deployments mount the same directory on a ReadWriteMany volume in every
// replica: an object is written to a unique temporary name, fsynced and renamed into place, so
// readers on any replica see either nothing or the whole object (README "Asset custody").
//
// Thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace musicgw::operations {

struct StoredObject {
  std::string sha256;  // lower-case hex
  int64_t size_bytes = 0;
};

// One object being written. Not thread-safe. Destroyed without Commit: nothing is kept.
class AssetWriter {
 public:
  virtual ~AssetWriter() = default;
  virtual absl::Status Append(absl::string_view bytes) = 0;
  // Makes the bytes durable under their digest; the writer is finished afterwards.
  virtual absl::StatusOr<StoredObject> Commit() = 0;
};

// One stored object, open for reading. Reads at any offset; not thread-safe.
class AssetReader {
 public:
  virtual ~AssetReader() = default;
  virtual int64_t size() const = 0;
  // Up to `max_bytes` from `offset` into `out` (replaced); empty at the end.
  virtual absl::Status ReadAt(int64_t offset, int64_t max_bytes, std::string* out) = 0;
  // Up to `out.size()` bytes from `offset` straight into `out` (a buffer the caller owns, e.g.
  // the slice a message is sent from); returns how many, 0 at the end.
  virtual absl::StatusOr<size_t> ReadInto(int64_t offset, absl::Span<char> out) = 0;
};

class AssetStore {
 public:
  virtual ~AssetStore() = default;
  virtual absl::StatusOr<std::unique_ptr<AssetWriter>> NewWriter() = 0;
  // NOT_FOUND when the object is not held.
  virtual absl::StatusOr<std::unique_ptr<AssetReader>> Open(absl::string_view sha256) = 0;
  // Deletes the object; OK when it was already gone.
  virtual absl::Status Remove(absl::string_view sha256) = 0;
  // Where the store lives, for logs and health ("dir:/data/assets").
  virtual std::string Describe() const = 0;
};

// A directory store rooted at `root` (created if missing): objects at root/ab/abcdef…, writes
// in root/tmp/ first. Temporary files left by a crash are removed here.
absl::StatusOr<std::unique_ptr<AssetStore>> OpenDirectoryAssetStore(const std::string& root);

}  // namespace musicgw::operations
