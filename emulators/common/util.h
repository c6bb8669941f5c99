// File: util.h
// Small helpers shared by the emulators: ids, timestamps, JSON formatting, HMAC, counters.
#pragma once

#include <cstdint>
#include <map>
#include <random>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"

namespace musicgw::emulators {

// Seeded id source. Thread-safe.
class IdGenerator {
 public:
  explicit IdGenerator(uint64_t seed) : rng_(seed) {}
  void Reseed(uint64_t seed);
  uint64_t Next();
  std::string UuidV4();
  // Time-based layout like the captured song ids (UUIDv1: time_low-time_mid-1xxx-...).
  std::string UuidV1(absl::Time now);
  // Lower-case Crockford ULID: 26 chars of [0-9a-z] (10 of time, 16 random).
  std::string Ulid(absl::Time now);
  std::string Hex(int bytes);

 private:
  absl::Mutex mu_;
  std::mt19937_64 rng_ ABSL_GUARDED_BY(mu_);
};

// "2026-05-20T12:34:56Z"
std::string FormatRfc3339(absl::Time t);
// "2025-04-03T11:04:42+0000" (the web app's format; the emulator runs in UTC).
std::string FormatLoudlyTime(absl::Time t);
// "20250403110454" (the ?cb= cache buster).
std::string FormatCacheBuster(absl::Time t);
// "2025-04-03"
std::string FormatDate(absl::Time t);

// A JSON text with every '/' written as "\/" (as PHP's json_encode does).
std::string EscapeJsonSlashes(absl::string_view json_text);
// Parses without exceptions; discarded (is_discarded()) on error.
nlohmann::json ParseJson(absl::string_view text);

std::string HmacSha256(absl::string_view key, absl::string_view data);

// The whole file; empty path -> empty string.
absl::StatusOr<std::string> ReadFileOrEmpty(const std::string& path);

// For the binaries: BlockTerminationSignals() before any thread starts (threads inherit the
// mask), then WaitForTerminationSignal() returns SIGTERM or SIGINT once one arrives.
void BlockTerminationSignals();
int WaitForTerminationSignal();

// A named set of counters. Thread-safe.
class Counters {
 public:
  void Add(const std::string& name, int64_t n = 1);
  int64_t Get(const std::string& name) const;
  std::map<std::string, int64_t> Snapshot() const;
  void Clear();

 private:
  mutable absl::Mutex mu_;
  std::map<std::string, int64_t> values_ ABSL_GUARDED_BY(mu_);
};

}  // namespace musicgw::emulators
