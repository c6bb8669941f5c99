// File: postgres_connection.h
// The PostgreSQL ledger's plumbing (postgres_store.cc only): libpq connections with their
// prepared statements, a bounded pool, transactions, and reading result cells. Errors follow the
// ledger's contract: a lost or unreachable server is UNAVAILABLE with ErrorInfo
// LEDGER_UNAVAILABLE and RetryInfo, and the connection is made again on next use.
#pragma once

#include <libpq-fe.h>
#include <poll.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/cord.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "common/errors.h"
#include "common/status_macros.h"
#include "services/operations/postgres_store.h"

namespace musicgw::operations::pg {

// Statement name -> SQL, prepared on each connection when first used.
using Statements = std::map<std::string, std::string>;

// The ledger cannot be reached: the caller may retry the same call shortly.
inline absl::Status LedgerUnavailable(absl::string_view what) {
  absl::Status status =
      absl::UnavailableError(absl::StrCat("ledger unavailable: ", what, "; retry shortly"));
  status = WithErrorInfo(std::move(status), "LEDGER_UNAVAILABLE", kGatewayDomain);
  return WithRetryInfo(std::move(status), absl::Seconds(1));
}

// Marks a transaction PostgreSQL rolled back whole, for a deadlock (40P01) or a serialization
// failure (40001). Not a type.googleapis.com detail, so it never reaches a client.
inline constexpr absl::string_view kTransactionConflictPayload = "musicgw.pg.transaction_conflict";

// Nothing of such a transaction was written, so its writer may run it again (RetryConflicts).
// Not ABORTED: to a tracker that means another replica owns the operation. If it still fails,
// the ledger was unavailable for a moment.
inline absl::Status TransactionConflict(absl::string_view message) {
  absl::Status status = LedgerUnavailable(absl::StrCat("transaction conflict: ", message));
  status.SetPayload(kTransactionConflictPayload, absl::Cord());
  return status;
}

inline bool IsTransactionConflict(const absl::Status& status) {
  return status.GetPayload(kTransactionConflictPayload).has_value();
}

struct ResultDeleter {
  void operator()(PGresult* result) const { PQclear(result); }
};
using Result = std::unique_ptr<PGresult, ResultDeleter>;

struct ConnDeleter {
  void operator()(PGconn* conn) const { PQfinish(conn); }
};
using Conn = std::unique_ptr<PGconn, ConnDeleter>;

// A new connection to `dsn` (check its PQstatus), named `application_name` in pg_stat_activity.
inline Conn Connect(const std::string& dsn, absl::Duration connect_timeout,
                    const char* application_name) {
  const std::string timeout =
      absl::StrCat(std::max<int64_t>(1, absl::ToInt64Seconds(connect_timeout)));
  // dbname first: with expand_dbname it carries the whole DSN; what follows overrides it.
  const char* const keys[] = {"dbname", "connect_timeout", "application_name", nullptr};
  const char* const values[] = {dsn.c_str(), timeout.c_str(), application_name, nullptr};
  return Conn(PQconnectdbParams(keys, values, /*expand_dbname=*/1));
}

// One statement parameter: text, binary (bytea), or NULL.
struct Param {
  std::optional<std::string> value;
  bool binary = false;

  static Param Text(absl::string_view v) { return Param{std::string(v), false}; }
  static Param Int(int64_t v) { return Param{absl::StrCat(v), false}; }
  static Param Bool(bool v) { return Param{v ? "t" : "f", false}; }
  static Param Bytes(std::string v) { return Param{std::move(v), true}; }
  static Param Null() { return Param{std::nullopt, false}; }
};

inline std::string TrimmedError(const char* message) {
  return std::string(absl::StripTrailingAsciiWhitespace(message == nullptr ? "" : message));
}

// One pooled connection with its prepared statements.
class Connection {
 public:
  Connection(const std::string& dsn, absl::Duration connect_timeout, const Statements& statements)
      : dsn_(dsn), connect_timeout_(connect_timeout), statements_(statements) {}

