#include "services/operations/operation_errors.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/errors.h"

namespace musicgw::operations {

absl::Status OperationNotFound(absl::string_view name) {
  return WithErrorInfo(absl::NotFoundError(absl::StrCat(name, " not found")), "OPERATION_NOT_FOUND",
                       kGatewayDomain, {{"name", std::string(name)}});
}

absl::Status AssetNotFound(absl::string_view name) {
  return WithErrorInfo(absl::NotFoundError(absl::StrCat(name, " not found")), "ASSET_NOT_FOUND",
                       kGatewayDomain, {{"name", std::string(name)}});
}

absl::Status OperationAlreadyDone(const musicgw::v1::Operation& op) {
  return WithErrorInfo(
      absl::FailedPreconditionError(absl::StrCat(
          "operation is already done (", musicgw::v1::OperationState_Name(op.state()), ")")),
      "OPERATION_DONE", kGatewayDomain);
}

absl::Status ShuttingDown() {
  absl::Status status = WithErrorInfo(absl::UnavailableError("server shutting down"),
                                      "SHUTTING_DOWN", kGatewayDomain);
  return WithRetryInfo(std::move(status), absl::Seconds(1));
}

absl::Status NotTrackedHere() {
  return WithRetryInfo(
      WithErrorInfo(absl::UnavailableError("the operation is not tracked by this server; retry"),
                    "OPERATION_NOT_TRACKED", kGatewayDomain),
      absl::Seconds(1));
}

absl::Status LedgerUnavailable(const absl::Status& cause) {
  // The cause's message may name files; the client needs only the reason and when to retry.
  absl::Status status = absl::UnavailableError(
      absl::StrCat("the operations ledger cannot be written right now (",
                   absl::StatusCodeToString(cause.code()), "); nothing was changed, retry later"));
  status = WithErrorInfo(std::move(status), "LEDGER_UNAVAILABLE", kGatewayDomain);
  return WithRetryInfo(std::move(status), absl::Seconds(5));
}

bool IsLedgerFailure(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kInternal:
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kUnknown:
    case absl::StatusCode::kDataLoss: {
      // A shared ledger that cannot be reached says so itself (LEDGER_UNAVAILABLE).
      google::rpc::ErrorInfo info;
      return !GetErrorInfo(status, &info) || info.reason() == "LEDGER_UNAVAILABLE";
    }
    default:
      return false;
  }
}

absl::Status FromStore(const absl::Status& status) {
  return IsLedgerFailure(status) ? LedgerUnavailable(status) : status;
}

}  // namespace musicgw::operations
