// TLS and mTLS on the gRPC port, with certificates this test makes with openssl: a tenant known
// by its client certificate, a client certificate from another CA or expired refused, and a
// renewed server certificate picked up without a restart.
#include <stdlib.h>

#include <fstream>
#include <memory>
#include <sstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/config.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"
#include "services/gateway/server.h"
#include "tests/integration/harness.h"
#include "tests/scratch_dir.h"

namespace musicgw::testing {
namespace {

std::string Read(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

class TlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SetTestSecrets();
    dir_ = NewTestScratchDir("tls");
    ASSERT_TRUE(MakeCa("ca"));
    ASSERT_TRUE(MakeCa("other-ca"));
    ASSERT_TRUE(MakeCert("ca", "server", "server-1", "DNS:localhost,IP:127.0.0.1", 30));
    ASSERT_TRUE(MakeCert("ca", "server-2", "server-2", "DNS:localhost,IP:127.0.0.1", 30));
    ASSERT_TRUE(MakeCert("ca", "acme", "acme", "URI:spiffe://musicgw.test/acme", 30));
    ASSERT_TRUE(MakeCert("other-ca", "stranger", "acme", "URI:spiffe://musicgw.test/acme", 30));
    ASSERT_TRUE(MakeCert("ca", "expired", "acme", "URI:spiffe://musicgw.test/acme", -1));

    ASSERT_TRUE(hanging_.ok());
    nlohmann::json doc = TestConfig({hanging_.url(), hanging_.url()}, dir_ + "/ledger.db");
    doc["server"]["tls"] = {{"cert_file", dir_ + "/live.pem"},
                            {"key_file", dir_ + "/live.key"},
                            {"client_ca_file", dir_ + "/ca.pem"},
                            {"reload_interval_seconds", 1}};
    Install("server");
    for (auto& tenant : doc["tenants"]) {
      if (tenant["name"] == "acme") tenant["client_sans"] = {"spiffe://musicgw.test/acme"};
    }
    auto config = config::ParseConfig(doc.dump(), config::ProcessEnv());
    ASSERT_TRUE(config.ok()) << config.status();
    auto server = gateway::GatewayServer::Start(std::move(*config));
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
  }

  bool Shell(const std::string& command) {
    return system(absl::StrCat("cd ", dir_, " && (", command, ") >/dev/null 2>&1").c_str()) == 0;
  }
  bool MakeCa(const std::string& name) {
    return Shell(absl::StrCat("openssl req -x509 -newkey rsa:2048 -nodes -keyout ", name,
                              ".key -out ", name, ".pem -days 2 -subj /CN=", name));
  }
  bool MakeCert(const std::string& ca, const std::string& name, const std::string& cn,
                const std::string& san, int days) {
    return Shell(absl::StrCat("openssl req -newkey rsa:2048 -nodes -keyout ", name, ".key -out ",
                              name, ".csr -subj /CN=", cn, " && printf 'subjectAltName=", san,
                              "' > ", name, ".ext && openssl x509 -req -in ", name, ".csr -CA ", ca,
                              ".pem -CAkey ", ca, ".key -CAcreateserial -out ", name, ".pem -days ",
                              days, " -extfile ", name, ".ext"));
  }
  // The files the gateway serves from (and watches).
  void Install(const std::string& name) {
    ASSERT_TRUE(Shell(absl::StrCat("cp ", name, ".key live.key.new && cp ", name,
                                   ".pem live.pem.new && mv live.key.new live.key && mv "
                                   "live.pem.new live.pem")));
  }

  std::unique_ptr<musicgw::v1::MusicGateway::Stub> Client(const std::string& trusted_ca,
                                                          const std::string& client) {
    grpc::SslCredentialsOptions options;
    options.pem_root_certs = Read(dir_ + "/" + trusted_ca + ".pem");
    if (!client.empty()) {
      options.pem_private_key = Read(dir_ + "/" + client + ".key");
      options.pem_cert_chain = Read(dir_ + "/" + client + ".pem");
    }
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);  // a fresh handshake per client
    // An IP literal (the server certificate names 127.0.0.1 too): no DNS resolver involved.
    return musicgw::v1::MusicGateway::NewStub(grpc::CreateCustomChannel(
        absl::StrCat("127.0.0.1:", server_->grpc_port()), grpc::SslCredentials(options), args));
  }

  // ListOperations with no API key: who the certificate says the caller is, or why not.
  grpc::Status ListWithoutKey(musicgw::v1::MusicGateway::Stub& stub,
                              std::string* server_cn = nullptr) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    musicgw::v1::ListOperationsRequest request;
    musicgw::v1::ListOperationsResponse response;
    grpc::Status status = stub.ListOperations(&context, request, &response);
    if (server_cn != nullptr && context.auth_context() != nullptr) {
      for (const auto& cn : context.auth_context()->FindPropertyValues("x509_common_name")) {
        *server_cn = std::string(cn.data(), cn.size());
      }
    }
    return status;
  }

  std::string dir_;
  LoopbackListener hanging_;
  std::unique_ptr<gateway::GatewayServer> server_;
};

TEST_F(TlsTest, AClientCertificateNamesItsTenantAndStrangersAreRefused) {
  auto acme = Client("ca", "acme");
  EXPECT_TRUE(ListWithoutKey(*acme).ok());
  // An API key still works over mTLS, and names its own tenant.
  musicgw::v1::ListOperationsResponse page;
  EXPECT_TRUE(acme->ListOperations(Context(kGlobexKey).get(), {}, &page).ok());

  // No client certificate, one from another CA, an expired one: no handshake.
  for (const std::string client : {"", "stranger", "expired"}) {
    auto stub = Client("ca", client);
    const grpc::Status status = ListWithoutKey(*stub);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE)
        << "client " << client << ": " << status.error_message();
  }
  // A client that does not trust the server's CA refuses the server.
  auto distrustful = Client("other-ca", "acme");
  EXPECT_EQ(ListWithoutKey(*distrustful).error_code(), grpc::StatusCode::UNAVAILABLE);
}

TEST_F(TlsTest, ARenewedServerCertificateIsServedWithoutARestart) {
  std::string cn;
  auto before = Client("ca", "acme");
  ASSERT_TRUE(ListWithoutKey(*before, &cn).ok());
  EXPECT_EQ(cn, "server-1");
  Install("server-2");
  // gRPC re-reads the files every reload interval (1 s here): new handshakes see the new one.
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (cn != "server-2" && absl::Now() < deadline) {
    auto fresh = Client("ca", "acme");
    ASSERT_TRUE(ListWithoutKey(*fresh, &cn).ok());
  }
  EXPECT_EQ(cn, "server-2");
}

}  // namespace
}  // namespace musicgw::testing
