#include "tests/integration/harness.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/crypto.h"
#include "gtest/gtest.h"
#include "tests/pg/pg_cluster.h"

namespace musicgw::testing {

nlohmann::json TestConfig(const ProviderUrls& urls, const std::string& ledger_path) {
  nlohmann::json config;
  config["server"] = {{"grpc_listen", "127.0.0.1:0"},
                      {"metrics_listen", "127.0.0.1:0"},
                      {"drain_deadline_seconds", 3}};
  config["ledger"] = {{"path", ledger_path}};
  config["operations"] = {{"deadline_seconds", 120}, {"watch_heartbeat_seconds", 1}};
  config["providers"] =
      nlohmann::json::array({{{"name", "loudly-test"},
                              {"type", "loudly"},
                              {"dialect", "b2b"},
                              {"base_url", urls.loudly},
                              {"api_key", {{"env", "MUSICGW_TEST_LOUDLY_KEY"}}}},
                             {{"name", "soundpiece-test"},
                              {"type", "soundpiece"},
                              {"base_url", urls.soundpiece},
                              {"api_key", {{"env", "MUSICGW_TEST_SOUNDPIECE_KEY"}}}}});
  config["tenants"] = nlohmann::json::array(
      {{{"name", "acme"},
        {"api_key_sha256", {Sha256Hex(kAcmeKey)}},
        {"budgets", {{{"task", "SOUND_EFFECT"}, {"limit", 10}, {"period", "day"}}}}},
       {{"name", "globex"}, {"api_key_sha256", {Sha256Hex(kGlobexKey)}}}});
  return config;
}

nlohmann::json PostgresLedgerConfig(const std::string& replica_id) {
  return {{"postgres", {{"dsn", {{"env", kLedgerDsnEnv}}}}}, {"replica_id", replica_id}};
}

void SetTestSecrets() {
  setenv("MUSICGW_TEST_LOUDLY_KEY", "loudly_test_key", 1);
  setenv("MUSICGW_TEST_SOUNDPIECE_KEY", "spk_test_key", 1);
}

std::unique_ptr<grpc::ClientContext> Context(const std::string& key, absl::Duration timeout) {
  auto context = std::make_unique<grpc::ClientContext>();
  if (!key.empty()) context->AddMetadata("authorization", "Bearer " + key);
  context->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  return context;
}

std::unique_ptr<musicgw::v1::MusicGateway::Stub> Stub(int port) {
  return musicgw::v1::MusicGateway::NewStub(
      grpc::CreateChannel(absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials()));
}

std::string NewRequestId() { return RandomUuid(); }

musicgw::v1::Operation GenerateOk(musicgw::v1::MusicGateway::Stub& stub,
                                  const musicgw::v1::GenerateRequest& request) {
  musicgw::v1::Operation operation;
  grpc::Status status = stub.Generate(Context(kAcmeKey).get(), request, &operation);
  EXPECT_TRUE(status.ok()) << status.error_message();
  return operation;
}

musicgw::v1::Operation WaitDone(musicgw::v1::MusicGateway::Stub& stub, const std::string& name) {
  musicgw::v1::WaitOperationRequest request;
  request.set_name(name);
  request.mutable_timeout()->set_seconds(60);
  musicgw::v1::Operation operation;
  grpc::Status status =
      stub.WaitOperation(Context(kAcmeKey, absl::Seconds(70)).get(), request, &operation);
  EXPECT_TRUE(status.ok()) << status.error_message();
  return operation;
}

absl::StatusOr<std::unique_ptr<GatewayProcess>> GatewayProcess::Start(const nlohmann::json& config,
                                                                      const std::string& work_dir) {
  const std::string config_path = work_dir + "/musicgw.json";
  std::ofstream(config_path) << config.dump(2);
  auto process = std::make_unique<GatewayProcess>();
  process->log_path_ = work_dir + "/musicgw.log";
  // The child's stdout is a pipe: its "musicgw listening" line is an event to wait for.
  int out[2];
  if (pipe2(out, O_CLOEXEC) != 0) return absl::InternalError("pipe failed");
  const std::string flag = "--config=" + config_path;
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) {
    close(out[0]);
    close(out[1]);
    return absl::InternalError("fork failed");
  }
  if (pid == 0) {
    // Only async-signal-safe calls between fork and exec. The gateway dies with the test, even a
    // test killed with SIGKILL, so an interrupted suite leaves nothing running.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);  // the test died before prctl took effect
    dup2(out[1], STDOUT_FILENO);
    const int log = open(process->log_path_.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (log >= 0) dup2(log, STDERR_FILENO);
    execl(MUSICGW_BINARY, MUSICGW_BINARY, flag.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  close(out[1]);
  process->stdout_fd_ = out[0];
  process->pid_ = pid;
  // The reaper's notification is the exit event Signal() and Start() wait on.
  process->reaper_ = std::thread([raw = process.get(), pid] {
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    raw->exit_status_ = status;
    raw->exited_.Notify();
  });

  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  std::string output;
  while (true) {
    const size_t newline = output.find('\n');
    if (newline != std::string::npos) {
      const std::string line = output.substr(0, newline);
      output.erase(0, newline + 1);
      const size_t at = line.find("grpc=");
      if (line.rfind("musicgw listening", 0) == 0 && at != std::string::npos) {
        const size_t end = line.find(' ', at);
        if (absl::SimpleAtoi(line.substr(at + 5, end - at - 5), &process->grpc_port_)) {
          return process;
        }
      }
      continue;
    }
    const int64_t wait_ms = absl::ToInt64Milliseconds(deadline - absl::Now());
    if (wait_ms <= 0) break;
    pollfd ready{process->stdout_fd_, POLLIN, 0};
    const int polled = poll(&ready, 1, static_cast<int>(wait_ms));
    if (polled < 0 && errno == EINTR) continue;
    if (polled <= 0) break;
    char buffer[4096];
    const ssize_t n = read(process->stdout_fd_, buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      // stdout closed: the process is exiting.
      process->exited_.WaitForNotificationWithTimeout(absl::Seconds(10));
      return absl::InternalError(absl::StrCat("musicgw exited at start: ", process->Logs()));
    }
    output.append(buffer, static_cast<size_t>(n));
  }
  return absl::DeadlineExceededError("musicgw did not start listening");
}

GatewayProcess::~GatewayProcess() {
  if (pid_ > 0 && !exited_.HasBeenNotified()) kill(pid_, SIGKILL);
  if (reaper_.joinable()) reaper_.join();
  if (stdout_fd_ >= 0) close(stdout_fd_);
}

absl::StatusOr<int> GatewayProcess::Signal(int signal, absl::Duration timeout) {
  if (pid_ <= 0 || exited_.HasBeenNotified()) return absl::FailedPreconditionError("not running");
  kill(pid_, signal);
  if (!exited_.WaitForNotificationWithTimeout(timeout)) {
    return absl::DeadlineExceededError("still running");
  }
  return exit_status_;
}

bool Eventually(const std::function<bool()>& condition, absl::Duration timeout,
                absl::Duration poll) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!condition()) {
    if (absl::Now() >= deadline) return false;
    absl::SleepFor(poll);
  }
  return true;
}

std::string GatewayProcess::Logs() const {
  std::ifstream in(log_path_);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

LoopbackListener::LoopbackListener() : fd_(socket(AF_INET, SOCK_STREAM, 0)) {
  if (fd_ < 0) return;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  if (bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 || listen(fd_, 64) != 0 ||
      getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    return;
  }
  port_ = ntohs(addr.sin_port);
}

LoopbackListener::~LoopbackListener() {
  if (fd_ >= 0) close(fd_);
}

std::string LoopbackListener::url() const { return absl::StrCat("http://127.0.0.1:", port_); }

int FreePort() { return LoopbackListener().port(); }

}  // namespace musicgw::testing
