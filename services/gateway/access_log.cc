#include "services/gateway/access_log.h"

#include <algorithm>
#include <cstdio>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace musicgw::gateway {
namespace {

// Appends `text` as a JSON string. Control characters are escaped; invalid UTF-8 becomes
// U+FFFD, as common/log does, so a stray byte in an error message cannot break the line.
void AppendJsonString(absl::string_view text, std::string* out) {
  out->push_back('"');
  size_t i = 0;
  while (i < text.size()) {
    // Plain printable ASCII, the common case, is copied in runs.
    size_t run = i;
    while (run < text.size()) {
      const auto r = static_cast<unsigned char>(text[run]);
      if (r < 0x20 || r >= 0x80 || r == '"' || r == '\\') break;
      ++run;
    }
    out->append(text.data() + i, run - i);
    i = run;
    if (i == text.size()) break;
    const auto c = static_cast<unsigned char>(text[i]);
    if (c < 0x80) {
      if (c == '"' || c == '\\') {
        out->push_back('\\');
        out->push_back(static_cast<char>(c));
      } else if (c < 0x20) {
        static constexpr char kHex[] = "0123456789abcdef";
        out->append("\\u00");
        out->push_back(kHex[c >> 4]);
        out->push_back(kHex[c & 0xf]);
      } else {
        out->push_back(static_cast<char>(c));
      }
      ++i;
      continue;
    }
    // Length of a well-formed sequence starting here, or 0.
    size_t length = 0;
    if (c >= 0xc2 && c <= 0xdf) length = 2;
    if (c >= 0xe0 && c <= 0xef) length = 3;
    if (c >= 0xf0 && c <= 0xf4) length = 4;
    bool valid = length > 0 && i + length <= text.size();
    for (size_t k = 1; valid && k < length; ++k) {
      valid = (static_cast<unsigned char>(text[i + k]) & 0xc0) == 0x80;
    }
    if (valid && length >= 3) {
      const auto c1 = static_cast<unsigned char>(text[i + 1]);
      // Overlong forms, surrogates and code points past U+10FFFF.
      if ((c == 0xe0 && c1 < 0xa0) || (c == 0xed && c1 > 0x9f) || (c == 0xf0 && c1 < 0x90) ||
          (c == 0xf4 && c1 > 0x8f)) {
        valid = false;
      }
    }
    if (valid) {
      out->append(text.data() + i, length);
      i += length;
    } else {
      out->append("\xef\xbf\xbd");
      ++i;
    }
  }
  out->push_back('"');
}

void AppendField(absl::string_view key, absl::string_view value, std::string* out) {
  out->append(",\"");
  out->append(key.data(), key.size());
  out->append("\":");
  AppendJsonString(value, out);
}

size_t QueueIndex(int queues) {
  // Each thread keeps one queue, chosen round-robin at its first call.
  static std::atomic<size_t> next{0};
  thread_local const size_t mine = next.fetch_add(1, std::memory_order_relaxed);
  return mine % static_cast<size_t>(queues);
}

}  // namespace

AccessLog::AccessLog(AccessLogOptions options, Sink sink)
    : options_(options),
      per_queue_(std::max<size_t>(1, options.capacity / std::max(1, options.queues))),
      sink_(std::move(sink)) {
  for (int i = 0; i < std::max(1, options_.queues); ++i) {
    queues_.push_back(std::make_unique<Queue>());
  }
  writer_ = std::thread([this] { Run(); });
}

AccessLog::~AccessLog() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    wake_.Signal();
  }
  writer_.join();
}

bool AccessLog::Append(AccessRecord record) {
  Queue& queue = *queues_[QueueIndex(static_cast<int>(queues_.size()))];
  absl::MutexLock lock(&queue.mu);
  if (queue.records.size() >= per_queue_) {
    dropped_.fetch_add(1, std::memory_order_relaxed);
    return false;
  }
  queue.records.push_back(std::move(record));
  return true;
}

void AccessLog::Flush() {
  absl::MutexLock lock(&mu_);
  const uint64_t ticket = ++flush_requested_;
  wake_.Signal();
  while (flush_done_ < ticket && !stopping_) wake_.Wait(&mu_);
}

size_t AccessLog::DrainOnce() {
  std::vector<AccessRecord> records;
  std::string lines;
  size_t written = 0;
  for (auto& queue : queues_) {
    {
      absl::MutexLock lock(&queue->mu);
      records.swap(queue->records);
    }
    for (const AccessRecord& record : records) FormatLine(record, &lines);
    written += records.size();
    records.clear();
  }
  if (!lines.empty()) sink_(lines);
  return written;
}

void AccessLog::Run() {
  mu_.Lock();
  while (true) {
    const bool stopping = stopping_;
    const uint64_t flush_target = flush_requested_;
    mu_.Unlock();
    // Everything queued before a Flush or the stop is written in this pass.
    DrainOnce();
    mu_.Lock();
    flush_done_ = flush_target;
    wake_.SignalAll();
    if (stopping) break;
    if (flush_requested_ == flush_done_ && !stopping_) {
      wake_.WaitWithTimeout(&mu_, options_.flush_interval);
    }
  }
  mu_.Unlock();
}

AccessLog& AccessLog::Default() {
  static AccessLog log(AccessLogOptions{}, [](absl::string_view lines) {
    std::fwrite(lines.data(), 1, lines.size(), stderr);
    std::fflush(stderr);
  });
  return log;
}

void AccessLog::FormatLine(const AccessRecord& record, std::string* out) {
  // The date and time to the second change once a second: formatted once per second per thread.
  thread_local int64_t cached_second = -1;
  thread_local std::string cached_prefix;
  const int64_t second = absl::ToUnixSeconds(record.time);
  const int64_t millis = absl::ToUnixMillis(record.time) - second * 1000;
  if (second != cached_second) {  // both ToUnix* round down, so 0 <= millis < 1000
    cached_second = second;
    cached_prefix =
        absl::FormatTime("%Y-%m-%dT%H:%M:%S", absl::FromUnixSeconds(second), absl::UTCTimeZone());
  }
  out->append("{\"ts\":\"");
  out->append(cached_prefix);
  const char digits[] = {'.', static_cast<char>('0' + millis / 100),
                         static_cast<char>('0' + millis / 10 % 10),
                         static_cast<char>('0' + millis % 10), 'Z'};
  out->append(digits, sizeof(digits));
  out->append("\",\"level\":\"info\",\"msg\":\"rpc\"");
  AppendField("method", record.method, out);
  AppendField("tenant", record.tenant, out);
  AppendField("operation", record.operation, out);
  AppendField("provider", record.provider, out);
  AppendField("code", record.code, out);
  AppendField("error", record.error, out);
  absl::StrAppend(out, ",\"latency_ms\":", record.latency_ms, "}\n");
}

}  // namespace musicgw::gateway
