// File: test_util.h
// Helpers shared by the Loudly adapter tests: waiting for an adapter callback, reading the
// ErrorInfo reason.
#pragma once

#include <string>
#include <thread>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "adapters/provider.h"
#include "common/errors.h"
#include "gtest/gtest.h"

namespace musicgw::adapters::loudly::testing {

inline constexpr absl::Duration kWait = absl::Seconds(20);

// Blocks until the callback ran; records the thread it ran on.
template <typename T>
struct Waiter {
  absl::Notification done;
  absl::StatusOr<T> result = absl::UnknownError("not called");
  std::thread::id thread;
  Callback<T> callback() {
    return [this](absl::StatusOr<T> value) {
      result = std::move(value);
      thread = std::this_thread::get_id();
      done.Notify();
    };
  }
  absl::StatusOr<T>& Get() {
    EXPECT_TRUE(done.WaitForNotificationWithTimeout(kWait));
    return result;
  }
};

inline std::string Reason(const absl::Status& status) {
  google::rpc::ErrorInfo info;
  return GetErrorInfo(status, &info) ? info.reason() : "";
}

}  // namespace musicgw::adapters::loudly::testing
