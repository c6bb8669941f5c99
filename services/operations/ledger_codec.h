// File: ledger_codec.h
// How both ledgers (SQLite, PostgreSQL) store what is not a column of its own: times as
// microseconds since the epoch (the infinities as the int64 extremes) and the provider's
// output URLs as a small JSON array.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "services/operations/operation_store.h"

namespace musicgw::operations {

int64_t LedgerMicros(absl::Time time);
absl::Time FromLedgerMicros(int64_t micros);

std::string UpstreamOutputsToJson(const std::vector<UpstreamOutput>& outputs);
// Unreadable entries are skipped: a URL can always be refreshed from the provider.
std::vector<UpstreamOutput> UpstreamOutputsFromJson(const std::string& text);

}  // namespace musicgw::operations
