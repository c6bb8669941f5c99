#include "services/operations/ledger_codec.h"

#include <utility>

#include "nlohmann/json.hpp"

namespace musicgw::operations {

int64_t LedgerMicros(absl::Time time) {
  if (time == absl::InfiniteFuture()) return INT64_MAX;
  if (time == absl::InfinitePast()) return INT64_MIN;
  return absl::ToUnixMicros(time);
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
