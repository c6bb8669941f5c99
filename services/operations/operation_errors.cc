#include "services/operations/operation_errors.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/errors.h"
#include "common/provider_names.h"

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

absl::Status CancelPending() {
  return WithRetryInfo(
      WithErrorInfo(absl::UnavailableError("the cancellation is recorded but not applied yet by "
                                           "the server tracking the operation; retry"),
                    "CANCEL_PENDING", kGatewayDomain),
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

absl::Status ProviderOutcomeUnknown(musicgw::v1::Provider provider, absl::string_view account,
                                    const absl::Status& cause) {
  const std::string name = ProviderSlug(provider);
  google::rpc::ErrorInfo cause_info;
  GetErrorInfo(cause, &cause_info);
  absl::Status status = absl::UnknownError(absl::StrCat(
      name,
      " may have created, and charged for, this work, but its answer to the submission "
      "could not be read: ",
      cause.message(),
      ". The gateway does not send it again. Before retrying with a new request_id (which "
      "would pay a second time), check the ",
      name, " account ", account, " for a generation started at this operation's create_time."));
  return WithErrorInfo(std::move(status), "PROVIDER_OUTCOME_UNKNOWN", kGatewayDomain,
                       {{"provider", ProviderEnumName(provider)},
                        {"account", std::string(account)},
                        {"provider_reason", cause_info.reason()},
                        {"provider_domain", cause_info.domain()}});
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
