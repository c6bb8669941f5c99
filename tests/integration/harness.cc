#include "tests/integration/harness.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/crypto.h"

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

absl::StatusOr<std::unique_ptr<GatewayProcess>> GatewayProcess::Start(const nlohmann::json& config,
                                                                      const std::string& work_dir) {
  const std::string config_path = work_dir + "/musicgw.json";
  std::ofstream(config_path) << config.dump(2);
  auto process = std::make_unique<GatewayProcess>();
  process->log_path_ = work_dir + "/musicgw.log";
  const std::string out_path = work_dir + "/musicgw.out";
  std::remove(out_path.c_str());
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) return absl::InternalError("fork failed");
  if (pid == 0) {
    // The gateway dies with the test, even a test killed with SIGKILL, so an interrupted suite
    // leaves nothing running. (The signal follows the forking thread: tests start it from theirs.)
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);  // the test died before prctl took effect
    freopen(out_path.c_str(), "w", stdout);
    freopen(process->log_path_.c_str(), "a", stderr);
    const std::string flag = "--config=" + config_path;
    execl(MUSICGW_BINARY, MUSICGW_BINARY, flag.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  process->pid_ = pid;
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (absl::Now() < deadline) {
    std::ifstream in(out_path);
    std::string line;
    while (std::getline(in, line)) {
      const size_t at = line.find("grpc=");
      if (line.rfind("musicgw listening", 0) == 0 && at != std::string::npos) {
        const size_t end = line.find(' ', at);
        if (absl::SimpleAtoi(line.substr(at + 5, end - at - 5), &process->grpc_port_)) {
          return process;
        }
      }
    }
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      process->pid_ = -1;
      return absl::InternalError(absl::StrCat("musicgw exited at start: ", process->Logs()));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return absl::DeadlineExceededError("musicgw did not start listening");
}

GatewayProcess::~GatewayProcess() {
  if (pid_ > 0) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
}

absl::StatusOr<int> GatewayProcess::Signal(int signal, absl::Duration timeout) {
  if (pid_ <= 0) return absl::FailedPreconditionError("not running");
  kill(pid_, signal);
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return status;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return absl::DeadlineExceededError("still running");
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
