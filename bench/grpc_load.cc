// A load generator for a running gateway, on the gRPC callback client API (no thread per
// call): keeps --concurrency operations in flight, each Generate followed by WatchOperation
// (or WaitOperation with --wait) until done, and reports throughput and latency as JSON.
//
//   MUSICGW_API_KEY=... grpc_load --target=127.0.0.1:50051 --ops=1000 --concurrency=100
//       [--task=text|sample] [--wait] [--watchers_per_op=1]
//
// The API key comes from the environment only, never the command line (it would show in ps).
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/crypto.h"
#include "musicgw/v1/musicgw.grpc.pb.h"
#include "nlohmann/json.hpp"

namespace {

namespace v1 = musicgw::v1;

struct Flags {
  std::string target = "127.0.0.1:50051";
  int ops = 200;
  int concurrency = 20;
  std::string task = "text";
  bool wait = false;
  int watchers_per_op = 1;
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
    if (auto v = value("target")) flags.target = *v;
    if (auto v = value("ops")) absl::SimpleAtoi(*v, &flags.ops);
    if (auto v = value("concurrency")) absl::SimpleAtoi(*v, &flags.concurrency);
    if (auto v = value("task")) flags.task = *v;
    if (auto v = value("watchers_per_op")) absl::SimpleAtoi(*v, &flags.watchers_per_op);
    if (arg == "--wait") flags.wait = true;
  }
  flags.watchers_per_op = std::max(1, flags.watchers_per_op);
  return flags;
}

double Percentile(std::vector<double> values, double p) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  return values[std::min(values.size() - 1, static_cast<size_t>(p * values.size()))];
}

class Load {
 public:
  Load(Flags flags, std::shared_ptr<grpc::Channel> channel, std::string api_key)
      : flags_(std::move(flags)),
        stub_(v1::MusicGateway::NewStub(std::move(channel))),
        api_key_(std::move(api_key)) {}

  void Run() {
    start_ = absl::Now();
    for (int i = 0; i < flags_.concurrency; ++i) StartNext();
    absl::MutexLock lock(&mu_);
    auto all_done = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return done_ == flags_.ops; };
    mu_.Await(absl::Condition(&all_done));
    elapsed_ = absl::Now() - start_;
  }

  void Report() {
    absl::MutexLock lock(&mu_);
    nlohmann::ordered_json out;
    out["scenario"] = flags_.wait ? "generate+wait" : "generate+watch";
    out["target"] = flags_.target;
    out["ops"] = flags_.ops;
    out["concurrency"] = flags_.concurrency;
    out["watchers_per_op"] = flags_.watchers_per_op;
    out["elapsed_s"] = absl::ToDoubleSeconds(elapsed_);
    out["completed_per_second"] = flags_.ops / std::max(1e-9, absl::ToDoubleSeconds(elapsed_));
    out["generate_ms_p50"] = Percentile(generate_ms_, 0.5);
    out["generate_ms_p99"] = Percentile(generate_ms_, 0.99);
    out["to_done_ms_p50"] = Percentile(done_ms_, 0.5);
    out["to_done_ms_p99"] = Percentile(done_ms_, 0.99);
    out["watch_events"] = events_;
    nlohmann::ordered_json errors = nlohmann::ordered_json::object();
    for (const auto& [code, count] : errors_) errors[code] = count;
    out["errors"] = errors;
    out["states"] = nlohmann::ordered_json(states_);
    std::printf("%s\n", out.dump().c_str());
  }

 private:
  struct Op {
    grpc::ClientContext context;
    v1::GenerateRequest request;
    v1::Operation operation;
    absl::Time start;
    int watchers_left = 0;
  };

  // One WatchOperation stream; deletes itself when done.
  class Watcher final : public grpc::ClientReadReactor<v1::OperationEvent> {
   public:
    Watcher(Load* load, std::shared_ptr<Op> op) : load_(load), op_(std::move(op)) {
      load_->Authorize(&context_);
      request_.set_name(op_->operation.name());
      load_->stub_->async()->WatchOperation(&context_, &request_, this);
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
    Load* load_;
    std::shared_ptr<Op> op_;
    grpc::ClientContext context_;
    v1::WatchOperationRequest request_;
    v1::OperationEvent event_;
    v1::OperationState state_ = v1::OPERATION_STATE_UNSPECIFIED;
    int events_ = 0;
  };

  void Authorize(grpc::ClientContext* context) {
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

  void StartNext() {
    int index;
    {
      absl::MutexLock lock(&mu_);
      if (started_ >= flags_.ops) return;
      index = started_++;
    }
    auto op = std::make_shared<Op>();
    op->request = MakeRequest(index);
    op->start = absl::Now();
    Authorize(&op->context);
    op->context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    stub_->async()->Generate(&op->context, &op->request, &op->operation,
                             [this, op](const grpc::Status& status) { Generated(op, status); });
  }

  void Generated(const std::shared_ptr<Op>& op, const grpc::Status& status) {
    {
      absl::MutexLock lock(&mu_);
      generate_ms_.push_back(absl::ToDoubleMilliseconds(absl::Now() - op->start));
    }
    if (!status.ok()) return Finish(op, status, v1::OPERATION_STATE_UNSPECIFIED);
    if (flags_.wait) {
      auto wait = std::make_shared<std::pair<grpc::ClientContext, v1::WaitOperationRequest>>();
      auto result = std::make_shared<v1::Operation>();
      Authorize(&wait->first);
      wait->second.set_name(op->operation.name());
      wait->second.mutable_timeout()->set_seconds(600);
      stub_->async()->WaitOperation(
          &wait->first, &wait->second, result.get(),
          [this, op, wait, result](const grpc::Status& s) { Finish(op, s, result->state()); });
      return;
    }
    {
      absl::MutexLock lock(&mu_);
      op->watchers_left = flags_.watchers_per_op;
    }
    for (int i = 0; i < flags_.watchers_per_op; ++i) new Watcher(this, op);
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

  void Finish(const std::shared_ptr<Op>& op, const grpc::Status& status, v1::OperationState state) {
    {
      absl::MutexLock lock(&mu_);
      if (status.ok()) {
        done_ms_.push_back(absl::ToDoubleMilliseconds(absl::Now() - op->start));
        ++states_[v1::OperationState_Name(state)];
      } else {
        ++errors_[absl::StrCat(status.error_code())];
      }
      ++done_;
    }
    StartNext();
  }

  const Flags flags_;
  std::unique_ptr<v1::MusicGateway::Stub> stub_;
  const std::string api_key_;
  absl::Time start_;

  absl::Mutex mu_;
  int started_ ABSL_GUARDED_BY(mu_) = 0;
  int done_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t events_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Duration elapsed_ ABSL_GUARDED_BY(mu_);
  std::vector<double> generate_ms_ ABSL_GUARDED_BY(mu_);
  std::vector<double> done_ms_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, int> errors_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, int> states_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

int main(int argc, char** argv) {
  const Flags flags = Parse(argc, argv);
  const char* key = std::getenv("MUSICGW_API_KEY");
  if (key == nullptr || *key == '\0') {
    std::fprintf(stderr, "grpc_load: set MUSICGW_API_KEY\n");
    return 2;
  }
  grpc::ChannelArguments args;
  // One connection is the realistic worst case for a single client process.
  auto channel = grpc::CreateCustomChannel(flags.target, grpc::InsecureChannelCredentials(), args);
  Load load(flags, channel, key);
  load.Run();
  load.Report();
  return 0;
}
