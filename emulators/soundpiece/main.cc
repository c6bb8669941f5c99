// soundpiece-emulator: the Soundpiece v1 emulator as a process (sandbox, benchmarks, client e2e).
// Prints "listening on http://HOST:PORT" once it accepts connections; exits cleanly on SIGTERM or
// SIGINT. Keys and secrets given here are test values, never real credentials.
#include <cstdlib>
#include <iostream>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "emulators/common/util.h"
#include "emulators/soundpiece/soundpiece_emulator.h"

ABSL_FLAG(std::string, host, "127.0.0.1", "Address to listen on");
ABSL_FLAG(int, port, 0, "Port (0 = any free port)");
ABSL_FLAG(int, threads, 256, "HTTP worker threads (one per open connection, long-polls included)");
ABSL_FLAG(std::vector<std::string>, api_key, {"spk_test_key"},
          "Accepted Bearer keys, comma-separated, each KEY or KEY=ACCOUNT (default account: acct)");
ABSL_FLAG(std::vector<std::string>, webhook_secret, {},
          "Webhook signing secrets, each whsec_... (account acct) or ACCOUNT=whsec_...; two for "
          "one account = a rotation (both sign)");
ABSL_FLAG(int, processing_ms, 2000, "How long an operation stays processing");
ABSL_FLAG(int, long_poll_ms, 20000, "Longest wait of a wait=true GET");
ABSL_FLAG(int, url_ttl_s, 900, "Lifetime of signed download URLs");
ABSL_FLAG(bool, strict_idempotency, false, "409 when a key is reused with another body");
ABSL_FLAG(int64_t, credits, 1000, "Initial credits per account");
ABSL_FLAG(std::vector<std::string>, route_cost, {}, "ROUTE=COST pairs (default cost 1)");
ABSL_FLAG(double, rate_limit_per_second, 50, "Per-account request rate");
ABSL_FLAG(int, rate_limit_burst, 100, "Per-account burst");
ABSL_FLAG(bool, allow_loopback_callbacks, true, "Accept http:// and private callback URLs");
ABSL_FLAG(uint64_t, seed, 1, "Seed for fault probabilities");
ABSL_FLAG(std::string, fault_plan, "", "Fault plan JSON file (see emulators/common/fault_plan.h)");
ABSL_FLAG(std::string, data_dir, "", "Audio cache directory (default: a temporary one)");
ABSL_FLAG(double, source_seconds, 120, "Assumed length of a source URL without duration=");
ABSL_FLAG(double, max_source_seconds, 3600, "Largest source length a duration= may ask for");
ABSL_FLAG(std::string, public_url, "", "Base of minted download URLs (default: the listen URL)");

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  using musicgw::emulators::soundpiece::Emulator;
  using musicgw::emulators::soundpiece::Options;
  Options options;
  options.host = absl::GetFlag(FLAGS_host);
  options.port = absl::GetFlag(FLAGS_port);
  options.threads = absl::GetFlag(FLAGS_threads);
  options.api_keys.clear();
  for (const std::string& item : absl::GetFlag(FLAGS_api_key)) {
    const auto kv = musicgw::emulators::SplitKeyValue(item);
    options.api_keys[kv.first] = kv.second.empty() ? "acct" : kv.second;
  }
  for (const std::string& item : absl::GetFlag(FLAGS_webhook_secret)) {
    // "whsec_..." belongs to account acct; a second secret for one account is a rotation.
    const auto kv = musicgw::emulators::SplitKeyValue(item);
    const bool bare = absl::StartsWith(item, "whsec_");
    const std::string secret = bare ? item : kv.second;
    std::string& secrets = options.webhook_secrets[bare ? "acct" : kv.first];
    secrets = secrets.empty() ? secret : absl::StrCat(secrets, " ", secret);
  }
  options.processing_time = absl::Milliseconds(absl::GetFlag(FLAGS_processing_ms));
  options.long_poll = absl::Milliseconds(absl::GetFlag(FLAGS_long_poll_ms));
  options.url_ttl = absl::Seconds(absl::GetFlag(FLAGS_url_ttl_s));
  options.strict_idempotency = absl::GetFlag(FLAGS_strict_idempotency);
  options.initial_credits = absl::GetFlag(FLAGS_credits);
  for (const std::string& item : absl::GetFlag(FLAGS_route_cost)) {
    const auto kv = musicgw::emulators::SplitKeyValue(item);
    options.route_cost[kv.first] = std::atoll(kv.second.c_str());
  }
  options.rate_limit_per_second = absl::GetFlag(FLAGS_rate_limit_per_second);
  options.rate_limit_burst = absl::GetFlag(FLAGS_rate_limit_burst);
  options.allow_loopback_callbacks = absl::GetFlag(FLAGS_allow_loopback_callbacks);
  options.seed = absl::GetFlag(FLAGS_seed);
  options.data_dir = absl::GetFlag(FLAGS_data_dir);
  options.source_seconds = absl::GetFlag(FLAGS_source_seconds);
  options.max_source_seconds = absl::GetFlag(FLAGS_max_source_seconds);
  options.public_url = absl::GetFlag(FLAGS_public_url);
  return musicgw::emulators::RunEmulatorMain<Emulator>("soundpiece-emulator", std::move(options),
                                                       absl::GetFlag(FLAGS_fault_plan));
}
