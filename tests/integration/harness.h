// Helpers for integration tests: a gateway config on loopback, clients with API keys, and the
// real musicgw binary run as a child process (for signal and crash tests).
#pragma once

#include <sys/types.h>

#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "musicgw/v1/musicgw.grpc.pb.h"
#include "nlohmann/json.hpp"

namespace musicgw::testing {

// Two tenants with known keys.
inline constexpr char kAcmeKey[] = "acme-test-key";
inline constexpr char kGlobexKey[] = "globex-test-key";

struct ProviderUrls {
  std::string loudly;      // B2B base URL
  std::string soundpiece;  // v1 base URL
};

// A config document: both providers (test secrets through environment variables the harness
// sets), two tenants, ledger at `ledger_path`, every listener on a free loopback port.
nlohmann::json TestConfig(const ProviderUrls& urls, const std::string& ledger_path);
// Sets the environment variables TestConfig's secret references name.
void SetTestSecrets();
// The `ledger` section of a replica on the PostgreSQL database whose DSN is in the environment
// variable kLedgerDsnEnv names (tests/pg: StartLedgerCluster).
nlohmann::json PostgresLedgerConfig(const std::string& replica_id);

// A context carrying `authorization: Bearer <key>` and a deadline.
std::unique_ptr<grpc::ClientContext> Context(const std::string& key,
                                             absl::Duration timeout = absl::Seconds(10));

std::unique_ptr<musicgw::v1::MusicGateway::Stub> Stub(int port);

std::string NewRequestId();

// Generate as acme, expecting success (a failed expectation otherwise, and an empty Operation).
musicgw::v1::Operation GenerateOk(musicgw::v1::MusicGateway::Stub& stub,
                                  const musicgw::v1::GenerateRequest& request);
// WaitOperation as acme for up to a minute, expecting the call itself to succeed.
musicgw::v1::Operation WaitDone(musicgw::v1::MusicGateway::Stub& stub, const std::string& name);

// A TCP socket bound to a free loopback port. Listening but never accepting, it makes a provider
// whose calls hang (operations stay live); closed at once, its port is a free one to hand out.
class LoopbackListener {
 public:
  LoopbackListener();
  ~LoopbackListener();
  LoopbackListener(const LoopbackListener&) = delete;
  LoopbackListener& operator=(const LoopbackListener&) = delete;

  bool ok() const { return port_ > 0; }
  int port() const { return port_; }
  std::string url() const;

 private:
  int fd_ = -1;
  int port_ = 0;
};

// A loopback port nothing listens on right now.
int FreePort();

// The musicgw binary as a child process.
class GatewayProcess {
 public:
  // Writes `config` to a file, starts the binary and waits for its "musicgw listening" line.
  static absl::StatusOr<std::unique_ptr<GatewayProcess>> Start(const nlohmann::json& config,
                                                               const std::string& work_dir);
  ~GatewayProcess();

  int grpc_port() const { return grpc_port_; }
  pid_t pid() const { return pid_; }
  // Sends `signal` and waits up to `timeout` for the exit; returns the exit status
  // (as from waitpid) or DEADLINE_EXCEEDED.
  absl::StatusOr<int> Signal(int signal, absl::Duration timeout);
  // Everything the process wrote to stderr (its JSON log lines) so far.
  std::string Logs() const;

  GatewayProcess() = default;
  GatewayProcess(const GatewayProcess&) = delete;
  GatewayProcess& operator=(const GatewayProcess&) = delete;

 private:
  pid_t pid_ = -1;
  int grpc_port_ = 0;
  std::string log_path_;
  int stdout_fd_ = -1;
  // Waits for the child's exit and notifies exited_ (exit_status_ is written before).
  std::thread reaper_;
  absl::Notification exited_;
  int exit_status_ = 0;
};

// Waits until `condition` holds or `timeout` passes, re-checking every `poll`; returns whether
// it held. Only for observables that offer no event to wait on (a provider's counters read
// through its API, a report refreshed in the background); never to let time pass.
bool Eventually(const std::function<bool()>& condition, absl::Duration timeout = absl::Seconds(20),
                absl::Duration poll = absl::Milliseconds(10));

}  // namespace musicgw::testing
