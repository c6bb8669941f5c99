#include "tests/pg/pg_cluster.h"

#include <fcntl.h>
#include <libpq-fe.h>
#include <pwd.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <memory>
#include <string>
#include <system_error>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace musicgw::testing {
namespace {

// Debian's layout: /usr/lib/postgresql/<major>/bin; the newest major wins.
absl::StatusOr<std::string> FindBinDir() {
  std::vector<std::string> found;
  std::error_code error;
  for (const auto& entry : std::filesystem::directory_iterator("/usr/lib/postgresql", error)) {
    const std::string bin = entry.path().string() + "/bin";
    if (access((bin + "/initdb").c_str(), X_OK) == 0 &&
        access((bin + "/postgres").c_str(), X_OK) == 0) {
      found.push_back(bin);
    }
  }
  if (found.empty()) {
    return absl::FailedPreconditionError(
        "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin (Debian package "
        "postgresql; scripts/install-deps.sh installs it)");
  }
  std::sort(found.begin(), found.end());
  return found.back();
}

// fork + exec `argv` as uid/gid, output to `log`, dying with this process. Async-signal-safe
// calls only between fork and exec.
absl::StatusOr<pid_t> Spawn(const std::vector<std::string>& args, uid_t uid, gid_t gid,
                            const std::string& log) {
  std::vector<char*> argv;
  argv.reserve(args.size() + 1);
  for (const auto& arg : args) argv.push_back(const_cast<char*>(arg.c_str()));
  argv.push_back(nullptr);
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) return absl::InternalError("fork failed");
  if (pid == 0) {
    if (getuid() == 0 && (setgid(gid) != 0 || setuid(uid) != 0)) _exit(126);
    // After setuid: a credential change clears the parent-death signal.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(125);
    const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
      dup2(fd, STDOUT_FILENO);
      dup2(fd, STDERR_FILENO);
      close(fd);
    }
    execv(argv[0], argv.data());
    _exit(127);
  }
  return pid;
}

std::string ReadTail(const std::string& path) {
  std::string text;
  if (FILE* f = fopen(path.c_str(), "r")) {
    char buffer[4096];
    size_t n;
    while ((n = fread(buffer, 1, sizeof(buffer), f)) > 0) text.append(buffer, n);
    fclose(f);
  }
  return text.size() > 2000 ? text.substr(text.size() - 2000) : text;
}

}  // namespace

absl::StatusOr<std::unique_ptr<PgCluster>> PgCluster::Start() {
  auto bin = FindBinDir();
  if (!bin.ok()) return bin.status();
  std::unique_ptr<PgCluster> cluster(new PgCluster());
  cluster->bin_dir_ = *bin;
  // Short: a unix socket path must fit in 107 bytes.
  char tmpl[] = "/tmp/musicgw-pg-XXXXXX";
  if (mkdtemp(tmpl) == nullptr) return absl::InternalError("mkdtemp failed");
  cluster->root_ = tmpl;
  cluster->uid_ = getuid();
  cluster->gid_ = getgid();
  if (getuid() == 0) {
    const passwd* nobody = getpwnam("nobody");
    if (nobody == nullptr)
      return absl::FailedPreconditionError("no user 'nobody' to run PostgreSQL");
    cluster->uid_ = nobody->pw_uid;
    cluster->gid_ = nobody->pw_gid;
    if (chown(cluster->root_.c_str(), cluster->uid_, cluster->gid_) != 0) {
      return absl::InternalError("cannot hand the PostgreSQL directory to 'nobody'");
    }
  }
  const std::string log = cluster->root_ + "/initdb.log";
  auto initdb = Spawn({cluster->bin_dir_ + "/initdb", "-D", cluster->root_ + "/data", "-U",
                       "musicgw", "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C"},
                      cluster->uid_, cluster->gid_, log);
  if (!initdb.ok()) return initdb.status();
  int status = 0;
  waitpid(*initdb, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return absl::InternalError(absl::StrCat("initdb failed: ", ReadTail(log)));
  }
  if (absl::Status started = cluster->Launch(); !started.ok()) return started;
  return cluster;
}

absl::Status PgCluster::Launch() {
  auto pid = Spawn({bin_dir_ + "/postgres", "-D", root_ + "/data", "-k", root_, "-c",
                    "listen_addresses=", "-c", "fsync=off", "-c", "full_page_writes=off", "-c",
                    "max_connections=200", "-c", "shared_buffers=32MB"},
                   uid_, gid_, root_ + "/server.log");
  if (!pid.ok()) return pid.status();
  pid_ = *pid;
  return WaitReady();
}

absl::Status PgCluster::WaitReady() {
  const std::string dsn = Dsn("postgres");
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  while (absl::Now() < deadline) {
    if (PQping(dsn.c_str()) == PQPING_OK) return absl::OkStatus();
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return absl::InternalError(
          absl::StrCat("postgres exited at start: ", ReadTail(root_ + "/server.log")));
    }
    absl::SleepFor(absl::Milliseconds(20));  // polling the server's readiness, not a proof
  }
  return absl::DeadlineExceededError(
      absl::StrCat("postgres did not become ready: ", ReadTail(root_ + "/server.log")));
}

std::string PgCluster::Dsn(const std::string& database) const {
  return absl::StrCat("host=", root_, " user=musicgw dbname=", database);
}

absl::StatusOr<std::string> PgCluster::CreateDatabase(const std::string& name) {
  PGconn* conn = PQconnectdb(Dsn("postgres").c_str());
  std::unique_ptr<PGconn, decltype(&PQfinish)> owned(conn, &PQfinish);
  if (PQstatus(conn) != CONNECTION_OK) {
    return absl::UnavailableError(absl::StrCat("connect: ", PQerrorMessage(conn)));
  }
  PGresult* result = PQexec(conn, absl::StrCat("CREATE DATABASE \"", name, "\"").c_str());
  const bool ok = PQresultStatus(result) == PGRES_COMMAND_OK;
  const std::string error = PQresultErrorMessage(result);
  PQclear(result);
  if (!ok) return absl::InternalError(absl::StrCat("CREATE DATABASE: ", error));
  return Dsn(name);
}

absl::Status PgCluster::Stop() {
  if (pid_ <= 0) return absl::OkStatus();
  kill(pid_, SIGINT);  // fast shutdown: cuts connections, writes a checkpoint
  int status = 0;
  waitpid(pid_, &status, 0);
  pid_ = -1;
  return absl::OkStatus();
}

absl::Status PgCluster::Restart() {
  if (absl::Status stopped = Stop(); !stopped.ok()) return stopped;
  return Launch();
}

PgCluster::~PgCluster() {
  Stop().IgnoreError();
  std::error_code ignored;
  std::filesystem::remove_all(root_, ignored);
}

absl::StatusOr<std::unique_ptr<PgCluster>> StartLedgerCluster() {
  absl::StatusOr<std::unique_ptr<PgCluster>> cluster = PgCluster::Start();
  if (!cluster.ok()) return cluster.status();
  absl::StatusOr<std::string> dsn = (*cluster)->CreateDatabase("gateway");
  if (!dsn.ok()) return dsn.status();
  setenv(kLedgerDsnEnv, dsn->c_str(), 1);
  return cluster;
}

}  // namespace musicgw::testing
