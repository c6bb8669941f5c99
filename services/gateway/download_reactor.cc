#include "services/gateway/download_reactor.h"

#include <grpc/slice.h>

#include <utility>

#include "absl/types/span.h"
#include "common/errors.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/wire_format_lite.h"
#include "grpcpp/impl/codegen/proto_utils.h"

namespace musicgw::gateway {
namespace {

namespace v1 = musicgw::v1;
using google::protobuf::internal::WireFormatLite;
using google::protobuf::io::CodedOutputStream;

// A tag and a varint: at most 1 + 10 bytes.
std::string TagAndVarint(int field, WireFormatLite::WireType type, uint64_t value) {
  uint8_t bytes[16];
  uint8_t* end =
      CodedOutputStream::WriteVarint32ToArray(WireFormatLite::MakeTag(field, type), bytes);
  end = CodedOutputStream::WriteVarint64ToArray(value, end);
  return std::string(reinterpret_cast<const char*>(bytes), static_cast<size_t>(end - bytes));
}

}  // namespace

// DownloadChunk serializes its fields in number order: data (2), then offset (3).
std::string DataChunkPrefix(int64_t size) {
  return TagAndVarint(v1::DownloadChunk::kDataFieldNumber,
                      WireFormatLite::WIRETYPE_LENGTH_DELIMITED, static_cast<uint64_t>(size));
}

std::string DataChunkSuffix(int64_t offset) {
  if (offset == 0) return "";  // proto3: a zero is not written
  return TagAndVarint(v1::DownloadChunk::kOffsetFieldNumber, WireFormatLite::WIRETYPE_VARINT,
                      static_cast<uint64_t>(offset));
}

absl::StatusOr<grpc::ByteBuffer> SerializeChunk(const v1::DownloadChunk& message) {
  grpc::ByteBuffer buffer;
  bool own_buffer = false;
  const grpc::Status status =
      grpc::SerializationTraits<v1::DownloadChunk>::Serialize(message, &buffer, &own_buffer);
  if (!status.ok()) return FromGrpcStatus(status);
  return buffer;
}

absl::StatusOr<std::optional<grpc::ByteBuffer>> ReadCustodyChunk(
    operations::CustodyStream& custody) {
  const int64_t size = custody.NextDataSize();
  if (size == 0) return std::nullopt;
  const int64_t offset = custody.data_offset();
  grpc::Slice data(grpc_slice_malloc(static_cast<size_t>(size)), grpc::Slice::STEAL_REF);
  // The slice is ours alone until it is handed to the ByteBuffer.
  char* start = const_cast<char*>(reinterpret_cast<const char*>(data.begin()));
  absl::Status read = custody.ReadData(absl::MakeSpan(start, static_cast<size_t>(size)));
  if (!read.ok()) return read;
  const std::string prefix = DataChunkPrefix(size);
  const std::string suffix = DataChunkSuffix(offset);
  const grpc::Slice slices[] = {grpc::Slice(prefix), std::move(data), grpc::Slice(suffix)};
  return std::optional<grpc::ByteBuffer>(std::in_place, slices, suffix.empty() ? 2 : 3);
}

DownloadReactor::DownloadReactor(std::unique_ptr<CallLog> call,
                                 std::unique_ptr<operations::EventStream<v1::DownloadChunk>> stream,
                                 operations::CustodyStream* custody)
    : RawStreamReactor(std::move(call), std::move(stream)), custody_(custody) {
  Start();
}

void DownloadReactor::Pump() {
  absl::MutexLock lock(&mu_);
  if (writing_ || finished_) return;
  if (!next_.has_value()) next_ = NextLocked();
  if (!next_.has_value()) return;  // the provider stream wakes us when it has more
  Pending pending = std::move(*next_);
  next_.reset();
  if (!pending.message.has_value()) {
    FinishLocked(pending.status);
    return;
  }
  WriteLocked(&*pending.message);
  // The file read of the next chunk overlaps this one's send. A provider stream is asked only
  // when a write is possible, as its backpressure expects.
  if (custody_ != nullptr) next_ = NextLocked();
}

std::optional<DownloadReactor::Pending> DownloadReactor::NextLocked() {
  if (custody_ != nullptr) {
    absl::StatusOr<std::optional<grpc::ByteBuffer>> message;
    if (!info_sent_) {
      info_sent_ = true;
      message = SerializeChunk(custody_->InfoChunk());
    } else {
      message = ReadCustodyChunk(*custody_);
    }
    if (!message.ok()) return Pending{std::nullopt, message.status()};
    return Pending{std::move(*message), absl::OkStatus()};  // no message: the end
  }
  bool done = false;
  absl::Status final_status;
  std::optional<v1::DownloadChunk> next = stream_->Next(&done, &final_status);
  if (next.has_value()) {
    auto message = SerializeChunk(*next);
    if (!message.ok()) return Pending{std::nullopt, message.status()};
    return Pending{std::move(*message), absl::OkStatus()};
  }
  if (done) return Pending{std::nullopt, final_status};
  return std::nullopt;
}

}  // namespace musicgw::gateway
