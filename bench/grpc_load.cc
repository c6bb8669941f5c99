// A load generator for a running gateway, on the gRPC callback client API (no thread per
// call). One tool, five modes; each prints one JSON object on stdout.
//
//   --mode=generate      Generate then WatchOperation (or WaitOperation with --wait) until done,
//                        --ops operations with --concurrency in flight (Generate-to-SUCCEEDED).
//   --mode=get           one operation (or --operation=NAME), then --concurrency callers each
//                        issuing GetOperation back to back for --duration_s (or until --calls in
//                        all): calls/s, latency percentiles, and with --pid the server's CPU per
//                        call; --save_operation=PATH writes the Operation's bytes (the floor's
//                        answer, see floor_server.cc).
//   --mode=flood         --flood_rate Generate calls a second for --duration_s, open loop (below).
//   --mode=watch_fanout  --ops live operations, --watchers_per_op WatchOperation streams on each;
//                        per watcher, the time from the operation's completion to its terminal
//                        event; gateway RSS when --pid is given. --watch_cqs=N: the streams on
//                        N completion queues of the async API (one thread each) instead of the
//                        callback API's one queue; gRPC as Debian builds it (without NDEBUG)
//                        scans a queue's outstanding operations on every completion, so with
//                        100,000 streams on one queue the load generator itself pays O(streams)
//                        per event.
//   --mode=download      one remix_instrumental of a --source_seconds long source (or
//                        --asset=NAME), then --repeat Download streams of its asset: MB/s,
//                        sha256, gateway RSS and CPU.
//
//   MUSICGW_API_KEY=... grpc_load --target=127.0.0.1:50051 --mode=get --concurrency=64
//       [--ops=N] [--task=text|sample] [--wait] [--watchers_per_op=N] [--channels=N]
//       [--duration_s=S] [--warmup_s=S] [--pid=GATEWAY_PID] [--rss_interval_ms=MS]
//       [--processing_ms=MS] [--source_seconds=S] [--repeat=N] [--calls=N] [--operation=NAME]
//       [--save_operation=PATH] [--asset=NAME] [--flood_rate=N] [--read_rate=N] [--no_verify]
//       [--watch_cqs=N]
//   --target and --pid take comma-separated lists (replicas of one gateway on a shared ledger):
//   channel i connects to target i % N (--channels is raised to N at least), and CPU time and
//   RSS are summed over the pids.
//   With --mode=get and --read_rate=N, the reads are open loop instead: N calls a second at fixed
//   times whatever the answers' pace, each timed from when it was due (a slow server cannot
//   slow the load and hide its own queueing), spread over the channels.
//   With --mode=flood and --flood_rate=N, this process is another tenant sending N Generate calls
//   a second, open loop, for --duration_s, counting the answers by code: run beside a --mode=get
//   of another tenant, it shows how one tenant's flood affects another's reads. It is a process
//   of its own, as another tenant's client is, so its answers are not handled on the threads
//   that time the reads.
//
// The API key comes from the environment only, never the command line (it would show in ps).
#include <grpcpp/grpcpp.h>
#include <openssl/evp.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "common/crypto.h"
#include "musicgw/v1/musicgw.grpc.pb.h"
#include "nlohmann/json.hpp"

namespace {

namespace v1 = musicgw::v1;
using Json = nlohmann::ordered_json;

struct Flags {
  std::string mode = "generate";
  std::string target = "127.0.0.1:50051";
  int ops = 200;
  int concurrency = 20;
  std::string task = "text";
  bool wait = false;
  int watchers_per_op = 1;
  int channels = 1;
  double duration_s = 10;
  double warmup_s = 1;
  std::vector<std::string> targets;  // --target split at commas
  std::vector<int> pids;             // --pid split at commas
  int rss_interval_ms = 50;
  int watch_cqs = 0;
  int processing_ms = 0;
  double source_seconds = 2700;
  int repeat = 3;
  int64_t calls = 0;           // get: stop after this many calls in all (0: --duration_s)
  std::string operation;       // get: the operation to read (skips the setup Generate)
  std::string save_operation;  // get: where to write the Operation's serialized bytes
  std::string asset;           // download: the asset to download (skips the setup Generate)
  double flood_rate = 0;       // flood: Generate calls a second
  double read_rate = 0;        // get: open-loop calls/s (0: --concurrency callers back to back)
  bool no_verify = false;      // download: no client-side SHA-256 at all (side-by-side timing)
};

Flags Parse(int argc, char** argv) {
  Flags flags;
  for (int i = 1; i < argc; ++i) {
    absl::string_view arg = argv[i];
    auto value = [&](absl::string_view name) -> std::optional<std::string> {
      const std::string prefix = absl::StrCat("--", name, "=");
      if (!absl::StartsWith(arg, prefix)) return std::nullopt;
      return std::string(arg.substr(prefix.size()));
    };
    auto number = [&](absl::string_view name, auto* out) {
      if (auto v = value(name)) {
        if (!absl::SimpleAtoi(*v, out)) std::fprintf(stderr, "grpc_load: bad --%s\n", name.data());
      }
    };
    auto real = [&](absl::string_view name, double* out) {
      if (auto v = value(name)) {
        if (!absl::SimpleAtod(*v, out)) std::fprintf(stderr, "grpc_load: bad --%s\n", name.data());
      }
    };
    if (auto v = value("mode")) flags.mode = *v;
    if (auto v = value("target")) flags.target = *v;
    if (auto v = value("pid")) {
      flags.pids.clear();
      for (absl::string_view part : absl::StrSplit(*v, ',', absl::SkipEmpty())) {
        int pid = 0;
        if (absl::SimpleAtoi(part, &pid) && pid > 0) {
          flags.pids.push_back(pid);
        } else {
          std::fprintf(stderr, "grpc_load: bad --pid\n");
        }
      }
    }
    if (auto v = value("task")) flags.task = *v;
    if (auto v = value("operation")) flags.operation = *v;
    if (auto v = value("save_operation")) flags.save_operation = *v;
    if (auto v = value("asset")) flags.asset = *v;
    number("calls", &flags.calls);
    number("ops", &flags.ops);
    number("concurrency", &flags.concurrency);
    number("watchers_per_op", &flags.watchers_per_op);
    number("channels", &flags.channels);
    number("rss_interval_ms", &flags.rss_interval_ms);
    number("watch_cqs", &flags.watch_cqs);
    number("processing_ms", &flags.processing_ms);
    number("repeat", &flags.repeat);
    real("duration_s", &flags.duration_s);
    real("warmup_s", &flags.warmup_s);
    real("source_seconds", &flags.source_seconds);
    real("flood_rate", &flags.flood_rate);
    real("read_rate", &flags.read_rate);
    if (arg == "--wait") flags.wait = true;
    if (arg == "--no_verify") flags.no_verify = true;
  }
  flags.watchers_per_op = std::max(1, flags.watchers_per_op);
  flags.targets = absl::StrSplit(flags.target, ',', absl::SkipEmpty());
  if (flags.targets.empty()) flags.targets.push_back(flags.target);
  flags.channels = std::max({1, flags.channels, static_cast<int>(flags.targets.size())});
  flags.concurrency = std::max(1, flags.concurrency);
  flags.repeat = std::max(1, flags.repeat);
  return flags;
}

double Percentile(std::vector<double> values, double p) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  return values[std::min(values.size() - 1, static_cast<size_t>(p * values.size()))];
}

