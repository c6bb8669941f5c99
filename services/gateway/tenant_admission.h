// File: tenant_admission.h
// Per-tenant admission, before any ledger work, so one tenant's flood queues nobody else:
// a token bucket per tenant and method class (request rate), and a count of open streams
// (WatchOperation plus Download). Both guard this replica's CPU and are enforced per replica.
// The limit that guards money, concurrent live operations, is exact across replicas: the ledger
// checks it in the transaction that stores a new operation (see budgets.h).
//
// Over a limit: RESOURCE_EXHAUSTED with ErrorInfo TENANT_RATE_LIMITED, a QuotaFailure naming
// the tenant and the limit, and RetryInfo (when the next token comes).
//
// Thread-safe; each tenant's state has its own lock, and the tenant set is fixed at
// construction, so admission takes no lock shared between tenants.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/clock.h"
#include "common/config.h"
#include "musicgw/v1/musicgw.pb.h"
#include "services/operations/event_stream.h"

namespace musicgw::gateway {

enum class MethodClass { kGenerate, kRead, kList, kCancel, kStream };

// Bounded metrics/ErrorInfo label: "generate", "read", "list", "cancel", "stream".
const char* MethodClassName(MethodClass method);

// Holds one open-stream slot of a tenant until destroyed.
class StreamSlot {
 public:
  StreamSlot() = default;
  explicit StreamSlot(std::shared_ptr<std::atomic<int64_t>> open) : open_(std::move(open)) {}
  StreamSlot(StreamSlot&&) = default;
  StreamSlot& operator=(StreamSlot&&) = default;
  StreamSlot(const StreamSlot&) = delete;
  StreamSlot& operator=(const StreamSlot&) = delete;
  ~StreamSlot() {
    if (open_ != nullptr) open_->fetch_sub(1);
  }

 private:
  std::shared_ptr<std::atomic<int64_t>> open_;
};

class TenantAdmission {
 public:
  TenantAdmission(const Clock& clock, const std::vector<config::TenantConfig>& tenants);
  ~TenantAdmission();

  // OK, or RESOURCE_EXHAUSTED (TENANT_RATE_LIMITED). Unknown tenants are admitted (they were
  // authenticated against the same config, so there are none).
  absl::Status Admit(absl::string_view tenant, MethodClass method);
  // A slot for one more open stream, or RESOURCE_EXHAUSTED (TENANT_RATE_LIMITED).
  absl::StatusOr<StreamSlot> OpenStream(absl::string_view tenant);
  int64_t open_streams(absl::string_view tenant) const;

 private:
  struct Tenant;
  const Clock& clock_;
  absl::flat_hash_map<std::string, std::unique_ptr<Tenant>> tenants_;
};

// An EventStream that holds a StreamSlot for as long as it lives.
template <typename T>
class SlottedStream final : public operations::EventStream<T> {
 public:
  SlottedStream(std::unique_ptr<operations::EventStream<T>> inner, StreamSlot slot)
      : slot_(std::move(slot)), inner_(std::move(inner)) {}
  std::optional<T> Next(bool* finished, absl::Status* final_status) override {
    return inner_->Next(finished, final_status);
  }
  void SetWakeup(absl::AnyInvocable<void()> wake) override { inner_->SetWakeup(std::move(wake)); }

 private:
  StreamSlot slot_;  // declared first: released after the inner stream is gone
  std::unique_ptr<operations::EventStream<T>> inner_;
};

}  // namespace musicgw::gateway
