// The asynchronous access log: lines reach the sink on Flush and on destruction, a full queue
// drops records and counts them instead of blocking the caller, and lines are valid JSON
// whatever bytes a field holds.
#include "services/gateway/access_log.h"

#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace musicgw::gateway {
namespace {

AccessRecord Call(int i) {
  AccessRecord record;
  record.time = absl::FromUnixMillis(1'800'000'000'123);
  record.method = "GetOperation";
  record.tenant = "acme";
  record.operation = "operations/op" + std::to_string(i);
  record.code = "OK";
  record.latency_ms = 0.25;
  return record;
}

// Collects what the writer thread writes.
struct Collected {
  absl::Mutex mu;
  std::string text ABSL_GUARDED_BY(mu);

  AccessLog::Sink Sink() {
    return [this](absl::string_view lines) {
      absl::MutexLock lock(&mu);
      text.append(lines.data(), lines.size());
    };
  }
  std::vector<std::string> Lines() {
    absl::MutexLock lock(&mu);
    return absl::StrSplit(text, '\n', absl::SkipEmpty());
  }
};

TEST(AccessLogTest, FlushWritesEveryAppendedLine) {
  Collected out;
  AccessLog log(AccessLogOptions{}, out.Sink());
  for (int i = 0; i < 100; ++i) ASSERT_TRUE(log.Append(Call(i)));
  log.Flush();
  const auto lines = out.Lines();
  ASSERT_EQ(lines.size(), 100u);
  const auto first = nlohmann::json::parse(lines[0]);
  EXPECT_EQ(first["ts"], "2027-01-15T08:00:00.123Z");
  EXPECT_EQ(first["level"], "info");
  EXPECT_EQ(first["msg"], "rpc");
  EXPECT_EQ(first["method"], "GetOperation");
  EXPECT_EQ(first["tenant"], "acme");
  EXPECT_EQ(first["operation"], "operations/op0");
  EXPECT_EQ(first["code"], "OK");
  EXPECT_DOUBLE_EQ(first["latency_ms"].get<double>(), 0.25);
  EXPECT_EQ(log.dropped(), 0u);
}

TEST(AccessLogTest, DestructionWritesWhatIsQueued) {
  Collected out;
  {
    AccessLog log(AccessLogOptions{}, out.Sink());
    for (int i = 0; i < 10; ++i) ASSERT_TRUE(log.Append(Call(i)));
  }
  EXPECT_EQ(out.Lines().size(), 10u);
}

TEST(AccessLogTest, AFullQueueDropsAndCountsInsteadOfBlocking) {
  absl::Notification entered;
  absl::Notification release;
  Collected out;
  AccessLogOptions options;
  options.capacity = 4;
  options.queues = 1;
  AccessLog log(options, [&](absl::string_view lines) {
    if (!entered.HasBeenNotified()) entered.Notify();
    release.WaitForNotification();  // a stuck sink: the writer holds this batch
    absl::MutexLock lock(&out.mu);
    out.text.append(lines.data(), lines.size());
  });
  ASSERT_TRUE(log.Append(Call(0)));
  entered.WaitForNotification();  // the writer took record 0 and is stuck in the sink
  for (int i = 1; i <= 4; ++i) ASSERT_TRUE(log.Append(Call(i)));
  EXPECT_FALSE(log.Append(Call(5)));
  EXPECT_FALSE(log.Append(Call(6)));
  EXPECT_EQ(log.dropped(), 2u);
  release.Notify();
  log.Flush();
  EXPECT_EQ(out.Lines().size(), 5u);
}

TEST(AccessLogTest, FieldsAreEscapedAndInvalidUtf8Replaced) {
  AccessRecord record = Call(0);
  record.error = std::string("quote\" backslash\\ newline\n bad\xff\xfe ok\xc3\xa9", 37);
  std::string line;
  AccessLog::FormatLine(record, &line);
  ASSERT_EQ(line.back(), '\n');
  const auto json = nlohmann::json::parse(line);
  EXPECT_EQ(json["error"], "quote\" backslash\\ newline\n bad\xef\xbf\xbd\xef\xbf\xbd ok\xc3\xa9");
}

TEST(AccessLogTest, ManyThreadsAppendWithoutLoss) {
  Collected out;
  AccessLog log(AccessLogOptions{}, out.Sink());
  std::vector<std::thread> threads;
  threads.reserve(4);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&log, t] {
      for (int i = 0; i < 500; ++i) log.Append(Call(t * 1000 + i));
    });
  }
  for (auto& thread : threads) thread.join();
  log.Flush();
  EXPECT_EQ(out.Lines().size(), 2000u);
  EXPECT_EQ(log.dropped(), 0u);
}

}  // namespace
}  // namespace musicgw::gateway
