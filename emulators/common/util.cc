#include "emulators/common/util.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <csignal>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace musicgw::emulators {

void IdGenerator::Reseed(uint64_t seed) {
  absl::MutexLock lock(&mu_);
  rng_.seed(seed);
}

uint64_t IdGenerator::Next() {
  absl::MutexLock lock(&mu_);
  return rng_();
}

std::string IdGenerator::UuidV4() {
  uint64_t hi = Next();
  uint64_t lo = Next();
  hi = (hi & ~0xF000ULL) | 0x4000ULL;              // version 4
  lo = (lo & ~(0xC0ULL << 56)) | (0x80ULL << 56);  // RFC 4122 variant
  return absl::StrFormat("%08x-%04x-%04x-%04x-%012x", hi >> 32, (hi >> 16) & 0xFFFF, hi & 0xFFFF,
                         lo >> 48, lo & 0xFFFFFFFFFFFFULL);
}

std::string IdGenerator::UuidV1(absl::Time now) {
  // 100 ns ticks since 1582-10-15, as UUIDv1 counts them.
  const uint64_t ticks =
      static_cast<uint64_t>(absl::ToUnixNanos(now) / 100) + 0x01B21DD213814000ULL;
  const uint64_t node = Next();
  return absl::StrFormat("%08x-%04x-1%03x-%04x-%012x", ticks & 0xFFFFFFFF, (ticks >> 32) & 0xFFFF,
                         (ticks >> 48) & 0x0FFF, 0x8000 | ((node >> 48) & 0x3FFF),
                         node & 0xFFFFFFFFFFFFULL);
}

std::string IdGenerator::Ulid(absl::Time now) {
  static constexpr char kAlphabet[] = "0123456789abcdefghjkmnpqrstvwxyz";
  std::string out(26, '0');
  uint64_t ms = static_cast<uint64_t>(absl::ToUnixMillis(now));
  for (int i = 9; i >= 0; --i) {
    out[i] = kAlphabet[ms & 31];
    ms >>= 5;
  }
  uint64_t r1 = Next();
  uint64_t r2 = Next();
  for (int i = 10; i < 26; ++i) {
    uint64_t& r = i < 22 ? r1 : r2;
    out[i] = kAlphabet[r & 31];
    r >>= 5;
  }
  return out;
}

std::string IdGenerator::Hex(int bytes) {
  std::string out;
  while (static_cast<int>(out.size()) < bytes * 2) out += absl::StrFormat("%016x", Next());
  out.resize(bytes * 2);
  return out;
}

std::string FormatRfc3339(absl::Time t) {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", t, absl::UTCTimeZone());
}

std::string FormatLoudlyTime(absl::Time t) {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%S+0000", t, absl::UTCTimeZone());
}

std::string FormatCacheBuster(absl::Time t) {
  return absl::FormatTime("%Y%m%d%H%M%S", t, absl::UTCTimeZone());
}

std::string FormatDate(absl::Time t) {
  return absl::FormatTime("%Y-%m-%d", t, absl::UTCTimeZone());
}

std::string EscapeJsonSlashes(absl::string_view json_text) {
  // A '/' in JSON text can only occur inside a string (the syntax has none), so escaping every
  // one is exact. Input comes from nlohmann's dump, which never writes "\/" itself.
  std::string out;
  out.reserve(json_text.size() + 16);
  for (char c : json_text) {
    if (c == '/') out += '\\';
    out += c;
  }
  return out;
}

nlohmann::json ParseJson(absl::string_view text) {
  return nlohmann::json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
}

std::string HmacSha256(absl::string_view key, absl::string_view data) {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
       reinterpret_cast<const unsigned char*>(data.data()), data.size(), out, &len);
  return std::string(reinterpret_cast<const char*>(out), len);
}

absl::StatusOr<std::string> ReadFileOrEmpty(const std::string& path) {
  if (path.empty()) return std::string();
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

namespace {
sigset_t TerminationSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  return set;
}
}  // namespace

void BlockTerminationSignals() {
  const sigset_t set = TerminationSignals();
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  std::signal(SIGPIPE, SIG_IGN);
}

int WaitForTerminationSignal() {
  const sigset_t set = TerminationSignals();
  int sig = 0;
  sigwait(&set, &sig);
  return sig;
}

std::pair<std::string, std::string> SplitKeyValue(absl::string_view item) {
  const size_t eq = item.find('=');
  if (eq == absl::string_view::npos) return {std::string(item), ""};
  return {std::string(item.substr(0, eq)), std::string(item.substr(eq + 1))};
}

}  // namespace musicgw::emulators
