// File: operation_store.h
// The durable ledger behind the operations engine. The embedded implementation is SQLite
// (sqlite_store.h, OpenSqliteOperationStore); the interface avoids SQLite-isms so a shared
// PostgreSQL store can follow for multi-replica deployments:
//  - every update is a compare-and-set on the operation's sequence (ABORTED when it moved), and
//    appends the change event in the same transaction;
//  - `owner` + lease say which replica tracks a live operation (ClaimLive / RenewLeases);
//  - Create runs the request_id uniqueness check and tenant budget admission in one transaction.
//
// Thread-safe.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "musicgw/v1/musicgw.pb.h"
#include "services/operations/outbox.h"

namespace musicgw::operations {

// Where the provider serves one output's bytes. Kept out of the public Operation: the URLs are
// the provider's (signed, expiring), the gateway streams them itself.
struct UpstreamOutput {
  std::string url;
  absl::Time url_expire_time = absl::InfiniteFuture();
};

struct OperationRecord {
  std::string tenant;
  std::string request_id;
  // RequestFingerprint() of the request, to tell a retry from a reused request_id.
  std::string request_hash;
  // The latest snapshot: name, state, sequence, request, ... Asset size and sha256 learnt by
  // downloads are merged in by the store on read.
  musicgw::v1::Operation operation;
  // The provider accepted (and so probably charged for) the work.
  bool charged = false;
  // The replica tracking it ("" = nobody), and until when its claim holds.
  std::string owner;
  absl::Time lease_until = absl::InfiniteFuture();
  std::vector<UpstreamOutput> upstream_outputs;

  // The id part of operation.name().
  std::string id() const;
};

// Tenant budget admission at Create: count this tenant's operations of `task` created since
// `period_start` that are not FAILED/CANCELLED (or were charged anyway); refuse when the count
// has reached `limit`.
struct BudgetCheck {
  std::string name;  // e.g. "task:SAMPLE/day", for the error
  musicgw::v1::TaskKind task = musicgw::v1::TASK_KIND_UNSPECIFIED;
  absl::Time period_start = absl::InfinitePast();
  absl::Time period_end = absl::InfiniteFuture();  // for RetryInfo
  int64_t limit = 0;
  // Instead of a period budget: the tenant's operations not yet done, of any task (its
  // concurrent live operations); refused with TENANT_RATE_LIMITED.
  bool live_only = false;
};

struct BudgetUsage {
  int64_t used = 0;      // done and counted (succeeded, or failed/cancelled but charged)
  int64_t reserved = 0;  // still live
};

struct CreateResult {
  OperationRecord record;
  // False: an operation with the same tenant + request_id existed; `record` is that one.
  bool created = false;
};

struct OperationUpdate {
  // The new snapshot; its sequence must be expected_sequence + 1.
  musicgw::v1::Operation operation;
  int64_t expected_sequence = 0;
  bool charged = false;
  // Replaces the stored upstream outputs when set.
  std::optional<std::vector<UpstreamOutput>> upstream_outputs;
  // Fencing: when set, the update applies only while this replica owns the operation (ABORTED
  // otherwise), so a replica whose lease was taken over cannot write.
  std::string owner;
  // Webhook messages announcing this change, written to the outbox in the same transaction
  // (outbox.h), due at once.
  std::vector<OutboxMessage> outbox;
  // False: Update may return once the change is committed (visible, and safe from a crash of
  // the process) but before it is on disk; a power loss may then take it back, with the
  // changes after it. For progress the writer can redo without cost. A store may ignore it.
  bool wait_durable = true;
};

struct ListQuery {
  std::string tenant;
  std::vector<musicgw::v1::OperationState> states;  // empty: any
  musicgw::v1::Provider provider = musicgw::v1::PROVIDER_UNSPECIFIED;
  musicgw::v1::TaskKind task = musicgw::v1::TASK_KIND_UNSPECIFIED;
  int limit = 50;
  // Only ids strictly below this one (the previous page's last id); empty: from the newest.
  std::string before_id;
};

// Where the gateway's own copy of one output stands (asset custody).
enum class CustodyState {
  kPending = 1,  // to be fetched from the provider (again, after next_attempt)
  kHeld = 2,     // in the asset store under sha256, until expire_time
  kExpired = 3,  // retention ran out; the bytes are gone
};

struct CustodyRecord {
  std::string operation_id;
  int index = 0;
  std::string tenant;
  CustodyState state = CustodyState::kPending;
  std::string sha256;
  int64_t size_bytes = 0;
  absl::Time pending_since = absl::InfinitePast();
  absl::Time next_attempt = absl::InfinitePast();
  int attempts = 0;
  absl::Time expire_time = absl::InfiniteFuture();
};

struct CustodySummary {
  // Distinct objects held (two assets with the same bytes are stored once).
  int64_t held_bytes = 0;
  int64_t pending = 0;
  // The oldest pending fetch; InfiniteFuture when none is pending.
  absl::Time oldest_pending = absl::InfiniteFuture();
};

struct StoredEvent {
  int64_t sequence = 0;
  musicgw::v1::Operation operation;
};

class OperationStore {
 public:
  virtual ~OperationStore() = default;

