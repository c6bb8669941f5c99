// File: outbox.h
// The webhook outbox kept in the ledger. OperationStore::Update writes an operation's outgoing
// webhook messages in the same transaction as the state change they announce, so a crash
// between the commit and the send loses nothing: a deliverer (services/notify) claims due rows,
// sends them and records every attempt.
#pragma once

#include <cstdint>
#include <string>

#include "absl/time/time.h"

namespace musicgw::operations {

// One event for one endpoint.
struct OutboxMessage {
  // Unique per event and endpoint: what RedeliverWebhook names.
  std::string delivery_id;
  // The webhook-id header: the same on every retry and redelivery of this event.
  std::string event_id;
  std::string tenant;
  // The configured endpoint's name, or "request" for a GenerateRequest's own notify target.
  std::string endpoint;
  std::string url;
  std::string operation_id;  // empty for a test ping
  std::string event_type;    // "operation.succeeded", ...
  std::string body;          // the signed JSON envelope
  absl::Time create_time = absl::InfinitePast();
};

enum class DeliveryStatus { kPending = 0, kDelivered = 1, kFailed = 2 };

// A message and where its delivery stands.
struct OutboxDelivery {
  OutboxMessage message;
  DeliveryStatus status = DeliveryStatus::kPending;
  int attempts = 0;
  // When the next attempt is due (for pending deliveries; while one is in flight, when its
  // claim lapses and another deliverer may take it over).
  absl::Time next_attempt_time = absl::InfinitePast();
  int last_status_code = 0;  // 0: no HTTP answer (connection refused, timeout, refused target)
  absl::Duration last_latency = absl::ZeroDuration();
  std::string last_error;
};

// One attempt to send a delivery.
struct DeliveryAttempt {
  std::string delivery_id;
  int attempt = 0;  // from 1
  absl::Time time = absl::InfinitePast();
  int status_code = 0;
  absl::Duration latency = absl::ZeroDuration();
  std::string error;  // empty on success; never the body or a secret
};

// What ListDeliveries returns: one tenant's deliveries of one operation, one endpoint or one id.
struct DeliveryQuery {
  std::string tenant;
  std::string operation_id;  // empty: any
  std::string endpoint;      // empty: any
  int limit = 100;
  std::string delivery_id;  // empty: any
};

}  // namespace musicgw::operations
