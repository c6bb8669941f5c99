// File: stream_reactor.h
// The server-streaming reactors of WatchOperation and Download: StreamReactor pumps an engine
// EventStream into the gRPC stream, one write in flight at a time; FailedStreamReactor ends a
// stream that fails before it starts.
#pragma once

#include <memory>
#include <optional>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "common/errors.h"
#include "grpcpp/grpcpp.h"
#include "services/gateway/call_log.h"
#include "services/operations/event_stream.h"

namespace musicgw::gateway {

// Pumps an EventStream into a server stream, one write in flight at a time. The stream wakes
// the reactor when it has something new; a slow client only slows its own stream.
template <typename Message>
class StreamReactor final : public grpc::ServerWriteReactor<Message> {
 public:
  StreamReactor(std::unique_ptr<CallLog> call,
                std::unique_ptr<operations::EventStream<Message>> stream)
      : call_(std::move(call)), stream_(std::move(stream)) {
    if (call_->observer() != nullptr) call_->observer()->OnStreamOpened(call_->method());
    stream_->SetWakeup([this] { Pump(); });
    Pump();
  }

  void OnWriteDone(bool ok) override {
    {
      absl::MutexLock lock(&mu_);
      writing_ = false;
      if (!ok) {
        // The client went away; OnCancel or the failed write ends the call.
        FinishLocked(absl::CancelledError("client stopped reading"));
        return;
      }
      if (call_->observer() != nullptr) call_->observer()->OnStreamMessage(call_->method());
    }
    Pump();
  }

  void OnCancel() override {
    absl::MutexLock lock(&mu_);
    FinishLocked(absl::CancelledError("cancelled by the client"));
  }

  void OnDone() override {
    // Destroying the stream first guarantees its wake-up never touches a deleted reactor; it is
    // moved out under the lock so a concurrent Pump() sees finished_ and leaves it alone.
    std::unique_ptr<operations::EventStream<Message>> stream;
    {
      absl::MutexLock lock(&mu_);
      finished_ = true;
      stream = std::move(stream_);
    }
    stream.reset();
    if (call_->observer() != nullptr) call_->observer()->OnStreamClosed(call_->method());
    delete this;
  }

 private:
  void Pump() {
    absl::MutexLock lock(&mu_);
    if (writing_ || finished_) return;
    bool done = false;
    absl::Status final_status;
    std::optional<Message> next = stream_->Next(&done, &final_status);
    if (next.has_value()) {
      current_ = std::move(*next);
      writing_ = true;
      this->StartWrite(&current_);
      return;
    }
    if (done) FinishLocked(final_status);
  }

  void FinishLocked(const absl::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_) return;
    finished_ = true;
    call_->Done(status);
    this->Finish(ToGrpcStatus(status));
  }

  std::unique_ptr<CallLog> call_;
  absl::Mutex mu_;
  std::unique_ptr<operations::EventStream<Message>> stream_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  Message current_ ABSL_GUARDED_BY(mu_);
};

// A stream that fails before it starts.
template <typename Message>
class FailedStreamReactor final : public grpc::ServerWriteReactor<Message> {
 public:
  explicit FailedStreamReactor(const absl::Status& status) { this->Finish(ToGrpcStatus(status)); }
  void OnDone() override { delete this; }
};

}  // namespace musicgw::gateway
