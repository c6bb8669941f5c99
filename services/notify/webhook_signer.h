// File: webhook_signer.h
// Outgoing webhooks in the Standard Webhooks scheme (standardwebhooks.com):
//  - webhook-id: the event's id, the same on every retry of that event (receivers dedupe by it);
//  - webhook-timestamp: Unix seconds of this attempt;
//  - webhook-signature: "v1,<base64 HMAC-SHA256 over '<id>.<timestamp>.<body>'>", one entry per
//    active secret, space-separated, so a receiver holding either the old or the new secret
//    verifies during a rotation.
// Secrets are "whsec_" + base64 of the key bytes (at least 24 bytes of key).
// Also the event envelope: {"type", "timestamp", "data": Operation in the proto3 JSON mapping}.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "musicgw/v1/musicgw.pb.h"

namespace musicgw::notify {

struct WebhookHeaders {
  std::string id;
  std::string timestamp;  // Unix seconds, decimal
  std::string signature;  // "v1,<b64>[ v1,<b64>...]"
};

// The key bytes of a "whsec_" secret; INVALID_ARGUMENT (never echoing the secret) otherwise.
absl::StatusOr<std::string> DecodeWebhookSecret(absl::string_view secret);

// Signs `body` for delivery `id` at `timestamp` with every secret in `secrets` (non-empty, each
// valid for DecodeWebhookSecret).
absl::StatusOr<WebhookHeaders> SignWebhook(const std::vector<std::string>& secrets,
                                           absl::string_view id, absl::Time timestamp,
                                           absl::string_view body);

// "operation.running", "operation.succeeded", "operation.failed", "operation.cancelled" for the
// states that are events; nullopt for the others (QUEUED is not announced).
std::optional<std::string> EventTypeForState(musicgw::v1::OperationState state);
// The test event SendTestWebhook delivers.
inline constexpr absl::string_view kPingEventType = "webhook.ping";

// {"type":…,"timestamp":"<RFC 3339>","data":<operation as proto3 JSON>}.
absl::StatusOr<std::string> EventBody(absl::string_view type, absl::Time timestamp,
                                      const musicgw::v1::Operation& operation);

}  // namespace musicgw::notify