  // Inserts `record` (sequence 1, with its first event) unless tenant + request_id exists, in
  // which case returns the existing record with created=false. RESOURCE_EXHAUSTED (ErrorInfo
  // TENANT_BUDGET_EXHAUSTED, QuotaFailure, RetryInfo) when a budget is full; nothing inserted.
  virtual absl::StatusOr<CreateResult> Create(const OperationRecord& record,
                                              const std::vector<BudgetCheck>& budgets) = 0;
  // Compare-and-set on sequence (and owner, when update.owner is set); appends the event.
  // ABORTED when the stored sequence or owner differs, NOT_FOUND when the operation does not
  // exist.
  virtual absl::Status Update(const OperationUpdate& update) = 0;
  virtual absl::StatusOr<OperationRecord> Get(absl::string_view id) = 0;
  virtual absl::StatusOr<OperationRecord> FindByRequestId(absl::string_view tenant,
                                                          absl::string_view request_id) = 0;
  // Newest first, at most query.limit records.
  virtual absl::StatusOr<std::vector<OperationRecord>> List(const ListQuery& query) = 0;
  // Change events with sequence > after_sequence, oldest first (pruned ones are gone).
  virtual absl::StatusOr<std::vector<StoredEvent>> EventsAfter(absl::string_view id,
                                                               int64_t after_sequence) = 0;
  // Takes ownership of live operations that are unowned, owned by `owner` or whose lease ran
  // out, until `lease_until`, and returns every live operation `owner` then owns. A shared
  // store claims others' operations in bounded batches (so they spread across replicas): call
  // it again to take more.
  virtual absl::StatusOr<std::vector<OperationRecord>> ClaimLive(absl::string_view owner,
                                                                 absl::Time lease_until) = 0;
  virtual absl::Status RenewLeases(absl::string_view owner, absl::Time lease_until) = 0;
  // Tells whichever replica tracks the operation with upstream job `upstream_id` to poll it
  // now (a webhook reached a replica that does not track it). A single-node store has no one
  // else to tell.
  virtual absl::Status Nudge(musicgw::v1::Provider provider, absl::string_view upstream_id) {
    return absl::OkStatus();
  }
  // The earliest time another replica's lease on a live operation runs out (InfiniteFuture
  // when there is none): when to call ClaimLive next, so a dead replica's operations are taken
  // over as soon as its leases allow.
  virtual absl::StatusOr<absl::Time> NextLeaseExpiry(absl::string_view owner) {
    return absl::InfiniteFuture();
  }
  // Cancel from a replica that does not track the operation: records that live operation `id`
  // is to be cancelled with `reason` (a later request keeps the first reason; nothing when it
  // is done), durably, so whichever replica tracks it, now or after a takeover, applies it.
  // Announced to every replica when committed. NOT_FOUND when there is no such operation.
  virtual absl::Status RequestCancel(absl::string_view id, absl::string_view reason,
                                     absl::Time now) {
    return absl::UnimplementedError("this ledger has no other replicas to pass a cancel to");
  }
  // The pending cancel requests of the live operations `owner` tracks: id -> reason.
  virtual absl::StatusOr<std::map<std::string, std::string>> PendingCancels(
      absl::string_view owner) {
    return std::map<std::string, std::string>{};
  }
  // A small real write that changes nothing visible: tells whether the ledger accepts writes
  // again after one failed (disk full, I/O error).
  virtual absl::Status ProbeWrite() = 0;
  // Fresh provider URLs (no new sequence: the public snapshot does not change).
  virtual absl::Status SetUpstreamOutputs(absl::string_view id,
                                          const std::vector<UpstreamOutput>& outputs) = 0;
  // Size and digest learnt by a complete download of asset `index`.
  virtual absl::Status SetAssetFacts(absl::string_view id, int index, int64_t size_bytes,
                                     absl::string_view sha256) = 0;
  // Custody. Outputs 0..count-1 become pending (rows that exist are left alone), first
  // attempted at `next_attempt`; a restart resumes them. (On disk no later than the durable
  // write that follows: the operation's SUCCEEDED. Until then a lost row is harmless, since
  // the operation is still live and its tracker fetches again.)
  virtual absl::Status AddPendingCustody(absl::string_view id, absl::string_view tenant, int count,
                                         absl::Time now, absl::Time next_attempt) = 0;
  // Output `index` is held: its size and digest become the asset's facts (merged into
  // snapshots with in_custody set) in the same transaction.
  virtual absl::Status RecordCustody(absl::string_view id, int index, int64_t size_bytes,
                                     absl::string_view sha256, absl::Time expire_time) = 0;
  // A pending fetch failed: try again at `next_attempt`.
  virtual absl::Status DeferCustody(absl::string_view id, int index, int attempts,
                                    absl::Time next_attempt) = 0;
  // Every custody row of one operation, by index.
  virtual absl::StatusOr<std::vector<CustodyRecord>> GetCustody(absl::string_view id) = 0;
  // Pending rows due at `now`, oldest first, at most `limit`.
  virtual absl::StatusOr<std::vector<CustodyRecord>> DueCustody(absl::Time now, int limit) = 0;
  // Held rows whose retention ended before `now` become expired (in_custody cleared); returns
  // them, at most `limit`.
  virtual absl::StatusOr<std::vector<CustodyRecord>> ExpireCustody(absl::Time now, int limit) = 0;
  // Held rows that still reference the object `sha256` (its bytes may only go at zero).
  virtual absl::StatusOr<int64_t> CountHeldDigest(absl::string_view sha256) = 0;
  virtual absl::StatusOr<CustodySummary> ReadCustodySummary() = 0;
  // Deletes the change events and cancel requests of operations done before `done_before`;
  // returns how many rows in all.
  virtual absl::StatusOr<int64_t> PruneEvents(absl::Time done_before) = 0;
  virtual absl::StatusOr<BudgetUsage> ReadBudget(absl::string_view tenant,
                                                 musicgw::v1::TaskKind task,
                                                 absl::Time period_start) = 0;
  // Operations created since `since` on one provider account that the provider charged for,
  // by task.
  virtual absl::StatusOr<std::map<musicgw::v1::TaskKind, int64_t>> CountCharged(
      musicgw::v1::Provider provider, absl::string_view account, absl::Time since) = 0;
  // How long the most recent successful operations of one provider account and task took,
  // create to done, newest (by done time) first, at most `limit` of them: the history behind
  // Operation.estimated_done_time. A store without history answers an empty list.
  virtual absl::StatusOr<std::vector<absl::Duration>> RecentDurations(
      musicgw::v1::Provider provider, absl::string_view account, musicgw::v1::TaskKind task,
      int limit) {
    return std::vector<absl::Duration>{};
  }