Json Distribution(const std::vector<double>& values) {
  Json out;
  out["n"] = values.size();
  out["p50"] = Percentile(values, 0.5);
  out["p99"] = Percentile(values, 0.99);
  out["max"] = values.empty() ? 0 : *std::max_element(values.begin(), values.end());
  return out;
}

// CPU time (user + system) of process `pid` so far, from /proc/<pid>/stat; -1 when unreadable.
double ProcessCpuSeconds(int pid) {
  if (pid <= 0) return -1;
  std::ifstream in(absl::StrCat("/proc/", pid, "/stat"));
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
  const size_t paren = stat.rfind(')');
  if (paren == std::string::npos) return -1;
  std::vector<std::string> fields = absl::StrSplit(stat.substr(paren + 2), ' ');
  int64_t utime = 0;
  int64_t stime = 0;
  if (fields.size() < 13 || !absl::SimpleAtoi(fields[11], &utime) ||
      !absl::SimpleAtoi(fields[12], &stime)) {
    return -1;
  }
  return static_cast<double>(utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

// The CPU time of all `pids` so far; -1 when there are none or one is unreadable.
double CpuSeconds(const std::vector<int>& pids) {
  if (pids.empty()) return -1;
  double total = 0;
  for (const int pid : pids) {
    const double seconds = ProcessCpuSeconds(pid);
    if (seconds < 0) return -1;
    total += seconds;
  }
  return total;
}

// This process's own CPU time so far (user + system).
double OwnCpuSeconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  auto seconds = [](const timeval& tv) { return tv.tv_sec + tv.tv_usec / 1e6; };
  return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

absl::Time FromProto(const google::protobuf::Timestamp& ts) {
  return absl::FromUnixSeconds(ts.seconds()) + absl::Nanoseconds(ts.nanos());
}

// Samples VmRSS (and reads VmHWM) of other processes from /proc/<pid>/status on its own thread,
// so the peak of a short burst is seen; one thread for the whole run, not one per call. With
// several pids (replicas), the figures are their sums.
class RssSampler {
 public:
  RssSampler(std::vector<int> pids, absl::Duration interval)
      : pids_(std::move(pids)), interval_(interval) {}
  ~RssSampler() { Stop(); }
  RssSampler(const RssSampler&) = delete;
  RssSampler& operator=(const RssSampler&) = delete;

  bool enabled() const { return !pids_.empty(); }

  // Both values in KiB, summed over the pids; 0 when unreadable.
  std::pair<int64_t, int64_t> Read() const {
    int64_t rss = 0;
    int64_t hwm = 0;
    for (const int pid : pids_) {
      const auto [one_rss, one_hwm] = ReadOne(pid);
      rss += one_rss;
      hwm += one_hwm;
    }
    return {rss, hwm};
  }

  static std::pair<int64_t, int64_t> ReadOne(int pid) {
    std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
    std::string line;
    int64_t rss = 0;
    int64_t hwm = 0;
    while (std::getline(in, line)) {
      auto field = [&line](absl::string_view name, int64_t* out) {
        if (!absl::StartsWith(line, name)) return;
        absl::string_view rest = absl::string_view(line).substr(name.size());
        rest = absl::StripAsciiWhitespace(rest);
        rest = rest.substr(0, rest.find(' '));
        if (!absl::SimpleAtoi(rest, out)) *out = 0;
      };
      field("VmRSS:", &rss);
      field("VmHWM:", &hwm);
    }
    return {rss, hwm};
  }

  // Starts sampling afresh: the peak restarts from the current RSS.
  void Start() {
    Stop();
    if (pids_.empty()) return;
    start_kib_ = Read().first;
    peak_kib_.store(start_kib_);
    stop_.store(false);
    thread_ = std::thread([this] {
      while (!stop_.load()) {
        const int64_t rss = Read().first;
        int64_t peak = peak_kib_.load();
        while (rss > peak && !peak_kib_.compare_exchange_weak(peak, rss)) {
        }
        absl::SleepFor(interval_);
      }
    });
  }

  void Stop() {
    stop_.store(true);
    if (thread_.joinable()) thread_.join();
  }

  Json Report() const {
    const auto [rss, hwm] = Read();
    Json out;
    out["pid"] = pids_.size() == 1 ? Json(pids_[0]) : Json(pids_);
    out["rss_start_mb"] = start_kib_ / 1024.0;
    out["rss_peak_mb"] = peak_kib_.load() / 1024.0;
    out["rss_end_mb"] = rss / 1024.0;
    out["rss_growth_mb"] = (peak_kib_.load() - start_kib_) / 1024.0;
    out["vm_hwm_mb"] = hwm / 1024.0;
    out["interval_ms"] = absl::ToInt64Milliseconds(interval_);
    return out;
  }

 private:
  const std::vector<int> pids_;
  const absl::Duration interval_;
  int64_t start_kib_ = 0;
  std::atomic<int64_t> peak_kib_{0};
  std::atomic<bool> stop_{true};
  std::thread thread_;
};

// How many objects holding a call's client state (a ClientContext, a reactor) are alive. gRPC
// runs a call's last callback, and destroys what it captured, after the load has counted the call
// done, so a load's Run() could return, and main() exit, while a callback thread still unwinds a
// call: locking mutexes that were already destroyed. Each such object holds a Token as its first
// member (so it is released after the context), and the Client waits for none before it goes.
class LiveCount {
 public:
  class Token {
   public:
    explicit Token(LiveCount* count) : count_(count) {
      absl::MutexLock lock(&count_->mu_);
      ++count_->live_;
    }
    ~Token() {
      absl::MutexLock lock(&count_->mu_);
      --count_->live_;
    }
    Token(const Token&) = delete;
    Token& operator=(const Token&) = delete;

   private:
    LiveCount* count_;
  };

  void WaitForNone() {
    absl::MutexLock lock(&mu_);
    auto none = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return live_ == 0; };
    mu_.Await(absl::Condition(&none));
  }

 private:
  absl::Mutex mu_;
  int64_t live_ ABSL_GUARDED_BY(mu_) = 0;
};

// Stubs on --channels separate connections, and what every mode needs to call the gateway.
class Client {
 public:
  Client(const Flags& flags, std::string api_key) : flags_(flags), api_key_(std::move(api_key)) {
    stubs_.reserve(static_cast<size_t>(flags.channels));
    for (int i = 0; i < flags.channels; ++i) {
      grpc::ChannelArguments args;
      // A distinct argument per channel keeps gRPC from sharing one connection between them.
      args.SetInt("musicgw.bench_channel", i);
      stubs_.push_back(v1::MusicGateway::NewStub(
          grpc::CreateCustomChannel(flags.targets[static_cast<size_t>(i) % flags.targets.size()],
                                    grpc::InsecureChannelCredentials(), args)));
    }
  }

  // Every call made through this client has unwound before its channels go.
  ~Client() { live_.WaitForNone(); }
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  v1::MusicGateway::Stub* stub(size_t i) { return stubs_[i % stubs_.size()].get(); }
  LiveCount* live() { return &live_; }
  const Flags& flags() const { return flags_; }

  void Authorize(grpc::ClientContext* context) const {
    context->AddMetadata("authorization", absl::StrCat("Bearer ", api_key_));
  }

  v1::GenerateRequest MakeRequest(int i) const {
    v1::GenerateRequest request;
    request.set_request_id(musicgw::RandomUuid());
    if (flags_.task == "sample") {
      request.mutable_sample()->set_prompt(absl::StrCat("bench sample ", i));
      request.mutable_sample()->set_duration_seconds(2);
    } else {
      request.mutable_text_to_music()->set_prompt(absl::StrCat("bench track ", i));
    }
    return request;
  }

  // Generate then WaitOperation until done; setup for the get and download modes, so a plain
  // blocking call is enough.
  grpc::Status GenerateAndWait(const v1::GenerateRequest& request, absl::Duration timeout,
                               v1::Operation* done) {
    v1::Operation created;
    {
      grpc::ClientContext context;
      Authorize(&context);
      context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
      grpc::Status status = stub(0)->Generate(&context, request, &created);
      if (!status.ok()) return status;
    }
    const absl::Time give_up = absl::Now() + timeout;
    *done = created;
    while (!done->done() && absl::Now() < give_up) {
      grpc::ClientContext context;
      Authorize(&context);
      context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(70));
      v1::WaitOperationRequest wait;
      wait.set_name(created.name());
      wait.mutable_timeout()->set_seconds(60);
      grpc::Status status = stub(0)->WaitOperation(&context, wait, done);
      if (!status.ok()) return status;
    }
    if (!done->done()) return {grpc::StatusCode::DEADLINE_EXCEEDED, "operation not done in time"};
    return grpc::Status::OK;
  }

 private:
  LiveCount live_;  // first: destroyed last
  const Flags& flags_;
  const std::string api_key_;
  std::vector<std::unique_ptr<v1::MusicGateway::Stub>> stubs_;
};

