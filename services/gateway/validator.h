// File: validator.h
// Request validation, run before anything is stored or sent upstream. Every failure is
// INVALID_ARGUMENT with a BadRequest field violation naming the exact field path. Task
// parameters are checked against adapters/capabilities.h, the table ListProviders reports.
#pragma once

#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "musicgw/v1/musicgw.pb.h"

namespace musicgw::gateway {

// The providers a request may be served by, in routing order: the requested one, or every
// configured provider whose capabilities accept the request. INVALID_ARGUMENT when none does
// (naming the field the first candidate rejected), or when the provider is unknown or not
// configured.
absl::StatusOr<std::vector<musicgw::v1::Provider>> ValidateGenerate(
    const musicgw::v1::GenerateRequest& request,
    const std::vector<musicgw::v1::Provider>& configured);

// "operations/{26 lower-case base32 chars}".
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
