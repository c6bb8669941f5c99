#include "adapters/http/retry.h"

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "adapters/http/curl_http_client.h"
#include "gtest/gtest.h"
#include "tests/http/test_server.h"

namespace musicgw::http {
namespace {

constexpr absl::Duration kWait = absl::Seconds(20);

// Records every observer call.
class RecordingObserver : public HttpObserver {
 public:
  struct Retry {
    std::string reason;
    absl::Duration delay;
  };
  void OnRequestDone(absl::string_view, absl::string_view, absl::string_view outcome,
                     absl::Duration) override {
    absl::MutexLock lock(&mu);
    outcomes.emplace_back(outcome);
  }
  void OnRetry(absl::string_view provider, absl::string_view endpoint, absl::string_view reason,
               absl::Duration delay) override {
    absl::MutexLock lock(&mu);
    EXPECT_EQ(provider, "test");
    EXPECT_EQ(endpoint, "test:get");
    retries.push_back({std::string(reason), delay});
  }
  void OnRetryAbandoned(absl::string_view, absl::string_view, absl::string_view,
                        absl::string_view why) override {
    absl::MutexLock lock(&mu);
    abandoned.emplace_back(why);
  }

  absl::Mutex mu;
  std::vector<std::string> outcomes ABSL_GUARDED_BY(mu);
  std::vector<Retry> retries ABSL_GUARDED_BY(mu);
  std::vector<std::string> abandoned ABSL_GUARDED_BY(mu);
};

class RetryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto& server = server_.server();
    server.set_keep_alive_max_count(1000);
    // /flaky/<n>: 503 for the first n hits, then 200.
    server.Get("/flaky/(\\d+)", [this](const httplib::Request& req, httplib::Response& res) {
      const int hit = ++hits_;
      if (hit <= std::stoi(req.matches[1])) {
        res.status = 503;
        res.set_content(R"({"detail":"busy"})", "application/json");
        return;
      }
      res.set_content("ok", "text/plain");
    });
    server.Get("/limited", [this](const httplib::Request&, httplib::Response& res) {
      const int hit = ++hits_;
      {
        absl::MutexLock lock(&mu_);
        hit_times_.push_back(absl::Now());
      }
      if (hit == 1) {
        res.status = 429;
        res.set_header("Retry-After", "1");
        return;
      }
      res.set_content("ok", "text/plain");
    });
    server.Get("/always503", [this](const httplib::Request&, httplib::Response& res) {
      ++hits_;
      res.status = 503;
    });
    server.Get("/notfound", [this](const httplib::Request&, httplib::Response& res) {
      ++hits_;
      res.status = 404;
    });
    server_.Start();
    observer_ = std::make_shared<RecordingObserver>();
  }

  std::unique_ptr<CurlHttpClient> MakeClient(RetryBudgetOptions budget = {}) {
    CurlHttpClient::Options options;
    options.observer = observer_;
    options.retry_budget = budget;
    return CurlHttpClient::Create(options);
  }

  Request Get(const std::string& path) {
    Request request;
    request.url = server_.Url(path);
    request.provider = "test";
    request.endpoint = "test:get";
    request.timeout = absl::Seconds(5);
    return request;
  }

  static RetryPolicy FastPolicy() {
    RetryPolicy policy;
    policy.max_attempts = 5;
    policy.initial_backoff = absl::Milliseconds(1);
    policy.max_backoff = absl::Milliseconds(5);
    policy.max_total = absl::Seconds(15);
    return policy;
  }

  absl::StatusOr<Response> Call(Client& client, Request request, RetryPolicy policy) {
    auto done = std::make_shared<absl::Notification>();
    auto result = std::make_shared<absl::StatusOr<Response>>(absl::UnknownError("none"));
    SendWithRetry(client, std::move(request), policy, DefaultClassifier(),
                  [done, result](absl::StatusOr<Response> r) {
                    *result = std::move(r);
                    done->Notify();
                  });
    if (!done->WaitForNotificationWithTimeout(kWait)) return absl::DeadlineExceededError("wait");
    return *result;
  }

  testing::TestHttpServer server_;
  std::shared_ptr<RecordingObserver> observer_;
  std::atomic<int> hits_{0};
  absl::Mutex mu_;
  std::vector<absl::Time> hit_times_ ABSL_GUARDED_BY(mu_);
};

TEST_F(RetryTest, RetriesServerErrorsThenSucceeds) {
  auto client = MakeClient();
  auto result = Call(*client, Get("/flaky/2"), FastPolicy());
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->status, 200);
  EXPECT_EQ(hits_, 3);
  absl::MutexLock lock(&observer_->mu);
  ASSERT_EQ(observer_->retries.size(), 2u);
  EXPECT_EQ(observer_->retries[0].reason, "http_5xx");
  EXPECT_EQ(observer_->outcomes, (std::vector<std::string>{"5xx", "5xx", "2xx"}));
}

TEST_F(RetryTest, GivesUpAfterMaxAttemptsWithTheLastResponse) {
  auto client = MakeClient();
  RetryPolicy policy = FastPolicy();
  policy.max_attempts = 3;
  auto result = Call(*client, Get("/always503"), policy);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->status, 503);
  EXPECT_EQ(hits_, 3);
  absl::MutexLock lock(&observer_->mu);
  EXPECT_EQ(observer_->abandoned, (std::vector<std::string>{"attempts"}));
}

