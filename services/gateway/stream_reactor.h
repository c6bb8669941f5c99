// File: stream_reactor.h
// FailedStreamReactor: a server stream (WatchOperation, Download) that fails before it starts.
// The streams themselves are watch_reactor.h and download_reactor.h.
#pragma once

#include "absl/status/status.h"
#include "common/errors.h"
#include "grpcpp/grpcpp.h"

namespace musicgw::gateway {

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
