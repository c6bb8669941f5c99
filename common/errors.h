// File: errors.h
// Rich errors (AIP-193). Details ride on absl::Status payloads keyed by their type URL, so they
// survive being passed between modules; ToGrpcStatus turns them into `grpc-status-details-bin`.
#pragma once

#include <map>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "grpcpp/support/status.h"

namespace musicgw {

// Domain of errors the gateway itself decides.
inline constexpr absl::string_view kGatewayDomain = "musicgw.dev";

// Adds (or replaces) the ErrorInfo detail.
absl::Status WithErrorInfo(absl::Status status, absl::string_view reason, absl::string_view domain,
                           const std::map<std::string, std::string>& metadata = {});
// Adds (or replaces) the RetryInfo detail.
absl::Status WithRetryInfo(absl::Status status, absl::Duration retry_delay);
// Appends one violation to the QuotaFailure detail.
absl::Status WithQuotaViolation(absl::Status status, absl::string_view subject,
                                absl::string_view description);
// Appends one field violation to the BadRequest detail.
absl::Status WithFieldViolation(absl::Status status, absl::string_view field,
                                absl::string_view description);

// INVALID_ARGUMENT "<field>: <description>" with a BadRequest naming the field and ErrorInfo
// reason INVALID_ARGUMENT.
absl::Status InvalidFieldError(absl::string_view field, absl::string_view description);

// Reads details back (nullopt-like: returns false when absent).
bool GetErrorInfo(const absl::Status& status, google::rpc::ErrorInfo* out);
bool GetRetryInfo(const absl::Status& status, google::rpc::RetryInfo* out);
bool GetQuotaFailure(const absl::Status& status, google::rpc::QuotaFailure* out);
bool GetBadRequest(const absl::Status& status, google::rpc::BadRequest* out);

// absl::Status <-> google.rpc.Status (code, message and every detail).
google::rpc::Status ToRpcStatus(const absl::Status& status);
absl::Status FromRpcStatus(const google::rpc::Status& status);

// The ErrorInfo reason a status gets when its source gave none: the code's name, except
// INTERNAL_ERROR and UNKNOWN_ERROR (so a reason never reads as a bare server fault code).
std::string ReasonForCode(absl::StatusCode code);
// `status` with an ErrorInfo: unchanged when it has one (or is OK), otherwise reason
// ReasonForCode(code) in kGatewayDomain.
absl::Status EnsureErrorInfo(absl::Status status);

// The one place an absl::Status becomes a grpc::Status: same code and message, details
// serialized as google.rpc.Status in the binary details (the grpc-status-details-bin trailer).
// A backstop for the README's promise: every error leaves with an ErrorInfo (EnsureErrorInfo).
grpc::Status ToGrpcStatus(const absl::Status& status);
// The reverse, for clients and tests: reads the binary details when present.
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace musicgw
