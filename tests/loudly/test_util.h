// File: test_util.h
// Helpers shared by the Loudly adapter tests: waiting for an adapter callback, reading the
// ErrorInfo reason.
#pragma once

#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

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

// Calls adapter.ReadQuota `calls` times, spread over `threads` threads started together, and
// returns every answer (in call order).
inline std::vector<absl::StatusOr<std::vector<QuotaFigure>>> ConcurrentReadQuota(
    ProviderAdapter& adapter, int calls, int threads) {
  std::vector<std::unique_ptr<Waiter<std::vector<QuotaFigure>>>> waiters;
  waiters.reserve(calls);
  for (int i = 0; i < calls; ++i) {
    waiters.push_back(std::make_unique<Waiter<std::vector<QuotaFigure>>>());
  }
  std::vector<std::thread> workers;
  workers.reserve(threads);
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      for (int i = t; i < calls; i += threads) adapter.ReadQuota(waiters[i]->callback());
    });
  }
  for (auto& worker : workers) worker.join();
  std::vector<absl::StatusOr<std::vector<QuotaFigure>>> results;
  results.reserve(calls);
  for (auto& waiter : waiters) results.push_back(waiter->Get());
  return results;
}

// The parametric request behind the captured ADVANCED bundle (seeds/), in normalized form.
inline musicgw::v1::GenerateRequest CapturedAdvancedRequest() {
  musicgw::v1::GenerateRequest request;
  auto* task = request.mutable_parametric_music();
  task->set_genre("Deep House");
  task->set_duration_seconds(128);
  for (const char* instrument : {"drums", "Bass", "PERCUSSION", "synth", "strings"}) {
    task->add_instruments(instrument);
  }
  task->set_genre_blend("Techno");
  task->set_energy(musicgw::v1::ENERGY_ORIGINAL);
  task->set_structure_id(2);
  task->set_bpm(125);
  task->set_key_root(musicgw::v1::KEY_ROOT_E);
  task->set_key_quality(musicgw::v1::KEY_QUALITY_MINOR);
  return request;
}

inline std::string Reason(const absl::Status& status) {
  google::rpc::ErrorInfo info;
  return GetErrorInfo(status, &info) ? info.reason() : "";
}

}  // namespace musicgw::adapters::loudly::testing
