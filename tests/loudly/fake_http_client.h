// File: fake_http_client.h
// A scripted http::Client for adapter logic tests: a handler answers each request on one loop
// thread (like CurlHttpClient, callbacks never run inline), RunAfter timers run on the same
// thread, and every request is recorded. Destruction runs pending work at once, so every
// callback runs exactly once.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "adapters/http/http_client.h"

namespace musicgw::adapters::loudly::testing {

class FakeHttpClient final : public http::Client {
 public:
  using Handler = std::function<absl::StatusOr<http::Response>(const http::Request&)>;

  explicit FakeHttpClient(Handler handler)
      : handler_(std::move(handler)), thread_([this] { Loop(); }) {}

  ~FakeHttpClient() override {
    {
      absl::MutexLock lock(&mu_);
      stopping_ = true;
    }
    thread_.join();
  }

  void Send(http::Request request, http::ResponseCallback done) override {
    {
      absl::MutexLock lock(&mu_);
      requests_.push_back(request);
    }
    Enqueue(absl::ZeroDuration(),
            [this, request = std::move(request), done = std::move(done)]() mutable {
              std::move(done)(handler_(request));
            });
  }

  std::unique_ptr<http::StreamHandle> Stream(http::Request, http::StreamHandler*) override {
    return nullptr;  // adapters never stream
  }

  void RunAfter(absl::Duration delay, absl::AnyInvocable<void() &&> fn) override {
    Enqueue(delay, std::move(fn));
  }

  std::vector<http::Request> requests() const {
    absl::MutexLock lock(&mu_);
    return requests_;
  }
  // Requests whose URL contains `part`.
  int Count(absl::string_view part) const {
    absl::MutexLock lock(&mu_);
    int n = 0;
    for (const auto& request : requests_) n += absl::StrContains(request.url, part);
    return n;
  }
  std::thread::id loop_thread() const { return thread_.get_id(); }

 private:
  void Enqueue(absl::Duration delay, absl::AnyInvocable<void() &&> fn) {
    absl::MutexLock lock(&mu_);
    tasks_.emplace(std::make_pair(absl::Now() + delay, next_++), std::move(fn));
  }

  void Loop() {
    while (true) {
      absl::AnyInvocable<void() &&> task;
      {
        absl::MutexLock lock(&mu_);
        auto ready = [this] {
          return stopping_ || (!tasks_.empty() && tasks_.begin()->first.first <= absl::Now());
        };
        while (!ready()) {
          const absl::Duration wait =
              tasks_.empty() ? absl::Milliseconds(50) : tasks_.begin()->first.first - absl::Now();
          mu_.AwaitWithTimeout(absl::Condition(&ready), std::max(wait, absl::Milliseconds(1)));
        }
        if (tasks_.empty()) return;  // stopping with nothing left
        task = std::move(tasks_.begin()->second);
        tasks_.erase(tasks_.begin());
      }
      std::move(task)();
    }
  }

  Handler handler_;
  mutable absl::Mutex mu_;
  std::map<std::pair<absl::Time, int64_t>, absl::AnyInvocable<void() &&>> tasks_
      ABSL_GUARDED_BY(mu_);
  int64_t next_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<http::Request> requests_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

}  // namespace musicgw::adapters::loudly::testing