Json Header(const Flags& flags) {
  Json out;
  out["mode"] = flags.mode;
  out["target"] = flags.target;
  out["channels"] = flags.channels;
  return out;
}

// ---------------------------------------------------------------------------------------------
// --mode=generate: Generate then Watch/Wait, --concurrency operations in flight.

class GenerateLoad {
 public:
  explicit GenerateLoad(Client* client) : client_(client), flags_(client->flags()) {}

  Json Run() {
    start_ = absl::Now();
    for (int i = 0; i < flags_.concurrency; ++i) {
      int index;
      {
        absl::MutexLock lock(&mu_);
        index = ClaimNext();
      }
      if (index < 0) break;
      Start(index);
    }
    absl::MutexLock lock(&mu_);
    auto all_done = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return done_ == flags_.ops; };
    mu_.Await(absl::Condition(&all_done));
    const absl::Duration elapsed = absl::Now() - start_;
    Json out = Header(flags_);
    out["scenario"] = flags_.wait ? "generate+wait" : "generate+watch";
    out["task"] = flags_.task;
    out["ops"] = flags_.ops;
    out["concurrency"] = flags_.concurrency;
    out["watchers_per_op"] = flags_.watchers_per_op;
    out["elapsed_s"] = absl::ToDoubleSeconds(elapsed);
    out["completed_per_second"] = flags_.ops / std::max(1e-9, absl::ToDoubleSeconds(elapsed));
    out["generate_ms"] = Distribution(generate_ms_);
    out["to_done_ms"] = Distribution(done_ms_);
    out["watch_events"] = events_;
    Json errors = Json::object();
    for (const auto& [code, count] : errors_) errors[code] = count;
    out["errors"] = errors;
    out["states"] = Json(states_);
    return out;
  }

 private:
  struct Op {
    explicit Op(LiveCount* live) : token(live) {}
    LiveCount::Token token;  // first: released after the contexts
    grpc::ClientContext context;
    v1::GenerateRequest request;
    v1::Operation operation;
    grpc::ClientContext wait_context;
    v1::WaitOperationRequest wait_request;
    v1::Operation wait_result;
    absl::Time start;
    int index = 0;
    int watchers_left = 0;
  };

  // One WatchOperation stream; deletes itself when done.
  class Watcher final : public grpc::ClientReadReactor<v1::OperationEvent> {
   public:
    Watcher(GenerateLoad* load, std::shared_ptr<Op> op, size_t channel)
        : token_(load->client_->live()), load_(load), op_(std::move(op)) {
      load_->client_->Authorize(&context_);
      request_.set_name(op_->operation.name());
      load_->client_->stub(channel)->async()->WatchOperation(&context_, &request_, this);
      StartRead(&event_);
      StartCall();
    }
    void OnReadDone(bool ok) override {
      if (!ok) return;  // OnDone follows
      ++events_;
      if (event_.operation().done()) state_ = event_.operation().state();
      StartRead(&event_);
    }
    void OnDone(const grpc::Status& status) override {
      load_->WatchDone(op_, status, state_, events_);
      delete this;
    }

   private:
    LiveCount::Token token_;  // first: released after the context
    GenerateLoad* load_;
    std::shared_ptr<Op> op_;
    grpc::ClientContext context_;
    v1::WatchOperationRequest request_;
    v1::OperationEvent event_;
    v1::OperationState state_ = v1::OPERATION_STATE_UNSPECIFIED;
    int events_ = 0;
  };

  // The next operation's index, or -1 once all are started.
  int ClaimNext() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return started_ < flags_.ops ? started_++ : -1;
  }

  void Start(int index) {
    auto op = std::make_shared<Op>(client_->live());
    op->index = index;
    op->request = client_->MakeRequest(index);
    op->start = absl::Now();
    client_->Authorize(&op->context);
    op->context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    client_->stub(static_cast<size_t>(index))
        ->async()
        ->Generate(&op->context, &op->request, &op->operation,
                   [this, op](const grpc::Status& status) { Generated(op, status); });
  }

  void Generated(const std::shared_ptr<Op>& op, const grpc::Status& status) {
    {
      absl::MutexLock lock(&mu_);
      generate_ms_.push_back(absl::ToDoubleMilliseconds(absl::Now() - op->start));
    }
    if (!status.ok()) return Finish(op, status, v1::OPERATION_STATE_UNSPECIFIED);
    if (flags_.wait) {
      client_->Authorize(&op->wait_context);
      op->wait_request.set_name(op->operation.name());
      op->wait_request.mutable_timeout()->set_seconds(600);
      client_->stub(static_cast<size_t>(op->index))
          ->async()
          ->WaitOperation(
              &op->wait_context, &op->wait_request, &op->wait_result,
              [this, op](const grpc::Status& s) { Finish(op, s, op->wait_result.state()); });
      return;
    }
    // Read before the first watcher starts: once the last one ends, this object may be gone.
    const int watchers = flags_.watchers_per_op;
    const size_t first_channel = static_cast<size_t>(op->index);
    {
      absl::MutexLock lock(&mu_);
      op->watchers_left = watchers;
    }
    for (int i = 0; i < watchers; ++i) new Watcher(this, op, first_channel + i);
  }

  void WatchDone(const std::shared_ptr<Op>& op, const grpc::Status& status,
                 v1::OperationState state, int events) {
    bool last;
    {
      absl::MutexLock lock(&mu_);
      events_ += events;
      last = --op->watchers_left == 0;
    }
    if (last) Finish(op, status, state);
  }

  // Once done_ reaches --ops, Run() returns and this object is destroyed, so the callback that
  // counts the last operation must not touch it afterwards. The next operation is claimed in the
  // same critical section that counts this one done: a callback that goes on to start another
  // does so while that operation keeps done_ below --ops. (Claiming it after the unlock, as a
  // separate step, locked a mutex the main thread could already have destroyed.)
  void Finish(const std::shared_ptr<Op>& op, const grpc::Status& status, v1::OperationState state) {
    int next;
    {
      absl::MutexLock lock(&mu_);
      next = ClaimNext();
      if (status.ok()) {
        done_ms_.push_back(absl::ToDoubleMilliseconds(absl::Now() - op->start));
        ++states_[v1::OperationState_Name(state)];
      } else {
        ++errors_[absl::StrCat(status.error_code())];
      }
      ++done_;
    }
    if (next >= 0) Start(next);
  }

  Client* client_;
  const Flags& flags_;
  absl::Time start_;

  absl::Mutex mu_;
  int started_ ABSL_GUARDED_BY(mu_) = 0;
  int done_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t events_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<double> generate_ms_ ABSL_GUARDED_BY(mu_);
  std::vector<double> done_ms_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, int> errors_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, int> states_ ABSL_GUARDED_BY(mu_);
};

