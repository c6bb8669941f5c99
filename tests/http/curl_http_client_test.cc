#include "adapters/http/curl_http_client.h"

#include <curl/curl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "common/thread_priority.h"
#include "gtest/gtest.h"
#include "tests/http/test_server.h"

namespace musicgw::http {
namespace {

constexpr absl::Duration kWait = absl::Seconds(20);

// Result of an asynchronous Send, shared with the callback so a timed-out wait stays safe.
struct SendResult {
  absl::Notification done;
  absl::StatusOr<Response> result = absl::UnknownError("no result");
  std::thread::id thread;
};

std::shared_ptr<SendResult> SendAsync(Client& client, Request request) {
  auto state = std::make_shared<SendResult>();
  client.Send(std::move(request), [state](absl::StatusOr<Response> result) {
    state->thread = std::this_thread::get_id();
    state->result = std::move(result);
    state->done.Notify();
  });
  return state;
}

absl::StatusOr<Response> SendSync(Client& client, Request request) {
  auto state = SendAsync(client, std::move(request));
  if (!state->done.WaitForNotificationWithTimeout(kWait)) {
    return absl::DeadlineExceededError("test gave up waiting");
  }
  return state->result;
}

// The byte at offset i of the test server's large bodies.
char PatternByte(size_t i) { return static_cast<char>((i * 31 + 7) & 0xff); }

class CurlHttpClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto& server = server_.server();
    server.set_keep_alive_max_count(1000);
    auto echo = [](const httplib::Request& req, httplib::Response& res) {
      res.set_header("X-Method", req.method);
      res.set_header("X-Echo-Header", req.get_header_value("X-Test"));
      res.set_header("X-Content-Type", req.get_header_value("Content-Type"));
      res.set_content(absl::StrCat(req.method, ":", req.body), "text/plain");
    };
    server.Get("/echo", echo);
    server.Put("/echo", echo);
    server.Post("/echo", echo);
    server.Delete("/echo", echo);
    server.Get("/status/(\\d+)", [](const httplib::Request& req, httplib::Response& res) {
      res.status = std::stoi(req.matches[1]);
      res.set_content("status body", "text/plain");
    });
    server.Get("/slow", [this](const httplib::Request&, httplib::Response& res) {
      release_.WaitForNotificationWithTimeout(absl::Seconds(10));
      res.set_content("late", "text/plain");
    });
    server.Get("/redirect", [this](const httplib::Request&, httplib::Response& res) {
      res.set_redirect(server_.Url("/echo"));
    });
    server.Get("/big", [](const httplib::Request&, httplib::Response& res) {
      res.set_content_provider(kBigSize, "application/octet-stream",
                               [](size_t offset, size_t length, httplib::DataSink& sink) {
                                 std::string chunk(std::min<size_t>(length, 64 * 1024), '\0');
                                 for (size_t i = 0; i < chunk.size(); ++i) {
                                   chunk[i] = PatternByte(offset + i);
                                 }
                                 return sink.write(chunk.data(), chunk.size());
                               });
    });
    server.Get("/endless", [](const httplib::Request&, httplib::Response& res) {
      auto sent = std::make_shared<size_t>(0);
      res.set_chunked_content_provider("application/octet-stream",
                                       [sent](size_t, httplib::DataSink& sink) {
                                         std::string chunk(64 * 1024, 'x');
                                         if (*sent >= (256u << 20)) {
                                           sink.done();
                                           return true;
                                         }
                                         *sent += chunk.size();
                                         return sink.write(chunk.data(), chunk.size());
                                       });
    });
    server_.Start();
    client_ = CurlHttpClient::Create();
    ASSERT_NE(client_, nullptr);
  }

  void TearDown() override {
    release_.Notify();
    client_.reset();
    server_.Stop();
  }

  Request Get(const std::string& path) {
    Request request;
    request.url = server_.Url(path);
    request.timeout = absl::Seconds(10);
    return request;
  }

  static constexpr size_t kBigSize = 8u << 20;
  testing::TestHttpServer server_;
  std::unique_ptr<CurlHttpClient> client_;
  absl::Notification release_;
};

TEST_F(CurlHttpClientTest, GetPutPostDeleteCarryBodiesAndHeaders) {
  for (const std::string method : {"GET", "PUT", "POST", "DELETE"}) {
    Request request = Get("/echo");
    request.method = method;
    request.headers = {{"X-Test", "value-" + method}, {"Content-Type", "application/json"}};
    if (method == "PUT" || method == "POST") request.body = R"({"k":"v"})";
    auto response = SendSync(*client_, request);
    ASSERT_TRUE(response.ok()) << method << ": " << response.status();
    EXPECT_EQ(response->status, 200);
    EXPECT_EQ(response->body, absl::StrCat(method, ":", request.body));
    EXPECT_EQ(response->Header("x-method"), method);
    EXPECT_EQ(response->Header("X-ECHO-HEADER"), "value-" + method);
    if (!request.body.empty()) {
      EXPECT_EQ(response->Header("X-Content-Type"), "application/json");
    }
  }
}

