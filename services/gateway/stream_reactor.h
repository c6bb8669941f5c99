// File: stream_reactor.h
// What the raw server streams (WatchOperation: watch_reactor.h, Download: download_reactor.h)
// share: RawStreamReactor, the lifecycle of a stream fed by an engine EventStream, and
// FailedStreamReactor, a stream that fails before it starts.
#pragma once

#include <memory>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "common/errors.h"
#include "grpcpp/grpcpp.h"
#include "services/gateway/call_log.h"
#include "services/operations/event_stream.h"

namespace musicgw::gateway {

// An engine EventStream pumped into a raw server stream, one write in flight at a time: the
// stream wakes the reactor when it has something new, so a slow client only slows its own
// stream. Here: the call finished, logged (CallLog) and counted by the observer (opened, each
// message written, closed) exactly once whatever ends it, and the stream destroyed before the
// reactor. A subclass calls Start() at the end of its constructor and supplies Pump(): what to
// write next.
template <typename Event>
class RawStreamReactor : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  RawStreamReactor(const RawStreamReactor&) = delete;
  RawStreamReactor& operator=(const RawStreamReactor&) = delete;

  void OnWriteDone(bool ok) final {
    {
      absl::MutexLock lock(&mu_);
      writing_ = false;
      current_.Clear();  // an idle stream holds no message
      if (!ok) {
        // The client went away; OnCancel or the failed write ends the call.
        FinishLocked(absl::CancelledError("client stopped reading"));
        return;
      }
      if (call_->observer() != nullptr) call_->observer()->OnStreamMessage(call_->method());
    }
    Pump();
  }

  void OnCancel() final {
    absl::MutexLock lock(&mu_);
    cancelled_ = true;
    FinishLocked(absl::CancelledError("cancelled by the client"));
  }

  void OnDone() final {
    // Destroying the stream first guarantees its wake-up never touches a deleted reactor; it is
    // moved out under the lock so a concurrent Pump() sees finished_ and leaves it alone.
    std::unique_ptr<operations::EventStream<Event>> stream;
    bool last_written = false;
    {
      absl::MutexLock lock(&mu_);
      finished_ = true;
      stream = std::move(stream_);
      last_written = last_with_finish_ && !cancelled_;
    }
    stream.reset();
    if (call_->observer() != nullptr) {
      // A last message written with the status has no OnWriteDone of its own.
      if (last_written) call_->observer()->OnStreamMessage(call_->method());
      call_->observer()->OnStreamClosed(call_->method());
    }
    delete this;
  }

 protected:
  RawStreamReactor(std::unique_ptr<CallLog> call,
                   std::unique_ptr<operations::EventStream<Event>> stream)
      : stream_(std::move(stream)), call_(std::move(call)) {}

  // Opens the stream: from the subclass's constructor, once Pump() may run (the wake-up may
  // call it from another thread at once). No gRPC reaction runs before the handler returns.
  void Start() ABSL_NO_THREAD_SAFETY_ANALYSIS {
    if (call_->observer() != nullptr) call_->observer()->OnStreamOpened(call_->method());
    stream_->SetWakeup([this] { Pump(); });
    Pump();
  }

  // Writes what comes next, if anything may be written now; takes mu_. Called on a wake-up,
  // when a write completes, and by Start().
  virtual void Pump() = 0;

  // Sends `*message` (taken; no copy), the one write in flight.
  void WriteLocked(grpc::ByteBuffer* message) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    current_.Swap(message);
    writing_ = true;
    StartWrite(&current_);
  }

  // Sends `*message` (taken) and the final OK status in one batch: every completion costs
  // gRPC a scan of the process's outstanding operations (bench/analysis.md), so many streams
  // ending at once save as many scans.
  void WriteLastLocked(grpc::ByteBuffer* message) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    current_.Swap(message);
    writing_ = true;
    finished_ = true;
    last_with_finish_ = true;
    call_->Done(absl::OkStatus());
    StartWriteAndFinish(&current_, grpc::WriteOptions(), grpc::Status::OK);
  }

  // Ends the call with `status` unless it has ended already.
  void FinishLocked(const absl::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_) return;
    finished_ = true;
    call_->Done(status);
    Finish(ToGrpcStatus(status));
  }

  absl::Mutex mu_;
  // Reset by OnDone; read only while !finished_.
  std::unique_ptr<operations::EventStream<Event>> stream_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;

 private:
  const std::unique_ptr<CallLog> call_;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  // The last message went out with the final status (WriteLastLocked).
  bool last_with_finish_ ABSL_GUARDED_BY(mu_) = false;
  // The write in flight; released once written, so an idle stream holds no message.
  grpc::ByteBuffer current_ ABSL_GUARDED_BY(mu_);
};

// A stream that fails before it starts: with `status` as ToGrpcStatus gives it, or a gRPC
// status as it is (a request that does not parse: AnswerUnparsedRequest).
template <typename Message>
class FailedStreamReactor final : public grpc::ServerWriteReactor<Message> {
 public:
  explicit FailedStreamReactor(const absl::Status& status) { this->Finish(ToGrpcStatus(status)); }
  explicit FailedStreamReactor(const grpc::Status& status) { this->Finish(status); }
  void OnDone() override { delete this; }
};

}  // namespace musicgw::gateway