  // Connects (again) when there is no healthy connection. An idle connection has nothing to
  // read: if its socket is readable, the server sent its goodbye (a restart, a failover, an idle
  // timeout) or closed it, and it is replaced before a statement fails on it.
  absl::Status EnsureReady() {
    if (conn_ != nullptr && PQstatus(conn_.get()) == CONNECTION_OK && !broken_ &&
        !IdleSocketReadable()) {
      return absl::OkStatus();
    }
    conn_.reset();
    broken_ = false;
    Conn conn = Connect(dsn_, connect_timeout_, "musicgw");
    if (conn == nullptr) return LedgerUnavailable("out of memory connecting to PostgreSQL");
    if (PQstatus(conn.get()) != CONNECTION_OK) {
      // libpq's message names host and port, never the password.
      return LedgerUnavailable(
          absl::StrCat("cannot connect to PostgreSQL: ", TrimmedError(PQerrorMessage(conn.get()))));
    }
    conn_ = std::move(conn);
    prepared_.clear();
    return absl::OkStatus();
  }

  absl::StatusOr<Result> Run(const std::string& name, const std::vector<Param>& params) {
    // Prepared on first use: the tables exist only once the migrations have run.
    if (!prepared_.contains(name)) {
      auto sql = statements_.find(name);
      if (sql == statements_.end()) {
        return absl::InternalError(absl::StrCat("ledger: no statement ", name));
      }
      MUSICGW_RETURN_IF_ERROR(
          Check(Result(PQprepare(conn_.get(), name.c_str(), sql->second.c_str(), 0, nullptr)))
              .status());
      prepared_.insert(name);
    }
    std::vector<const char*> values;
    std::vector<int> lengths;
    std::vector<int> formats;
    for (const Param& p : params) {
      values.push_back(p.value.has_value() ? p.value->data() : nullptr);
      lengths.push_back(p.value.has_value() ? static_cast<int>(p.value->size()) : 0);
      formats.push_back(p.binary ? 1 : 0);
    }
    Result result(PQexecPrepared(conn_.get(), name.c_str(), static_cast<int>(params.size()),
                                 values.data(), lengths.data(), formats.data(),
                                 /*resultFormat=*/0));
    return Check(std::move(result));
  }

  absl::StatusOr<Result> Simple(const char* sql) { return Check(Result(PQexec(conn_.get(), sql))); }

  bool broken() const { return broken_; }

 private:
  bool IdleSocketReadable() const {
    pollfd idle{PQsocket(conn_.get()), POLLIN, 0};
    return poll(&idle, 1, /*timeout=*/0) != 0;
  }

  absl::StatusOr<Result> Check(Result result) {
    const ExecStatusType status = PQresultStatus(result.get());
    if (status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK) return result;
    const char* state =
        result == nullptr ? nullptr : PQresultErrorField(result.get(), PG_DIAG_SQLSTATE);
    const std::string sqlstate = state == nullptr ? "" : state;
    const std::string message = TrimmedError(
        result == nullptr ? PQerrorMessage(conn_.get()) : PQresultErrorMessage(result.get()));
    // Class 08 (connection), 57P (server shutting down), or a dead socket: reconnect next time.
    if (PQstatus(conn_.get()) != CONNECTION_OK || sqlstate.empty() ||
        absl::StartsWith(sqlstate, "08") || absl::StartsWith(sqlstate, "57P")) {
      broken_ = true;
      return LedgerUnavailable(absl::StrCat("PostgreSQL connection lost: ", message));
    }
    if (sqlstate == "23505") {
      return absl::AlreadyExistsError(absl::StrCat("ledger: ", message));
    }
    if (sqlstate == "40001" || sqlstate == "40P01") return TransactionConflict(message);
    return absl::InternalError(absl::StrCat("ledger: ", message));
  }

