// Signing is checked by a verifier written for this test from the Standard Webhooks
// specification with OpenSSL directly, never the gateway's own signer or crypto helpers.
#include "services/notify/webhook_signer.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace musicgw::notify {
namespace {

namespace v1 = musicgw::v1;

std::string B64(const std::string& raw) {
  std::string out(4 * ((raw.size() + 2) / 3) + 1, '\0');
  const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                reinterpret_cast<const unsigned char*>(raw.data()),
                                static_cast<int>(raw.size()));
  out.resize(static_cast<size_t>(n));
  return out;
}

std::string UnB64(const std::string& text) {
  std::string out(3 * text.size() / 4 + 3, '\0');
  const int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                reinterpret_cast<const unsigned char*>(text.data()),
                                static_cast<int>(text.size()));
  if (n < 0) return "";
  size_t len = static_cast<size_t>(n);
  if (!text.empty() && text.back() == '=') --len;
  if (text.size() > 1 && text[text.size() - 2] == '=') --len;
  out.resize(len);
  return out;
}

// The receiver's check: some "v1," entry equals base64(HMAC-SHA256(key, id.ts.body)).
bool Verifies(const std::string& whsec, const WebhookHeaders& headers, const std::string& body) {
  const std::string key = UnB64(whsec.substr(6));
  const std::string content = headers.id + "." + headers.timestamp + "." + body;
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int mac_len = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
       reinterpret_cast<const unsigned char*>(content.data()), content.size(), mac, &mac_len);
  const std::string expected = "v1," + B64(std::string(reinterpret_cast<char*>(mac), mac_len));
  for (absl::string_view entry : absl::StrSplit(headers.signature, ' ')) {
    if (entry == expected) return true;
  }
  return false;
}

std::string Secret(char fill) { return "whsec_" + B64(std::string(32, fill)); }

TEST(WebhookSigner, SignatureVerifiesIndependently) {
  const std::string secret = Secret('k');
  const std::string body = R"({"type":"operation.succeeded"})";
  auto headers = SignWebhook({secret}, "msg_1", absl::FromUnixSeconds(1'800'000'000), body);
  ASSERT_TRUE(headers.ok()) << headers.status();
  EXPECT_EQ(headers->id, "msg_1");
  EXPECT_EQ(headers->timestamp, "1800000000");
  EXPECT_TRUE(Verifies(secret, *headers, body));
  EXPECT_FALSE(Verifies(secret, *headers, body + " "));
  EXPECT_FALSE(Verifies(Secret('x'), *headers, body));
}

TEST(WebhookSigner, BothSecretsVerifyDuringRotation) {
  const std::string old_secret = Secret('o');
  const std::string new_secret = Secret('n');
  auto headers = SignWebhook({new_secret, old_secret}, "msg_2", absl::Now(), "{}");
  ASSERT_TRUE(headers.ok());
  EXPECT_TRUE(Verifies(old_secret, *headers, "{}"));
  EXPECT_TRUE(Verifies(new_secret, *headers, "{}"));
  // Once the old secret is retired, only the new one verifies.
  headers = SignWebhook({new_secret}, "msg_2", absl::Now(), "{}");
  ASSERT_TRUE(headers.ok());
  EXPECT_FALSE(Verifies(old_secret, *headers, "{}"));
  EXPECT_TRUE(Verifies(new_secret, *headers, "{}"));
}

TEST(WebhookSigner, BadSecretsAreRefusedWithoutEchoingThem) {
  for (const std::string& bad :
       {std::string("nope"), std::string("whsec_***"), "whsec_" + B64("short")}) {
    auto key = DecodeWebhookSecret(bad);
    EXPECT_EQ(key.status().code(), absl::StatusCode::kInvalidArgument) << key.status();
    EXPECT_EQ(key.status().message().find(bad), absl::string_view::npos);
  }
  EXPECT_EQ(SignWebhook({}, "id", absl::Now(), "{}").status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(WebhookSigner, EventTypesAndEnvelope) {
  EXPECT_EQ(EventTypeForState(v1::OPERATION_STATE_RUNNING), "operation.running");
  EXPECT_EQ(EventTypeForState(v1::OPERATION_STATE_SUCCEEDED), "operation.succeeded");
  EXPECT_EQ(EventTypeForState(v1::OPERATION_STATE_FAILED), "operation.failed");
  EXPECT_EQ(EventTypeForState(v1::OPERATION_STATE_CANCELLED), "operation.cancelled");
  EXPECT_FALSE(EventTypeForState(v1::OPERATION_STATE_QUEUED).has_value());

  v1::Operation op;
  op.set_name("operations/abc");
  op.set_state(v1::OPERATION_STATE_SUCCEEDED);
  op.set_done(true);
  op.set_provider_account("sp-main");
  auto body = EventBody("operation.succeeded", absl::FromUnixMillis(1'800'000'000'123), op);
  ASSERT_TRUE(body.ok()) << body.status();
  const auto json = nlohmann::json::parse(*body);
  EXPECT_EQ(json["type"], "operation.succeeded");
  EXPECT_EQ(json["timestamp"], "2027-01-15T08:00:00.123Z");
  EXPECT_EQ(json["data"]["name"], "operations/abc");
  EXPECT_EQ(json["data"]["state"], "OPERATION_STATE_SUCCEEDED");
  EXPECT_EQ(json["data"]["providerAccount"], "sp-main");  // proto3 JSON names
}

}  // namespace
}  // namespace musicgw::notify
