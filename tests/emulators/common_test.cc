// The emulators' shared pieces: fault plans, audio synthesis and the two binaries' process
// contract (listening line, clean exit on SIGTERM).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <regex>
#include <sstream>
#include <string>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "emulators/common/audio.h"
#include "emulators/common/fault_plan.h"
#include "emulators/common/http_server.h"
#include "emulators/common/util.h"
#include "emulators/common/validation.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "tests/emulators/test_util.h"

extern char** environ;

namespace musicgw::emulators {
namespace {

using ::musicgw::emulators::testing::ChildProcess;
using ::musicgw::emulators::testing::ProbeDuration;
using ::musicgw::emulators::testing::ReadLine;
using ::musicgw::emulators::testing::RunCommand;
using ::musicgw::emulators::testing::SpawnChild;
using ::musicgw::emulators::testing::WaitFor;

// ---- Fault plans ----------------------------------------------------------------------------

TEST(FaultPlanTest, MatchesMethodAndPathExactlyOrByPrefix) {
  FaultPlan plan(1);
  ASSERT_TRUE(plan.Set(R"({"rules":[
      {"match":"PUT /v1/create.new_sample","action":"status","status":503},
      {"match":"GET /v1/*","action":"latency","delay_ms":5},
      {"match":"/users/limits","action":"truncate"}]})")
                  .ok());
  EXPECT_EQ(plan.Evaluate("PUT", "/v1/create.new_sample").size(), 1u);
  EXPECT_TRUE(plan.Evaluate("PUT", "/v1/create.new_fx").empty());
  EXPECT_TRUE(plan.Evaluate("GET", "/v1").empty());
  const auto get = plan.Evaluate("GET", "/v1/create.new_fx");
  ASSERT_EQ(get.size(), 1u);
  EXPECT_EQ(get[0].action, FaultAction::kLatency);
  EXPECT_EQ(get[0].delay, absl::Milliseconds(5));
  EXPECT_EQ(plan.Evaluate("POST", "/users/limits").size(), 1u);
  EXPECT_EQ(plan.fired(), 3);
}

TEST(FaultPlanTest, NthCountsOccurrencesPerRuleAndTimesCapsFirings) {
  FaultPlan plan(1);
  ASSERT_TRUE(plan.Set(R"([{"match":"GET /x","nth":[2,4],"action":"status"},
                            {"match":"GET /x","times":1,"action":"reset"}])")
                  .ok());
  std::string fired;
  for (int i = 0; i < 5; ++i) {
    const auto f = plan.Evaluate("GET", "/x");
    fired += absl::StrCat(f.size(), f.empty() ? "" : FaultActionName(f.back().action), ";");
  }
  EXPECT_EQ(fired, "1reset;1status;0;1status;0;");
}

TEST(FaultPlanTest, RejectsBadPlans) {
  FaultPlan plan(1);
  EXPECT_FALSE(plan.Set("{").ok());
  EXPECT_FALSE(plan.Set(R"([{"action":"explode"}])").ok());
  EXPECT_FALSE(plan.Set(R"([{"nth":"two"}])").ok());
  EXPECT_TRUE(plan.Set("").ok());
  EXPECT_TRUE(plan.Set("[]").ok());
}

TEST(FaultPlanTest, ProbabilityIsSeeded) {
  auto run = [](uint64_t seed) {
    FaultPlan plan(seed);
    EXPECT_TRUE(plan.Set(R"([{"probability":0.3,"action":"status"}])").ok());
    std::string out;
    for (int i = 0; i < 64; ++i) out += plan.Evaluate("GET", "/a").empty() ? '.' : 'x';
    return out;
  };
  EXPECT_EQ(run(7), run(7));
  EXPECT_NE(run(7), run(8));
  const std::string s = run(7);
  const auto hits = std::count(s.begin(), s.end(), 'x');
  EXPECT_GT(hits, 5);
  EXPECT_LT(hits, 40);
}

// ---- Helpers --------------------------------------------------------------------------------