// ---------------------------------------------------------------------------------------------
// --mode=get: --concurrency callers, each with one GetOperation in flight at a time.

class GetLoad {
 public:
  explicit GetLoad(Client* client) : client_(client), flags_(client->flags()) {}

  Json Run() {
    Json out = Header(flags_);
    out["scenario"] = "get_operation";
    out["concurrency"] = flags_.concurrency;
    if (flags_.operation.empty()) {
      v1::Operation operation;
      grpc::Status setup =
          client_->GenerateAndWait(client_->MakeRequest(0), absl::Minutes(2), &operation);
      if (!setup.ok()) {
        out["error"] = absl::StrCat("setup: ", setup.error_code(), " ", setup.error_message());
        return out;
      }
      name_ = operation.name();
    } else {
      name_ = flags_.operation;
    }
    out["operation"] = name_;
    // The answer as callers see it (the setup's Generate/Wait answers may differ from a read).
    {
      v1::Operation read;
      grpc::ClientContext context;
      client_->Authorize(&context);
      context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
      v1::GetOperationRequest request;
      request.set_name(name_);
      grpc::Status status = client_->stub(0)->GetOperation(&context, request, &read);
      if (!status.ok()) {
        out["error"] =
            absl::StrCat("GetOperation: ", status.error_code(), " ", status.error_message());
        return out;
      }
      out["operation_bytes"] = read.ByteSizeLong();
      out["operation_state"] = v1::OperationState_Name(read.state());
      if (!flags_.save_operation.empty()) {
        std::ofstream file(flags_.save_operation, std::ios::binary | std::ios::trunc);
        if (!read.SerializeToOstream(&file) || !file.flush()) {
          out["error"] = absl::StrCat("cannot write ", flags_.save_operation);
          return out;
        }
      }
    }
    const bool paced = flags_.read_rate > 0;
    callers_.resize(static_cast<size_t>(paced ? 1 : flags_.concurrency));
    const bool counted = flags_.calls > 0 && !paced;
    start_ = absl::Now();
    measure_from_ = counted ? start_ : start_ + absl::Seconds(flags_.warmup_s);
    end_ = counted ? absl::InfiniteFuture() : measure_from_ + absl::Seconds(flags_.duration_s);
    std::thread pacer;
    if (paced) {
      out["read_rate"] = flags_.read_rate;
      pacer = std::thread([this] { Pace(); });
    } else {
      for (size_t i = 0; i < callers_.size(); ++i) {
        if (!Claim()) {
          absl::MutexLock lock(&mu_);
          ++finished_callers_;
          continue;
        }
        Issue(i, absl::Now());
      }
    }
    // Server CPU over the measured window: sampled at its start and once every caller stopped
    // (the calls still in flight at the end add at most --concurrency calls' worth).
    if (!counted) absl::SleepFor(measure_from_ - absl::Now());
    const double server_cpu_start = CpuSeconds(flags_.pids);
    const double own_cpu_start = OwnCpuSeconds();
    {
      absl::MutexLock lock(&mu_);
      auto all_done = [this, paced]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return paced ? paced_all_issued_ && paced_done_ == paced_issued_
                     : finished_callers_ == flags_.concurrency;
      };
      mu_.Await(absl::Condition(&all_done));
    }
    if (pacer.joinable()) pacer.join();
    const double server_cpu = CpuSeconds(flags_.pids) - server_cpu_start;
    const double own_cpu = OwnCpuSeconds() - own_cpu_start;
    std::vector<double> latencies;
    int64_t errors = 0;
    std::map<std::string, int64_t> codes;
    for (const Caller& caller : callers_) {
      latencies.insert(latencies.end(), caller.latency_ms.begin(), caller.latency_ms.end());
      errors += caller.errors;
      for (const auto& [code, n] : caller.codes) codes[code] += n;
    }
    absl::MutexLock lock(&mu_);
    const double seconds = absl::ToDoubleSeconds(last_end_ - measure_from_);
    const auto calls = static_cast<int64_t>(latencies.size());
    if (!counted) out["warmup_s"] = flags_.warmup_s;
    out["measured_s"] = seconds;
    out["calls"] = calls;
    out["calls_per_second"] = static_cast<double>(calls) / std::max(1e-9, seconds);
    Json latency = Distribution(latencies);
    latency["p999"] = Percentile(latencies, 0.999);
    out["latency_ms"] = latency;
    out["errors"] = errors;
    out["error_codes"] = Json(codes);
    if (!flags_.pids.empty() && server_cpu_start >= 0) {
      out["server_cpu_s"] = server_cpu;
      out["server_cpu_us_per_call"] =
          server_cpu * 1e6 / static_cast<double>(std::max<int64_t>(1, calls));
    }
    out["client_cpu_us_per_call"] =
        own_cpu * 1e6 / static_cast<double>(std::max<int64_t>(1, calls));
    return out;
  }

 private:
  // One caller's results; only its own (serialized) callbacks touch it.
  struct Caller {
    std::vector<double> latency_ms;
    int64_t errors = 0;
    std::map<std::string, int64_t> codes;
  };
  struct Call {
    explicit Call(LiveCount* live) : token(live) {}
    LiveCount::Token token;  // first: released after the context
    grpc::ClientContext context;
    v1::GetOperationRequest request;
    v1::Operation response;
    absl::Time start;
  };

  // With --calls, whether another call may start (each caller claims its calls one at a time).
  bool Claim() { return flags_.calls <= 0 || claimed_.fetch_add(1) < flags_.calls; }

  // --read_rate: one call every 1/rate from the start to the end of the measured window, on
  // the channels in turn, whether or not the earlier ones were answered.
  void Pace() {
    const absl::Duration interval = absl::Seconds(1.0 / flags_.read_rate);
    int64_t issued = 0;
    for (absl::Time due = start_; due < end_; due += interval) {
      const absl::Time now = absl::Now();
      if (due > now) absl::SleepFor(due - now);
      {
        absl::MutexLock lock(&mu_);
        ++paced_issued_;
      }
      Issue(static_cast<size_t>(issued++ % flags_.channels), due);
    }
    absl::MutexLock lock(&mu_);
    paced_all_issued_ = true;
    last_end_ = end_;
  }

  // `start`: when the call was due (now, for back-to-back callers).
  void Issue(size_t channel, absl::Time start) {
    auto call = std::make_shared<Call>(client_->live());
    client_->Authorize(&call->context);
    call->context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    call->request.set_name(name_);
    call->start = start;
    client_->stub(channel)->async()->GetOperation(
        &call->context, &call->request, &call->response,
        [this, channel, call](const grpc::Status& status) { Done(channel, *call, status); });
  }

  void Done(size_t caller, const Call& call, const grpc::Status& status) {
    const absl::Time now = absl::Now();
    if (flags_.read_rate > 0) {
      // Open loop: every call due in the window counts, however late its answer.
      absl::MutexLock lock(&mu_);
      Caller& c = callers_[0];
      if (call.start >= measure_from_) {
        if (status.ok()) {
          c.latency_ms.push_back(absl::ToDoubleMilliseconds(now - call.start));
        } else {
          ++c.errors;
          ++c.codes[absl::StrCat(status.error_code())];
        }
      }
      ++paced_done_;
      return;
    }
    Caller& c = callers_[caller];
    if (call.start >= measure_from_ && now <= end_) {
      if (status.ok()) {
        c.latency_ms.push_back(absl::ToDoubleMilliseconds(now - call.start));
      } else {
        ++c.errors;
        ++c.codes[absl::StrCat(status.error_code())];
      }
    }
    if (now < end_ && Claim()) return Issue(caller, absl::Now());
    // The last touch of this object by this caller: Run() may return once it is counted.
    absl::MutexLock lock(&mu_);
    ++finished_callers_;
    last_end_ = std::max(last_end_, std::min(now, end_));
  }

  Client* client_;
  const Flags& flags_;
  std::string name_;
  std::vector<Caller> callers_;
  absl::Time start_;
  absl::Time measure_from_;
  absl::Time end_;
  std::atomic<int64_t> claimed_{0};

  absl::Mutex mu_;
  int finished_callers_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t paced_issued_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t paced_done_ ABSL_GUARDED_BY(mu_) = 0;
  bool paced_all_issued_ ABSL_GUARDED_BY(mu_) = false;
  absl::Time last_end_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
};

