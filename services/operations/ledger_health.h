// File: ledger_health.h
// Whether the ledger accepts writes: not OK from a write that failed for the ledger's own
// reason (disk full, I/O error) until one succeeds again. Health checks read it; the engine's
// maintenance probes with a small write so it recovers without client traffic.
//
// Thread-safe.
#pragma once

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"

namespace musicgw::operations {

class LedgerHealth {
 public:
  // Notes the outcome of a ledger write and returns it as callers report it: a ledger failure
  // becomes UNAVAILABLE LEDGER_UNAVAILABLE with RetryInfo; other answers pass unchanged.
  absl::Status NoteWrite(const absl::Status& status);
  // OK, or the LEDGER_UNAVAILABLE error of the last failed write.
  absl::Status status() const;

 private:
  mutable absl::Mutex mu_;
  absl::Status status_ ABSL_GUARDED_BY(mu_);
};

}  // namespace musicgw::operations
