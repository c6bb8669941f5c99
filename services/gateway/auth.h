// File: auth.h
// API key authentication. Keys are configured only as SHA-256 digests; a presented key is hashed
// and compared in constant time against every digest, so neither the config nor timing reveals
// a key.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/config.h"
#include "grpcpp/server_context.h"

namespace musicgw::gateway {

class TenantDirectory {
 public:
  explicit TenantDirectory(std::vector<config::TenantConfig> tenants);

  // The tenant owning `api_key`; UNAUTHENTICATED otherwise.
  absl::StatusOr<const config::TenantConfig*> Lookup(absl::string_view api_key) const;
  // Reads `authorization: Bearer <key>` from the call's metadata; without one, a verified client
  // certificate (mTLS) whose subject alternative names include a tenant's client_sans.
  absl::StatusOr<const config::TenantConfig*> Authenticate(
      const grpc::ServerContextBase& context) const;
  // The tenant a verified peer certificate names, if any.
  const config::TenantConfig* ByCertificate(const grpc::ServerContextBase& context) const;

  const std::vector<config::TenantConfig>& tenants() const { return tenants_; }

 private:
  std::vector<config::TenantConfig> tenants_;
};

}  // namespace musicgw::gateway