// ---------------------------------------------------------------------------------------------
// --flood_rate: another tenant's Generate calls at a fixed rate (open loop), counted by code.

class Flooder {
 public:
  Flooder(Client* client, double rate) : client_(client), rate_(rate) {}
  ~Flooder() { Stop(); }
  Flooder(const Flooder&) = delete;
  Flooder& operator=(const Flooder&) = delete;

  void Start() {
    start_ = absl::Now();
    thread_ = std::thread([this] { Run(); });
  }

  // Stops sending; returns once every call sent has been answered.
  Json Stop() {
    stop_.store(true);
    if (thread_.joinable()) thread_.join();
    client_->live()->WaitForNone();
    absl::MutexLock lock(&mu_);
    Json out;
    out["rate_per_second"] = rate_;
    out["sent"] = sent_;
    out["seconds"] = absl::ToDoubleSeconds(stopped_ - start_);
    out["codes"] = Json(codes_);
    return out;
  }

 private:
  struct Call {
    explicit Call(LiveCount* live) : token(live) {}
    LiveCount::Token token;  // first: released after the context
    grpc::ClientContext context;
    v1::GenerateRequest request;
    v1::Operation response;
  };

  void Run() {
    const absl::Duration interval = absl::Seconds(1.0 / rate_);
    absl::Time next = absl::Now();
    int i = 0;
    while (!stop_.load()) {
      auto call = std::make_shared<Call>(client_->live());
      client_->Authorize(&call->context);
      call->context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
      call->request = client_->MakeRequest(i++);
      client_->stub(0)->async()->Generate(
          &call->context, &call->request, &call->response,
          [this, call](const grpc::Status& status) {
            absl::MutexLock lock(&mu_);
            ++codes_[status.ok() ? std::string("OK") : absl::StrCat(status.error_code())];
          });
      {
        absl::MutexLock lock(&mu_);
        ++sent_;
      }
      // Open loop: the schedule does not wait for answers; behind schedule, no sleep.
      next += interval;
      absl::SleepFor(next - absl::Now());
    }
    absl::MutexLock lock(&mu_);
    stopped_ = absl::Now();
  }

  Client* client_;
  const double rate_;
  absl::Time start_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  absl::Mutex mu_;
  int64_t sent_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::string, int64_t> codes_ ABSL_GUARDED_BY(mu_);
  absl::Time stopped_ ABSL_GUARDED_BY(mu_);
};

// ---------------------------------------------------------------------------------------------
// --mode=watch_fanout: --ops live operations, --watchers_per_op streams on each.

