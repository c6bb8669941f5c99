// File: ids.h
// Operation ids, resource names, provider idempotency keys and the request fingerprint used
// for AIP-155 idempotency.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "musicgw/v1/musicgw.pb.h"

namespace musicgw::operations {

// 26 lower-case Crockford base32 characters: 48 bits of milliseconds since the epoch, then 80
// random bits (ULID layout), monotonic within this process. Ids sort by creation time, so
// newest-first listing is an index scan.
std::string NewOperationId(absl::Time now);
bool IsOperationId(absl::string_view id);

std::string OperationName(absl::string_view id);         // "operations/{id}"
std::string AssetName(absl::string_view id, int index);  // "operations/{id}/assets/{index}"

// The id in "operations/{id}"; INVALID_ARGUMENT naming `field` otherwise.
absl::StatusOr<std::string> ParseOperationName(absl::string_view name,
                                               absl::string_view field = "name");
struct AssetRef {
  std::string operation_id;
  int index = 0;
};
absl::StatusOr<AssetRef> ParseAssetName(absl::string_view name, absl::string_view field = "asset");

// A name-based UUID (version-5 layout over SHA-256 of "musicgw/{tenant}/{request_id}"): the same
// for every retry and restart, so a provider honouring idempotency keys creates one job.
std::string ProviderIdempotencyKey(absl::string_view tenant, absl::string_view request_id);

// Lower-case hex SHA-256 of the deterministic serialization of `request` without
// validate_only: two requests with the same request_id are "the same request" when equal.
std::string RequestFingerprint(const musicgw::v1::GenerateRequest& request);

}  // namespace musicgw::operations
