// File: free_text.h
// Control characters in request text. Every string field of a request is checked, however deep:
// NUL, the other C0 controls (U+0000–U+001F) and DEL (U+007F) are INVALID_ARGUMENT with a
// BadRequest naming the field path (e.g. "song.lyrics", "parametric_music.instruments[1]").
// Prose fields, `lyrics` and `prompt`, keep tab, line feed and carriage return: pasted lyrics and
// multi-line prompts are normal and those bytes travel safely in every provider's body. Names,
// ids, genres and URLs allow none.
#pragma once

#include "absl/status/status.h"
#include "google/protobuf/message.h"

namespace musicgw::gateway {

absl::Status CheckFreeText(const google::protobuf::Message& request);

}  // namespace musicgw::gateway
