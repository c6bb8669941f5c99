#include "services/notify/address_guard.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>

#include <cstdint>
#include <cstring>
#include <memory>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace musicgw::notify {
namespace {

bool RefusedV4(uint32_t host_order) {
  const uint32_t a = host_order >> 24;
  const uint32_t b = (host_order >> 16) & 0xff;
  if (a == 0 || a == 10 || a == 127) return true;  // "this" network, private, loopback
  if (a == 169 && b == 254) return true;           // link-local, cloud metadata
  if (a == 172 && (b & 0xf0) == 16) return true;   // 172.16/12
  if (a == 192 && b == 168) return true;           // 192.168/16
  if (a == 100 && (b & 0xc0) == 64) return true;   // 100.64/10 carrier-grade NAT
  if (a == 192 && b == 0 && ((host_order >> 8) & 0xff) == 0) return true;  // 192.0.0/24
  if (a >= 224) return true;  // multicast, reserved, broadcast
  return false;
}

bool RefusedV6(const in6_addr& addr) {
  const uint8_t* b = addr.s6_addr;
  static const uint8_t kZero[16] = {};
  if (std::memcmp(b, kZero, 15) == 0 && (b[15] == 0 || b[15] == 1)) return true;  // :: and ::1
  if (IN6_IS_ADDR_V4MAPPED(&addr) || IN6_IS_ADDR_V4COMPAT(&addr)) {
    uint32_t v4 = 0;
    std::memcpy(&v4, b + 12, 4);
    return RefusedV4(ntohl(v4));
  }
  if ((b[0] & 0xfe) == 0xfc) return true;                  // fc00::/7 unique local (fd00:ec2::254)
  if (b[0] == 0xfe && (b[1] & 0xc0) == 0x80) return true;  // fe80::/10 link-local
  if (b[0] == 0xfe && (b[1] & 0xc0) == 0xc0) return true;  // fec0::/10 site-local (deprecated)
  if (b[0] == 0xff) return true;                           // multicast
  if (b[0] == 0x20 && b[1] == 0x02) {                      // 6to4 wraps an IPv4 address
    const uint32_t v4 =
        (uint32_t{b[2]} << 24) | (uint32_t{b[3]} << 16) | (uint32_t{b[4]} << 8) | uint32_t{b[5]};
    return RefusedV4(v4);
  }
  if (b[0] == 0x00 && b[1] == 0x64 && b[2] == 0xff && b[3] == 0x9b) {  // 64:ff9b::/96 NAT64
    uint32_t v4 = 0;
    std::memcpy(&v4, b + 12, 4);
    return RefusedV4(ntohl(v4));
  }
  return false;
}

}  // namespace

bool IsRefusedAddress(const sockaddr* address) {
  if (address == nullptr) return true;
  if (address->sa_family == AF_INET) {
    sockaddr_in v4{};
    std::memcpy(&v4, address, sizeof(v4));
    return RefusedV4(ntohl(v4.sin_addr.s_addr));
  }
  if (address->sa_family == AF_INET6) {
    sockaddr_in6 v6{};
    std::memcpy(&v6, address, sizeof(v6));
    return RefusedV6(v6.sin6_addr);
  }
  return true;
}

bool IsRefusedIpLiteral(absl::string_view ip) {
  const std::string text(ip);
  in_addr v4{};
  if (inet_pton(AF_INET, text.c_str(), &v4) == 1) return RefusedV4(ntohl(v4.s_addr));
  in6_addr v6{};
  if (inet_pton(AF_INET6, text.c_str(), &v6) == 1) return RefusedV6(v6);
  return false;
}

absl::StatusOr<UrlTarget> ParseWebhookUrl(absl::string_view url) {
  UrlTarget target;
  const size_t scheme_end = url.find("://");
  if (scheme_end == absl::string_view::npos) {
    return absl::InvalidArgumentError("webhook url must be an absolute http(s) URL");
  }
  target.scheme = absl::AsciiStrToLower(url.substr(0, scheme_end));
  if (target.scheme != "http" && target.scheme != "https") {
    return absl::InvalidArgumentError("webhook url scheme must be http or https");
  }
  absl::string_view rest = url.substr(scheme_end + 3);
  absl::string_view authority = rest.substr(0, rest.find_first_of("/?#"));
  if (absl::StrContains(authority, '@')) {
    return absl::InvalidArgumentError("webhook url must not carry user info");
  }
  absl::string_view port_text;
  if (absl::StartsWith(authority, "[")) {
    const size_t close = authority.find(']');
    if (close == absl::string_view::npos) {
      return absl::InvalidArgumentError("webhook url has an unterminated IPv6 literal");
    }
    target.host = std::string(authority.substr(1, close - 1));
    absl::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after[0] != ':') return absl::InvalidArgumentError("webhook url has a bad host");
      port_text = after.substr(1);
    }
  } else {
    const size_t colon = authority.rfind(':');
    target.host = std::string(authority.substr(0, colon));
    if (colon != absl::string_view::npos) port_text = authority.substr(colon + 1);
  }
  if (target.host.empty()) return absl::InvalidArgumentError("webhook url has no host");
  target.port = target.scheme == "https" ? 443 : 80;
  if (!port_text.empty() &&
      (!absl::SimpleAtoi(port_text, &target.port) || target.port < 1 || target.port > 65535)) {
    return absl::InvalidArgumentError("webhook url has a bad port");
  }
  return target;
}

absl::Status CheckWebhookTarget(absl::string_view url, bool allow_private) {
  auto target = ParseWebhookUrl(url);
  if (!target.ok()) return target.status();
  if (allow_private) return absl::OkStatus();
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  const int rc = getaddrinfo(target->host.c_str(), nullptr, &hints, &found);
  if (rc != 0 || found == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("webhook host ", target->host, " does not resolve"));
  }
  std::unique_ptr<addrinfo, decltype(&freeaddrinfo)> owned(found, &freeaddrinfo);
  for (const addrinfo* a = found; a != nullptr; a = a->ai_next) {
    if (IsRefusedAddress(a->ai_addr)) {
      return absl::PermissionDeniedError(absl::StrCat(
          "webhook host ", target->host,
          " resolves to a loopback, private, link-local or metadata address; refused"));
    }
  }
  return absl::OkStatus();
}

}  // namespace musicgw::notify
