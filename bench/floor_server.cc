// The "floor" for the gateway's unary reads: a minimal gRPC callback server of
// musicgw.v1.MusicGateway that answers GetOperation and Generate with one fixed Operation, read
// from --operation (the serialized bytes the gateway itself returned for a real operation, see
// grpc_load --save_operation). No authentication, no ledger, no logging: what is left is gRPC
// and protobuf serialization of a realistic message, which is as fast as a gateway answer can be.
// Server settings that shape each call's cost are the gateway's (callback API, keepalive
// arguments, health service).
//
//   floor_server --operation=op.bin [--listen=127.0.0.1:0] [--watch_hold_ms=MS]
//       [--minimal_stack=1] [--download_file=PATH [--download_chunk_bytes=N]]
//
// --minimal_stack=1 sets GRPC_ARG_MINIMAL_STACK (no deadline or compression filters): what
// gRPC's optional filters add to each call.
//
// With --watch_hold_ms it also serves WatchOperation as the floor of a held stream: a snapshot
// of the operation (not done) at once, then, MS after the stream opened, the operation (done)
// and the end. grpc_load --mode=watch_fanout --pid=<floor> then measures what N open streams
// cost a server that keeps nothing per stream beyond gRPC's own call and one reactor.
//
// With --download_file=PATH it also serves Download as the floor of a file stream: the AssetInfo
// message, then PATH in --download_chunk_bytes messages (default 1 MiB, what the gateway sends
// from custody), each read with one pread into the message and written when the last one is
// done, whatever asset is asked for. What is left is gRPC's streaming of the same bytes the
// gateway serves.
//
// Prints "floor listening on <port>" on stdout once serving; stops on SIGINT/SIGTERM.
#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <deque>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "musicgw/v1/musicgw.grpc.pb.h"

namespace {

namespace v1 = musicgw::v1;

// A held WatchOperation stream: the snapshot, then (when the holder says) the terminal event.
class HeldWatch final : public grpc::ServerWriteReactor<v1::OperationEvent> {
 public:
  explicit HeldWatch(const v1::Operation& operation) {
    snapshot_.set_kind(v1::OperationEvent::KIND_SNAPSHOT);
    *snapshot_.mutable_operation() = operation;
    snapshot_.mutable_operation()->set_done(false);
    snapshot_.mutable_operation()->set_state(v1::OPERATION_STATE_RUNNING);
    snapshot_.set_sequence(operation.sequence());
    StartWrite(&snapshot_);
  }
  // From the holder's thread: the operation (done), then OK.
  void End(const v1::OperationEvent* terminal) {
    absl::MutexLock lock(&mu_);
    if (cancelled_) return;
    snapshot_.Clear();
    StartWriteAndFinish(terminal, grpc::WriteOptions(), grpc::Status::OK);
  }
  void OnWriteDone(bool /*ok*/) override {}
  void OnCancel() override {
    absl::MutexLock lock(&mu_);
    cancelled_ = true;
    Finish(grpc::Status::CANCELLED);
  }
  void OnDone() override;

 private:
  absl::Mutex mu_;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  v1::OperationEvent snapshot_;
};

// Ends each held stream `hold` after it opened, from one thread (streams open in order).
class Holder {
 public:
  Holder(absl::Duration hold, const v1::Operation& operation) : hold_(hold) {
    terminal_.set_kind(v1::OperationEvent::KIND_CHANGE);
    *terminal_.mutable_operation() = operation;
    terminal_.mutable_operation()->set_done(true);
    terminal_.set_sequence(operation.sequence() + 1);
    thread_ = std::thread([this] { Run(); });
    thread_.detach();  // the process ends with it
  }
  void Add(HeldWatch* watch) {
    absl::MutexLock lock(&mu_);
    held_.push_back({watch, absl::Now() + hold_});
  }
  void Gone(HeldWatch* watch) {
    absl::MutexLock lock(&mu_);
    for (auto& entry : held_) {
      if (entry.watch == watch) entry.watch = nullptr;
    }
  }

