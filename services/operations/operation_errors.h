// File: operation_errors.h
// The engine's own errors, each with ErrorInfo (reason, domain kGatewayDomain) so a client can
// act on it without parsing messages.
#pragma once

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "musicgw/v1/musicgw.pb.h"

namespace musicgw::operations {

// NOT_FOUND OPERATION_NOT_FOUND (another tenant's operation is indistinguishable).
absl::Status OperationNotFound(absl::string_view name);
// NOT_FOUND ASSET_NOT_FOUND.
absl::Status AssetNotFound(absl::string_view name);
// FAILED_PRECONDITION OPERATION_DONE: the operation is already done.
absl::Status OperationAlreadyDone(const musicgw::v1::Operation& op);
// UNAVAILABLE SHUTTING_DOWN with RetryInfo: retry against another replica or after restart.
absl::Status ShuttingDown();
// UNAVAILABLE OPERATION_NOT_TRACKED with RetryInfo: this replica does not track the live
// operation (another does, or none yet after a failover); retry.
absl::Status NotTrackedHere();
// UNAVAILABLE CANCEL_PENDING with RetryInfo: the cancel request is recorded in the ledger, but
// the replica tracking the operation has not applied it yet (none does, between a replica's
// death and the takeover); it will, and a retry answers the outcome.
absl::Status CancelPending();
// UNAVAILABLE LEDGER_UNAVAILABLE with RetryInfo, for a ledger read or write that failed for a
// reason of the ledger's own (disk full, I/O error, locked), not of the request.
absl::Status LedgerUnavailable(const absl::Status& cause);
// UNKNOWN PROVIDER_OUTCOME_UNKNOWN, deliberately without RetryInfo: the provider may have
// created (and charged for) the work but its answer to the submission could not be read
// (`cause`, the adapter's error). UNKNOWN rather than UNAVAILABLE because a client that retries
// an UNAVAILABLE Generate with a new request_id pays a second time; the message says what to
// check first. Metadata: provider, account, and the adapter's reason and domain.
absl::Status ProviderOutcomeUnknown(musicgw::v1::Provider provider, absl::string_view account,
                                    const absl::Status& cause);
// True for a store failure of the ledger itself (INTERNAL, UNAVAILABLE, UNKNOWN, DATA_LOSS
// without ErrorInfo, or with LEDGER_UNAVAILABLE), as opposed to an answer about the data
// (NOT_FOUND, ABORTED, budgets).
bool IsLedgerFailure(const absl::Status& status);
// `status` unchanged, unless it is a ledger failure: then LedgerUnavailable(status).
absl::Status FromStore(const absl::Status& status);

}  // namespace musicgw::operations
