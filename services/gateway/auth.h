// File: auth.h
// API key authentication. Keys are configured only as SHA-256 digests; a presented key is hashed
// and compared in constant time against every digest, so neither the config nor timing reveals
// a key. A key that authenticated once is remembered in memory (found by a salted hash, then
// compared in constant time), so a busy client's calls cost no SHA-256 each.
#pragma once

#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
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
  const config::TenantConfig* LookupByDigest(absl::string_view api_key) const;

  struct Known {
    std::string api_key;
    const config::TenantConfig* tenant = nullptr;
  };

  std::vector<config::TenantConfig> tenants_;
  const std::string salt_;  // random per process: bucket positions say nothing about keys
  mutable absl::Mutex mu_;
  // Only keys that matched a digest, so at most one entry per configured key.
  mutable absl::flat_hash_map<size_t, Known> known_ ABSL_GUARDED_BY(mu_);
};

}  // namespace musicgw::gateway
