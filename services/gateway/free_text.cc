#include "services/gateway/free_text.h"

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/errors.h"
#include "common/status_macros.h"

namespace musicgw::gateway {
namespace {

using google::protobuf::FieldDescriptor;
using google::protobuf::Message;

bool IsProse(const FieldDescriptor& field) {
  return field.name() == "lyrics" || field.name() == "prompt";
}

absl::Status CheckText(const std::string& path, const std::string& text, bool prose) {
  for (size_t i = 0; i < text.size(); ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c >= 0x20 && c != 0x7f) continue;
    if (prose && (c == '\t' || c == '\n' || c == '\r')) continue;
    return InvalidFieldError(
        path, absl::StrFormat("must not contain control characters (U+%04X at byte %d)%s", c, i,
                              prose ? "; tab and line breaks are allowed" : ""));
  }
  return absl::OkStatus();
}

absl::Status CheckMessage(const Message& message, const std::string& prefix) {
  const auto* reflection = message.GetReflection();
  std::vector<const FieldDescriptor*> fields;
  reflection->ListFields(message, &fields);
  for (const FieldDescriptor* field : fields) {
    const std::string path = absl::StrCat(prefix, field->name());
    if (field->type() == FieldDescriptor::TYPE_STRING) {
      if (field->is_repeated()) {
        for (int i = 0; i < reflection->FieldSize(message, field); ++i) {
          MUSICGW_RETURN_IF_ERROR(CheckText(absl::StrCat(path, "[", i, "]"),
                                            reflection->GetRepeatedString(message, field, i),
                                            IsProse(*field)));
        }
      } else {
        MUSICGW_RETURN_IF_ERROR(
            CheckText(path, reflection->GetString(message, field), IsProse(*field)));
      }
    } else if (field->type() == FieldDescriptor::TYPE_MESSAGE) {
      if (field->is_repeated()) {
        for (int i = 0; i < reflection->FieldSize(message, field); ++i) {
          MUSICGW_RETURN_IF_ERROR(CheckMessage(reflection->GetRepeatedMessage(message, field, i),
                                               absl::StrCat(path, "[", i, "].")));
        }
      } else {
        MUSICGW_RETURN_IF_ERROR(
            CheckMessage(reflection->GetMessage(message, field), absl::StrCat(path, ".")));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckFreeText(const google::protobuf::Message& request) {
  return CheckMessage(request, "");
}

}  // namespace musicgw::gateway