class FanoutLoad {
 public:
  explicit FanoutLoad(Client* client, RssSampler* rss)
      : client_(client), flags_(client->flags()), rss_(rss) {}

  Json Run() {
    Json out = Header(flags_);
    out["scenario"] = "watch_fanout";
    out["task"] = flags_.task;
    out["ops"] = flags_.ops;
    out["watchers_per_op"] = flags_.watchers_per_op;
    out["processing_ms"] = flags_.processing_ms;
    rss_->Start();
    const auto [rss_before, hwm_before] = rss_->Read();
    out["rss_before_mb"] = rss_before / 1024.0;

    // Phase 1: the live operations.
    const absl::Time t0 = absl::Now();
    ops_.resize(static_cast<size_t>(flags_.ops));
    for (int i = 0; i < std::min(flags_.concurrency, flags_.ops); ++i) GenerateNext();
    {
      absl::MutexLock lock(&mu_);
      auto generated = [this]()
                           ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return generated_ == flags_.ops; };
      mu_.Await(absl::Condition(&generated));
    }
    const absl::Time t1 = absl::Now();
    out["generate_s"] = absl::ToDoubleSeconds(t1 - t0);
    out["generate_errors"] = generate_errors_;

    // Phase 2: every watcher opened at once; the callback API needs no thread per stream.
    const int total = flags_.ops * flags_.watchers_per_op;
    std::vector<std::unique_ptr<grpc::CompletionQueue>> cqs;
    std::vector<std::thread> cq_threads;
    for (int q = 0; q < flags_.watch_cqs; ++q) {
      cqs.push_back(std::make_unique<grpc::CompletionQueue>());
      cq_threads.emplace_back([cq = cqs.back().get()] {
        void* tag = nullptr;
        bool ok = false;
        while (cq->Next(&tag, &ok)) static_cast<AsyncWatcher*>(tag)->Proceed(ok);
      });
    }
    int started = 0;
    for (int w = 0; w < flags_.watchers_per_op; ++w) {
      for (size_t i = 0; i < ops_.size(); ++i) {
        if (ops_[i].name.empty()) continue;
        if (cqs.empty()) {
          new Watcher(this, i, static_cast<size_t>(started));
        } else {
          new AsyncWatcher(this, i, static_cast<size_t>(started),
                           cqs[static_cast<size_t>(started) % cqs.size()].get());
        }
        ++started;
      }
    }
    {
      absl::MutexLock lock(&mu_);
      started_ = started;
      auto opened = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return opened_ + closed_before_open_ >= started_;
      };
      mu_.Await(absl::Condition(&opened));
    }
    const absl::Time t2 = absl::Now();
    const auto [rss_open, hwm_open] = rss_->Read();
    out["open_s"] = absl::ToDoubleSeconds(t2 - t1);
    out["rss_all_open_mb"] = rss_open / 1024.0;
    {
      absl::MutexLock lock(&mu_);
      auto closed = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return closed_ >= started_; };
      mu_.Await(absl::Condition(&closed));
    }
    const absl::Time t3 = absl::Now();
    rss_->Stop();
    for (auto& cq : cqs) cq->Shutdown();
    for (auto& thread : cq_threads) thread.join();
    out["watch_cqs"] = flags_.watch_cqs;
    out["watchers"] = total;
    out["watchers_started"] = started;
    out["wall_s"] = absl::ToDoubleSeconds(t3 - t0);

    absl::MutexLock lock(&mu_);
    out["watchers_opened"] = opened_;
    out["watchers_terminal"] = terminal_;
    out["watchers_opened_after_done"] = late_;
    out["stream_end_codes"] = Json(end_codes_);
    // A planned hold that ends early (say, at the gateway's operation deadline) shows here.
    out["terminal_states"] = Json(terminal_states_);
    // Per watcher, from the gateway's done_time (when it saw the upstream terminal answer) and
    // from the first watcher of the same operation to see it.
    std::vector<double> from_done;
    std::vector<double> from_first;
    std::vector<double> op_last_from_done;
    std::vector<double> detect;
    from_done.reserve(static_cast<size_t>(total));
    from_first.reserve(static_cast<size_t>(total));
    op_last_from_done.reserve(ops_.size());
    detect.reserve(ops_.size());
    absl::Time first_done = absl::InfiniteFuture();
    absl::Time last_arrival = absl::InfinitePast();
    for (const OpState& op : ops_) {
      if (op.arrivals.empty() || op.done_time == absl::InfinitePast()) continue;
      const absl::Time first = *std::min_element(op.arrivals.begin(), op.arrivals.end());
      absl::Time last = absl::InfinitePast();
      for (absl::Time arrival : op.arrivals) {
        from_done.push_back(absl::ToDoubleMilliseconds(arrival - op.done_time));
        from_first.push_back(absl::ToDoubleMilliseconds(arrival - first));
        last = std::max(last, arrival);
      }
      op_last_from_done.push_back(absl::ToDoubleMilliseconds(last - op.done_time));
      // How long after the emulator's planned completion (create + processing) the gateway
      // stamped done: an upper bound on detection delay (it includes submission queueing).
      if (flags_.processing_ms > 0) {
        detect.push_back(absl::ToDoubleMilliseconds(
            op.done_time - (op.create_time + absl::Milliseconds(flags_.processing_ms))));
      }
      first_done = std::min(first_done, op.done_time);
      last_arrival = std::max(last_arrival, last);
    }
    out["fanout_from_done_time_ms"] = Distribution(from_done);
    out["fanout_from_first_watcher_ms"] = Distribution(from_first);
    out["op_last_watcher_from_done_time_ms"] = Distribution(op_last_from_done);
    if (!detect.empty()) out["done_time_after_planned_completion_ms"] = Distribution(detect);
    out["first_done_to_last_terminal_s"] =
        first_done < last_arrival ? absl::ToDoubleSeconds(last_arrival - first_done) : 0.0;
    out["completion_window_s"] = first_done < last_arrival
                                     ? absl::ToDoubleSeconds(completion_window_end_ - first_done)
                                     : 0.0;
    if (rss_->enabled()) out["rss"] = rss_->Report();
    return out;
  }

 private:
  struct OpState {
    std::string name;
    absl::Time create_time = absl::InfinitePast();
    absl::Time done_time = absl::InfinitePast();
    std::vector<absl::Time> arrivals;
  };
  struct GenerateCall {
    explicit GenerateCall(LiveCount* live) : token(live) {}
    LiveCount::Token token;  // first: released after the context
    grpc::ClientContext context;
    v1::GenerateRequest request;
    v1::Operation operation;
    size_t index = 0;
  };

  // What a watcher keeps and tells the load, on either API: its call, and whether it opened,
  // saw its operation's terminal state, or opened after it.
  class WatchState {
   protected:
    WatchState(FanoutLoad* load, size_t op) : token_(load->client_->live()), load_(load), op_(op) {
      load_->client_->Authorize(&context_);
      context_.set_deadline(std::chrono::system_clock::now() + std::chrono::minutes(15));
      request_.set_name(load_->ops_[op].name);
    }

    // After each event read into event_.
    void OnEvent() {
      const absl::Time now = absl::Now();
      const bool done = event_.has_operation() && event_.operation().done();
      if (!opened_) {
        opened_ = true;
        load_->Opened(done);
        if (done) late_ = true;
      }
      if (done && !late_ && !terminal_) {
        terminal_ = true;
        load_->Terminal(op_, now, event_.operation());
      }
    }

    void OnClosed(const grpc::Status& status) { load_->Closed(opened_, status); }

    LiveCount::Token token_;  // first: released after the context
    FanoutLoad* load_;
    grpc::ClientContext context_;
    v1::WatchOperationRequest request_;
    v1::OperationEvent event_;

   private:
    const size_t op_;
    bool opened_ = false;
    bool late_ = false;
    bool terminal_ = false;
  };

  class Watcher final : public grpc::ClientReadReactor<v1::OperationEvent>, private WatchState {
   public:
    Watcher(FanoutLoad* load, size_t op, size_t channel) : WatchState(load, op) {
      load_->client_->stub(channel)->async()->WatchOperation(&context_, &request_, this);
      StartRead(&event_);
      StartCall();
    }
    void OnReadDone(bool ok) override {
      if (!ok) return;  // OnDone follows
      OnEvent();
      StartRead(&event_);
    }
    void OnDone(const grpc::Status& status) override {
      OnClosed(status);
      delete this;
    }
  };

  // The same watcher on the async API: one operation outstanding at a time (start, each read,
  // then the status), its tag the watcher itself.
  class AsyncWatcher final : private WatchState {
   public:
    AsyncWatcher(FanoutLoad* load, size_t op, size_t channel, grpc::CompletionQueue* cq)
        : WatchState(load, op) {
      reader_ = load_->client_->stub(channel)->PrepareAsyncWatchOperation(&context_, request_, cq);
      reader_->StartCall(this);
    }
    void Proceed(bool ok) {
      if (finishing_) {
        OnClosed(status_);
        delete this;
        return;
      }
      if (!ok) {
        finishing_ = true;
        reader_->Finish(&status_, this);
        return;
      }
      if (started_) OnEvent();
      started_ = true;
      reader_->Read(&event_, this);
    }

   private:
    std::unique_ptr<grpc::ClientAsyncReader<v1::OperationEvent>> reader_;
    grpc::Status status_;
    bool started_ = false;
    bool finishing_ = false;
  };

  void GenerateNext() {
    auto call = std::make_shared<GenerateCall>(client_->live());
    {
      absl::MutexLock lock(&mu_);
      if (generate_started_ >= flags_.ops) return;
      call->index = static_cast<size_t>(generate_started_++);
    }
    call->request = client_->MakeRequest(static_cast<int>(call->index));
    client_->Authorize(&call->context);
    call->context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    client_->stub(call->index)
        ->async()
        ->Generate(&call->context, &call->request, &call->operation,
                   [this, call](const grpc::Status& status) {
                     {
                       absl::MutexLock lock(&mu_);
                       if (status.ok()) {
                         ops_[call->index].name = call->operation.name();
                         ops_[call->index].create_time = FromProto(call->operation.create_time());
                       } else {
                         ++generate_errors_;
                       }
                       ++generated_;
                     }
                     GenerateNext();
                   });
  }

  void Opened(bool already_done) {
    absl::MutexLock lock(&mu_);
    ++opened_;
    if (already_done) ++late_;
  }

  void Terminal(size_t op, absl::Time now, const v1::Operation& operation) {
    absl::MutexLock lock(&mu_);
    ++terminal_;
    ++terminal_states_[v1::OperationState_Name(operation.state())];
    OpState& state = ops_[op];
    if (operation.has_done_time()) state.done_time = FromProto(operation.done_time());
    state.arrivals.push_back(now);
    completion_window_end_ = std::max(completion_window_end_, state.done_time);
  }

  void Closed(bool opened, const grpc::Status& status) {
    absl::MutexLock lock(&mu_);
    ++closed_;
    if (!opened) ++closed_before_open_;
    ++end_codes_[absl::StrCat(status.error_code())];
  }

  Client* client_;
  const Flags& flags_;
  RssSampler* rss_;
  std::vector<OpState> ops_;  // sized before any callback runs; entries guarded by mu_

  absl::Mutex mu_;
  int generate_started_ ABSL_GUARDED_BY(mu_) = 0;
  int generated_ ABSL_GUARDED_BY(mu_) = 0;
  int generate_errors_ ABSL_GUARDED_BY(mu_) = 0;
  int started_ ABSL_GUARDED_BY(mu_) = 1 << 30;  // set once every watcher is created
  int opened_ ABSL_GUARDED_BY(mu_) = 0;
  int late_ ABSL_GUARDED_BY(mu_) = 0;
  int terminal_ ABSL_GUARDED_BY(mu_) = 0;
  int closed_ ABSL_GUARDED_BY(mu_) = 0;
  int closed_before_open_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Time completion_window_end_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  std::map<std::string, int> end_codes_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, int> terminal_states_ ABSL_GUARDED_BY(mu_);
};

