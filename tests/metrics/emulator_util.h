// Shared by the emulator-backed metrics tests: both emulators with quick timings, and reading
// one sample out of Prometheus text.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "emulators/loudly/loudly_emulator.h"
#include "emulators/soundpiece/soundpiece_emulator.h"

namespace musicgw::metrics::testing {

struct Emulators {
  std::unique_ptr<emulators::loudly::Emulator> loudly;
  std::unique_ptr<emulators::soundpiece::Emulator> soundpiece;

  // Generations finish in a fraction of a second. `loudly_b2b_limits`: monthly limits by
  // request type (others 1000).
  absl::Status Start(std::map<std::string, int64_t> loudly_b2b_limits = {}) {
    emulators::loudly::Options ld;
    ld.b2b_limits = std::move(loudly_b2b_limits);
    ld.sync_latency = absl::Milliseconds(200);
    ld.bundle_song_delay = absl::Milliseconds(200);
    auto started_loudly = emulators::loudly::Emulator::Start(ld);
    if (!started_loudly.ok()) return started_loudly.status();
    loudly = std::move(*started_loudly);
    emulators::soundpiece::Options sp;
    sp.processing_time = absl::Milliseconds(200);
    sp.long_poll = absl::Seconds(2);
    auto started_soundpiece = emulators::soundpiece::Emulator::Start(sp);
    if (!started_soundpiece.ok()) return started_soundpiece.status();
    soundpiece = std::move(*started_soundpiece);
    return absl::OkStatus();
  }
};

// The first sample of `name` whose labels contain every `key="value"` in `labels`.
inline std::optional<double> Sample(const std::string& text, const std::string& name,
                                    const std::vector<std::string>& labels) {
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (!absl::StartsWith(line, name + "{") && !absl::StartsWith(line, name + " ")) continue;
    bool match = true;
    for (const std::string& label : labels) match = match && absl::StrContains(line, label);
    const size_t space = line.rfind(' ');
    double value = 0;
    if (match && space != absl::string_view::npos &&
        absl::SimpleAtod(line.substr(space + 1), &value)) {
      return value;
    }
  }
  return std::nullopt;
}

}  // namespace musicgw::metrics::testing
