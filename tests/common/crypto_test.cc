#include "common/crypto.h"

#include "gtest/gtest.h"

namespace musicgw {
namespace {

TEST(CryptoTest, Sha256KnownAnswer) {
  EXPECT_EQ(Sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(CryptoTest, HmacKnownAnswer) {
  // RFC 4231 test case 2.
  EXPECT_EQ(Base64Encode(HmacSha256("Jefe", "what do ya want for nothing?")),
            "W9zBRr9gdU5qBCQmCJV1x1oAPwidJzmDnexYuWTsOEM=");
}

TEST(CryptoTest, Base64RoundTripAndRejectsGarbage) {
  auto decoded = Base64Decode(Base64Encode("\x01\x02 musicgw"));
  ASSERT_TRUE(decoded.ok());
  EXPECT_EQ(*decoded, "\x01\x02 musicgw");
  EXPECT_FALSE(Base64Decode("***").ok());
}

TEST(CryptoTest, ConstantTimeEquals) {
  EXPECT_TRUE(ConstantTimeEquals("abc", "abc"));
  EXPECT_FALSE(ConstantTimeEquals("abc", "abd"));
  EXPECT_FALSE(ConstantTimeEquals("abc", "abcd"));
}

TEST(CryptoTest, UuidsAreWellFormedAndDistinct) {
  const std::string a = RandomUuid(), b = RandomUuid();
  EXPECT_TRUE(IsUuid(a));
  EXPECT_NE(a, b);
  EXPECT_EQ(a[14], '4');
  EXPECT_TRUE(IsUuid("123E4567-E89B-12D3-A456-426614174000"));
  EXPECT_FALSE(IsUuid("123e4567e89b12d3a456426614174000"));
  EXPECT_FALSE(IsUuid("123e4567-e89b-12d3-a456-42661417400g"));
  EXPECT_FALSE(IsUuid(""));
}

}  // namespace
}  // namespace musicgw
