// The raw methods' requests (WatchOperation, Download): parsed as gRPC parses a typed method's,
// and one that does not parse answered exactly as the decode-error interceptor answers a typed
// method's.
#include "services/gateway/decode_errors.h"

#include <optional>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/errors.h"
#include "google/protobuf/util/message_differencer.h"
#include "gtest/gtest.h"
#include "musicgw/v1/musicgw.pb.h"
#include "tests/gateway/byte_buffers.h"

namespace musicgw::gateway {
namespace {

namespace v1 = musicgw::v1;

// `payload` as string field `field` of `Message`, by hand: a client library refuses to build a
// string that is not UTF-8.
template <typename Message>
std::string StringField(const char* field, const std::string& payload) {
  const int number = Message::descriptor()->FindFieldByName(field)->number();
  return absl::StrCat(std::string(1, static_cast<char>(number << 3 | 2)),
                      std::string(1, static_cast<char>(payload.size())), payload);
}

template <typename Message>
void ExpectParsed(const Message& request) {
  SCOPED_TRACE(Message::descriptor()->full_name());
  const grpc::ByteBuffer buffer = BufferOf(request.SerializeAsString());
  const std::optional<Message> parsed = ParseRawRequest<Message>(buffer);
  ASSERT_TRUE(parsed.has_value());
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(*parsed, request))
      << parsed->ShortDebugString();
  // The buffer is not consumed: it still holds the request, and parses again.
  EXPECT_EQ(Flatten(buffer), request.SerializeAsString());
  EXPECT_TRUE(ParseRawRequest<Message>(buffer).has_value());
}

// Bytes that are no message, and a string field that is not UTF-8, do not parse; the answer is
// the typed methods' (DecodeError, with or without the field).
template <typename Message>
void ExpectRefusedAsTyped(const std::string& method, const char* field) {
  SCOPED_TRACE(method);
  RouteProtobufLogs();  // as the server does: how the parse's UTF-8 complaint is heard
  EXPECT_FALSE(ParseRawRequest<Message>(BufferOf(std::string("\x0a\xff\xff\xff", 4))));
  grpc::Status answer = AnswerUnparsedRequest(method);
  grpc::Status typed = ToGrpcStatus(DecodeError(method, ""));
  EXPECT_EQ(answer.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(answer.error_message(), absl::StrCat("the request could not be parsed as ",
                                                 Message::descriptor()->full_name()));
  EXPECT_EQ(FromGrpcStatus(answer), FromGrpcStatus(typed));  // message and every detail
  google::rpc::ErrorInfo info;
  ASSERT_TRUE(GetErrorInfo(FromGrpcStatus(answer), &info));
  EXPECT_EQ(info.reason(), "INVALID_ARGUMENT");
  EXPECT_EQ(info.domain(), kGatewayDomain);

  EXPECT_FALSE(
      ParseRawRequest<Message>(BufferOf(StringField<Message>(field, "operations/\xc3\x28"))));
  answer = AnswerUnparsedRequest(method);
  typed = ToGrpcStatus(
      DecodeError(method, absl::StrCat(Message::descriptor()->full_name(), ".", field)));
  EXPECT_EQ(answer.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(FromGrpcStatus(answer), FromGrpcStatus(typed));  // message and every detail
  google::rpc::BadRequest bad;
  ASSERT_TRUE(GetBadRequest(FromGrpcStatus(answer), &bad));
  ASSERT_EQ(bad.field_violations_size(), 1);
  EXPECT_EQ(bad.field_violations(0).field(), field);
}

TEST(ParseRawRequestTest, ParsesEitherRawMethodsRequestLeavingTheBuffer) {
  v1::DownloadRequest download;
  download.set_asset("operations/01j00000000000000000000000/assets/2");
  download.set_offset(12345);
  ExpectParsed(download);
  v1::WatchOperationRequest watch;
  watch.set_name("operations/01j00000000000000000000000");
  watch.set_after_sequence(7);
  ExpectParsed(watch);
  ExpectParsed(v1::WatchOperationRequest());  // no bytes at all: the empty request
}

TEST(ParseRawRequestTest, WhatDoesNotParseIsAnsweredAsATypedMethodIs) {
  ExpectRefusedAsTyped<v1::DownloadRequest>("/musicgw.v1.MusicGateway/Download", "asset");
  ExpectRefusedAsTyped<v1::WatchOperationRequest>("/musicgw.v1.MusicGateway/WatchOperation",
                                                  "name");
}

}  // namespace
}  // namespace musicgw::gateway
