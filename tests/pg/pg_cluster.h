// File: pg_cluster.h
// A private PostgreSQL cluster for tests: initdb in a scratch directory, the server on a unix
// socket only (no port to collide on), run as an unprivileged user when the test runs as root
// (PostgreSQL refuses root; CI runs as root). The server dies with the test process
// (PR_SET_PDEATHSIG), and is stopped and removed by the destructor.
//
// Missing PostgreSQL binaries are a failure, never a skip.
#pragma once

#include <sys/types.h>

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace musicgw::testing {

class PgCluster {
 public:
  // initdb + start; the first call in a process pays for initdb (about a second).
  static absl::StatusOr<std::unique_ptr<PgCluster>> Start();
  ~PgCluster();
  PgCluster(const PgCluster&) = delete;
  PgCluster& operator=(const PgCluster&) = delete;

  // A new, empty database; returns its DSN.
  absl::StatusOr<std::string> CreateDatabase(const std::string& name);
  std::string Dsn(const std::string& database) const;

  // Fast shutdown (connections are cut), and start again on the same data.
  absl::Status Stop();
  absl::Status Restart();
  bool running() const { return pid_ > 0; }

 private:
  PgCluster() = default;
  absl::Status Launch();
  absl::Status WaitReady();

  std::string bin_dir_;
  std::string root_;  // scratch directory: data/, the socket, the server log
  uid_t uid_ = 0;     // who runs the server
  gid_t gid_ = 0;
  pid_t pid_ = -1;
};

// The environment variable a gateway's config names for its PostgreSQL ledger's DSN (a secret
// reference, so the DSN is never written into a config file).
inline constexpr char kLedgerDsnEnv[] = "MUSICGW_TEST_PG_DSN";

// A private cluster with an empty "gateway" database whose DSN is in kLedgerDsnEnv.
absl::StatusOr<std::unique_ptr<PgCluster>> StartLedgerCluster();

}  // namespace musicgw::testing
