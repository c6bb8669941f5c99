// File: watch_reactor.h
// WatchOperation's transport: events written as raw bytes, the operation's bytes serialized once
// per change and shared (reference-counted) by every stream that sends it, so a change seen by
// N watchers costs one serialization and no per-watcher copy of the operation.
#pragma once

#include <memory>

#include "grpcpp/grpcpp.h"
#include "services/gateway/call_log.h"
#include "services/gateway/stream_reactor.h"
#include "services/operations/event_stream.h"
#include "services/operations/watch_stream.h"

namespace musicgw::gateway {

// The bytes of `event` as an OperationEvent: byte for byte what serializing
// ToOperationEvent(event) gives (fields in number order, so the shared operation bytes sit
// between a small per-stream head and tail).
grpc::ByteBuffer EncodeWatchEvent(const operations::WatchEvent& event);

// A watch pumped into a server stream (the lifecycle: RawStreamReactor).
class WatchReactor final : public RawStreamReactor<operations::WatchEvent> {
 public:
  WatchReactor(std::unique_ptr<CallLog> call,
               std::unique_ptr<operations::EventStream<operations::WatchEvent>> stream);

 private:
  void Pump() override;
};

}  // namespace musicgw::gateway
