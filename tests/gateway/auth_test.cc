#include "services/gateway/auth.h"

#include "common/crypto.h"
#include "common/errors.h"
#include "gtest/gtest.h"

namespace musicgw::gateway {
namespace {

std::vector<config::TenantConfig> Tenants() {
  config::TenantConfig acme{"acme", {Sha256Hex("acme-key-1"), Sha256Hex("acme-key-2")}, {}};
  config::TenantConfig globex{"globex", {Sha256Hex("globex-key")}, {}};
  return {acme, globex};
}

TEST(AuthTest, FindsTheTenantOfEveryKey) {
  TenantDirectory directory(Tenants());
  auto a1 = directory.Lookup("acme-key-1");
  auto a2 = directory.Lookup("acme-key-2");
  auto g = directory.Lookup("globex-key");
  ASSERT_TRUE(a1.ok() && a2.ok() && g.ok());
  EXPECT_EQ((*a1)->name, "acme");
  EXPECT_EQ((*a2)->name, "acme");
  EXPECT_EQ((*g)->name, "globex");
}

TEST(AuthTest, UnknownKeysAreUnauthenticatedWithoutEchoingTheKey) {
  TenantDirectory directory(Tenants());
  for (const char* key : {"acme-key-3", "", "ACME-KEY-1", "acme-key-1 "}) {
    auto result = directory.Lookup(key);
    ASSERT_FALSE(result.ok()) << key;
    EXPECT_EQ(result.status().code(), absl::StatusCode::kUnauthenticated);
    if (*key != '\0') EXPECT_EQ(result.status().message().find(key), absl::string_view::npos);
    google::rpc::ErrorInfo info;
    ASSERT_TRUE(GetErrorInfo(result.status(), &info));
    EXPECT_EQ(info.reason(), "API_KEY_INVALID");
  }
}

TEST(AuthTest, KeysAreStoredOnlyAsDigests) {
  for (const auto& tenant : Tenants()) {
    for (const auto& hash : tenant.api_key_sha256) {
      EXPECT_EQ(hash.size(), 64u);
      EXPECT_EQ(hash.find("key"), std::string::npos);
    }
  }
}

TEST(AuthTest, ARememberedKeyStillAuthenticatesOnlyItself) {
  TenantDirectory directory(Tenants());
  for (int round = 0; round < 3; ++round) {
    auto acme = directory.Lookup("acme-key-1");
    auto globex = directory.Lookup("globex-key");
    ASSERT_TRUE(acme.ok() && globex.ok());
    EXPECT_EQ((*acme)->name, "acme");
    EXPECT_EQ((*globex)->name, "globex");
    // Near misses of a remembered key are still refused.
    for (const char* key : {"acme-key-", "acme-key-11", "acme-key-2x", "globex-kez"}) {
      EXPECT_EQ(directory.Lookup(key).status().code(), absl::StatusCode::kUnauthenticated) << key;
    }
  }
}

}  // namespace
}  // namespace musicgw::gateway
