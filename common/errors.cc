#include "common/errors.h"

#include <utility>

#include "absl/strings/cord.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/any.pb.h"

namespace musicgw {
namespace {

constexpr absl::string_view kTypePrefix = "type.googleapis.com/";

template <typename Message>
std::string TypeUrl() {
  return absl::StrCat(kTypePrefix, Message::descriptor()->full_name());
}

template <typename Message>
absl::Status SetDetail(absl::Status status, const Message& detail) {
  status.SetPayload(TypeUrl<Message>(), absl::Cord(detail.SerializeAsString()));
  return status;
}

template <typename Message>
bool GetDetail(const absl::Status& status, Message* out) {
  auto payload = status.GetPayload(TypeUrl<Message>());
  if (!payload.has_value()) return false;
  return out->ParseFromString(std::string(*payload));
}

}  // namespace

absl::Status WithErrorInfo(absl::Status status, absl::string_view reason, absl::string_view domain,
                           const std::map<std::string, std::string>& metadata) {
  google::rpc::ErrorInfo info;
  info.set_reason(std::string(reason));
  info.set_domain(std::string(domain));
  for (const auto& [key, value] : metadata) (*info.mutable_metadata())[key] = value;
  return SetDetail(std::move(status), info);
}

absl::Status WithRetryInfo(absl::Status status, absl::Duration retry_delay) {
  google::rpc::RetryInfo info;
  const int64_t seconds = absl::IDivDuration(retry_delay, absl::Seconds(1), &retry_delay);
  info.mutable_retry_delay()->set_seconds(seconds);
  info.mutable_retry_delay()->set_nanos(
      static_cast<int32_t>(absl::ToInt64Nanoseconds(retry_delay)));
  return SetDetail(std::move(status), info);
}

absl::Status WithQuotaViolation(absl::Status status, absl::string_view subject,
                                absl::string_view description) {
  google::rpc::QuotaFailure failure;
  GetDetail(status, &failure);
  auto* violation = failure.add_violations();
  violation->set_subject(std::string(subject));
  violation->set_description(std::string(description));
  return SetDetail(std::move(status), failure);
}

absl::Status WithFieldViolation(absl::Status status, absl::string_view field,
                                absl::string_view description) {
  google::rpc::BadRequest bad_request;
  GetDetail(status, &bad_request);
  auto* violation = bad_request.add_field_violations();
  violation->set_field(std::string(field));
  violation->set_description(std::string(description));
  return SetDetail(std::move(status), bad_request);
}

absl::Status InvalidFieldError(absl::string_view field, absl::string_view description) {
  absl::Status status = absl::InvalidArgumentError(absl::StrCat(field, ": ", description));
  status = WithFieldViolation(std::move(status), field, description);
  return WithErrorInfo(std::move(status), "INVALID_ARGUMENT", kGatewayDomain,
                       {{"field", std::string(field)}});
}

bool GetErrorInfo(const absl::Status& status, google::rpc::ErrorInfo* out) {
  return GetDetail(status, out);
}
bool GetRetryInfo(const absl::Status& status, google::rpc::RetryInfo* out) {
  return GetDetail(status, out);
}
bool GetQuotaFailure(const absl::Status& status, google::rpc::QuotaFailure* out) {
  return GetDetail(status, out);
}
bool GetBadRequest(const absl::Status& status, google::rpc::BadRequest* out) {
  return GetDetail(status, out);
}

google::rpc::Status ToRpcStatus(const absl::Status& status) {
  google::rpc::Status rpc;
  rpc.set_code(static_cast<int32_t>(status.code()));
  rpc.set_message(std::string(status.message()));
  status.ForEachPayload([&rpc](absl::string_view type_url, const absl::Cord& payload) {
    if (!absl::StartsWith(type_url, kTypePrefix)) return;
    google::protobuf::Any* any = rpc.add_details();
    any->set_type_url(std::string(type_url));
    any->set_value(std::string(payload));
  });
  return rpc;
}

absl::Status FromRpcStatus(const google::rpc::Status& rpc) {
  absl::Status status(static_cast<absl::StatusCode>(rpc.code()), rpc.message());
  if (status.ok()) return status;
  for (const auto& any : rpc.details()) status.SetPayload(any.type_url(), absl::Cord(any.value()));
  return status;
}

std::string ReasonForCode(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kInternal:
      return "INTERNAL_ERROR";
    case absl::StatusCode::kUnknown:
      return "UNKNOWN_ERROR";
    default:
      return absl::StatusCodeToString(code);
  }
}

absl::Status EnsureErrorInfo(absl::Status status) {
  google::rpc::ErrorInfo info;
  if (status.ok() || GetErrorInfo(status, &info)) return status;
  const std::string reason = ReasonForCode(status.code());
  return WithErrorInfo(std::move(status), reason, kGatewayDomain);
}

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()),
                      ToRpcStatus(EnsureErrorInfo(status)).SerializeAsString());
}

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  google::rpc::Status rpc;
  if (!status.error_details().empty() && rpc.ParseFromString(status.error_details())) {
    return FromRpcStatus(rpc);
  }
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

}  // namespace musicgw
