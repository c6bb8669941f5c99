// File: validation.h
// Small request-parsing helpers shared by the emulators: URL splitting, query flags, and text
// hints (bpm, key) pulled out of free-text prompts so the audio follows the request.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "absl/strings/string_view.h"

namespace musicgw::emulators {

struct ParsedUrl {
  std::string scheme;  // lower-case
  std::string host;
  int port = 0;
  std::string path_and_query;  // "/" at least
  // "scheme://host:port" for httplib::Client.
  std::string origin() const;
};
// Absolute http(s)/ftp-like URLs only; nullopt for anything without "scheme://host".
std::optional<ParsedUrl> ParseUrl(absl::string_view url);
// True for loopback, private (RFC 1918), link-local hosts and "localhost".
bool IsPrivateHost(absl::string_view host);
// The value of `name` in the URL's query string, if present.
std::optional<std::string> QueryParam(absl::string_view url, absl::string_view name);

// Pydantic's lax boolean parsing of a query value ("true", "1", "yes", "on", ...).
std::optional<bool> ParseBoolText(absl::string_view text);

// "... 124 bpm ..." -> 124.
std::optional<int> BpmFromText(absl::string_view text);
// Semitone (0 = C) of a root spelled "C", "C#", "Db", "C#/Db" (case-insensitive).
std::optional<int> ParseKeyRoot(absl::string_view text);
// "... in D minor ..." / "A major" / "F#m" -> {root, minor}.
struct KeyHint {
  int root = 0;
  bool minor = false;
};
std::optional<KeyHint> KeyFromText(absl::string_view text);

// FNV-1a, for deterministic choices derived from request text.
uint64_t StableHash(absl::string_view text);

}  // namespace musicgw::emulators
