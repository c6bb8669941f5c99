#include "services/operations/ledger_codec.h"

#include <utility>

#include "nlohmann/json.hpp"

namespace musicgw::operations {

int64_t LedgerMicros(absl::Time time) {
  if (time == absl::InfiniteFuture()) return INT64_MAX;
  if (time == absl::InfinitePast()) return INT64_MIN;
  return absl::ToUnixMicros(time);
}

LedgerCountSplit SplitLedgerCount(absl::Time since) {
  LedgerCountSplit split;
  const int64_t since_us = LedgerMicros(since);
  if (since_us <= 0) return split;
  if (since_us > INT64_MAX - kLedgerMicrosPerDay) {  // the far future: nothing yet
    split.first_day = INT64_MAX;
    return split;
  }
  // Rounded up: the first whole day and hour at or after `since`.
  split.first_day = (since_us + kLedgerMicrosPerDay - 1) / kLedgerMicrosPerDay;
  split.first_hour = (since_us + kLedgerMicrosPerHour - 1) / kLedgerMicrosPerHour;
  split.until_hour = split.first_day * 24;
  split.from_us = since_us;
  split.until_us = split.first_hour * kLedgerMicrosPerHour;
  return split;
}

absl::Time FromLedgerMicros(int64_t micros) {
  if (micros == INT64_MAX) return absl::InfiniteFuture();
  if (micros == INT64_MIN) return absl::InfinitePast();
  return absl::FromUnixMicros(micros);
}

std::string UpstreamOutputsToJson(const std::vector<UpstreamOutput>& outputs) {
  nlohmann::json array = nlohmann::json::array();
  for (const auto& output : outputs) {
    array.push_back({{"url", output.url}, {"expire_us", LedgerMicros(output.url_expire_time)}});
  }
  return array.dump();
}

std::vector<UpstreamOutput> UpstreamOutputsFromJson(const std::string& text) {
  std::vector<UpstreamOutput> outputs;
  const auto json = nlohmann::json::parse(text, nullptr, false);
  if (json.is_discarded() || !json.is_array()) return outputs;
  for (const auto& item : json) {
    if (!item.is_object()) continue;
    UpstreamOutput output;
    if (item.contains("url") && item["url"].is_string()) {
      output.url = item["url"].get<std::string>();
    }
    if (item.contains("expire_us") && item["expire_us"].is_number_integer()) {
      output.url_expire_time = FromLedgerMicros(item["expire_us"].get<int64_t>());
    }
    outputs.push_back(std::move(output));
  }
  return outputs;
}

}  // namespace musicgw::operations