  // The webhook outbox (outbox.h); stores without one answer UNIMPLEMENTED.
  // Adds one message outside any state change (a test ping), due at once.
  virtual absl::Status EnqueueOutbox(const OutboxMessage& message) { return NoOutbox(); }
  // Reserves up to `limit` pending deliveries due at `now` until `claim_until` (no other
  // deliverer takes them before) and returns them, the longest due first.
  virtual absl::StatusOr<std::vector<OutboxDelivery>> ClaimDueDeliveries(absl::Time now,
                                                                         absl::Time claim_until,
                                                                         int limit) {
    return NoOutbox();
  }
  // Records one attempt and the delivery's new status (`next_attempt_time`: when a pending one
  // is due again). NOT_FOUND for an unknown delivery.
  virtual absl::Status RecordDeliveryAttempt(const DeliveryAttempt& attempt, DeliveryStatus status,
                                             absl::Time next_attempt_time) {
    return NoOutbox();
  }
  // One tenant's deliveries of one operation and/or endpoint, oldest first.
  virtual absl::StatusOr<std::vector<OutboxDelivery>> ListDeliveries(const DeliveryQuery& query) {
    return NoOutbox();
  }
  // Every attempt of one delivery, in order.
  virtual absl::StatusOr<std::vector<DeliveryAttempt>> ListDeliveryAttempts(
      absl::string_view delivery_id) {
    return NoOutbox();
  }
  // Makes a delivery pending again, due at `now`, with its webhook-id unchanged. NOT_FOUND
  // unless it exists and belongs to `tenant`.
  virtual absl::Status Redeliver(absl::string_view tenant, absl::string_view delivery_id,
                                 absl::Time now) {
    return NoOutbox();
  }

 private:
  static absl::Status NoOutbox() {
    return absl::UnimplementedError("this ledger has no webhook outbox");
  }
};

}  // namespace musicgw::operations