// ---------------------------------------------------------------------------------------------
// --mode=download: one long remix_instrumental, then --repeat Download streams of its asset.

class DownloadRun final : public grpc::ClientReadReactor<v1::DownloadChunk> {
 public:
  DownloadRun(Client* client, const std::string& asset, bool verify) : verify_(verify) {
    client->Authorize(&context_);
    context_.set_deadline(std::chrono::system_clock::now() + std::chrono::minutes(30));
    request_.set_asset(asset);
    if (verify_) {
      sha_ = EVP_MD_CTX_new();
      if (sha_ != nullptr && EVP_DigestInit_ex(sha_, EVP_sha256(), nullptr) != 1) {
        EVP_MD_CTX_free(sha_);
        sha_ = nullptr;
      }
    }
    start_ = absl::Now();
    client->stub(0)->async()->Download(&context_, &request_, this);
    StartRead(&chunk_);
    StartCall();
  }
  ~DownloadRun() override {
    if (sha_ != nullptr) EVP_MD_CTX_free(sha_);
  }
  DownloadRun(const DownloadRun&) = delete;
  DownloadRun& operator=(const DownloadRun&) = delete;

  void OnReadDone(bool ok) override {
    if (!ok) return;
    if (chunk_.has_info()) {
      info_ = chunk_.info();
      first_byte_ = absl::Now();
    } else {
      bytes_ += static_cast<int64_t>(chunk_.data().size());
      ++chunks_;
      if (sha_ != nullptr) EVP_DigestUpdate(sha_, chunk_.data().data(), chunk_.data().size());
    }
    StartRead(&chunk_);
  }
  void OnDone(const grpc::Status& status) override {
    end_ = absl::Now();
    status_ = status;
    done_.Notify();
  }

