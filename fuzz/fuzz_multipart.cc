// The Loudly request encoders, round-tripped: a GenerateRequest (the input read as its binary
// protobuf) through EncodeWebBundle / EncodeB2BSong, then EncodeMultipart and
// EncodeFormUrlencoded, decoded back by an independent strict decoder here. Property: what was
// encoded decodes to the same fields, in order, whenever no value holds the boundary (the
// adapter draws a random 48-bit one per request).
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "adapters/loudly/loudly_wire.h"
#include "fuzz/fuzz_check.h"

namespace loudly = musicgw::adapters::loudly;

namespace {

std::optional<loudly::Form> DecodeMultipart(absl::string_view body, absl::string_view boundary) {
  const std::string opening = absl::StrCat("--", boundary, "\r\n");
  const std::string closing = absl::StrCat("--", boundary, "--\r\n");
  const std::string separator = absl::StrCat("\r\n--", boundary);
  loudly::Form form;
  if (!absl::ConsumeSuffix(&body, closing)) return std::nullopt;
  if (body.empty()) return form;
  if (!absl::ConsumePrefix(&body, opening)) return std::nullopt;
  // Every part ends "\r\n"; with the next opening it reads "\r\n--B\r\n".
  if (!absl::ConsumeSuffix(&body, "\r\n")) return std::nullopt;
  for (absl::string_view part : absl::StrSplit(body, absl::StrCat(separator, "\r\n"))) {
    if (!absl::ConsumePrefix(&part, "Content-Disposition: form-data; name=\"")) return std::nullopt;
    const size_t end = part.find("\"\r\n\r\n");
    if (end == absl::string_view::npos) return std::nullopt;
    form.push_back({std::string(part.substr(0, end)), std::string(part.substr(end + 5))});
  }
  return form;
}

std::optional<loudly::Form> DecodeUrlencoded(absl::string_view body) {
  loudly::Form form;
  if (body.empty()) return form;
  const auto unescape = [](absl::string_view text) -> std::optional<std::string> {
    std::string out;
    for (size_t i = 0; i < text.size(); ++i) {
      if (text[i] == '+') {
        out.push_back(' ');
      } else if (text[i] == '%') {
        int value = 0;
        if (i + 2 >= text.size() || !absl::SimpleHexAtoi(text.substr(i + 1, 2), &value)) {
          return std::nullopt;
        }
        out.push_back(static_cast<char>(value));
        i += 2;
      } else {
        out.push_back(text[i]);
      }
    }
    return out;
  };
  for (absl::string_view pair : absl::StrSplit(body, '&')) {
    const size_t eq = pair.find('=');
    if (eq == absl::string_view::npos) return std::nullopt;
    auto name = unescape(pair.substr(0, eq));
    auto value = unescape(pair.substr(eq + 1));
    if (!name || !value) return std::nullopt;
    form.push_back({*name, *value});
  }
  return form;
}

void RoundTrip(const loudly::Form& form, absl::string_view boundary) {
  bool boundary_in_values = false;
  for (const auto& field : form) {
    boundary_in_values |= absl::StrContains(field.value, boundary) ||
                          absl::StrContains(field.name, boundary) ||
                          absl::StrContains(field.name, "\"");
  }
  const loudly::EncodedBody multipart = loudly::EncodeMultipart(form, boundary);
  FUZZ_CHECK(multipart.content_type == absl::StrCat("multipart/form-data; boundary=", boundary),
             "wrong multipart content type");
  if (!boundary_in_values) {
    auto decoded = DecodeMultipart(multipart.body, boundary);
    FUZZ_CHECK(decoded.has_value() && *decoded == form, "multipart does not round-trip");
  }
  const loudly::EncodedBody urlencoded = loudly::EncodeFormUrlencoded(form);
  auto decoded = DecodeUrlencoded(urlencoded.body);
  FUZZ_CHECK(decoded.has_value() && *decoded == form, "urlencoded does not round-trip");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const std::string boundary = "----musicgw0123456789ab";
  const absl::string_view rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  if (data[0] % 2 == 0) {
    // Raw forms: fields the encoders emit, with any values ("\0" separates them).
    static const char* const kNames[] = {"genre",         "prompt",   "duration", "bpm",
                                         "instruments[]", "key_root", "energy",   "test"};
    loudly::Form form;
    size_t i = 0;
    for (absl::string_view value : absl::StrSplit(rest, '\0')) {
      form.push_back({kNames[i++ % (sizeof(kNames) / sizeof(kNames[0]))], std::string(value)});
    }
    RoundTrip(form, boundary);
    return 0;
  }
  musicgw::v1::GenerateRequest request;
  if (!request.ParseFromArray(rest.data(), static_cast<int>(rest.size()))) return 0;
  if (auto form = loudly::EncodeWebBundle(request); form.ok()) RoundTrip(*form, boundary);
  for (bool test : {false, true}) {
    for (auto instruments :
         {loudly::InstrumentsForm::kRepeated, loudly::InstrumentsForm::kCommaJoined}) {
      if (auto form = loudly::EncodeB2BSong(request, test, instruments); form.ok()) {
        RoundTrip(*form, boundary);
      }
    }
  }
  (void)loudly::B2BSongPath(request);
  return 0;
}