TEST(UtilTest, IdsHaveTheProviderFormats) {
  IdGenerator ids(1);
  const absl::Time now = absl::FromUnixSeconds(1743671082);
  EXPECT_TRUE(std::regex_match(ids.Ulid(now), std::regex("^[0-9a-z]{26}$")));
  EXPECT_TRUE(std::regex_match(
      ids.UuidV4(),
      std::regex("^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")));
  EXPECT_TRUE(std::regex_match(
      ids.UuidV1(now),
      std::regex("^[0-9a-f]{8}-[0-9a-f]{4}-1[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")));
  IdGenerator again(1);
  EXPECT_EQ(again.Ulid(now), IdGenerator(1).Ulid(now)) << "seeded";
  EXPECT_EQ(FormatLoudlyTime(now), "2025-04-03T09:04:42+0000");
  EXPECT_EQ(FormatRfc3339(now), "2025-04-03T09:04:42Z");
  EXPECT_EQ(FormatCacheBuster(now), "20250403090442");
  EXPECT_EQ(EscapeJsonSlashes(R"({"u":"https://a/b"})"), R"({"u":"https:\/\/a\/b"})");
}

TEST(UtilTest, TextHints) {
  EXPECT_EQ(BpmFromText("dark techno at 130 bpm"), 130);
  EXPECT_EQ(BpmFromText("no tempo"), std::nullopt);
  EXPECT_EQ(ParseKeyRoot("C#/Db"), 1);
  EXPECT_EQ(ParseKeyRoot("e"), 4);
  EXPECT_EQ(ParseKeyRoot("Bb"), 10);
  EXPECT_EQ(ParseKeyRoot("C#/Eb"), std::nullopt);
  EXPECT_EQ(ParseKeyRoot("H"), std::nullopt);
  const auto key = KeyFromText("a slow ballad in F# minor");
  ASSERT_TRUE(key.has_value());
  EXPECT_EQ(key->root, 6);
  EXPECT_TRUE(key->minor);
  EXPECT_FALSE(KeyFromText("A calm track").has_value());
  const auto url = ParseUrl("http://127.0.0.1:8080/hook?x=1");
  ASSERT_TRUE(url.has_value());
  EXPECT_EQ(url->origin(), "http://127.0.0.1:8080");
  EXPECT_EQ(url->path_and_query, "/hook?x=1");
  EXPECT_TRUE(IsPrivateHost("127.0.0.1"));
  EXPECT_TRUE(IsPrivateHost("192.168.1.2"));
  EXPECT_FALSE(IsPrivateHost("8.8.8.8"));
  EXPECT_EQ(QueryParam("https://a/b.wav?x=1&duration=42", "duration"), "42");
}

// ---- Audio ----------------------------------------------------------------------------------

class AudioTest : public ::testing::Test {
 protected:
  std::string dir_ = ::testing::TempDir() + "/emulator_audio_test";
  void SetUp() override { std::filesystem::create_directories(dir_); }
};

TEST_F(AudioTest, FlacIsValidStereo16Bit44kOfTheRequestedLength) {
  AudioSpec spec;
  spec.seconds = 3.5;
  spec.bpm = 128;
  const std::string path = dir_ + "/a.flac";
  ASSERT_TRUE(WriteFlac(spec, path).ok());
  const auto sox = RunCommand("sox --i '" + path + "'");
  ASSERT_EQ(sox.exit_code, 0) << sox.output;
  EXPECT_TRUE(absl::StrContains(sox.output, "Channels       : 2"));
  EXPECT_TRUE(absl::StrContains(sox.output, "Sample Rate    : 44100"));
  EXPECT_TRUE(absl::StrContains(sox.output, "Precision      : 16-bit"));
  EXPECT_TRUE(absl::StrContains(sox.output, "154350 samples")) << sox.output;  // 3.5 s exactly
  const auto probe = RunCommand("ffprobe -v error -i '" + path + "'");
  EXPECT_EQ(probe.exit_code, 0);
  EXPECT_TRUE(probe.output.empty()) << probe.output;
  EXPECT_NEAR(ProbeDuration(path), 3.5, 0.01);
}

TEST_F(AudioTest, Mp3IsValidForFfprobeAndOfTheRequestedLength) {
  AudioSpec spec;
  spec.seconds = 6;
  const std::string path = dir_ + "/a.mp3";
  ASSERT_TRUE(WriteMp3(spec, path).ok());
  const auto probe = RunCommand(
      "ffprobe -v error -show_entries stream=codec_name,sample_rate,channels -of csv=p=0 '" + path +
      "'");
  ASSERT_EQ(probe.exit_code, 0) << probe.output;
  EXPECT_EQ(probe.output, "mp3,44100,2\n");
  EXPECT_NEAR(ProbeDuration(path), 6.0, 1.0);
  // Debian's sox has no MP3 handler unless libsox-fmt-mp3 is installed; check it when it has.
  if (absl::StrContains(RunCommand("sox -h").output, " mp3 ")) {
    EXPECT_EQ(RunCommand("sox --i '" + path + "'").exit_code, 0);
  }
}

TEST_F(AudioTest, RenderingIsDeterministicAndFollowsTheRequest) {
  AudioSpec spec;
  spec.seconds = 2;
  spec.seed = 9;
  ASSERT_TRUE(WriteFlac(spec, dir_ + "/x1.flac").ok());
  ASSERT_TRUE(WriteFlac(spec, dir_ + "/x2.flac").ok());
  auto read = [](const std::string& p) {
    std::ifstream in(p, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  EXPECT_EQ(read(dir_ + "/x1.flac"), read(dir_ + "/x2.flac"));
  AudioSpec other = spec;
  other.bpm = 90;
  ASSERT_TRUE(WriteFlac(other, dir_ + "/x3.flac").ok());
  EXPECT_NE(read(dir_ + "/x1.flac"), read(dir_ + "/x3.flac"));
  // The pulse: at 120 bpm the drums stem is loud on the beat and quiet just before it.
  AudioSpec drums = spec;
  drums.stem = "drums";
  drums.bpm = 120;
  const std::string wav = dir_ + "/drums.wav";
  ASSERT_TRUE(WriteFlac(drums, dir_ + "/drums.flac").ok());
  ASSERT_EQ(RunCommand("sox '" + dir_ + "/drums.flac' '" + wav + "'").exit_code, 0);
  const auto on =
      RunCommand("sox '" + wav + "' -n trim 0.5 0.05 stat 2>&1 | grep 'RMS     amplitude'");
  const auto off =
      RunCommand("sox '" + wav + "' -n trim 0.93 0.05 stat 2>&1 | grep 'RMS     amplitude'");
  const double on_rms = std::atof(on.output.substr(on.output.find(':') + 1).c_str());
  const double off_rms = std::atof(off.output.substr(off.output.find(':') + 1).c_str());
  EXPECT_GT(on_rms, 4 * off_rms) << on.output << off.output;
}

TEST_F(AudioTest, CacheRendersOnceAndSharesTheFile) {
  auto cache = AudioCache::Create(dir_ + "/cache");
  ASSERT_TRUE(cache.ok());
  AudioSpec spec;
  spec.seconds = 1;
  std::vector<std::thread> threads;
  std::vector<std::string> paths(4);
  threads.reserve(paths.size());
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] { paths[i] = *(*cache)->Get(spec, AudioFormat::kFlac); });
  }
  for (auto& t : threads) t.join();
  for (const auto& p : paths) EXPECT_EQ(p, paths[0]);
  const auto time = std::filesystem::last_write_time(paths[0]);
  EXPECT_EQ(*(*cache)->Get(spec, AudioFormat::kFlac), paths[0]);
  EXPECT_EQ(std::filesystem::last_write_time(paths[0]), time);
  std::string tmp_dir;
  {
    auto temp = AudioCache::Create("");
    ASSERT_TRUE(temp.ok());
    tmp_dir = (*temp)->dir();
    EXPECT_TRUE(std::filesystem::exists(tmp_dir));
  }
  EXPECT_FALSE(std::filesystem::exists(tmp_dir)) << "a private cache is removed";
}

// ---- Binaries -------------------------------------------------------------------------------

// Starts `binary` with stdout on a pipe; returns the pid and the first line it printed.
std::pair<pid_t, std::string> Spawn(const std::string& binary) {
  const ChildProcess child = SpawnChild({binary, "--port=0"});
  if (child.pid < 0) return {-1, ""};
  std::string line = ReadLine(child.stdout_fd);
  close(child.stdout_fd);
  return {child.pid, line};
}

TEST(BinaryTest, BothEmulatorsPrintTheirUrlAndStopOnSigterm) {
  for (const std::string binary : {LOUDLY_EMULATOR_BINARY, SOUNDPIECE_EMULATOR_BINARY}) {
    SCOPED_TRACE(binary);
    auto [pid, line] = Spawn(binary);
    ASSERT_GT(pid, 0);
    ASSERT_TRUE(absl::StartsWith(line, "listening on http://127.0.0.1:")) << line;
    httplib::Client client(line.substr(strlen("listening on ")));
    auto stats = client.Get("/_emulator/stats");
    ASSERT_TRUE(stats);
    EXPECT_EQ(stats->status, 200);
    kill(pid, SIGTERM);
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    EXPECT_TRUE(WIFEXITED(status));
    EXPECT_EQ(WEXITSTATUS(status), 0);
  }
}

// kill -9 of a test-like parent (it started an emulator through SpawnChild): the emulator goes
// with it. This process adopts the orphan (child subreaper), so waitpid observes its end.
TEST(BinaryTest, AnEmulatorDiesWithTheProcessThatStartedIt) {
  ASSERT_EQ(prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  // Everything the forked parent needs is allocated before fork.
  const std::vector<std::string> argv = {LOUDLY_EMULATOR_BINARY, "--port=0"};
  const pid_t parent = fork();
  ASSERT_GE(parent, 0);
  if (parent == 0) {
    close(fds[0]);
    const ChildProcess emulator = SpawnChild(argv, /*capture_stdout=*/false);
    if (write(fds[1], &emulator.pid, sizeof(emulator.pid)) != sizeof(emulator.pid)) _exit(1);
    for (;;) pause();
  }
  close(fds[1]);
  pid_t emulator = -1;
  ASSERT_EQ(read(fds[0], &emulator, sizeof(emulator)), static_cast<ssize_t>(sizeof(emulator)));
  close(fds[0]);
  ASSERT_GT(emulator, 0);
  ASSERT_EQ(kill(parent, SIGKILL), 0);
  int status = 0;
  ASSERT_EQ(waitpid(parent, &status, 0), parent);
  // The orphan is ours now: its exit is observable, and it must come without anyone asking.
  // A pidfd becomes readable when the process exits: an event to wait on, not a poll.
  const int pidfd = static_cast<int>(syscall(SYS_pidfd_open, emulator, 0));
  ASSERT_GE(pidfd, 0);
  pollfd exited{pidfd, POLLIN, 0};
  poll(&exited, 1, /*timeout_ms=*/20000);
  close(pidfd);
  const pid_t ended = waitpid(emulator, &status, WNOHANG);
  if (ended != emulator) kill(emulator, SIGKILL);  // do not leak it when the test fails
  prctl(PR_SET_CHILD_SUBREAPER, 0);
  ASSERT_EQ(ended, emulator) << "the emulator outlived the process that started it";
  EXPECT_TRUE(WIFEXITED(status) || WIFSIGNALED(status));
}

// ---- HTTP server faults ---------------------------------------------------------------------

int Connect(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return -1;
  }
  // A server that stalls fails the test (EAGAIN) instead of hanging it.
  const timeval timeout{30, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  return fd;
}

struct RawAnswer {
  std::string bytes;  // headers and whatever body arrived
  int error = 0;      // errno of the read that ended it, 0 for a clean end of stream
};

RawAnswer RawGet(int port, const std::string& path) {
  RawAnswer answer;
  const int fd = Connect(port);
  if (fd < 0) return {"", errno};
  const std::string request =
      absl::StrCat("GET ", path, " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
  send(fd, request.data(), request.size(), MSG_NOSIGNAL);
  char buffer[65536];
  for (;;) {
    const ssize_t n = recv(fd, buffer, sizeof(buffer), 0);
    if (n > 0) {
      answer.bytes.append(buffer, static_cast<size_t>(n));
      continue;
    }
    answer.error = n < 0 ? errno : 0;
    break;
  }
  close(fd);
  return answer;
}

// This process's CPU time (user + system), from /proc/self/stat.
absl::Duration ProcessCpuTime() {
  std::ifstream in("/proc/self/stat");
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // Fields after the command name (which may hold spaces) start after the last ')'.
  std::istringstream fields(stat.substr(stat.rfind(')') + 2));
  std::string field;
  long long ticks = 0;
  for (int i = 3; i <= 15 && fields >> field; ++i) {
    if (i == 14 || i == 15) ticks += std::stoll(field);  // utime, stime
  }
  return absl::Seconds(static_cast<double>(ticks) / static_cast<double>(sysconf(_SC_CLK_TCK)));
}

class FaultServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_ = std::make_unique<HttpServer>(HttpServerOptions{}, &plan_, DialectErrors{});
    server_->Route("GET", "/big",
                   [](const httplib::Request&, httplib::Response& res, const std::vector<Fault>&) {
                     res.set_content(std::string(kBigBody, 'a'), "application/json");
                   });
    server_->Route("GET", "/small",
                   [](const httplib::Request&, httplib::Response& res, const std::vector<Fault>&) {
                     res.set_content("{}", "application/json");
                   });
    server_->set_status_observer([this](const httplib::Request& req, int) {
      absl::MutexLock lock(&mu_);
      ++answered_[req.path];
    });
    ASSERT_TRUE(server_->Start().ok());
  }
  void TearDown() override { server_->Stop(); }

  int Answered(const std::string& path) {
    absl::MutexLock lock(&mu_);
    return answered_[path];
  }

  // Large enough that the first half cannot sit in loopback socket buffers: the server is
  // still writing when the client goes.
  static constexpr size_t kBigBody = 64 << 20;
  FaultPlan plan_{7};
  std::unique_ptr<HttpServer> server_;
  absl::Mutex mu_;
  std::map<std::string, int> answered_ ABSL_GUARDED_BY(mu_);
};

TEST_F(FaultServerTest, ResetFaultResetsTheConnectionMidBody) {
  ASSERT_TRUE(plan_.Set(R"([{"match":"GET /small","action":"reset"}])").ok());
  // A 2-byte body is cut after 1 byte; a larger one after half its bytes.
  RawAnswer small = RawGet(server_->port(), "/small");
  EXPECT_EQ(small.error, ECONNRESET) << "an RST, not a clean close";
  EXPECT_TRUE(absl::StartsWith(small.bytes, "HTTP/1.1 200")) << small.bytes.substr(0, 40);
  EXPECT_TRUE(absl::EndsWith(small.bytes, "\r\n\r\n{")) << "half the body, then the reset";

  ASSERT_TRUE(plan_.Set(R"([{"match":"GET /small","action":"reset","before":true}])").ok());
  RawAnswer before = RawGet(server_->port(), "/small");
  EXPECT_EQ(before.error, ECONNRESET);
  EXPECT_TRUE(before.bytes.empty()) << before.bytes.substr(0, 40);
  // The server serves on.
  ASSERT_TRUE(plan_.Set("").ok());
  RawAnswer clean = RawGet(server_->port(), "/small");
  EXPECT_EQ(clean.error, 0);
  EXPECT_TRUE(absl::EndsWith(clean.bytes, "\r\n\r\n{}"));
}

// A client that leaves mid-body ends the response: the server notices (its request ends) and
// uses no CPU afterwards. Before, the reset fault's provider ignored the failed write and was
// called again at the same offset forever, a core at 100 %.
TEST_F(FaultServerTest, ClientLeavingMidBodyLeavesTheServerIdle) {
  ASSERT_TRUE(plan_
                  .Set(R"([{"match":"GET /big","action":"reset"},
                            {"match":"GET /small","action":"latency","delay_ms":400}])")
                  .ok());
  const int fd = Connect(server_->port());
  ASSERT_GE(fd, 0);
  const std::string request = "GET /big HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
  ASSERT_EQ(send(fd, request.data(), request.size(), MSG_NOSIGNAL),
            static_cast<ssize_t>(request.size()));
  char buffer[4096];
  ASSERT_GT(recv(fd, buffer, sizeof(buffer), 0), 0) << "the answer started";
  const linger abort_on_close{1, 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &abort_on_close, sizeof(abort_on_close));
  close(fd);  // gone, with an RST
  ASSERT_TRUE(WaitFor([&] { return Answered("/big") == 1; }, absl::Seconds(30)))
      << "the server never noticed the client left";

  // The window: one request that the server holds 400 ms. A spinning thread would burn about
  // that much CPU in it; an idle server next to none.
  const absl::Duration cpu_before = ProcessCpuTime();
  const absl::Time start = absl::Now();
  RawAnswer slow = RawGet(server_->port(), "/small");
  const absl::Duration wall = absl::Now() - start;
  const absl::Duration cpu = ProcessCpuTime() - cpu_before;
  EXPECT_TRUE(absl::EndsWith(slow.bytes, "{}"));
  EXPECT_GE(wall, absl::Milliseconds(400));
  EXPECT_LT(cpu, wall / 4) << "cpu " << cpu << " over " << wall;
}

}  // namespace
}  // namespace musicgw::emulators
