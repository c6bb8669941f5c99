#include "services/notify/webhook_signer.h"

#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/crypto.h"
#include "google/protobuf/util/json_util.h"
#include "nlohmann/json.hpp"

namespace musicgw::notify {

namespace v1 = musicgw::v1;

namespace {
constexpr absl::string_view kSecretPrefix = "whsec_";
constexpr size_t kMinKeyBytes = 24;
}  // namespace

absl::StatusOr<std::string> DecodeWebhookSecret(absl::string_view secret) {
  if (!absl::StartsWith(secret, kSecretPrefix)) {
    return absl::InvalidArgumentError("webhook secret must start with \"whsec_\"");
  }
  auto key = Base64Decode(secret.substr(kSecretPrefix.size()));
  if (!key.ok()) return absl::InvalidArgumentError("webhook secret is not whsec_ + base64");
  if (key->size() < kMinKeyBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("webhook secret must hold at least ", kMinKeyBytes, " bytes of key"));
  }
  return key;
}

absl::StatusOr<WebhookHeaders> SignWebhook(const std::vector<std::string>& secrets,
                                           absl::string_view id, absl::Time timestamp,
                                           absl::string_view body) {
  if (secrets.empty()) return absl::FailedPreconditionError("no webhook secret configured");
  WebhookHeaders headers;
  headers.id = std::string(id);
  headers.timestamp = absl::StrCat(absl::ToUnixSeconds(timestamp));
  const std::string signed_content = absl::StrCat(id, ".", headers.timestamp, ".", body);
  for (const std::string& secret : secrets) {
    auto key = DecodeWebhookSecret(secret);
    if (!key.ok()) return key.status();
    if (!headers.signature.empty()) headers.signature += ' ';
    absl::StrAppend(&headers.signature, "v1,", Base64Encode(HmacSha256(*key, signed_content)));
  }
  return headers;
}

std::optional<std::string> EventTypeForState(v1::OperationState state) {
  switch (state) {
    case v1::OPERATION_STATE_RUNNING:
      return "operation.running";
    case v1::OPERATION_STATE_SUCCEEDED:
      return "operation.succeeded";
    case v1::OPERATION_STATE_FAILED:
      return "operation.failed";
    case v1::OPERATION_STATE_CANCELLED:
      return "operation.cancelled";
    default:
      return std::nullopt;
  }
}

absl::StatusOr<std::string> EventBody(absl::string_view type, absl::Time timestamp,
                                      const v1::Operation& operation) {
  std::string data;
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = false;  // lowerCamelCase, the proto3 JSON default
  auto status = google::protobuf::util::MessageToJsonString(operation, &data, options);
  if (!status.ok()) {
    return absl::InternalError(absl::StrCat("webhook body: ", status.ToString()));
  }
  nlohmann::json envelope;
  envelope["type"] = std::string(type);
  envelope["timestamp"] =
      absl::FormatTime("%Y-%m-%d%ET%H:%M:%E3SZ", timestamp, absl::UTCTimeZone());
  envelope["data"] = nlohmann::json::parse(data, nullptr, /*allow_exceptions=*/false);
  if (envelope["data"].is_discarded()) return absl::InternalError("webhook body: bad JSON");
  return envelope.dump();
}

}  // namespace musicgw::notify
