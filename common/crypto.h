// File: crypto.h
// Small OpenSSL wrappers: hashes, HMAC, base64, constant-time comparison, random ids.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace musicgw {

// Lower-case hex SHA-256 of `data`.
std::string Sha256Hex(absl::string_view data);
// Raw HMAC-SHA256 of `data` under `key`.
std::string HmacSha256(absl::string_view key, absl::string_view data);
// Standard base64 with padding.
std::string Base64Encode(absl::string_view data);
absl::StatusOr<std::string> Base64Decode(absl::string_view text);
// Compares without an early exit, so timing tells nothing about where inputs differ.
bool ConstantTimeEquals(absl::string_view a, absl::string_view b);
// `bytes` bytes from the OS CSPRNG, as lower-case hex.
std::string RandomHex(int bytes);
// A random (version 4) UUID, lower-case.
std::string RandomUuid();
// True for the 8-4-4-4-12 hex form (any version), either case.
bool IsUuid(absl::string_view text);

}  // namespace musicgw
