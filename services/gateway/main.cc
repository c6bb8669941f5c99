// musicgw: the gateway binary. Wiring only: flags, config, signals; everything else is in
// GatewayServer.
//
//   musicgw --config=/etc/musicgw/config.json
//   musicgw --config=... --check_config        # validate and exit
//   printf %s "$KEY" | musicgw --hash_api_key  # the SHA-256 to put in tenants[].api_key_sha256
#include <curl/curl.h>
#include <malloc.h>
#include <signal.h>

#include <cstdio>
#include <iostream>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/config.h"
#include "common/crypto.h"
#include "common/log.h"
#include "services/gateway/access_log.h"
#include "services/gateway/server.h"

ABSL_FLAG(std::string, config, "", "Path of the JSON config file (required).");
ABSL_FLAG(std::string, grpc_listen, "", "Overrides server.grpc_listen.");
ABSL_FLAG(std::string, metrics_listen, "", "Overrides server.metrics_listen.");
ABSL_FLAG(std::string, webhook_listen, "", "Overrides server.webhook_listen.");
ABSL_FLAG(std::string, ledger_path, "", "Overrides ledger.path.");
ABSL_FLAG(bool, check_config, false, "Validate the config (secrets included) and exit.");
ABSL_FLAG(bool, hash_api_key, false, "Read an API key on stdin, print its SHA-256 and exit.");
ABSL_FLAG(bool, debug, false, "Log at debug level.");

namespace {

int Fail(const std::string& message) {
  // One line, so an orchestrator's event shows the whole reason.
  std::cerr << "musicgw: " << message << std::endl;
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("musicgw --config=FILE: the music generation gateway");
  absl::ParseCommandLine(argc, argv);
#ifdef NDEBUG
  // Debian's Abseil checks lock order on every Mutex acquisition (about 5 % of the CPU under
  // load, bench/analysis.md); Debug and sanitizer builds keep the check.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
#endif
#ifdef __GLIBC__
  // A Download allocates two 1 MiB buffers per message (the chunk, its serialized copy). With
  // glibc's defaults they could come from fresh mmaps or be trimmed back to the kernel once
  // freed, so a MiB sent could pay ~500 page faults (~20 % of a download's profile,
  // bench/analysis.md). Freed memory up to the trim threshold stays in the heap instead.
  mallopt(M_MMAP_THRESHOLD, 4 << 20);
  mallopt(M_TRIM_THRESHOLD, 16 << 20);
#endif

  if (absl::GetFlag(FLAGS_hash_api_key)) {
    std::string key;
    std::getline(std::cin, key);
    std::cout << musicgw::Sha256Hex(key) << std::endl;
    return 0;
  }
  if (absl::GetFlag(FLAGS_config).empty()) return Fail("--config is required");
  auto config =
      musicgw::config::LoadConfigFile(absl::GetFlag(FLAGS_config), musicgw::config::ProcessEnv());
  if (!config.ok()) return Fail(absl::StrCat("config error: ", config.status().message()));
  if (!absl::GetFlag(FLAGS_grpc_listen).empty())
    config->grpc_listen = absl::GetFlag(FLAGS_grpc_listen);
  if (!absl::GetFlag(FLAGS_metrics_listen).empty()) {
    config->metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  }
  if (!absl::GetFlag(FLAGS_webhook_listen).empty()) {
    config->webhook_listen = absl::GetFlag(FLAGS_webhook_listen);
  }
  if (!absl::GetFlag(FLAGS_ledger_path).empty())
    config->ledger_path = absl::GetFlag(FLAGS_ledger_path);
  if (absl::GetFlag(FLAGS_check_config)) {
    std::cout << "config OK: " << config->providers.size() << " provider account(s), "
              << config->tenants.size() << " tenant(s)" << std::endl;
    return 0;
  }
  if (absl::GetFlag(FLAGS_debug)) musicgw::log::SetMinLevel(musicgw::log::Level::kDebug);

  // Before any thread starts: libcurl's global init is not thread-safe, and every thread must
  // inherit the blocked signals so only the sigwait below sees SIGTERM and SIGINT.
  curl_global_init(CURL_GLOBAL_DEFAULT);
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);
  // A file-size limit reached (RLIMIT_FSIZE) fails the write, like a full disk, instead of
  // killing the process: the ledger reports it and health turns NOT_SERVING.
  signal(SIGXFSZ, SIG_IGN);

  const absl::Duration drain_deadline = config->drain_deadline;
  auto server = musicgw::gateway::GatewayServer::Start(std::move(*config));
  if (!server.ok()) return Fail(absl::StrCat("cannot start: ", server.status().message()));
  // Scripts wait for this line to know the ports.
  std::cout << "musicgw listening grpc=" << (*server)->grpc_port()
            << " metrics=" << (*server)->metrics_port() << " webhook=" << (*server)->webhook_port()
            << std::endl;

  int received = 0;
  sigwait(&signals, &received);
  musicgw::log::Info("signal received", {{"signal", received == SIGTERM ? "SIGTERM" : "SIGINT"}});
  (*server)->Drain(drain_deadline);
  server->reset();
  musicgw::gateway::AccessLog::Default().Flush();
  curl_global_cleanup();
  return 0;
}