TEST_F(CurlHttpClientTest, ErrorStatusesAreResponses) {
  for (int status : {404, 422, 503}) {
    auto response = SendSync(*client_, Get(absl::StrCat("/status/", status)));
    ASSERT_TRUE(response.ok()) << response.status();
    EXPECT_EQ(response->status, status);
    EXPECT_EQ(response->body, "status body");
  }
}

TEST_F(CurlHttpClientTest, GetFollowsRedirects) {
  auto response = SendSync(*client_, Get("/redirect"));
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->status, 200);
  EXPECT_EQ(response->body, "GET:");
  EXPECT_FALSE(response->Header("Location").has_value());  // headers of the last response only
}

TEST_F(CurlHttpClientTest, CallbacksRunOnTheLoopThread) {
  auto state = SendAsync(*client_, Get("/echo"));
  ASSERT_TRUE(state->done.WaitForNotificationWithTimeout(kWait));
  EXPECT_NE(state->thread, std::this_thread::get_id());
}

TEST_F(CurlHttpClientTest, ReusesConnections) {
  for (int i = 0; i < 10; ++i) {
    auto response = SendSync(*client_, Get("/echo"));
    ASSERT_TRUE(response.ok()) << response.status();
  }
  EXPECT_EQ(client_->stats().new_connections, 1);
  EXPECT_EQ(client_->stats().transfers, 10);
}

TEST_F(CurlHttpClientTest, ConcurrentRequests) {
  // The test server has 16 threads, each held by a keep-alive connection, and cpp-httplib 0.11
  // listens with a backlog of 5 (a burst of more connects costs a 1 s SYN retransmit): stay
  // below both and let the client queue the rest.
  CurlHttpClient::Options options;
  options.max_host_connections = 4;
  client_ = CurlHttpClient::Create(options);
  std::vector<std::shared_ptr<SendResult>> results;
  for (int i = 0; i < 50; ++i) {
    Request request = Get("/echo");
    request.method = "POST";
    request.body = absl::StrCat("n", i);
    results.push_back(SendAsync(*client_, std::move(request)));
  }
  for (int i = 0; i < 50; ++i) {
    ASSERT_TRUE(results[i]->done.WaitForNotificationWithTimeout(kWait));
    ASSERT_TRUE(results[i]->result.ok()) << results[i]->result.status();
    EXPECT_EQ(results[i]->result->body, absl::StrCat("POST:n", i));
  }
}

TEST_F(CurlHttpClientTest, TimeoutIsDeadlineExceeded) {
  Request request = Get("/slow");
  request.timeout = absl::Milliseconds(200);
  auto response = SendSync(*client_, request);
  EXPECT_EQ(response.status().code(), absl::StatusCode::kDeadlineExceeded) << response.status();
}

TEST_F(CurlHttpClientTest, ConnectionRefusedIsUnavailable) {
  // A bound socket that never listens: connecting to it is refused.
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  Request request;
  request.url = absl::StrCat("http://127.0.0.1:", ntohs(addr.sin_port), "/x");
  auto response = SendSync(*client_, request);
  close(fd);
  EXPECT_EQ(response.status().code(), absl::StatusCode::kUnavailable) << response.status();
}

