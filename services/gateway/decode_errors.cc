#include "services/gateway/decode_errors.h"

#include <deque>
#include <optional>
#include <set>
#include <string>
#include <utility>

#include "absl/base/call_once.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/strip.h"
#include "common/errors.h"
#include "common/log.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/stubs/logging.h"

namespace musicgw::gateway {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;
using grpc::experimental::InterceptionHookPoints;

constexpr char kUtf8Marker[] = "contains invalid UTF-8 data when parsing";

// The field the latest failed parse on this thread found not UTF-8; taken by the interceptor.
thread_local std::string last_utf8_field;  // NOLINT(runtime/string): thread-local scratch

void ProtobufLogHandler(google::protobuf::LogLevel level, const char* filename, int line,
                        const std::string& message) {
  log::Level ours = log::Level::kError;
  switch (level) {
    case google::protobuf::LOGLEVEL_INFO:
      ours = log::Level::kDebug;
      break;
    case google::protobuf::LOGLEVEL_WARNING:
      ours = log::Level::kWarning;
      break;
    default:
      break;
  }
  const size_t marker = message.find(kUtf8Marker);
  if (marker != std::string::npos) {
    // "String field 'musicgw.v1.SongTask.lyrics' contains invalid UTF-8 data when parsing …":
    // a client's bad input, answered as such, so not an error of ours.
    const size_t open = message.find('\'');
    const size_t close = open == std::string::npos ? open : message.find('\'', open + 1);
    last_utf8_field = close == std::string::npos || close > marker
                          ? std::string()
                          : message.substr(open + 1, close - open - 1);
    ours = log::Level::kInfo;
  }
  log::Write(ours, "libprotobuf", {{"detail", message}, {"file", filename}, {"line", line}});
}

// The path of `field` inside `root` ("song.lyrics"), breadth first; nullopt when absent.
std::optional<std::string> FieldPath(const Descriptor* root, const FieldDescriptor* field) {
  std::deque<std::pair<const Descriptor*, std::string>> queue{{root, ""}};
  std::set<const Descriptor*> seen{root};
  while (!queue.empty()) {
    auto [type, prefix] = queue.front();
    queue.pop_front();
    if (field->containing_type() == type) return absl::StrCat(prefix, field->name());
    for (int i = 0; i < type->field_count(); ++i) {
      const FieldDescriptor* child = type->field(i);
      if (child->message_type() == nullptr || !seen.insert(child->message_type()).second) {
        continue;
      }
      queue.emplace_back(child->message_type(), absl::StrCat(prefix, child->name(), "."));
    }
  }
  return std::nullopt;
}

// The answer to an unparsed request of `method`, with the call's one "rpc" log line.
grpc::Status Answer(absl::string_view method, absl::string_view utf8_field) {
  const absl::Status status = DecodeError(method, utf8_field);
  log::Info("rpc", {{"method", method.substr(method.rfind('/') + 1)},
                    {"code", absl::StatusCodeToString(status.code())},
                    {"error", status.message()}});
  return ToGrpcStatus(status);
}

class DecodeErrorInterceptor final : public grpc::experimental::Interceptor {
 public:
  explicit DecodeErrorInterceptor(std::string method) : method_(std::move(method)) {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::POST_RECV_MESSAGE) &&
        methods->GetRecvMessage() == nullptr) {
      failed_ = true;
      utf8_field_ = std::exchange(last_utf8_field, std::string());
    }
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_STATUS)) {
      if (failed_) {
        methods->ModifySendStatus(Answer(method_, utf8_field_));
      } else {
        // The last backstop: an error no handler of ours produced (gRPC's own, e.g. for an
        // unknown method) still leaves with an ErrorInfo.
        const grpc::Status status = methods->GetSendStatus();
        if (!status.ok() && status.error_details().empty()) {
          methods->ModifySendStatus(ToGrpcStatus(absl::Status(
              static_cast<absl::StatusCode>(status.error_code()), status.error_message())));
        }
      }
    }
    methods->Proceed();
  }

 private:
  const std::string method_;
  bool failed_ = false;
  std::string utf8_field_;
};

class DecodeErrorInterceptorFactory final
    : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    return new DecodeErrorInterceptor(info->method());
  }
};

}  // namespace

grpc::Status AnswerUnparsedRequest(absl::string_view method) {
  return Answer(method, std::exchange(last_utf8_field, std::string()));
}

void RouteProtobufLogs() {
  static absl::once_flag once;
  absl::call_once(once, [] { google::protobuf::SetLogHandler(&ProtobufLogHandler); });
}

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
MakeDecodeErrorInterceptorFactory() {
  return std::make_unique<DecodeErrorInterceptorFactory>();
}

absl::Status DecodeError(absl::string_view method, absl::string_view utf8_field) {
  const auto* pool = google::protobuf::DescriptorPool::generated_pool();
  // "/pkg.Service/Method" -> "pkg.Service.Method".
  const std::string method_name = absl::StrReplaceAll(absl::StripPrefix(method, "/"), {{"/", "."}});
  const auto* method_descriptor = pool->FindMethodByName(method_name);
  if (utf8_field.empty()) {
    return WithErrorInfo(
        absl::InvalidArgumentError(absl::StrCat(
            "the request could not be parsed as ",
            method_descriptor == nullptr ? std::string("the method's request message")
                                         : method_descriptor->input_type()->full_name())),
        "INVALID_ARGUMENT", kGatewayDomain);
  }
  std::string path(utf8_field);
  const FieldDescriptor* field = pool->FindFieldByName(std::string(utf8_field));
  if (field != nullptr && method_descriptor != nullptr) {
    path = FieldPath(method_descriptor->input_type(), field).value_or(path);
  }
  return InvalidFieldError(path, "is not valid UTF-8; string fields must be UTF-8 text");
}

}  // namespace musicgw::gateway
