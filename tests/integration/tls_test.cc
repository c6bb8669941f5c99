// TLS and mTLS on the gRPC port, with certificates this test makes with openssl: a tenant known
// by its client certificate, a client certificate from another CA or expired refused, and a
// renewed server certificate picked up without a restart. The metrics and webhook ports over
// TLS too: mTLS on metrics, a renewed certificate, a signed webhook accepted.
#include <httplib.h>
#include <stdlib.h>

#include <fstream>
#include <memory>
#include <sstream>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "common/config.h"
#include "common/crypto.h"
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

// A scratch directory with certificates made by openssl: two CAs and leaves signed by them.
class CertificatesTest : public ::testing::Test {
 protected:
  void MakeCertificates() {
    dir_ = NewTestScratchDir("tls");
    ASSERT_TRUE(MakeCa("ca"));
    ASSERT_TRUE(MakeCa("other-ca"));
    ASSERT_TRUE(MakeCert("ca", "server", "server-1", "DNS:localhost,IP:127.0.0.1", 30));
    ASSERT_TRUE(MakeCert("ca", "server-2", "server-2", "DNS:localhost,IP:127.0.0.1", 30));
    ASSERT_TRUE(MakeCert("ca", "acme", "acme", "URI:spiffe://musicgw.test/acme", 30));
    ASSERT_TRUE(MakeCert("other-ca", "stranger", "acme", "URI:spiffe://musicgw.test/acme", 30));
    ASSERT_TRUE(MakeCert("ca", "expired", "acme", "URI:spiffe://musicgw.test/acme", -1));
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
  // The files the gateway serves from (and watches): <live>.pem and <live>.key, each replaced
  // by a rename so a reader never sees half a file.
  void Install(const std::string& name, const std::string& live = "live") {
    ASSERT_TRUE(Shell(absl::StrCat("cp ", name, ".key ", live, ".key.new && cp ", name, ".pem ",
                                   live, ".pem.new && mv ", live, ".key.new ", live, ".key && mv ",
                                   live, ".pem.new ", live, ".pem")));
  }

  std::string dir_;
};

class TlsTest : public CertificatesTest {
 protected:
  void SetUp() override {
    SetTestSecrets();
    MakeCertificates();

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

TEST_F(TlsTest, TheHealthProbeChecksATlsPort) {
  const std::string probe = absl::StrCat(
      MUSICGW_HEALTH_BINARY, " --addr=127.0.0.1:", server_->grpc_port(), " --timeout_ms=10000");
  // The server certificate names localhost: what a pod's probe dials by IP says which name.
  EXPECT_TRUE(Shell(absl::StrCat(probe, " --tls_ca_file=ca.pem --tls_server_name=localhost",
                                 " --tls_cert_file=acme.pem --tls_key_file=acme.key")));
  EXPECT_FALSE(Shell(absl::StrCat(probe, " --tls_ca_file=other-ca.pem",
                                  " --tls_cert_file=acme.pem --tls_key_file=acme.key")));
  EXPECT_FALSE(Shell(probe));  // plaintext against a TLS port
}

// TLS on the metrics port (with mTLS) and on the webhook port, each from its own files.
class TlsPortsTest : public CertificatesTest {
 protected:
  static constexpr char kWebhookSecret[] = "whsec_c2FuZGJveC13ZWJob29rLXNlY3JldC0xMjM0NTY=";

  void SetUp() override {
    SetTestSecrets();
    setenv("MUSICGW_TEST_WEBHOOK_SECRETS", kWebhookSecret, 1);
    MakeCertificates();
    Install("server", "metrics");
    Install("server", "webhook");

    ASSERT_TRUE(hanging_.ok());
    nlohmann::json doc = TestConfig({hanging_.url(), hanging_.url()}, dir_ + "/ledger.db");
    doc["server"]["metrics_tls"] = {{"cert_file", dir_ + "/metrics.pem"},
                                    {"key_file", dir_ + "/metrics.key"},
                                    {"client_ca_file", dir_ + "/ca.pem"},
                                    {"reload_interval_seconds", 1}};
    doc["server"]["webhook_tls"] = {{"cert_file", dir_ + "/webhook.pem"},
                                    {"key_file", dir_ + "/webhook.key"}};
    doc["server"]["webhook_listen"] = absl::StrCat("127.0.0.1:", FreePort());
    doc["providers"][1]["webhook_secrets"] = {{"env", "MUSICGW_TEST_WEBHOOK_SECRETS"}};
    auto config = config::ParseConfig(doc.dump(), config::ProcessEnv());
    ASSERT_TRUE(config.ok()) << config.status();
    auto server = gateway::GatewayServer::Start(std::move(*config));
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
  }

  // An HTTPS client of `port` trusting `trusted_ca`, presenting `client`'s certificate if any.
  std::unique_ptr<httplib::SSLClient> Https(int port, const std::string& trusted_ca,
                                            const std::string& client = "") {
    auto https = client.empty() ? std::make_unique<httplib::SSLClient>("127.0.0.1", port)
                                : std::make_unique<httplib::SSLClient>(
                                      "127.0.0.1", port, dir_ + "/" + client + ".pem",
                                      dir_ + "/" + client + ".key");
    https->set_ca_cert_path((dir_ + "/" + trusted_ca + ".pem").c_str());
    https->enable_server_certificate_verification(true);
    https->set_connection_timeout(10, 0);
    https->set_read_timeout(10, 0);
    return https;
  }

  // The common name of the certificate the metrics port presents to a new handshake.
  std::string MetricsServerName() {
    const std::string out = dir_ + "/subject.txt";
    Shell(absl::StrCat("openssl s_client -connect 127.0.0.1:", server_->metrics_port(),
                       " -CAfile ca.pem -verify_return_error -cert acme.pem -key acme.key"
                       " </dev/null | openssl x509 -noout -subject -nameopt multiline > ",
                       out));
    const std::string subject = Read(out);
    const size_t cn = subject.find("commonName");
    if (cn == std::string::npos) return "";
    return std::string(absl::StripAsciiWhitespace(subject.substr(subject.find('=', cn) + 1)));
  }

  LoopbackListener hanging_;
  std::unique_ptr<gateway::GatewayServer> server_;
};

TEST_F(TlsPortsTest, MetricsAreServedOverMutualTlsOnly) {
  auto scrape = Https(server_->metrics_port(), "ca", "acme")->Get("/metrics");
  ASSERT_TRUE(scrape) << httplib::to_string(scrape.error());
  EXPECT_EQ(scrape->status, 200);
  EXPECT_NE(scrape->body.find("musicgw_engine_live_operations"), std::string::npos);

  // A client that does not trust the server's CA refuses it; the server refuses a client
  // without a certificate, or with one from another CA or expired.
  EXPECT_FALSE(Https(server_->metrics_port(), "other-ca", "acme")->Get("/metrics"));
  for (const std::string client : {"", "stranger", "expired"}) {
    EXPECT_FALSE(Https(server_->metrics_port(), "ca", client)->Get("/metrics"))
        << "client " << client;
  }
  // Plain HTTP gets no metrics from a TLS port.
  httplib::Client plain("127.0.0.1", server_->metrics_port());
  plain.set_read_timeout(10, 0);
  auto answer = plain.Get("/metrics");
  EXPECT_TRUE(!answer || answer->status != 200);
}

TEST_F(TlsPortsTest, ARenewedMetricsCertificateIsServedWithoutARestart) {
  EXPECT_EQ(MetricsServerName(), "server-1");
  Install("server-2", "metrics");
  // The files are re-read at the first handshake a reload interval (1 s here) after the last
  // check: new handshakes see the new certificate.
  std::string name;
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (name != "server-2" && absl::Now() < deadline) name = MetricsServerName();
  EXPECT_EQ(name, "server-2");
  // The webhook port keeps its own files.
  EXPECT_TRUE(Https(server_->webhook_port(), "ca")->Get("/"));
}

TEST_F(TlsPortsTest, ASignedWebhookIsAcceptedOverTls) {
  const std::string body =
      R"({"type":"create.new_sample.ready","data":{"id":"op_01hx7k3m9q2w5e8r4t6y1u0p3a",)"
      R"("status":"ready","output":{"url":"https://cdn/x","expires_at":"2026-05-20T12:50:21Z",)"
      R"("duration":8}}})";
  const std::string timestamp = absl::StrCat(absl::ToUnixSeconds(absl::Now()));
  auto key = Base64Decode(absl::string_view(kWebhookSecret).substr(6));
  ASSERT_TRUE(key.ok());
  const std::string signature = absl::StrCat(
      "v1,", Base64Encode(HmacSha256(*key, absl::StrCat("msg_tls_1.", timestamp, ".", body))));
  const httplib::Headers headers = {{"webhook-id", "msg_tls_1"},
                                    {"webhook-timestamp", timestamp},
                                    {"webhook-signature", signature}};
  auto answer = Https(server_->webhook_port(), "ca")
                    ->Post("/webhooks/soundpiece", headers, body, "application/json");
  ASSERT_TRUE(answer) << httplib::to_string(answer.error());
  EXPECT_EQ(answer->status, 204);
  // A client that does not trust the server's CA never sends it.
  EXPECT_FALSE(Https(server_->webhook_port(), "other-ca")
                   ->Post("/webhooks/soundpiece", headers, body, "application/json"));

  // Counted as verified, as the (mutual-TLS) metrics port reports.
  auto scrape = Https(server_->metrics_port(), "ca", "acme")->Get("/metrics");
  ASSERT_TRUE(scrape) << httplib::to_string(scrape.error());
  bool counted = false;
  for (absl::string_view line : absl::StrSplit(scrape->body, '\n')) {
    counted =
        counted || (absl::StartsWith(line, "musicgw_webhooks_received_total{") &&
                    absl::StrContains(line, "outcome=\"verified\"") && absl::EndsWith(line, " 1"));
  }
  EXPECT_TRUE(counted) << scrape->body;
}

}  // namespace
}  // namespace musicgw::testing
