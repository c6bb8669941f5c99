// The "floor" for the gateway's unary reads: a minimal gRPC callback server of
// musicgw.v1.MusicGateway that answers GetOperation and Generate with one fixed Operation, read
// from --operation (the serialized bytes the gateway itself returned for a real operation, see
// grpc_load --save_operation). No authentication, no ledger, no logging: what is left is gRPC
// and protobuf serialization of a realistic message, which is as fast as a gateway answer can be.
// Server settings that shape each call's cost are the gateway's (callback API, keepalive
// arguments, health service).
//
//   floor_server --operation=op.bin [--listen=127.0.0.1:0]
//
// Prints "floor listening on <port>" on stdout once serving; stops on SIGINT/SIGTERM.
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <pthread.h>

#include <csignal>
#include <cstdio>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "musicgw/v1/musicgw.grpc.pb.h"

namespace {

namespace v1 = musicgw::v1;

class FloorService final : public v1::MusicGateway::CallbackService {
 public:
  explicit FloorService(v1::Operation operation) : operation_(std::move(operation)) {}

  grpc::ServerUnaryReactor* GetOperation(grpc::CallbackServerContext* context,
                                         const v1::GetOperationRequest* /*request*/,
                                         v1::Operation* response) override {
    return Answer(context, response);
  }
  grpc::ServerUnaryReactor* Generate(grpc::CallbackServerContext* context,
                                     const v1::GenerateRequest* /*request*/,
                                     v1::Operation* response) override {
    return Answer(context, response);
  }

 private:
  grpc::ServerUnaryReactor* Answer(grpc::CallbackServerContext* context, v1::Operation* response) {
    // The gateway also builds a fresh message per call; a copy is the least it could do.
    *response = operation_;
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

  const v1::Operation operation_;
};

std::optional<std::string> Flag(int argc, char** argv, const std::string& name) {
  const std::string prefix = absl::StrCat("--", name, "=");
  for (int i = 1; i < argc; ++i) {
    if (absl::StartsWith(argv[i], prefix)) return std::string(argv[i] + prefix.size());
  }
  return std::nullopt;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string listen = Flag(argc, argv, "listen").value_or("127.0.0.1:0");
  const std::optional<std::string> path = Flag(argc, argv, "operation");
  if (!path) {
    std::fprintf(stderr, "floor_server: --operation=<serialized musicgw.v1.Operation> needed\n");
    return 2;
  }
  std::ifstream in(*path, std::ios::binary);
  std::stringstream bytes;
  bytes << in.rdbuf();
  v1::Operation operation;
  if (!in || !operation.ParseFromString(bytes.str())) {
    std::fprintf(stderr, "floor_server: %s is not a serialized Operation\n", path->c_str());
    return 2;
  }
  // SIGINT/SIGTERM are blocked here, before gRPC starts its threads (they inherit the mask), and
  // taken by sigwait below: a clean shutdown without a signal handler.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  FloorService service(std::move(operation));
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(listen, grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  // As the gateway (services/gateway/server.cc) with its default 10 s minimum ping interval.
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 10 * 1000);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 2);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 60 * 1000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 20 * 1000);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    std::fprintf(stderr, "floor_server: cannot listen on %s\n", listen.c_str());
    return 1;
  }
  std::printf("floor listening on %d\n", port);
  std::fflush(stdout);
  int signal = 0;
  sigwait(&stop_signals, &signal);
  server->Shutdown();
  return 0;
}
