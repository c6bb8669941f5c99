// musicgw-health: exits 0 when the server at --addr reports SERVING on grpc.health.v1, 1
// otherwise. For container HEALTHCHECKs and scripts (Debian ships no grpc_health_probe), and
// for Kubernetes probes when the gRPC port speaks TLS (the kubelet's own gRPC probe cannot).
#include <chrono>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/grpcpp.h"

ABSL_FLAG(std::string, addr, "127.0.0.1:50051", "server address");
ABSL_FLAG(std::string, service, "", "service name; empty for the whole server");
ABSL_FLAG(int, timeout_ms, 2000, "deadline of the check");
ABSL_FLAG(std::string, tls_ca_file, "",
          "PEM CA bundle to verify the server with; empty: plaintext");
ABSL_FLAG(std::string, tls_server_name, "",
          "name the server certificate must carry, when --addr is not it (e.g. 127.0.0.1)");
ABSL_FLAG(std::string, tls_cert_file, "", "client certificate (PEM), when the server wants mTLS");
ABSL_FLAG(std::string, tls_key_file, "", "client private key (PEM)");

namespace {

bool ReadFile(const std::string& path, std::string* out) {
  std::ifstream in(path);
  if (!in) {
    std::cerr << "cannot read " << path << "\n";
    return false;
  }
  std::stringstream text;
  text << in.rdbuf();
  *out = text.str();
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  grpc::ChannelArguments args;
  if (!absl::GetFlag(FLAGS_tls_ca_file).empty()) {
    grpc::SslCredentialsOptions tls;
    if (!ReadFile(absl::GetFlag(FLAGS_tls_ca_file), &tls.pem_root_certs)) return 1;
    if (!absl::GetFlag(FLAGS_tls_cert_file).empty() &&
        (!ReadFile(absl::GetFlag(FLAGS_tls_cert_file), &tls.pem_cert_chain) ||
         !ReadFile(absl::GetFlag(FLAGS_tls_key_file), &tls.pem_private_key))) {
      return 1;
    }
    credentials = grpc::SslCredentials(tls);
    if (!absl::GetFlag(FLAGS_tls_server_name).empty()) {
      args.SetSslTargetNameOverride(absl::GetFlag(FLAGS_tls_server_name));
    }
  }
  auto channel = grpc::CreateCustomChannel(absl::GetFlag(FLAGS_addr), credentials, args);
  auto stub = grpc::health::v1::Health::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::milliseconds(absl::GetFlag(FLAGS_timeout_ms)));
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(absl::GetFlag(FLAGS_service));
  grpc::health::v1::HealthCheckResponse response;
  const grpc::Status status = stub->Check(&context, request, &response);
  if (!status.ok()) {
    std::cerr << "unhealthy: " << status.error_message() << "\n";
    return 1;
  }
  std::cout << grpc::health::v1::HealthCheckResponse::ServingStatus_Name(response.status()) << "\n";
  return response.status() == grpc::health::v1::HealthCheckResponse::SERVING ? 0 : 1;
}
