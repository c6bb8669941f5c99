#include "emulators/common/validation.h"

#include <cctype>
#include <regex>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace musicgw::emulators {

std::string ParsedUrl::origin() const { return absl::StrCat(scheme, "://", host, ":", port); }

std::optional<ParsedUrl> ParseUrl(absl::string_view url) {
  const size_t sep = url.find("://");
  if (sep == absl::string_view::npos || sep == 0) return std::nullopt;
  ParsedUrl out;
  out.scheme = absl::AsciiStrToLower(url.substr(0, sep));
  for (char c : out.scheme) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '+' && c != '-' && c != '.') {
      return std::nullopt;
    }
  }
  absl::string_view rest = url.substr(sep + 3);
  const size_t path_start = rest.find_first_of("/?#");
  absl::string_view authority = rest.substr(0, path_start);
  out.path_and_query =
      path_start == absl::string_view::npos ? "/" : std::string(rest.substr(path_start));
  if (!out.path_and_query.empty() && out.path_and_query[0] != '/') {
    out.path_and_query = absl::StrCat("/", out.path_and_query);
  }
  if (const size_t at = authority.rfind('@'); at != absl::string_view::npos) {
    authority = authority.substr(at + 1);
  }
  if (authority.empty()) return std::nullopt;
  out.port = out.scheme == "https" ? 443 : 80;
  absl::string_view host = authority;
  if (authority.front() == '[') {
    const size_t close = authority.find(']');
    if (close == absl::string_view::npos) return std::nullopt;
    host = authority.substr(1, close - 1);
    if (close + 1 < authority.size() && authority[close + 1] == ':') {
      if (!absl::SimpleAtoi(authority.substr(close + 2), &out.port)) return std::nullopt;
    }
  } else if (const size_t colon = authority.rfind(':'); colon != absl::string_view::npos) {
    host = authority.substr(0, colon);
    if (!absl::SimpleAtoi(authority.substr(colon + 1), &out.port)) return std::nullopt;
  }
  if (host.empty() || out.port <= 0 || out.port > 65535) return std::nullopt;
  for (char c : host) {
    if (std::isspace(static_cast<unsigned char>(c))) return std::nullopt;
  }
  out.host = absl::AsciiStrToLower(host);
  return out;
}

bool IsPrivateHost(absl::string_view host) {
  if (host == "localhost" || absl::EndsWith(host, ".localhost") || host == "::1") return true;
  std::vector<absl::string_view> parts = absl::StrSplit(host, '.');
  int octets[4];
  if (parts.size() != 4) return false;
  for (int i = 0; i < 4; ++i) {
    if (!absl::SimpleAtoi(parts[i], &octets[i])) return false;
  }
  return octets[0] == 127 || octets[0] == 10 || octets[0] == 0 ||
         (octets[0] == 172 && octets[1] >= 16 && octets[1] <= 31) ||
         (octets[0] == 192 && octets[1] == 168) || (octets[0] == 169 && octets[1] == 254);
}

std::optional<std::string> QueryParam(absl::string_view url, absl::string_view name) {
  const size_t q = url.find('?');
  if (q == absl::string_view::npos) return std::nullopt;
  absl::string_view query = url.substr(q + 1);
  if (const size_t hash = query.find('#'); hash != absl::string_view::npos) {
    query = query.substr(0, hash);
  }
  for (absl::string_view pair : absl::StrSplit(query, '&')) {
    const size_t eq = pair.find('=');
    if (pair.substr(0, eq) == name) {
      return eq == absl::string_view::npos ? std::string() : std::string(pair.substr(eq + 1));
    }
  }
  return std::nullopt;
}

std::optional<bool> ParseBoolText(absl::string_view text) {
  const std::string v = absl::AsciiStrToLower(text);
  if (v == "true" || v == "1" || v == "yes" || v == "on" || v == "t" || v == "y") return true;
  if (v == "false" || v == "0" || v == "no" || v == "off" || v == "f" || v == "n") return false;
  return std::nullopt;
}

std::optional<int> BpmFromText(absl::string_view text) {
  static const std::regex kBpm(R"((\d{2,3})\s*-?\s*bpm)", std::regex::icase);
  std::cmatch m;
  if (!std::regex_search(text.data(), text.data() + text.size(), m, kBpm)) return std::nullopt;
  int bpm = 0;
  if (!absl::SimpleAtoi(m[1].str(), &bpm) || bpm < 20 || bpm > 400) return std::nullopt;
  return bpm;
}

std::optional<int> ParseKeyRoot(absl::string_view text) {
  static constexpr int kNatural[] = {9, 11, 0, 2, 4, 5, 7};  // A..G
  const std::string t = absl::AsciiStrToLower(absl::StripAsciiWhitespace(text));
  if (t.empty() || t[0] < 'a' || t[0] > 'g') return std::nullopt;
  int root = kNatural[t[0] - 'a'];
  absl::string_view rest = absl::string_view(t).substr(1);
  if (!rest.empty() && rest[0] == '#') {
    root += 1;
    rest.remove_prefix(1);
  } else if (!rest.empty() && rest[0] == 'b') {
    root += 11;
    rest.remove_prefix(1);
  }
  // "C#/Db": the second spelling must name the same pitch.
  if (!rest.empty() && rest[0] == '/') {
    auto other = ParseKeyRoot(rest.substr(1));
    if (!other.has_value() || *other != root % 12) return std::nullopt;
    rest = {};
  }
  if (!rest.empty()) return std::nullopt;
  return root % 12;
}

std::optional<KeyHint> KeyFromText(absl::string_view text) {
  static const std::regex kKey(R"(\b([A-G])([#b]?)\s*(major|minor|maj|min|m)?\b)");
  static const std::regex kKeyWord(R"(\bkey\s+of\s+([A-G])([#b]?)\s*(major|minor)?)",
                                   std::regex::icase);
  std::cmatch m;
  const char* begin = text.data();
  const char* end = text.data() + text.size();
  bool found = std::regex_search(begin, end, m, kKeyWord);
  if (!found) {
    // Only "<Letter> major|minor|m" counts: a bare capital letter is too common in prose.
    for (auto it = std::cregex_iterator(begin, end, kKey); it != std::cregex_iterator(); ++it) {
      if ((*it)[3].matched) {
        m = *it;
        found = true;
        break;
      }
    }
  }
  if (!found) return std::nullopt;
  auto root = ParseKeyRoot(m[1].str() + m[2].str());
  if (!root.has_value()) return std::nullopt;
  const std::string quality = absl::AsciiStrToLower(m[3].str());
  return KeyHint{*root, quality == "minor" || quality == "min" || quality == "m"};
}

uint64_t StableHash(absl::string_view text) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char c : text) {
    h ^= c;
    h *= 0x100000001b3ULL;
  }
  return h;
}

}  // namespace musicgw::emulators