TEST_F(RetryTest, RetryAfterIsAFloor) {
  auto client = MakeClient();
  auto result = Call(*client, Get("/limited"), FastPolicy());
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->status, 200);
  EXPECT_EQ(hits_, 2);
  {
    absl::MutexLock lock(&observer_->mu);
    ASSERT_EQ(observer_->retries.size(), 1u);
    EXPECT_EQ(observer_->retries[0].reason, "http_429");
    // The policy's backoff is at most 5 ms; the server asked for 1 s.
    EXPECT_GE(observer_->retries[0].delay, absl::Seconds(1));
  }
  absl::MutexLock lock(&mu_);
  ASSERT_EQ(hit_times_.size(), 2u);
  EXPECT_GE(hit_times_[1] - hit_times_[0], absl::Seconds(1));
}

TEST_F(RetryTest, RetryAfterBeyondTheTotalBudgetGivesUpAtOnce) {
  auto client = MakeClient();
  RetryPolicy policy = FastPolicy();
  policy.max_total = absl::Milliseconds(500);
  auto result = Call(*client, Get("/limited"), policy);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->status, 429);
  EXPECT_EQ(hits_, 1);
  absl::MutexLock lock(&observer_->mu);
  EXPECT_EQ(observer_->abandoned, (std::vector<std::string>{"deadline"}));
}

TEST_F(RetryTest, ClientErrorsAreNotRetried) {
  auto client = MakeClient();
  auto result = Call(*client, Get("/notfound"), FastPolicy());
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->status, 404);
  EXPECT_EQ(hits_, 1);
  absl::MutexLock lock(&observer_->mu);
  EXPECT_TRUE(observer_->retries.empty());
}

TEST_F(RetryTest, BudgetStopsRetryStorms) {
  // No refill: the bucket holds 2 retries and first attempts earn 0.1 each.
  auto client = MakeClient({.retry_ratio = 0.1, .min_retries_per_second = 0, .max_tokens = 2});
  constexpr int kCalls = 10;
  for (int i = 0; i < kCalls; ++i) {
    auto result = Call(*client, Get("/always503"), FastPolicy());
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_EQ(result->status, 503);
  }
  // Without a budget this would be 10 calls x 5 attempts = 50 hits.
  EXPECT_LE(hits_, kCalls + 3);
  absl::MutexLock lock(&observer_->mu);
  EXPECT_LE(observer_->retries.size(), 3u);
  EXPECT_GE(std::count(observer_->abandoned.begin(), observer_->abandoned.end(), "budget"),
            kCalls - 3);
}

TEST_F(RetryTest, TransportErrorsAreRetried) {
  auto client = MakeClient();
  Request request = Get("/flaky/0");
  server_.Stop();  // nothing listens any more: connection refused
  RetryPolicy policy = FastPolicy();
  policy.max_attempts = 3;
  auto result = Call(*client, request, policy);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kUnavailable);
  absl::MutexLock lock(&observer_->mu);
  ASSERT_EQ(observer_->retries.size(), 2u);
  EXPECT_EQ(observer_->retries[0].reason, "unavailable");
  EXPECT_EQ(observer_->outcomes,
            (std::vector<std::string>{"unavailable", "unavailable", "unavailable"}));
}

TEST(ParseRetryAfterTest, SecondsAndHttpDates) {
  absl::Time now;
  std::string error;
  ASSERT_TRUE(absl::ParseTime(absl::RFC3339_full, "2015-10-21T07:27:30Z", &now, &error));
  EXPECT_EQ(ParseRetryAfter("120", now), absl::Seconds(120));
  EXPECT_EQ(ParseRetryAfter(" 0 ", now), absl::ZeroDuration());
  EXPECT_EQ(ParseRetryAfter("Wed, 21 Oct 2015 07:28:00 GMT", now), absl::Seconds(30));
  EXPECT_EQ(ParseRetryAfter("Wed, 21 Oct 2015 07:00:00 GMT", now), absl::ZeroDuration());
  EXPECT_FALSE(ParseRetryAfter("-5", now).has_value());
  EXPECT_FALSE(ParseRetryAfter("soon", now).has_value());
  EXPECT_FALSE(ParseRetryAfter("", now).has_value());
}

TEST(BackoffDelayTest, FullJitterWithinCapsAndAboveFloor) {
  RetryPolicy policy;
  policy.initial_backoff = absl::Milliseconds(100);
  policy.max_backoff = absl::Seconds(2);
  for (int attempt = 0; attempt < 40; ++attempt) {
    const absl::Duration cap = std::min(
        policy.max_backoff, policy.initial_backoff * (int64_t{1} << std::min(attempt, 20)));
    for (int i = 0; i < 20; ++i) {
      const absl::Duration delay = BackoffDelay(policy, attempt, std::nullopt);
      EXPECT_GE(delay, absl::ZeroDuration());
      EXPECT_LE(delay, cap);
      EXPECT_GE(BackoffDelay(policy, attempt, absl::Seconds(3)), absl::Seconds(3));
    }
  }
}

TEST(RetryBudgetTest, RatioFloorAndCap) {
  absl::Time now = absl::UnixEpoch();
  RetryBudget budget({.retry_ratio = 0.2, .min_retries_per_second = 0.5, .max_tokens = 2},
                     [&now] { return now; });
  EXPECT_TRUE(budget.TryRetry("p"));
  EXPECT_TRUE(budget.TryRetry("p"));
  EXPECT_FALSE(budget.TryRetry("p"));
  EXPECT_TRUE(budget.TryRetry("other"));              // buckets are per provider
  for (int i = 0; i < 6; ++i) budget.OnRequest("p");  // 6 requests earn 1.2 retries
  EXPECT_TRUE(budget.TryRetry("p"));
  EXPECT_FALSE(budget.TryRetry("p"));
  now += absl::Seconds(2);  // the floor earns one more
  EXPECT_TRUE(budget.TryRetry("p"));
  EXPECT_FALSE(budget.TryRetry("p"));
  now += absl::Hours(1);
  EXPECT_DOUBLE_EQ(budget.Tokens("p"), 2);  // capped
}

}  // namespace
}  // namespace musicgw::http
