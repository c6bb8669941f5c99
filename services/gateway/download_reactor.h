// File: download_reactor.h
// The Download stream on the raw (ByteBuffer) method. A download from custody is framed here:
// each data message is a few header bytes, the file's bytes read straight into the slice gRPC
// sends, and the offset, byte for byte what DownloadChunk's serialization writes, so a byte is
// copied only by the file read and the socket send. While one message is in flight the next
// chunk is already read (one write in flight is all gRPC allows a stream). Any other download
// (streamed from the provider) is serialized message by message, as the typed method would.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "grpcpp/grpcpp.h"
#include "musicgw/v1/musicgw.pb.h"
#include "services/gateway/call_log.h"
#include "services/gateway/stream_reactor.h"
#include "services/operations/download_stream.h"
#include "services/operations/event_stream.h"

namespace musicgw::gateway {

// The bytes DownloadChunk's serialization puts before the data of a data message of `size`
// bytes (the field's tag and length), and after it (the offset's tag and value; empty at 0).
std::string DataChunkPrefix(int64_t size);
std::string DataChunkSuffix(int64_t offset);

// `message` as the typed method would send it.
absl::StatusOr<grpc::ByteBuffer> SerializeChunk(const musicgw::v1::DownloadChunk& message);

// The next data message of `custody`, its bytes read into the slice it is sent from; nullopt
// at the end of the asset.
absl::StatusOr<std::optional<grpc::ByteBuffer>> ReadCustodyChunk(
    operations::CustodyStream& custody);

// A download pumped into a server stream (the lifecycle: RawStreamReactor).
class DownloadReactor final : public RawStreamReactor<musicgw::v1::DownloadChunk> {
 public:
  // `custody`, when set, is the CustodyStream inside `stream` (which owns it): its data is read
  // and framed here instead of through Next().
  DownloadReactor(std::unique_ptr<CallLog> call,
                  std::unique_ptr<operations::EventStream<musicgw::v1::DownloadChunk>> stream,
                  operations::CustodyStream* custody);

 private:
  // What comes after the message in flight.
  struct Pending {
    std::optional<grpc::ByteBuffer> message;  // unset: the stream ends with `status`
    absl::Status status;
  };

  void Pump() override;
  // The next message or the end; nullopt when a provider stream has nothing yet (it wakes us).
  std::optional<Pending> NextLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Lives as long as stream_, which owns it: read only while !finished_.
  operations::CustodyStream* const custody_;
  bool info_sent_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<Pending> next_ ABSL_GUARDED_BY(mu_);  // read ahead while a write is in flight
};

}  // namespace musicgw::gateway
