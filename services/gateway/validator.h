// File: validator.h
// Request validation, run before anything is stored or sent upstream. Every failure is
// INVALID_ARGUMENT with a BadRequest field violation naming the exact field path. Task
// parameters are checked against adapters/capabilities.h, the table ListProviders reports.
#pragma once

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "musicgw/v1/musicgw.pb.h"

namespace musicgw::gateway {

// The shape of a request: request_id, a known provider, one task, and its parameters against
// the capability table (adapters/capabilities.h, what ListProviders reports) of the requested
// provider, or of some provider when none is requested. Which configured account serves it is
// decided once, by the engine's router.
absl::Status ValidateGenerate(const musicgw::v1::GenerateRequest& request);

// "operations/{id}", the id as services/operations/ids.h makes it (26 characters of lower-case
// Crockford base32).
absl::Status ValidateOperationName(absl::string_view field, absl::string_view name);
// "operations/{id}/assets/{index}".
absl::Status ValidateAssetName(absl::string_view field, absl::string_view name);

absl::Status ValidateList(const musicgw::v1::ListOperationsRequest& request);
absl::Status ValidateWatch(const musicgw::v1::WatchOperationRequest& request);
absl::Status ValidateWait(const musicgw::v1::WaitOperationRequest& request);
absl::Status ValidateCancel(const musicgw::v1::CancelOperationRequest& request);
absl::Status ValidateDownload(const musicgw::v1::DownloadRequest& request);
absl::Status ValidateGetQuota(const musicgw::v1::GetQuotaRequest& request);

}  // namespace musicgw::gateway
