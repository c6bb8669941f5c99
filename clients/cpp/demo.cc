// musicgw-demo: the sandbox walk-through. Generates one Loudly track and one Soundpiece sample,
// prints every status change the gateway streams, and saves the audio files.
//
//   MUSICGW_API_KEY=... musicgw-demo --target=127.0.0.1:50051 --out_dir=sandbox-out
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/crypto.h"
#include "common/errors.h"
#include "grpcpp/grpcpp.h"
#include "musicgw/v1/musicgw.grpc.pb.h"

ABSL_FLAG(std::string, target, "127.0.0.1:50051", "musicgw address");
ABSL_FLAG(std::string, api_key_env, "MUSICGW_API_KEY", "environment variable holding the API key");
ABSL_FLAG(std::string, out_dir, "sandbox-out", "where to save the audio");
ABSL_FLAG(int, timeout_seconds, 120, "give up after this long");

namespace {

using musicgw::v1::MusicGateway;

struct Job {
  std::string label;
  musicgw::v1::GenerateRequest request;
  musicgw::v1::Operation operation;
};

void Authorize(grpc::ClientContext* context, const std::string& key, absl::Duration timeout) {
  context->AddMetadata("authorization", "Bearer " + key);
  context->set_deadline(std::chrono::system_clock::now() + absl::ToChronoSeconds(timeout));
}

std::string Describe(const grpc::Status& status) {
  const absl::Status rich = musicgw::FromGrpcStatus(status);
  google::rpc::ErrorInfo info;
  std::string text =
      absl::StrCat(static_cast<int>(status.error_code()), " ", status.error_message());
  if (musicgw::GetErrorInfo(rich, &info)) absl::StrAppend(&text, " [", info.reason(), "]");
  return text;
}

// Streams status changes until the operation is done; returns its final snapshot.
bool Watch(MusicGateway::Stub& stub, const std::string& key, Job& job, absl::Duration timeout) {
  grpc::ClientContext context;
  Authorize(&context, key, timeout);
  musicgw::v1::WatchOperationRequest request;
  request.set_name(job.operation.name());
  auto reader = stub.WatchOperation(&context, request);
  musicgw::v1::OperationEvent event;
  while (reader->Read(&event)) {
    if (event.kind() == musicgw::v1::OperationEvent::KIND_HEARTBEAT) continue;
    const auto& op = event.operation();
    // Two watches print at once: one line at a time.
    static std::mutex print_mu;
    std::lock_guard<std::mutex> lock(print_mu);
    std::cout << "  [" << job.label << "] " << musicgw::v1::OperationState_Name(op.state())
              << "  seq=" << op.sequence()
              << (op.upstream_id().empty() ? "" : "  upstream=" + op.upstream_id()) << "\n";
    job.operation = op;
  }
  grpc::Status status = reader->Finish();
  if (!status.ok()) {
    std::cerr << "watch " << job.label << " failed: " << Describe(status) << "\n";
    return false;
  }
  return job.operation.done();
}

bool Download(MusicGateway::Stub& stub, const std::string& key, const musicgw::v1::Asset& asset,
              const std::filesystem::path& path) {
  grpc::ClientContext context;
  Authorize(&context, key, absl::Minutes(5));
  musicgw::v1::DownloadRequest request;
  request.set_asset(asset.name());
  auto reader = stub.Download(&context, request);
  std::ofstream out(path, std::ios::binary);
  musicgw::v1::DownloadChunk chunk;
  int64_t bytes = 0;
  while (reader->Read(&chunk)) {
    if (chunk.has_info()) continue;
    out.write(chunk.data().data(), static_cast<std::streamsize>(chunk.data().size()));
    bytes += static_cast<int64_t>(chunk.data().size());
  }
  grpc::Status status = reader->Finish();
  if (!status.ok()) {
    std::cerr << "download " << asset.name() << " failed: " << Describe(status) << "\n";
    return false;
  }
  std::cout << "  saved " << path.string() << " (" << bytes << " bytes, "
            << asset.duration_seconds() << " s)\n";
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const char* key_value = std::getenv(absl::GetFlag(FLAGS_api_key_env).c_str());
  if (key_value == nullptr || *key_value == '\0') {
    std::cerr << "set " << absl::GetFlag(FLAGS_api_key_env) << " to your musicgw API key\n";
    return 2;
  }
  const std::string key = key_value;
  const absl::Duration timeout = absl::Seconds(absl::GetFlag(FLAGS_timeout_seconds));
  auto channel =
      grpc::CreateChannel(absl::GetFlag(FLAGS_target), grpc::InsecureChannelCredentials());
  auto stub = MusicGateway::NewStub(channel);

  std::vector<Job> jobs(2);
  jobs[0].label = "loudly";
  jobs[0].request.set_provider(musicgw::v1::PROVIDER_LOUDLY);
  auto* track = jobs[0].request.mutable_parametric_music();
  track->set_genre("House");
  track->set_duration_seconds(30);
  track->set_bpm(124);
  track->set_key_root(musicgw::v1::KEY_ROOT_D);
  track->set_key_quality(musicgw::v1::KEY_QUALITY_MINOR);
  track->add_instruments("drums");
  track->add_instruments("bass");
  jobs[1].label = "soundpiece";
  jobs[1].request.set_provider(musicgw::v1::PROVIDER_SOUNDPIECE);
  jobs[1].request.mutable_sample()->set_prompt("rock, guitar, energetic, no drums");
  jobs[1].request.mutable_sample()->set_duration_seconds(8);
  jobs[1].request.mutable_sample()->set_loopable(true);

  for (auto& job : jobs) {
    job.request.set_request_id(musicgw::RandomUuid());
    grpc::ClientContext context;
    Authorize(&context, key, absl::Seconds(30));
    grpc::Status status = stub->Generate(&context, job.request, &job.operation);
    if (!status.ok()) {
      std::cerr << "Generate (" << job.label << ") failed: " << Describe(status) << "\n";
      return 1;
    }
    std::cout << "Generate " << job.label << " -> " << job.operation.name() << "\n";
  }

  std::cout << "Watching status changes:\n";
  std::vector<std::thread> watchers;
  std::vector<char> finished(jobs.size(), 0);
  for (size_t i = 0; i < jobs.size(); ++i) {
    watchers.emplace_back([&, i] { finished[i] = Watch(*stub, key, jobs[i], timeout); });
  }
  for (auto& watcher : watchers) watcher.join();

  const std::filesystem::path out_dir = absl::GetFlag(FLAGS_out_dir);
  std::filesystem::create_directories(out_dir);
  int failures = 0;
  for (size_t i = 0; i < jobs.size(); ++i) {
    const auto& op = jobs[i].operation;
    if (!finished[i] || op.state() != musicgw::v1::OPERATION_STATE_SUCCEEDED) {
      std::cerr << jobs[i].label << " did not succeed: " << op.error().message() << "\n";
      ++failures;
      continue;
    }
    for (const auto& asset : op.outputs()) {
      const std::string id = op.name().substr(op.name().find('/') + 1);
      const std::string extension =
          asset.format() == musicgw::v1::AUDIO_FORMAT_MP3 ? ".mp3" : ".flac";
      const std::string index = asset.name().substr(asset.name().rfind('/') + 1);
      if (!Download(*stub, key, asset,
                    out_dir / absl::StrCat(jobs[i].label, "-", id, "-", index, extension))) {
        ++failures;
      }
    }
  }
  return failures == 0 ? 0 : 1;
}