 private:
  struct Entry {
    HeldWatch* watch;
    absl::Time at;
  };
  void Run() {
    for (;;) {
      bool due = false;
      {
        absl::MutexLock lock(&mu_);
        due = !held_.empty() && held_.front().at <= absl::Now();
        if (due) {
          // Ended under the lock: Gone() (from OnDone) cannot delete it meanwhile.
          if (HeldWatch* watch = held_.front().watch) watch->End(&terminal_);
          held_.pop_front();
        }
      }
      if (!due) absl::SleepFor(absl::Milliseconds(20));
    }
  }

  const absl::Duration hold_;
  v1::OperationEvent terminal_;
  absl::Mutex mu_;
  std::deque<Entry> held_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

Holder* holder = nullptr;  // set once in main when --watch_hold_ms is given

void HeldWatch::OnDone() {
  holder->Gone(this);
  delete this;
}

// The file --download_file names, open for the life of the process (pread is thread-safe).
struct DownloadFile {
  int fd = -1;
  int64_t size = 0;
  int chunk_bytes = 1024 * 1024;
};

// One Download stream of the file: its AssetInfo, then its bytes, one message in flight.
class FileDownload final : public grpc::ServerWriteReactor<v1::DownloadChunk> {
 public:
  explicit FileDownload(const DownloadFile& file) : file_(file) {
    chunk_.mutable_info()->set_size_bytes(file_.size);
    chunk_.mutable_info()->set_in_custody(true);
    StartWrite(&chunk_);
  }
  void OnWriteDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "client went away"));
      return;
    }
    if (offset_ >= file_.size) {
      Finish(grpc::Status::OK);
      return;
    }
    const int64_t n = std::min<int64_t>(file_.chunk_bytes, file_.size - offset_);
    std::string* data = chunk_.mutable_data();
    data->resize(static_cast<size_t>(n));
    if (pread(file_.fd, data->data(), static_cast<size_t>(n), offset_) != n) {
      Finish(grpc::Status(grpc::StatusCode::INTERNAL, "short read"));
      return;
    }
    chunk_.set_offset(offset_);
    offset_ += n;
    StartWrite(&chunk_);
  }
  void OnDone() override { delete this; }

 private:
  const DownloadFile& file_;
  v1::DownloadChunk chunk_;
  int64_t offset_ = 0;
};

class FloorService final : public v1::MusicGateway::CallbackService {
 public:
  FloorService(v1::Operation operation, const DownloadFile& file)
      : operation_(std::move(operation)), file_(file) {}

  grpc::ServerWriteReactor<v1::DownloadChunk>* Download(
      grpc::CallbackServerContext* /*context*/, const v1::DownloadRequest* /*request*/) override {
    if (file_.fd < 0) return nullptr;  // UNIMPLEMENTED, as the generated base answers
    return new FileDownload(file_);
  }

  grpc::ServerWriteReactor<v1::OperationEvent>* WatchOperation(
      grpc::CallbackServerContext* /*context*/,
      const v1::WatchOperationRequest* /*request*/) override {
    if (holder == nullptr) return nullptr;  // UNIMPLEMENTED, as the generated base answers
    auto* watch = new HeldWatch(operation_);
    holder->Add(watch);
    return watch;
  }

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
  const DownloadFile& file_;
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
  int hold_ms = 0;
  if (auto hold = Flag(argc, argv, "watch_hold_ms"); hold && absl::SimpleAtoi(*hold, &hold_ms)) {
    holder = new Holder(absl::Milliseconds(hold_ms), operation);  // lives as long as the process
  }
  DownloadFile download;
  if (auto file = Flag(argc, argv, "download_file")) {
    download.fd = open(file->c_str(), O_RDONLY | O_CLOEXEC);
    struct stat st {};
    if (download.fd < 0 || fstat(download.fd, &st) != 0) {
      std::fprintf(stderr, "floor_server: cannot open %s\n", file->c_str());
      return 2;
    }
    download.size = st.st_size;
    if (auto chunk = Flag(argc, argv, "download_chunk_bytes");
        chunk && (!absl::SimpleAtoi(*chunk, &download.chunk_bytes) || download.chunk_bytes < 1)) {
      std::fprintf(stderr, "floor_server: --download_chunk_bytes must be a positive integer\n");
      return 2;
    }
  }
  FloorService service(std::move(operation), download);
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
  if (Flag(argc, argv, "minimal_stack").value_or("0") == "1") {
    builder.AddChannelArgument(GRPC_ARG_MINIMAL_STACK, 1);
  }
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
