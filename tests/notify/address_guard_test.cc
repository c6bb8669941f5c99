#include "services/notify/address_guard.h"

#include <string>

#include "gtest/gtest.h"

namespace musicgw::notify {
namespace {

TEST(AddressGuard, RefusesLoopbackPrivateLinkLocalAndMetadata) {
  for (const char* ip : {"127.0.0.1",
                         "127.8.9.10",
                         "10.1.2.3",
                         "172.16.0.1",
                         "172.31.255.255",
                         "192.168.1.1",
                         "169.254.169.254",
                         "100.64.0.1",
                         "0.0.0.0",
                         "224.0.0.1",
                         "255.255.255.255",
                         "::1",
                         "::",
                         "fe80::1",
                         "fd00:ec2::254",
                         "fc00::1",
                         "::ffff:127.0.0.1",
                         "::ffff:10.0.0.1",
                         "64:ff9b::a9fe:a9fe",
                         "2002:7f00:1::1",
                         "ff02::1"}) {
    EXPECT_TRUE(IsRefusedIpLiteral(ip)) << ip;
  }
  for (const char* ip :
       {"8.8.8.8", "1.1.1.1", "172.32.0.1", "100.128.0.1", "2606:4700::1111", "::ffff:8.8.8.8"}) {
    EXPECT_FALSE(IsRefusedIpLiteral(ip)) << ip;
  }
}

TEST(AddressGuard, ParsesHttpUrlsOnly) {
  auto target = ParseWebhookUrl("https://hooks.example.com/in?x=1");
  ASSERT_TRUE(target.ok());
  EXPECT_EQ(target->host, "hooks.example.com");
  EXPECT_EQ(target->port, 443);
  target = ParseWebhookUrl("http://[::1]:8080/hook");
  ASSERT_TRUE(target.ok());
  EXPECT_EQ(target->host, "::1");
  EXPECT_EQ(target->port, 8080);
  for (const char* bad : {"ftp://x/", "file:///etc/passwd", "http://", "https://user@host/",
                          "http://host:0/", "http://host:99999/", "hooks.example.com"}) {
    EXPECT_EQ(ParseWebhookUrl(bad).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

TEST(AddressGuard, RefusedAfterResolutionUnlessAllowed) {
  // "localhost" is no IP literal: the check applies to what it resolves to.
  for (const char* url : {"http://localhost:9/hook", "http://127.0.0.1:9/", "http://[::1]:9/",
                          "http://169.254.169.254/latest/meta-data/"}) {
    EXPECT_EQ(CheckWebhookTarget(url, /*allow_private=*/false).code(),
              absl::StatusCode::kPermissionDenied)
        << url;
    EXPECT_TRUE(CheckWebhookTarget(url, /*allow_private=*/true).ok()) << url;
  }
}

}  // namespace
}  // namespace musicgw::notify
