// Webhook deliveries: "<webhook-id>\n<webhook-timestamp>\n<webhook-signature>\n<body>". A
// signature line "sign" is replaced by the right signature, so inputs reach the body parser
// too. Properties: a forged delivery is never verified, and a verified id is then a duplicate.
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "adapters/soundpiece/soundpiece_wire.h"
#include "adapters/soundpiece/webhook.h"
#include "fuzz/fuzz_check.h"

namespace soundpiece = musicgw::adapters::soundpiece;

namespace {

constexpr int64_t kNow = 1779280000;
const std::string& Key() {
  static const std::string key = "fuzz-webhook-key-0123456789abcdef";
  return key;
}

std::string Sign(const std::string& id, const std::string& timestamp, const std::string& body) {
  const std::string content = absl::StrCat(id, ".", timestamp, ".", body);
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  HMAC(EVP_sha256(), Key().data(), static_cast<int>(Key().size()),
       reinterpret_cast<const unsigned char*>(content.data()), content.size(), mac, &length);
  return absl::StrCat(
      "v1,", absl::Base64Escape(absl::string_view(reinterpret_cast<const char*>(mac), length)));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  std::vector<std::string> parts = absl::StrSplit(input, absl::MaxSplits('\n', 3));
  parts.resize(4);
  const std::string& id = parts[0];
  const std::string& timestamp = parts[1];
  const std::string& body = parts[3];
  const bool signed_here = parts[2] == "sign";
  const std::string signature = signed_here ? Sign(id, timestamp, body) : parts[2];

  auto verifier = soundpiece::WebhookVerifier::Create(
      {.secrets = {absl::StrCat("whsec_", absl::Base64Escape(Key()))}},
      [] { return absl::FromUnixSeconds(kNow); });
  FUZZ_CHECK(verifier.ok(), "the verifier refused a good secret");
  const soundpiece::WebhookOutcome outcome = (*verifier)->Verify(id, timestamp, signature, body);
  if (outcome == soundpiece::WebhookOutcome::kVerified) {
    // Only a delivery signed with the key passes, whatever the header holds.
    FUZZ_CHECK(signed_here || absl::StrContains(signature, Sign(id, timestamp, body).substr(3)),
               "a delivery verified without the key's signature");
    FUZZ_CHECK((*verifier)->Verify(id, timestamp, signature, body) ==
                   soundpiece::WebhookOutcome::kDuplicate,
               "a verified id accepted twice");
    (void)soundpiece::ParseWebhookEvent(body);
  }
  (void)soundpiece::WebhookOutcomeName(outcome);
  return 0;
}
