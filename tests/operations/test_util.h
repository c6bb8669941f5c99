// File: test_util.h
// Helpers for operations tests: ledger paths, a stream reader driven by the wake-up contract,
// and request builders.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/crypto.h"
#include "gtest/gtest.h"
#include "musicgw/v1/musicgw.pb.h"
#include "services/operations/event_stream.h"
#include "tests/scratch_dir.h"

namespace musicgw::operations::testing {

// A fresh ledger file path for this test, in a directory of its own.
inline std::string TempLedgerPath() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  return NewTestScratchDir(info != nullptr ? info->name() : "ledger") + "/ledger.db";
}

inline musicgw::v1::GenerateRequest TextRequest(const std::string& prompt,
                                                std::string request_id = RandomUuid()) {
  musicgw::v1::GenerateRequest request;
  request.set_request_id(std::move(request_id));
  request.mutable_text_to_music()->set_prompt(prompt);
  return request;
}

// Polls `done` until it holds or `timeout` passes: for observables with no wake-up of their
// own (a timer re-armed, a health flag). Returns whether it held.
template <typename Pred>
bool WaitUntil(Pred done, absl::Duration timeout = absl::Seconds(10)) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!done()) {
    if (absl::Now() >= deadline) return false;
    absl::SleepFor(absl::Milliseconds(1));
  }
  return true;
}

// Drains an EventStream the way the gRPC reactor does: Next() until nullopt, then again when
// woken. With auto_drain=false it reads only when told (a slow client).
template <typename T>
class StreamReader {
 public:
  explicit StreamReader(std::unique_ptr<EventStream<T>> stream, bool auto_drain = true)
      : stream_(std::move(stream)), auto_drain_(auto_drain) {
    stream_->SetWakeup([this] {
      {
        absl::MutexLock lock(&mu_);
        ++wakes_;
      }
      if (auto_drain_) Drain();
    });
    if (auto_drain_) Drain();
  }
  ~StreamReader() { Close(); }

  // Destroys the stream (as a cancelling client does).
  void Close() {
    std::unique_ptr<EventStream<T>> stream;
    {
      absl::MutexLock lock(&mu_);
      stream = std::move(stream_);
    }
    stream.reset();
  }

  void Drain() {
    absl::MutexLock lock(&mu_);
    if (stream_ == nullptr) return;
    while (!finished_) {
      bool finished = false;
      absl::Status status;
      std::optional<T> message = stream_->Next(&finished, &status);
      if (message.has_value()) {
        messages_.push_back(*std::move(message));
        continue;
      }
      if (finished) {
        finished_ = true;
        status_ = status;
      }
      break;
    }
  }

  // For a reader that does not drain by itself: drains now and whenever the stream signals,
  // until it holds `n` messages.
  bool WaitForWakeThenDrain(size_t n, absl::Duration timeout = absl::Seconds(10)) {
    const absl::Time deadline = absl::Now() + timeout;
    while (true) {
      uint64_t seen;
      {
        absl::MutexLock lock(&mu_);
        seen = wakes_;
      }
      Drain();
      absl::MutexLock lock(&mu_);
      if (messages_.size() >= n) return true;
      if (finished_) return false;
      auto woken = [this, seen]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return wakes_ != seen; };
      if (!mu_.AwaitWithDeadline(absl::Condition(&woken), deadline)) return false;
    }
  }

  bool WaitFinished(absl::Duration timeout = absl::Seconds(10)) {
    absl::MutexLock lock(&mu_);
    return mu_.AwaitWithTimeout(absl::Condition(&finished_), timeout);
  }
  bool WaitForMessages(size_t n, absl::Duration timeout = absl::Seconds(10)) {
    absl::MutexLock lock(&mu_);
    auto reached = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return messages_.size() >= n || finished_;
    };
    return mu_.AwaitWithTimeout(absl::Condition(&reached), timeout) && messages_.size() >= n;
  }
  template <typename Pred>
  bool WaitFor(Pred pred, absl::Duration timeout = absl::Seconds(10)) {
    absl::MutexLock lock(&mu_);
    auto reached = [this, &pred]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return pred(messages_); };
    return mu_.AwaitWithTimeout(absl::Condition(&reached), timeout);
  }

  std::vector<T> messages() const {
    absl::MutexLock lock(&mu_);
    return messages_;
  }
  absl::Status status() const {
    absl::MutexLock lock(&mu_);
    return status_;
  }
  bool finished() const {
    absl::MutexLock lock(&mu_);
    return finished_;
  }

 private:
  mutable absl::Mutex mu_;
  std::unique_ptr<EventStream<T>> stream_ ABSL_GUARDED_BY(mu_);
  const bool auto_drain_;
  std::vector<T> messages_ ABSL_GUARDED_BY(mu_);
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status status_ ABSL_GUARDED_BY(mu_);
  uint64_t wakes_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace musicgw::operations::testing