TEST_F(CurlHttpClientTest, HeaderInjectionIsRejected) {
  Request request = Get("/echo");
  request.headers = {{"X-Test", "a\r\nX-Evil: 1"}};
  auto response = SendSync(*client_, request);
  EXPECT_EQ(response.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(CurlHttpClientTest, ResponseBodyLimit) {
  CurlHttpClient::Options options;
  options.max_response_bytes = 1 << 20;
  auto client = CurlHttpClient::Create(options);
  auto response = SendSync(*client, Get("/big"));
  EXPECT_EQ(response.status().code(), absl::StatusCode::kResourceExhausted);
}

TEST_F(CurlHttpClientTest, DestroyingTheClientCancelsInFlightRequests) {
  auto client = CurlHttpClient::Create();
  auto state = SendAsync(*client, Get("/slow"));
  auto timer_ran = std::make_shared<std::atomic<bool>>(false);
  client->RunAfter(absl::Hours(1), [timer_ran] { *timer_ran = true; });
  client.reset();
  ASSERT_TRUE(state->done.HasBeenNotified());
  EXPECT_EQ(state->result.status().code(), absl::StatusCode::kCancelled);
  EXPECT_TRUE(*timer_ran);  // pending timers run at shutdown so their callbacks complete
}

TEST_F(CurlHttpClientTest, TheLoopThreadRunsAtItsNice) {
  CurlHttpClient::Options options;
  const int before = CurrentThreadNice();
  options.loop_thread_nice = std::min(19, before + 10);
  auto client = CurlHttpClient::Create(options);
  absl::Notification ran;
  int loop_nice = -100;
  client->RunAfter(absl::ZeroDuration(), [&] {
    loop_nice = CurrentThreadNice();
    ran.Notify();
  });
  ran.WaitForNotification();
  EXPECT_EQ(loop_nice, options.loop_thread_nice);
  EXPECT_EQ(CurrentThreadNice(), before);
}

TEST_F(CurlHttpClientTest, TimersRunInDueOrderOnTheLoopThread) {
  absl::Mutex mu;
  std::vector<std::string> order;
  std::vector<std::thread::id> threads;
  absl::Notification all;
  auto add = [&](const std::string& name) {
    absl::MutexLock lock(&mu);
    order.push_back(name);
    threads.push_back(std::this_thread::get_id());
    if (order.size() == 5) all.Notify();
  };
  client_->RunAfter(absl::Milliseconds(60), [&] { add("a60"); });
  client_->RunAfter(absl::Milliseconds(20), [&] { add("b20"); });
  client_->RunAfter(absl::Milliseconds(20), [&] { add("c20"); });
  client_->RunAfter(absl::ZeroDuration(), [&] { add("d0"); });
  client_->RunAfter(absl::Milliseconds(-5), [&] { add("e-5"); });
  ASSERT_TRUE(all.WaitForNotificationWithTimeout(kWait));
  absl::MutexLock lock(&mu);
  EXPECT_EQ(order, (std::vector<std::string>{"d0", "e-5", "b20", "c20", "a60"}));
  for (const auto& id : threads) EXPECT_NE(id, std::this_thread::get_id());
}

// Buffers streamed data the way a download relay does: pauses at a high-water mark until the
// consumer (the test thread) drains the buffer and resumes.
class BufferingHandler : public StreamHandler {
 public:
  explicit BufferingHandler(size_t high_water) : high_water_(high_water) {}

  bool OnHeaders(int status, const Headers& headers) override {
    absl::MutexLock lock(&mu_);
    status_ = status;
    return true;
  }
  bool OnData(absl::string_view data) override {
    absl::MutexLock lock(&mu_);
    if (paused_) ++data_while_paused_;
    if (complete_) ++data_after_complete_;
    pending_.append(data.data(), data.size());
    total_ += data.size();
    max_pending_ = std::max(max_pending_, pending_.size());
    if (pending_.size() >= high_water_) {
      paused_ = true;
      ++pauses_;
      return false;
    }
    return true;
  }
  void OnComplete(absl::Status status) override {
    absl::MutexLock lock(&mu_);
    final_ = std::move(status);
    complete_ = true;
    ++completions_;
  }

  const size_t high_water_;
  absl::Mutex mu_;
  int status_ ABSL_GUARDED_BY(mu_) = 0;
  std::string pending_ ABSL_GUARDED_BY(mu_);
  size_t total_ ABSL_GUARDED_BY(mu_) = 0;
  size_t max_pending_ ABSL_GUARDED_BY(mu_) = 0;
  bool paused_ ABSL_GUARDED_BY(mu_) = false;
  int pauses_ ABSL_GUARDED_BY(mu_) = 0;
  int data_while_paused_ ABSL_GUARDED_BY(mu_) = 0;
  int data_after_complete_ ABSL_GUARDED_BY(mu_) = 0;
  bool complete_ ABSL_GUARDED_BY(mu_) = false;
  int completions_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Status final_ ABSL_GUARDED_BY(mu_);
};

TEST_F(CurlHttpClientTest, StreamWithPauseResumeKeepsMemoryBounded) {
  constexpr size_t kHighWater = 256 * 1024;
  BufferingHandler handler(kHighWater);
  auto handle = client_->Stream(Get("/big"), &handler);
  size_t consumed = 0;
  bool mismatch = false;
  while (true) {
    std::string chunk;
    bool complete = false;
    {
      absl::MutexLock lock(&handler.mu_);
      ASSERT_TRUE(handler.mu_.AwaitWithTimeout(
          absl::Condition(
              +[](BufferingHandler* h)
                   ABSL_EXCLUSIVE_LOCKS_REQUIRED(h->mu_) { return h->paused_ || h->complete_; },
              &handler),
          kWait));
      chunk.swap(handler.pending_);
      complete = handler.complete_;
      handler.paused_ = false;
    }
    for (size_t i = 0; i < chunk.size() && !mismatch; ++i) {
      mismatch = chunk[i] != PatternByte(consumed + i);
    }
    consumed += chunk.size();
    if (complete) break;
    handle->Resume();
  }
  absl::MutexLock lock(&handler.mu_);
  EXPECT_TRUE(handler.final_.ok()) << handler.final_;
  EXPECT_EQ(handler.status_, 200);
  EXPECT_EQ(consumed, kBigSize);
  EXPECT_FALSE(mismatch);
  EXPECT_EQ(handler.completions_, 1);
  EXPECT_EQ(handler.data_while_paused_, 0);
  EXPECT_GT(handler.pauses_, 10);
  RecordProperty("max_pending_bytes", static_cast<int>(handler.max_pending_));
  RecordProperty("pauses", handler.pauses_);
  // At most one socket read beyond the high-water mark is ever buffered.
  EXPECT_LE(handler.max_pending_, kHighWater + CURL_MAX_WRITE_SIZE * 4);
}

TEST_F(CurlHttpClientTest, CancelMidStream) {
  BufferingHandler handler(/*high_water=*/SIZE_MAX);
  auto handle = client_->Stream(Get("/endless"), &handler);
  {
    absl::MutexLock lock(&handler.mu_);
    ASSERT_TRUE(handler.mu_.AwaitWithTimeout(
        absl::Condition(
            +[](BufferingHandler* h) ABSL_EXCLUSIVE_LOCKS_REQUIRED(h->mu_) {
              return h->total_ >= (1u << 20) || h->complete_;
            },
            &handler),
        kWait));
  }
  handle->Cancel();
  absl::MutexLock lock(&handler.mu_);
  ASSERT_TRUE(handler.mu_.AwaitWithTimeout(absl::Condition(&handler.complete_), kWait));
  EXPECT_EQ(handler.final_.code(), absl::StatusCode::kCancelled) << handler.final_;
  EXPECT_EQ(handler.completions_, 1);
  EXPECT_EQ(handler.data_after_complete_, 0);
  EXPECT_LT(handler.total_, 256u << 20);
}

TEST_F(CurlHttpClientTest, DestroyingTheStreamHandleCancels) {
  BufferingHandler handler(/*high_water=*/64 * 1024);
  auto handle = client_->Stream(Get("/endless"), &handler);
  {
    absl::MutexLock lock(&handler.mu_);
    ASSERT_TRUE(handler.mu_.AwaitWithTimeout(absl::Condition(&handler.paused_), kWait));
  }
  handle.reset();  // while paused
  absl::MutexLock lock(&handler.mu_);
  ASSERT_TRUE(handler.mu_.AwaitWithTimeout(absl::Condition(&handler.complete_), kWait));
  EXPECT_EQ(handler.final_.code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(handler.completions_, 1);
}

TEST_F(CurlHttpClientTest, StreamDeliversErrorStatusAndBody) {
  BufferingHandler handler(SIZE_MAX);
  auto handle = client_->Stream(Get("/status/403"), &handler);
  absl::MutexLock lock(&handler.mu_);
  ASSERT_TRUE(handler.mu_.AwaitWithTimeout(absl::Condition(&handler.complete_), kWait));
  EXPECT_TRUE(handler.final_.ok());
  EXPECT_EQ(handler.status_, 403);
  EXPECT_EQ(handler.pending_, "status body");
}

TEST_F(CurlHttpClientTest, StreamTimeoutIsDeadlineExceeded) {
  BufferingHandler handler(SIZE_MAX);
  Request request = Get("/slow");
  request.timeout = absl::Milliseconds(200);
  auto handle = client_->Stream(request, &handler);
  absl::MutexLock lock(&handler.mu_);
  ASSERT_TRUE(handler.mu_.AwaitWithTimeout(absl::Condition(&handler.complete_), kWait));
  EXPECT_EQ(handler.final_.code(), absl::StatusCode::kDeadlineExceeded) << handler.final_;
}

TEST(FindHeaderTest, CaseInsensitiveFirstMatch) {
  Headers headers = {{"Content-Type", "a"}, {"content-type", "b"}, {"X", ""}};
  EXPECT_EQ(FindHeader(headers, "CONTENT-TYPE"), "a");
  EXPECT_EQ(FindHeader(headers, "x"), "");
  EXPECT_FALSE(FindHeader(headers, "Missing").has_value());
}

}  // namespace
}  // namespace musicgw::http
