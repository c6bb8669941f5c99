// File: ledger_codec.h
// How both ledgers (SQLite, PostgreSQL) store what is not a column of its own: times as
// microseconds since the epoch (the infinities as the int64 extremes) and the provider's
// output URLs as a small JSON array; and how counts kept per day and hour of creation are read.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "services/operations/operation_store.h"

namespace musicgw::operations {

int64_t LedgerMicros(absl::Time time);
absl::Time FromLedgerMicros(int64_t micros);

inline constexpr int64_t kLedgerMicrosPerHour = int64_t{3'600'000'000};
inline constexpr int64_t kLedgerMicrosPerDay = 24 * kLedgerMicrosPerHour;

// A count of operations created at or after `since`, read from counters kept per ledger day
// and per ledger hour (create_time_us / kLedgerMicrosPer{Day,Hour}, as both ledgers' integer
// division computes it): the days from `first_day` on; the hours in [first_hour, until_hour),
// the rest of the day `since` falls in; and the rows created in [from_us, until_us), the rest of
// its hour, one by one. So a count reads at most a day counter per day, 23 hour counters and an
// hour of rows, however many operations the days hold. Operations are created after 1970, so
// a `since` before it counts every day.
struct LedgerCountSplit {
  int64_t first_day = INT64_MIN;
  int64_t first_hour = 0;
  int64_t until_hour = 0;
  int64_t from_us = 0;
  int64_t until_us = 0;
};
LedgerCountSplit SplitLedgerCount(absl::Time since);

std::string UpstreamOutputsToJson(const std::vector<UpstreamOutput>& outputs);
// Unreadable entries are skipped: a URL can always be refreshed from the provider.
std::vector<UpstreamOutput> UpstreamOutputsFromJson(const std::string& text);

}  // namespace musicgw::operations
