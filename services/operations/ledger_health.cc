#include "services/operations/ledger_health.h"

#include "common/log.h"
#include "services/operations/operation_errors.h"

namespace musicgw::operations {

absl::Status LedgerHealth::NoteWrite(const absl::Status& status) {
  const bool failed = IsLedgerFailure(status);
  absl::Status reported = failed ? LedgerUnavailable(status) : status;
  bool changed = false;
  {
    absl::MutexLock lock(&mu_);
    changed = status_.ok() == failed;
    status_ = failed ? reported : absl::OkStatus();
  }
  if (changed && failed) {
    log::Error("ledger writes are failing", {{"error", status.ToString()}});
  } else if (changed) {
    log::Info("ledger writes succeed again", {});
  }
  return reported;
}

absl::Status LedgerHealth::status() const {
  absl::MutexLock lock(&mu_);
  return status_;
}

}  // namespace musicgw::operations
