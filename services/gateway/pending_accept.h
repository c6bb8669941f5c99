// File: pending_accept.h
// One Generate's durable accept, handed to the accept executor so that gRPC's callback threads,
// shared by every call of every tenant, do not wait for the ledger's disk. It runs once and
// answers its call; dropped unrun (its executor stopped first), it answers UNAVAILABLE
// SHUTTING_DOWN, so no call is left unanswered and nothing was accepted.
#pragma once

#include <optional>
#include <utility>

#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "musicgw/v1/musicgw.pb.h"
#include "services/operations/engine.h"
#include "services/operations/operation_errors.h"

namespace musicgw::gateway {

class PendingAccept {
 public:
  using Accept = absl::AnyInvocable<absl::StatusOr<musicgw::v1::Operation>() &&>;

  PendingAccept(Accept accept, operations::OperationCallback done)
      : accept_(std::move(accept)), done_(std::move(done)) {}
  PendingAccept(PendingAccept&& other) noexcept
      : accept_(std::move(other.accept_)), done_(std::exchange(other.done_, std::nullopt)) {}
  PendingAccept& operator=(PendingAccept&&) = delete;
  PendingAccept(const PendingAccept&) = delete;
  PendingAccept& operator=(const PendingAccept&) = delete;
  ~PendingAccept() {
    if (done_.has_value()) std::move (*done_)(operations::ShuttingDown());
  }

  void operator()() && {
    operations::OperationCallback done = *std::exchange(done_, std::nullopt);
    std::move(done)(std::move(accept_)());
  }

 private:
  Accept accept_;
  std::optional<operations::OperationCallback> done_;  // empty once answered or moved from
};

}  // namespace musicgw::gateway
