// File: watch_reactor.h
// WatchOperation's transport: events written as raw bytes, the operation's bytes serialized once
// per change and shared (reference-counted) by every stream that sends it, so a change seen by
// N watchers costs one serialization and no per-watcher copy of the operation.
#pragma once

#include <memory>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/grpcpp.h"
#include "services/gateway/call_log.h"
#include "services/operations/event_stream.h"
#include "services/operations/watch_stream.h"

namespace musicgw::gateway {

// The bytes of `event` as an OperationEvent: byte for byte what serializing
// ToOperationEvent(event) gives (fields in number order, so the shared operation bytes sit
// between a small per-stream head and tail).
grpc::ByteBuffer EncodeWatchEvent(const operations::WatchEvent& event);

// Pumps a watch into a server stream, one write in flight at a time. The stream wakes the
// reactor when it has something new; a slow client only slows its own stream.
class WatchReactor final : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  WatchReactor(std::unique_ptr<CallLog> call,
               std::unique_ptr<operations::EventStream<operations::WatchEvent>> stream);

  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;

 private:
  void Pump();
  void FinishLocked(const absl::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  std::unique_ptr<CallLog> call_;
  absl::Mutex mu_;
  std::unique_ptr<operations::EventStream<operations::WatchEvent>> stream_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  // The last event went out with the final status (StartWriteAndFinish).
  bool last_with_finish_ ABSL_GUARDED_BY(mu_) = false;

  // The write in flight; released once written, so an idle stream holds no event.
  grpc::ByteBuffer current_ ABSL_GUARDED_BY(mu_);
};

}  // namespace musicgw::gateway
