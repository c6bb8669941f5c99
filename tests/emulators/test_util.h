// Helpers for the emulator tests: golden-shape comparison, testdata, external tools, polling.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cstdio>
#include <fstream>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace musicgw::emulators::testing {

inline std::string ReadTestdata(const std::string& name) {
  std::ifstream in(std::string(EMULATOR_TESTDATA_DIR) + "/" + name, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

inline nlohmann::json Golden(const std::string& name) {
  return nlohmann::json::parse(ReadTestdata(name), nullptr, false);
}

inline const char* Category(const nlohmann::json& j) {
  switch (j.type()) {
    case nlohmann::json::value_t::null:
      return "null";
    case nlohmann::json::value_t::boolean:
      return "bool";
    case nlohmann::json::value_t::number_integer:
    case nlohmann::json::value_t::number_unsigned:
      return "integer";
    case nlohmann::json::value_t::number_float:
      return "float";
    case nlohmann::json::value_t::string:
      return "string";
    case nlohmann::json::value_t::array:
      return "array";
    case nlohmann::json::value_t::object:
      return "object";
    default:
      return "other";
  }
}

// Recursive key/type comparison: the same keys at every level, the same JSON types (a golden
// float accepts a whole number written as an integer), array elements shaped like the golden's
// first element (an empty emulator array passes; a non-empty one against an empty golden array
// cannot be checked and fails). Values are not compared.
inline ::testing::AssertionResult SameShape(const nlohmann::json& golden,
                                            const nlohmann::json& actual,
                                            const std::string& path = "$") {
  const std::string g = Category(golden);
  const std::string a = Category(actual);
  if (g != a && !(g == "float" && a == "integer")) {
    return ::testing::AssertionFailure() << path << ": golden is " << g << ", emulator sent " << a
                                         << " (" << actual.dump() << ")";
  }
  if (golden.is_object()) {
    for (const auto& [key, value] : golden.items()) {
      if (!actual.contains(key)) {
        return ::testing::AssertionFailure() << path << "." << key << ": missing in emulator body";
      }
      auto sub = SameShape(value, actual[key], absl::StrCat(path, ".", key));
      if (!sub) return sub;
    }
    for (const auto& [key, value] : actual.items()) {
      if (!golden.contains(key)) {
        return ::testing::AssertionFailure() << path << "." << key << ": not in the golden body";
      }
    }
  }
  if (golden.is_array()) {
    if (golden.empty() && !actual.empty()) {
      return ::testing::AssertionFailure()
             << path << ": golden has " << golden.size() << " items, emulator " << actual.size();
    }
    for (size_t i = 0; i < actual.size(); ++i) {
      auto sub = SameShape(golden[0], actual[i], absl::StrCat(path, "[", i, "]"));
      if (!sub) return sub;
    }
  }
  return ::testing::AssertionSuccess();
}

// The keys of an object in their order in the raw text (nlohmann sorts them).
inline std::vector<std::string> KeyOrder(const std::string& raw_object) {
  nlohmann::ordered_json j = nlohmann::ordered_json::parse(raw_object, nullptr, false);
  std::vector<std::string> keys;
  if (j.is_object()) {
    for (const auto& [k, v] : j.items()) keys.push_back(k);
  }
  return keys;
}

struct CommandResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr
};

inline CommandResult RunCommand(const std::string& command) {
  CommandResult result;
  std::unique_ptr<FILE, int (*)(FILE*)> pipe(popen((command + " 2>&1").c_str(), "r"), pclose);
  if (!pipe) return result;
  std::array<char, 4096> buffer;
  size_t n;
  while ((n = fread(buffer.data(), 1, buffer.size(), pipe.get())) > 0) {
    result.output.append(buffer.data(), n);
  }
  const int status = pclose(pipe.release());
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

// ffprobe's format duration in seconds, or -1.
inline double ProbeDuration(const std::string& path) {
  const CommandResult r = RunCommand(absl::StrCat(
      "ffprobe -v error -show_entries format=duration -of default=nw=1:nk=1 '", path, "'"));
  if (r.exit_code != 0) return -1;
  return std::atof(r.output.c_str());
}

// A process a test started. It dies with the thread that started it (PR_SET_PDEATHSIG, which
// survives exec), so a test run killed at any point, even with SIGKILL, leaves nothing running.
struct ChildProcess {
  pid_t pid = -1;
  int stdout_fd = -1;  // read end of the child's stdout, or -1
};

// Starts `argv` (argv[0] is the binary's path). `death_signal` reaches the child when its
// starter goes: SIGTERM lets an emulator remove its private files on the way out. Between fork
// and exec the child only makes system calls (no allocation), as a forked copy of a threaded
// process must.
inline ChildProcess SpawnChild(const std::vector<std::string>& argv, bool capture_stdout = true,
                               int death_signal = SIGTERM) {
  std::vector<char*> args;
  args.reserve(argv.size() + 1);
  for (const std::string& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
  args.push_back(nullptr);
  int fds[2] = {-1, -1};
  if (capture_stdout && pipe2(fds, O_CLOEXEC) != 0) return {};
  const pid_t starter = getpid();
  const pid_t pid = fork();
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, death_signal);
    if (getppid() != starter) _exit(127);             // the starter died before prctl took effect
    if (capture_stdout) dup2(fds[1], STDOUT_FILENO);  // dup2 clears O_CLOEXEC on the copy
    execv(args[0], args.data());
    _exit(127);
  }
  if (capture_stdout) close(fds[1]);
  if (pid < 0) {
    if (capture_stdout) close(fds[0]);
    return {};
  }
  return {pid, capture_stdout ? fds[0] : -1};
}

// The next line the child printed (without the newline); empty at end of stream.
inline std::string ReadLine(int fd) {
  std::string line;
  char c;
  while (read(fd, &c, 1) == 1 && c != '\n') line += c;
  return line;
}

// Real time plus an offset the test moves forward (Options::clock): expiry is tested without
// sleeping. The offset is shared with the function handed out, so it outlives the test body.
class SteppedClock {
 public:
  std::function<absl::Time()> Function() const {
    return [offset = offset_] { return absl::Now() + absl::Nanoseconds(offset->load()); };
  }
  void Advance(absl::Duration by) { offset_->fetch_add(absl::ToInt64Nanoseconds(by)); }

 private:
  std::shared_ptr<std::atomic<int64_t>> offset_ = std::make_shared<std::atomic<int64_t>>(0);
};

// Polls `condition` until it holds or `timeout` passes.
inline bool WaitFor(const std::function<bool()>& condition,
                    absl::Duration timeout = absl::Seconds(10)) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (condition()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return condition();
}

}  // namespace musicgw::emulators::testing
