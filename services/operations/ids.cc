#include "services/operations/ids.h"

#include <openssl/rand.h>
#include <openssl/sha.h>

#include <cstdint>

#include "absl/base/thread_annotations.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "common/crypto.h"
#include "common/errors.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"

namespace musicgw::operations {
namespace {

// Crockford's alphabet, lower-cased: ASCII order equals numeric order, so ids sort by time.
constexpr char kAlphabet[] = "0123456789abcdefghjkmnpqrstvwxyz";
constexpr int kIdLength = 26;
constexpr absl::string_view kOperationsPrefix = "operations/";
constexpr absl::string_view kAssetsInfix = "/assets/";

using Uint128 = unsigned __int128;

struct IdState {
  absl::Mutex mu;
  uint64_t last_ms ABSL_GUARDED_BY(mu) = 0;
  Uint128 last_random ABSL_GUARDED_BY(mu) = 0;
};

IdState& State() {
  static auto* state = new IdState;
  return *state;
}

Uint128 Random80() {
  unsigned char bytes[10];
  RAND_bytes(bytes, sizeof(bytes));
  Uint128 value = 0;
  for (unsigned char b : bytes) value = (value << 8) | b;
  return value;
}

}  // namespace

std::string NewOperationId(absl::Time now) {
  uint64_t ms = static_cast<uint64_t>(std::max<int64_t>(0, absl::ToUnixMillis(now)));
  Uint128 random;
  {
    IdState& state = State();
    absl::MutexLock lock(&state.mu);
    // Monotonic: within one millisecond (or if the clock steps back) increment the random part.
    if (ms <= state.last_ms) {
      ms = state.last_ms;
      random = (state.last_random + 1) & ((Uint128{1} << 80) - 1);
    } else {
      random = Random80();
    }
    state.last_ms = ms;
    state.last_random = random;
  }
  std::string id(kIdLength, '0');
  for (int i = 9; i >= 0; --i) {
    id[i] = kAlphabet[ms & 31];
    ms >>= 5;
  }
  for (int i = kIdLength - 1; i >= 10; --i) {
    id[i] = kAlphabet[static_cast<int>(random & 31)];
    random >>= 5;
  }
  return id;
}

bool IsOperationId(absl::string_view id) {
  if (id.size() != kIdLength) return false;
  for (char c : id) {
    if (absl::string_view(kAlphabet).find(c) == absl::string_view::npos) return false;
  }
  return true;
}

std::string OperationName(absl::string_view id) { return absl::StrCat(kOperationsPrefix, id); }

std::string AssetName(absl::string_view id, int index) {
  return absl::StrCat(kOperationsPrefix, id, kAssetsInfix, index);
}

absl::StatusOr<std::string> ParseOperationName(absl::string_view name, absl::string_view field) {
  if (!absl::ConsumePrefix(&name, kOperationsPrefix) || !IsOperationId(name)) {
    return InvalidFieldError(field, "must be operations/{id} with a 26-character id");
  }
  return std::string(name);
}

absl::StatusOr<AssetRef> ParseAssetName(absl::string_view name, absl::string_view field) {
  absl::string_view rest = name;
  const auto bad = [&] {
    return InvalidFieldError(field, "must be operations/{id}/assets/{index}");
  };
  if (!absl::ConsumePrefix(&rest, kOperationsPrefix) || rest.size() < kIdLength) return bad();
  AssetRef ref;
  ref.operation_id = std::string(rest.substr(0, kIdLength));
  rest.remove_prefix(kIdLength);
  if (!IsOperationId(ref.operation_id) || !absl::ConsumePrefix(&rest, kAssetsInfix) ||
      rest.empty() || rest.size() > 4 || !absl::SimpleAtoi(rest, &ref.index) || ref.index < 0 ||
      absl::StrCat(ref.index) != rest) {
    return bad();
  }
  return ref;
}

std::string ProviderIdempotencyKey(absl::string_view tenant, absl::string_view request_id) {
  const std::string input = absl::StrCat("musicgw/", tenant, "/", request_id);
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(input.data()), input.size(), digest);
  digest[6] = (digest[6] & 0x0F) | 0x50;  // version 5 (name-based)
  digest[8] = (digest[8] & 0x3F) | 0x80;  // RFC 4122 variant
  const std::string hex =
      absl::BytesToHexString(absl::string_view(reinterpret_cast<const char*>(digest), 16));
  return absl::StrCat(hex.substr(0, 8), "-", hex.substr(8, 4), "-", hex.substr(12, 4), "-",
                      hex.substr(16, 4), "-", hex.substr(20, 12));
}

std::string RequestFingerprint(const musicgw::v1::GenerateRequest& request) {
  musicgw::v1::GenerateRequest copy = request;
  copy.clear_validate_only();
  std::string bytes;
  {
    google::protobuf::io::StringOutputStream output(&bytes);
    google::protobuf::io::CodedOutputStream coded(&output);
    coded.SetSerializationDeterministic(true);
    copy.SerializeToCodedStream(&coded);
  }
  return Sha256Hex(bytes);
}

}  // namespace musicgw::operations
