#include "common/log.h"

#include <atomic>
#include <cstdio>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"

namespace musicgw::log {
namespace {

std::atomic<int> min_level{static_cast<int>(Level::kInfo)};

const char* LevelName(Level level) {
  switch (level) {
    case Level::kDebug:
      return "debug";
    case Level::kInfo:
      return "info";
    case Level::kWarning:
      return "warning";
    case Level::kError:
      return "error";
  }
  return "info";
}

}  // namespace

void SetMinLevel(Level level) { min_level.store(static_cast<int>(level)); }

void Write(Level level, absl::string_view message, Fields fields) {
  if (static_cast<int>(level) < min_level.load(std::memory_order_relaxed)) return;
  nlohmann::ordered_json line;
  line["ts"] = absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(), absl::UTCTimeZone());
  line["level"] = LevelName(level);
  line["msg"] = std::string(message);
  for (const auto& [key, value] : fields) {
    auto& slot = line[std::string(key)];
    switch (value.kind()) {
      case Value::kString:
        slot = value.string();
        break;
      case Value::kInt:
        slot = value.integer();
        break;
      case Value::kDouble:
        slot = value.real();
        break;
      case Value::kBool:
        slot = value.integer() != 0;
        break;
    }
  }
  // Invalid UTF-8 in a field must not abort logging: replace it.
  const std::string text =
      line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  static absl::Mutex mu(absl::kConstInit);
  absl::MutexLock lock(&mu);
  std::fwrite(text.data(), 1, text.size(), stderr);
  std::fflush(stderr);
}

}  // namespace musicgw::log
