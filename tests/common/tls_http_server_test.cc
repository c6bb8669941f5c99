// The TLS files of the metrics and webhook ports: read and checked at start, re-read at the
// first handshake a reload interval later (a fake clock), a broken renewal ignored.
#include "common/tls_http_server.h"

#include <stdlib.h>

#include <fstream>
#include <sstream>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/clock.h"
#include "gtest/gtest.h"
#include "tests/scratch_dir.h"

namespace musicgw::tls {
namespace {

class ServerFilesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = NewTestScratchDir("tls-files");
    for (const std::string name : {"one", "two"}) {
      ASSERT_TRUE(Shell(absl::StrCat("openssl req -x509 -newkey rsa:2048 -nodes -keyout ", name,
                                     ".key -out ", name, ".pem -days 2 -subj /CN=", name)));
    }
    ASSERT_TRUE(Install("one"));
    tls_.cert_file = dir_ + "/live.pem";
    tls_.key_file = dir_ + "/live.key";
    tls_.reload_interval = absl::Seconds(60);
  }

  bool Shell(const std::string& command) {
    return system(absl::StrCat("cd ", dir_, " && (", command, ") >/dev/null 2>&1").c_str()) == 0;
  }
  bool Install(const std::string& name) {
    return Shell(absl::StrCat("cp ", name, ".pem live.pem && cp ", name, ".key live.key"));
  }
  std::string Pem(const std::string& name) {
    std::ifstream in(dir_ + "/" + name + ".pem", std::ios::binary);
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
  }

  std::string dir_;
  config::TlsConfig tls_;
  FakeClock clock_;
};

TEST_F(ServerFilesTest, ARenewalIsPickedUpOnceTheReloadIntervalHasPassed) {
  auto files = ServerFiles::Load(tls_, "server.metrics_tls", clock_);
  ASSERT_TRUE(files.ok()) << files.status();
  EXPECT_EQ((*files)->NextCertificatePem(), Pem("one"));
  ASSERT_TRUE(Install("two"));
  clock_.Advance(absl::Seconds(59));
  EXPECT_EQ((*files)->NextCertificatePem(), Pem("one"));  // not due yet
  clock_.Advance(absl::Seconds(1));
  EXPECT_EQ((*files)->NextCertificatePem(), Pem("two"));
}

TEST_F(ServerFilesTest, ABrokenRenewalKeepsTheLastGoodCertificate) {
  auto files = ServerFiles::Load(tls_, "server.webhook_tls", clock_);
  ASSERT_TRUE(files.ok()) << files.status();
  // Caught between the two writes: the new certificate with the old key.
  ASSERT_TRUE(Shell("cp two.pem live.pem"));
  clock_.Advance(absl::Seconds(60));
  EXPECT_EQ((*files)->NextCertificatePem(), Pem("one"));
  ASSERT_TRUE(Shell("cp two.key live.key"));
  clock_.Advance(absl::Seconds(60));
  EXPECT_EQ((*files)->NextCertificatePem(), Pem("two"));
}

TEST_F(ServerFilesTest, UnusableFilesAreRefusedAtStartNamingTheBlock) {
  ASSERT_TRUE(Shell("cp two.key live.key"));
  auto mismatched = ServerFiles::Load(tls_, "server.metrics_tls", clock_);
  EXPECT_EQ(mismatched.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StartsWith(mismatched.status().message(), "server.metrics_tls.key_file"))
      << mismatched.status();
  ASSERT_TRUE(Shell("echo not a certificate > live.pem"));
  auto garbage = ServerFiles::Load(tls_, "server.metrics_tls", clock_);
  EXPECT_TRUE(absl::StrContains(garbage.status().message(), "cert_file: no PEM certificate"))
      << garbage.status();
  tls_.client_ca_file = dir_ + "/missing-ca.pem";
  EXPECT_EQ(ServerFiles::Load(tls_, "server.metrics_tls", clock_).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace musicgw::tls