  const std::string dsn_;
  const absl::Duration connect_timeout_;
  const Statements& statements_;
  Conn conn_;
  bool broken_ = false;
  absl::flat_hash_set<std::string> prepared_;
};

// A bounded pool: at most `size` connections, made on demand, waited for when all are in use.
class Pool {
 public:
  // `statements` (name -> SQL) must outlive the pool.
  Pool(PostgresOptions options, const Statements& statements)
      : options_(std::move(options)), statements_(statements) {}

  class Lease {
   public:
    Lease(Pool* pool, std::unique_ptr<Connection> conn) : pool_(pool), conn_(std::move(conn)) {}
    Lease(Lease&&) = default;
    Lease& operator=(Lease&&) = delete;
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    ~Lease() {
      if (conn_ != nullptr) pool_->Release(std::move(conn_));
    }
    Connection* operator->() { return conn_.get(); }

   private:
    Pool* pool_;
    std::unique_ptr<Connection> conn_;
  };

  absl::StatusOr<Lease> Acquire() {
    std::unique_ptr<Connection> conn;
    {
      absl::MutexLock lock(&mu_);
      const absl::Time deadline = options_.clock->Now() + options_.acquire_timeout;
      while (idle_.empty() && open_ >= options_.pool_size) {
        if (options_.clock->WaitUntil(cv_, mu_, deadline)) break;
      }
      if (!idle_.empty()) {
        conn = std::move(idle_.back());
        idle_.pop_back();
      } else if (open_ < options_.pool_size) {
        ++open_;
        conn = std::make_unique<Connection>(options_.dsn, options_.connect_timeout, statements_);
      } else {
        return LedgerUnavailable("every ledger connection is busy");
      }
    }
    Lease lease(this, std::move(conn));
    MUSICGW_RETURN_IF_ERROR(lease->EnsureReady());
    return lease;
  }

 private:
  void Release(std::unique_ptr<Connection> conn) {
    absl::MutexLock lock(&mu_);
    idle_.push_back(std::move(conn));
    cv_.Signal();
  }

  const PostgresOptions options_;
  const Statements& statements_;
  absl::Mutex mu_;
  absl::CondVar cv_;
  std::vector<std::unique_ptr<Connection>> idle_ ABSL_GUARDED_BY(mu_);
  int open_ ABSL_GUARDED_BY(mu_) = 0;
};

// BEGIN ... COMMIT on one leased connection; rolls back unless committed.
class Transaction {
 public:
  explicit Transaction(Pool::Lease& conn) : conn_(conn) {}
  ~Transaction() {
    if (open_ && !conn_->broken()) conn_->Simple("ROLLBACK").IgnoreError();
  }
  Transaction(const Transaction&) = delete;
  Transaction& operator=(const Transaction&) = delete;

  absl::Status Begin() {
    MUSICGW_RETURN_IF_ERROR(conn_->Simple("BEGIN").status());
    open_ = true;
    return absl::OkStatus();
  }
  absl::Status Commit() {
    open_ = false;
    return conn_->Simple("COMMIT").status();
  }

 private:
  Pool::Lease& conn_;
  bool open_ = false;
};

inline std::string Cell(const PGresult* result, int row, int col) {
  return std::string(PQgetvalue(result, row, col), PQgetlength(result, row, col));
}

inline int64_t IntCell(const PGresult* result, int row, int col) {
  int64_t value = 0;
  if (!absl::SimpleAtoi(absl::string_view(PQgetvalue(result, row, col)), &value)) return 0;
  return value;
}

inline bool BoolCell(const PGresult* result, int row, int col) {
  return PQgetvalue(result, row, col)[0] == 't';
}

// bytea arrives in text results in hex form.
inline std::string BytesCell(const PGresult* result, int row, int col) {
  size_t length = 0;
  unsigned char* bytes = PQunescapeBytea(
      reinterpret_cast<const unsigned char*>(PQgetvalue(result, row, col)), &length);
  if (bytes == nullptr) return "";
  std::string out(reinterpret_cast<const char*>(bytes), length);
  PQfreemem(bytes);
  return out;
}

}  // namespace musicgw::operations::pg
