// File: submit_outcome.h
// How a failed Submit tells the engine whether the provider may have created (and charged for)
// the work. Every Submit error is one of two kinds:
//
//  - Provably not processed: the provider refused before doing anything (a validation 4xx, 401,
//    402, 429, its quota answer) or the connection was never established. Any code; the engine
//    records REJECTED (not charged) and may fall back to another account.
//  - Outcome unknown: the request reached the provider and its answer cannot be read (a timeout,
//    a reset mid-answer, a 2xx with a truncated or non-JSON body, a 5xx after the body was
//    sent). The adapter returns OutcomeUnknownError(); the engine records POSSIBLY_SUBMITTED,
//    counts the operation as charged and never re-submits it or falls back.
#pragma once

#include <map>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace musicgw::adapters {

// The ErrorInfo reason of an outcome-unknown Submit error.
inline constexpr absl::string_view kOutcomeUnknownReason = "PROVIDER_OUTCOME_UNKNOWN";

// UNKNOWN with ErrorInfo reason PROVIDER_OUTCOME_UNKNOWN in the provider's `domain` and no
// RetryInfo (a blind retry may pay twice). `message` says what the provider was asked and what
// went wrong with its answer; it must not quote secrets.
absl::Status OutcomeUnknownError(absl::string_view message, absl::string_view domain,
                                 const std::map<std::string, std::string>& metadata = {});

// True when `status` is an outcome-unknown Submit error (reason PROVIDER_OUTCOME_UNKNOWN in any
// domain).
bool IsOutcomeUnknown(const absl::Status& status);

}  // namespace musicgw::adapters