  Json Wait() {
    done_.WaitForNotification();
    Json out;
    const double seconds = absl::ToDoubleSeconds(end_ - start_);
    out["status"] =
        status_.ok() ? "OK" : absl::StrCat(status_.error_code(), " ", status_.error_message());
    out["bytes"] = bytes_;
    out["chunks"] = chunks_;
    out["seconds"] = seconds;
    out["mb_per_s"] = static_cast<double>(bytes_) / 1e6 / std::max(1e-9, seconds);
    out["first_message_ms"] = absl::ToDoubleMilliseconds(first_byte_ - start_);
    out["size_bytes_announced"] = info_.size_bytes();
    out["sha256"] = info_.sha256();  // as announced
    out["in_custody"] = info_.in_custody();
    if (sha_ != nullptr) {
      unsigned char md[EVP_MAX_MD_SIZE];
      unsigned int md_len = 0;
      EVP_DigestFinal_ex(sha_, md, &md_len);
      const std::string digest =
          absl::BytesToHexString(absl::string_view(reinterpret_cast<const char*>(md), md_len));
      out["sha256_announced"] = !info_.sha256().empty();
      out["sha256_ok"] = info_.sha256().empty() ? Json(nullptr) : Json(info_.sha256() == digest);
    }
    return out;
  }

  bool ok() const { return status_.ok(); }

 private:
  const bool verify_;
  grpc::ClientContext context_;
  v1::DownloadRequest request_;
  v1::DownloadChunk chunk_;
  v1::AssetInfo info_;
  EVP_MD_CTX* sha_ = nullptr;
  int64_t bytes_ = 0;
  int64_t chunks_ = 0;
  absl::Time start_;
  absl::Time first_byte_;
  absl::Time end_;
  grpc::Status status_;
  absl::Notification done_;
};

Json RunDownload(Client* client, RssSampler* rss) {
  const Flags& flags = client->flags();
  Json out = Header(flags);
  out["scenario"] = "download";
  out["source_seconds"] = flags.source_seconds;
  std::string asset = flags.asset;
  if (asset.empty()) {
    v1::GenerateRequest request;
    request.set_request_id(musicgw::RandomUuid());
    request.mutable_remix_instrumental()->mutable_source()->set_url(
        absl::StrCat("https://bench.example/source.flac?duration=", flags.source_seconds));
    v1::Operation operation;
    grpc::Status setup = client->GenerateAndWait(request, absl::Minutes(5), &operation);
    if (!setup.ok() || operation.state() != v1::OPERATION_STATE_SUCCEEDED ||
        operation.outputs_size() == 0) {
      out["error"] = absl::StrCat("setup: ", setup.error_code(), " ", setup.error_message(), " ",
                                  v1::OperationState_Name(operation.state()));
      return out;
    }
    asset = operation.outputs(0).name();
  }
  out["asset"] = asset;
  Json runs = Json::array();
  std::vector<double> rates;
  std::vector<double> growth;
  for (int i = 0; i < flags.repeat; ++i) {
    rss->Start();
    // The last run checks the sha256 the gateway announces (learnt on the first full download);
    // the others only count bytes, so the client's hashing does not compete for the CPU.
    const double cpu_start = CpuSeconds(flags.pids);
    const double own_cpu_start = OwnCpuSeconds();
    DownloadRun run(client, asset, /*verify=*/!flags.no_verify && i == flags.repeat - 1);
    Json result = run.Wait();
    const double cpu_end = CpuSeconds(flags.pids);
    // The receiving side's own cost: on a shared machine it bounds the rate as much as the server.
    result["client_cpu_s"] = OwnCpuSeconds() - own_cpu_start;
    rss->Stop();
    if (cpu_start >= 0 && cpu_end >= 0) result["server_cpu_s"] = cpu_end - cpu_start;
    result["verified"] = !flags.no_verify && i == flags.repeat - 1;
    if (rss->enabled()) result["rss"] = rss->Report();
    // The first run also renders and caches the file in the emulator unless --data_dir has it
    // (with --asset, the caller warmed it already).
    result["run"] = i + 1;
    if (run.ok() && (i > 0 || !flags.asset.empty())) {
      rates.push_back(result["mb_per_s"].get<double>());
      if (rss->enabled()) growth.push_back(result["rss"]["rss_growth_mb"].get<double>());
    }
    runs.push_back(std::move(result));
  }
  out["runs"] = runs;
  out["warm_mb_per_s_median"] = Percentile(rates, 0.5);
  out["warm_mb_per_s_best"] = rates.empty() ? 0 : *std::max_element(rates.begin(), rates.end());
  out["warm_rss_growth_mb_max"] =
      growth.empty() ? 0 : *std::max_element(growth.begin(), growth.end());
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  // The distribution's Abseil is built with mutex deadlock detection on (a cycle-graph update per
  // lock); the load generator shares the cores with the gateway, so it does without.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  const Flags flags = Parse(argc, argv);
  const char* key = std::getenv("MUSICGW_API_KEY");
  if (key == nullptr || *key == '\0') {
    std::fprintf(stderr, "grpc_load: set MUSICGW_API_KEY\n");
    return 2;
  }
  Client client(flags, key);
  RssSampler rss(flags.pids, absl::Milliseconds(std::max(1, flags.rss_interval_ms)));
  Json out;
  // Each load waits, before it is destroyed, until its calls have unwound on gRPC's threads.
  if (flags.mode == "generate") {
    GenerateLoad load(&client);
    out = load.Run();
    client.live()->WaitForNone();
  } else if (flags.mode == "get") {
    GetLoad load(&client);
    out = load.Run();
    client.live()->WaitForNone();
  } else if (flags.mode == "flood") {
    if (flags.flood_rate <= 0) {
      std::fprintf(stderr, "grpc_load: --mode=flood needs --flood_rate\n");
      return 2;
    }
    Flooder flooder(&client, flags.flood_rate);
    flooder.Start();
    absl::SleepFor(absl::Seconds(flags.duration_s));
    out = flooder.Stop();
  } else if (flags.mode == "watch_fanout") {
    FanoutLoad load(&client, &rss);
    out = load.Run();
    client.live()->WaitForNone();
  } else if (flags.mode == "download") {
    out = RunDownload(&client, &rss);
  } else {
    std::fprintf(stderr,
                 "grpc_load: unknown --mode=%s (generate|get|flood|watch_fanout|download)\n",
                 flags.mode.c_str());
    return 2;
  }
  std::printf("%s\n", out.dump().c_str());
  return out.contains("error") ? 1 : 0;
}
