#include "services/gateway/auth.h"

#include <utility>

#include "absl/hash/hash.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "common/crypto.h"
#include "common/errors.h"

namespace musicgw::gateway {
namespace {

absl::Status Unauthenticated(absl::string_view message) {
  return WithErrorInfo(absl::UnauthenticatedError(message), "API_KEY_INVALID", kGatewayDomain);
}

}  // namespace

TenantDirectory::TenantDirectory(std::vector<config::TenantConfig> tenants)
    : tenants_(std::move(tenants)), salt_(RandomHex(16)) {}

absl::StatusOr<const config::TenantConfig*> TenantDirectory::Lookup(
    absl::string_view api_key) const {
  const size_t bucket = absl::HashOf(salt_, api_key);
  {
    absl::ReaderMutexLock lock(&mu_);
    auto it = known_.find(bucket);
    if (it != known_.end() && ConstantTimeEquals(api_key, it->second.api_key)) {
      return it->second.tenant;
    }
  }
  const config::TenantConfig* found = LookupByDigest(api_key);
  if (found == nullptr) return Unauthenticated("invalid API key");
  absl::MutexLock lock(&mu_);
  known_[bucket] = Known{std::string(api_key), found};
  return found;
}

const config::TenantConfig* TenantDirectory::LookupByDigest(absl::string_view api_key) const {
  const std::string digest = Sha256Hex(api_key);
  const config::TenantConfig* found = nullptr;
  // No early exit: every digest is compared so timing does not depend on which one matches.
  for (const auto& tenant : tenants_) {
    for (const auto& hash : tenant.api_key_sha256) {
      if (ConstantTimeEquals(digest, hash)) found = &tenant;
    }
  }
  return found;
}

absl::StatusOr<const config::TenantConfig*> TenantDirectory::Authenticate(
    const grpc::ServerContextBase& context) const {
  const auto& metadata = context.client_metadata();
  auto it = metadata.find("authorization");
  if (it == metadata.end()) {
    if (const config::TenantConfig* tenant = ByCertificate(context)) return tenant;
    return Unauthenticated(
        "missing authorization metadata: send \"authorization: Bearer <api key>\"");
  }
  absl::string_view value(it->second.data(), it->second.size());
  value = absl::StripAsciiWhitespace(value);
  if (!absl::StartsWithIgnoreCase(value, "bearer ")) {
    return Unauthenticated("authorization metadata must be \"Bearer <api key>\"");
  }
  absl::string_view key = absl::StripAsciiWhitespace(value.substr(7));
  if (key.empty()) return Unauthenticated("empty API key");
  return Lookup(key);
}

const config::TenantConfig* TenantDirectory::ByCertificate(
    const grpc::ServerContextBase& context) const {
  const std::shared_ptr<const grpc::AuthContext> auth = context.auth_context();
  // Only a certificate the TLS handshake verified against the client CA counts.
  if (auth == nullptr || !auth->IsPeerAuthenticated()) return nullptr;
  for (const grpc::string_ref& san : auth->FindPropertyValues("x509_subject_alternative_name")) {
    const absl::string_view name(san.data(), san.size());
    for (const auto& tenant : tenants_) {
      for (const auto& wanted : tenant.client_sans) {
        if (name == wanted) return &tenant;
      }
    }
  }
  return nullptr;
}

}  // namespace musicgw::gateway
