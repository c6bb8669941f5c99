// File: decode_errors.h
// Requests that cannot be parsed, most often a string field that is not valid UTF-8. gRPC 1.51's
// callback handlers answer such a request with a bare UNIMPLEMENTED before any handler runs, and
// libprotobuf writes a plain-text line to stderr. Here:
// - RouteProtobufLogs() sends libprotobuf's lines into the JSON log, and remembers (per thread:
//   the parse and the interceptor below run on the same thread) which field a parse found not
//   UTF-8;
// - the interceptor notices the failed parse (no request message after POST_RECV_MESSAGE) and
//   replaces the answer with INVALID_ARGUMENT naming that field (BadRequest, ErrorInfo), and
//   writes the call's one "rpc" log line, since no handler will;
// - the same interceptor gives any other error status that leaves without details (one gRPC
//   produced itself) an ErrorInfo, as ToGrpcStatus does for the handlers' own;
// - the raw (ByteBuffer) methods parse their requests with ParseRawRequest and answer one that
//   does not parse with AnswerUnparsedRequest: what the interceptor answers a typed method.
#pragma once

#include <memory>
#include <optional>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "grpcpp/impl/codegen/proto_utils.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/server_interceptor.h"

namespace musicgw::gateway {

// Installs the libprotobuf log handler (process-wide; idempotent).
void RouteProtobufLogs();

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
MakeDecodeErrorInterceptorFactory();

// The answer to a request of `method` ("/musicgw.v1.MusicGateway/Generate") that could not be
// parsed; `utf8_field` is the full name of the field found not UTF-8
// ("musicgw.v1.SongTask.lyrics"), empty when unknown. The BadRequest names the field's path in
// the request ("song.lyrics") when the method's request type contains it.
absl::Status DecodeError(absl::string_view method, absl::string_view utf8_field);

// What the interceptor answers (and logs) for a request of `method` whose parse just failed on
// this thread; for raw methods, which parse their requests themselves.
grpc::Status AnswerUnparsedRequest(absl::string_view method);

// A raw method's request parsed as gRPC parses a typed method's (`raw` is left as it was);
// nullopt when it does not parse, to be answered, at once, with AnswerUnparsedRequest (which
// takes the field this parse found not UTF-8).
template <typename Message>
std::optional<Message> ParseRawRequest(const grpc::ByteBuffer& raw) {
  grpc::ByteBuffer copy(raw);  // Deserialize consumes its buffer; the copy shares the bytes
  Message parsed;
  if (!grpc::SerializationTraits<Message>::Deserialize(&copy, &parsed).ok()) return std::nullopt;
  return parsed;
}

}  // namespace musicgw::gateway
