// File: address_guard.h
// SSRF protection for outgoing webhooks: a target may not be loopback, private (RFC 1918,
// unique-local IPv6), link-local (which holds the cloud metadata service 169.254.169.254),
// carrier-grade NAT, unspecified, multicast or broadcast, unless the configuration allows
// private targets (sandboxes and tests). Checked twice: on the resolved addresses when an
// endpoint is registered or a delivery starts, and on the very address being connected to
// (the delivery's socket callback), so a DNS answer that changes in between gains nothing.
#pragma once

#include <sys/socket.h>

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace musicgw::notify {

// True when `address` (AF_INET or AF_INET6; IPv4-mapped IPv6 is judged as IPv4) is one a
// webhook may not reach without the allowance. Unknown families are refused.
bool IsRefusedAddress(const sockaddr* address);
// The same for a textual IP address; false for text that is not an IP literal.
bool IsRefusedIpLiteral(absl::string_view ip);

struct UrlTarget {
  std::string scheme;  // "http" or "https"
  std::string host;    // without brackets
  int port = 0;
};

// Parses an http(s) URL's scheme, host and port (INVALID_ARGUMENT otherwise: other schemes,
// user info, missing host, bad port).
absl::StatusOr<UrlTarget> ParseWebhookUrl(absl::string_view url);

// ParseWebhookUrl, then (unless `allow_private`) resolves the host and refuses with
// PERMISSION_DENIED when any address it resolves to is refused, and with INVALID_ARGUMENT
// when it does not resolve.
absl::Status CheckWebhookTarget(absl::string_view url, bool allow_private);

}  // namespace musicgw::notify
