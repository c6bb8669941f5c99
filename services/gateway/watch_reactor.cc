#include "services/gateway/watch_reactor.h"

#include <cstdint>
#include <optional>
#include <string>
#include <utility>

#include "common/time_util.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/wire_format_lite.h"
#include "musicgw/v1/musicgw.pb.h"

namespace musicgw::gateway {

namespace v1 = musicgw::v1;
using google::protobuf::internal::WireFormatLite;
using google::protobuf::io::CodedOutputStream;

namespace {

// Keeps a snapshot alive for as long as gRPC holds a slice of its bytes.
void ReleaseSnapshot(void* user_data) {
  delete static_cast<std::shared_ptr<const operations::SharedSnapshot>*>(user_data);
}

grpc::Slice CopiedSlice(const std::string& bytes) { return grpc::Slice(bytes); }

}  // namespace

grpc::ByteBuffer EncodeWatchEvent(const operations::WatchEvent& event) {
  // Field 1 (kind) before the operation (2); sequence (3), send_time (4), coalesced (5) after.
  v1::OperationEvent head;
  head.set_kind(event.kind);
  std::string head_bytes = head.SerializeAsString();
  v1::OperationEvent tail;
  tail.set_sequence(event.sequence);
  *tail.mutable_send_time() = ToProtoTimestamp(event.send_time);
  tail.set_coalesced(event.coalesced);
  const std::string tail_bytes = tail.SerializeAsString();
  if (event.snapshot == nullptr) {
    grpc::Slice slices[] = {CopiedSlice(head_bytes + tail_bytes)};
    return grpc::ByteBuffer(slices, 1);
  }
  const std::string& operation = event.snapshot->Encoded();
  uint8_t prefix[16];
  uint8_t* end = CodedOutputStream::WriteTagToArray(
      WireFormatLite::MakeTag(v1::OperationEvent::kOperationFieldNumber,
                              WireFormatLite::WIRETYPE_LENGTH_DELIMITED),
      prefix);
  end = CodedOutputStream::WriteVarint32ToArray(static_cast<uint32_t>(operation.size()), end);
  head_bytes.append(reinterpret_cast<const char*>(prefix), end - prefix);
  if (operation.empty()) {
    grpc::Slice slices[] = {CopiedSlice(head_bytes + tail_bytes)};
    return grpc::ByteBuffer(slices, 1);
  }
  grpc::Slice slices[] = {
      CopiedSlice(head_bytes),
      grpc::Slice(const_cast<char*>(operation.data()), operation.size(), &ReleaseSnapshot,
                  new std::shared_ptr<const operations::SharedSnapshot>(event.snapshot)),
      CopiedSlice(tail_bytes)};
  return grpc::ByteBuffer(slices, 3);
}

WatchReactor::WatchReactor(std::unique_ptr<CallLog> call,
                           std::unique_ptr<operations::EventStream<operations::WatchEvent>> stream)
    : RawStreamReactor(std::move(call), std::move(stream)) {
  Start();
}

void WatchReactor::Pump() {
  absl::MutexLock lock(&mu_);
  if (writing_ || finished_) return;
  bool done = false;
  absl::Status final_status;
  std::optional<operations::WatchEvent> next = stream_->Next(&done, &final_status);
  if (!next.has_value()) {
    if (done) FinishLocked(final_status);
    return;
  }
  grpc::ByteBuffer message = EncodeWatchEvent(*next);
  // The operation's last event goes out with the status.
  if (next->last) {
    WriteLastLocked(&message);
  } else {
    WriteLocked(&message);
  }
}

}  // namespace musicgw::gateway
