// The emulators' shared pieces: fault plans, audio synthesis and the two binaries' process
// contract (listening line, clean exit on SIGTERM).
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>
#include <string>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "emulators/common/audio.h"
#include "emulators/common/fault_plan.h"
#include "emulators/common/util.h"
#include "emulators/common/validation.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "tests/emulators/test_util.h"

extern char** environ;

namespace musicgw::emulators {
namespace {

using ::musicgw::emulators::testing::ProbeDuration;
using ::musicgw::emulators::testing::RunCommand;

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
  int fds[2];
  if (pipe(fds) != 0) return {-1, ""};
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[1], STDOUT_FILENO);
  posix_spawn_file_actions_addclose(&actions, fds[0]);
  std::string port_flag = "--port=0";
  std::vector<char*> argv = {const_cast<char*>(binary.c_str()), port_flag.data(), nullptr};
  pid_t pid = -1;
  posix_spawn(&pid, binary.c_str(), &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  close(fds[1]);
  std::string line;
  char c;
  while (read(fds[0], &c, 1) == 1 && c != '\n') line += c;
  close(fds[0]);
  return {pid, line};
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

}  // namespace
}  // namespace musicgw::emulators
