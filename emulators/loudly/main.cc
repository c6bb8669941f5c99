// loudly-emulator: both Loudly dialects as a process (sandbox, benchmarks, client e2e).
// Prints "listening on http://HOST:PORT" once it accepts connections; exits cleanly on SIGTERM or
// SIGINT. Keys and tokens given here are test values, never real credentials.
#include <cstdlib>
#include <iostream>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "emulators/common/util.h"
#include "emulators/loudly/loudly_emulator.h"

ABSL_FLAG(std::string, host, "127.0.0.1", "Address to listen on");
ABSL_FLAG(int, port, 0, "Port (0 = any free port)");
ABSL_FLAG(int, threads, 256, "HTTP worker threads (one per open connection)");
ABSL_FLAG(std::vector<std::string>, api_key, {"loudly_test_key"},
          "B2B API-KEY values, comma-separated, each KEY or KEY=ACCOUNT (default account: b2b)");
ABSL_FLAG(std::string, client_id, "1_test_client", "Web OAuth client_id");
ABSL_FLAG(std::string, refresh_token, "test-refresh-token", "Initial web refresh token");
ABSL_FLAG(int, access_token_ttl_s, 3600, "Lifetime of issued access tokens");
ABSL_FLAG(int, song_delay_ms, 8000, "Time from bundle creation to its song");
ABSL_FLAG(int, sync_latency_ms, 2000, "Latency of a B2B generation POST");
ABSL_FLAG(int, default_duration_s, 0, "Song length when the request has none (0: 120-200 s)");
ABSL_FLAG(std::vector<std::string>, web_limit, {}, "usage_data totals, KEY=TOTAL pairs");
ABSL_FLAG(std::vector<std::string>, b2b_limit, {}, "B2B monthly limits, REQUEST_TYPE=LIMIT pairs");
ABSL_FLAG(int64_t, b2b_top_up, 0, "Top-up credits in the object shape of /api/account/limits");
ABSL_FLAG(std::string, limits_shape, "array", "/api/account/limits shape: array or object");
ABSL_FLAG(uint64_t, seed, 1, "Seed for fault probabilities");
ABSL_FLAG(std::string, fault_plan, "", "Fault plan JSON file (see emulators/common/fault_plan.h)");
ABSL_FLAG(std::string, data_dir, "", "Audio cache directory (default: a temporary one)");
ABSL_FLAG(std::string, public_url, "", "Base of file URLs (default: the listen URL)");

namespace {
std::map<std::string, int64_t> Pairs(const std::vector<std::string>& items) {
  std::map<std::string, int64_t> out;
  for (const std::string& item : items) {
    const auto kv = musicgw::emulators::SplitKeyValue(item);
    out[kv.first] = std::atoll(kv.second.c_str());
  }
  return out;
}
}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  using musicgw::emulators::loudly::Emulator;
  using musicgw::emulators::loudly::LimitsShape;
  using musicgw::emulators::loudly::Options;
  Options options;
  options.host = absl::GetFlag(FLAGS_host);
  options.port = absl::GetFlag(FLAGS_port);
  options.threads = absl::GetFlag(FLAGS_threads);
  options.api_keys.clear();
  for (const std::string& item : absl::GetFlag(FLAGS_api_key)) {
    const auto kv = musicgw::emulators::SplitKeyValue(item);
    options.api_keys[kv.first] = kv.second.empty() ? "b2b" : kv.second;
  }
  options.client_id = absl::GetFlag(FLAGS_client_id);
  options.refresh_token = absl::GetFlag(FLAGS_refresh_token);
  options.access_token_ttl = absl::Seconds(absl::GetFlag(FLAGS_access_token_ttl_s));
  options.bundle_song_delay = absl::Milliseconds(absl::GetFlag(FLAGS_song_delay_ms));
  options.sync_latency = absl::Milliseconds(absl::GetFlag(FLAGS_sync_latency_ms));
  options.default_duration_seconds = absl::GetFlag(FLAGS_default_duration_s);
  options.web_limits = Pairs(absl::GetFlag(FLAGS_web_limit));
  options.b2b_limits = Pairs(absl::GetFlag(FLAGS_b2b_limit));
  options.b2b_top_up = absl::GetFlag(FLAGS_b2b_top_up);
  const std::string shape = absl::GetFlag(FLAGS_limits_shape);
  if (shape != "array" && shape != "object") {
    std::cerr << "loudly-emulator: --limits_shape must be array or object\n";
    return 2;
  }
  options.limits_shape = shape == "array" ? LimitsShape::kArray : LimitsShape::kObject;
  options.seed = absl::GetFlag(FLAGS_seed);
  options.data_dir = absl::GetFlag(FLAGS_data_dir);
  options.public_url = absl::GetFlag(FLAGS_public_url);
  return musicgw::emulators::RunEmulatorMain<Emulator>("loudly-emulator", std::move(options),
                                                       absl::GetFlag(FLAGS_fault_plan));
}
