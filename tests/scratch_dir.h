// File: scratch_dir.h
// Where tests write files: one directory per test process, removed with its contents when the
// process exits, so a suite run leaves nothing behind in the temp dir.
#pragma once

#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <string>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "common/crypto.h"
#include "gtest/gtest.h"

namespace musicgw {

inline const std::string& TestScratchDir() {
  struct Dir {
    Dir()
        : path(absl::StrCat(::testing::TempDir(), "/musicgw-test-", getpid(), "-", RandomHex(4))) {
      std::filesystem::create_directories(path);
    }
    ~Dir() {
      std::error_code ignored;  // best effort at exit: nothing left to report to
      std::filesystem::remove_all(path, ignored);
    }
    Dir(const Dir&) = delete;
    Dir& operator=(const Dir&) = delete;
    const std::string path;
  };
  static const Dir dir;
  return dir.path;
}

// A fresh subdirectory of TestScratchDir() for one fixture or test.
inline std::string NewTestScratchDir(const std::string& prefix) {
  static std::atomic<int> counter{0};
  std::string path = absl::StrCat(TestScratchDir(), "/", prefix, "-", counter++);
  std::filesystem::create_directories(path);
  return path;
}

}  // namespace musicgw
