// Loudly response bodies (both dialects): every parser of a provider answer, on the same input.
// Besides "no crash, no sanitizer report": error text never carries a configured secret, and
// base64url decodes what it encodes.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/time/time.h"
#include "adapters/loudly/loudly_wire.h"
#include "fuzz/fuzz_check.h"

namespace loudly = musicgw::adapters::loudly;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string body(reinterpret_cast<const char*>(data), size);
  const absl::Time now = absl::FromUnixSeconds(1779280000);
  (void)loudly::ParseBundle(body);
  (void)loudly::ParseAiSong(body);
  (void)loudly::ParseTokenResponse(body, now);
  (void)loudly::ParseWebLimits(body);
  (void)loudly::ParseB2BLimits(body);
  (void)loudly::ParseGenres(body);
  (void)loudly::ParseStructures(body);
  (void)loudly::ParseRandomPrompt(body);
  (void)loudly::ParseLoudlyTime(body);
  (void)loudly::FindQuotaMessage(body);
  (void)loudly::JwtExpiry(body);
  (void)loudly::NormalizeKeyName(body);

  const std::string secret = "loudly-secret-0123456789";
  const loudly::ErrorContext context{"loudly-main", {secret}};
  const loudly::ErrorText text = loudly::ReadErrorText(body, {secret});
  FUZZ_CHECK(!absl::StrContains(text.error, secret) && !absl::StrContains(text.description, secret),
             "a secret in the error text");
  for (int status : {400, 401, 404, 429, 500, 503, 302}) {
    const absl::Status error = loudly::MapHttpError(status, body, absl::Seconds(1), context);
    FUZZ_CHECK(!error.ok(), "an HTTP error mapped to OK");
    FUZZ_CHECK(!absl::StrContains(error.ToString(), secret), "a secret in a mapped error");
  }

  auto decoded = loudly::Base64UrlDecode(loudly::Base64UrlEncode(body));
  FUZZ_CHECK(decoded.ok() && *decoded == body, "base64url does not round-trip");
  return 0;
}
