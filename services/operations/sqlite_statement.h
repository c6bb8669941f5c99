// File: sqlite_statement.h
// Prepared statements of the SQLite ledger: a cache that prepares each SQL text once, and a
// scoped handle that binds, steps and resets one. Internal to sqlite_store.cc.
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <functional>
#include <map>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace musicgw::operations::sqlite {

// Every statement, prepared once: parsing and planning cost more than running these one-row
// lookups and writes. The SQL texts are a small fixed set (the few optional clauses of
// ListOperations and Update included), so the cache stays bounded.
class StatementCache {
 public:
  explicit StatementCache(sqlite3* db) : db_(db) {}
  sqlite3* db() const { return db_; }
  ~StatementCache() { Clear(); }
  StatementCache(const StatementCache&) = delete;
  StatementCache& operator=(const StatementCache&) = delete;

  // The statement for `sql`, or nullptr with *rc set when it does not prepare.
  sqlite3_stmt* Get(absl::string_view sql, int* rc) {
    auto it = statements_.find(sql);
    if (it != statements_.end()) return it->second;
    sqlite3_stmt* stmt = nullptr;
    *rc = sqlite3_prepare_v3(db_, sql.data(), static_cast<int>(sql.size()),
                             SQLITE_PREPARE_PERSISTENT, &stmt, nullptr);
    if (*rc != SQLITE_OK) return nullptr;
    statements_.emplace(std::string(sql), stmt);
    return stmt;
  }

  void Clear() {
    for (auto& [sql, stmt] : statements_) sqlite3_finalize(stmt);
    statements_.clear();
  }

 private:
  sqlite3* db_;
  std::map<std::string, sqlite3_stmt*, std::less<>> statements_;
};

// One statement from the cache, reset when done with (which also ends its read transaction).
class Stmt {
 public:
  Stmt(StatementCache& cache, absl::string_view sql) : db_(cache.db()) {
    stmt_ = cache.Get(sql, &rc_);
  }
  ~Stmt() {
    if (stmt_ != nullptr) {
      sqlite3_reset(stmt_);
      sqlite3_clear_bindings(stmt_);
    }
  }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;

  absl::Status status() const {
    if (rc_ == SQLITE_OK) return absl::OkStatus();
    return absl::InternalError(absl::StrCat("ledger: prepare failed: ", sqlite3_errmsg(db_)));
  }
  Stmt& Bind(int i, int64_t v) {
    sqlite3_bind_int64(stmt_, i, v);
    return *this;
  }
  Stmt& Bind(int i, absl::string_view v) {
    sqlite3_bind_text(stmt_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Stmt& BindBlob(int i, const std::string& v) {
    sqlite3_bind_blob(stmt_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Stmt& BindNull(int i) {
    sqlite3_bind_null(stmt_, i);
    return *this;
  }
  // SQLITE_ROW: true; SQLITE_DONE: false; otherwise an error.
  absl::StatusOr<bool> Step() {
    if (stmt_ == nullptr) return status();
    const int rc = sqlite3_step(stmt_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    last_rc_ = rc;
    const absl::StatusCode code = (rc & 0xff) == SQLITE_CONSTRAINT
                                      ? absl::StatusCode::kAlreadyExists
                                  : (rc & 0xff) == SQLITE_BUSY ? absl::StatusCode::kUnavailable
                                                               : absl::StatusCode::kInternal;
    return absl::Status(code, absl::StrCat("ledger: ", sqlite3_errmsg(db_)));
  }
  absl::Status Run() {
    auto row = Step();
    return row.ok() ? absl::OkStatus() : row.status();
  }
  int64_t Int(int col) const { return sqlite3_column_int64(stmt_, col); }
  bool IsNull(int col) const { return sqlite3_column_type(stmt_, col) == SQLITE_NULL; }
  std::string Text(int col) const {
    const auto* p = sqlite3_column_blob(stmt_, col);
    return p == nullptr
               ? std::string()
               : std::string(static_cast<const char*>(p), sqlite3_column_bytes(stmt_, col));
  }

 private:
  sqlite3* db_;
  sqlite3_stmt* stmt_ = nullptr;
  int rc_ = SQLITE_OK;
  int last_rc_ = SQLITE_OK;
};

}  // namespace musicgw::operations::sqlite
