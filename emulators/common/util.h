// File: util.h
// Small helpers shared by the emulators: ids, timestamps, JSON formatting, HMAC, the binaries' main
// loop.
#pragma once

#include <cstdint>
#include <iostream>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <utility>

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

// "KEY=VALUE" -> {KEY, VALUE}; "KEY" -> {KEY, ""}.
std::pair<std::string, std::string> SplitKeyValue(absl::string_view item);

// The binaries' main: reads the fault plan file into options.fault_plan_json, blocks SIGTERM and
// SIGINT for every thread, starts the emulator, prints "listening on <url>" (scripts wait for
// it), serves until a signal arrives and stops. Returns the process exit code.
template <typename EmulatorT, typename OptionsT>
int RunEmulatorMain(const char* name, OptionsT options, const std::string& fault_plan_path) {
  auto plan = ReadFileOrEmpty(fault_plan_path);
  if (!plan.ok()) {
    std::cerr << name << ": " << plan.status() << std::endl;
    return 2;
  }
  options.fault_plan_json = *std::move(plan);
  BlockTerminationSignals();
  auto emulator = EmulatorT::Start(std::move(options));
  if (!emulator.ok()) {
    std::cerr << name << ": " << emulator.status() << std::endl;
    return 1;
  }
  std::cout << "listening on " << (*emulator)->base_url() << std::endl;
  const int sig = WaitForTerminationSignal();
  (*emulator)->Stop();
  std::cerr << name << ": stopped on signal " << sig << std::endl;
  return 0;
}

}  // namespace musicgw::emulators
