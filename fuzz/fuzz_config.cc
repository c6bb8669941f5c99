// The config file: any text, with every secret reference resolvable (so inputs get past the
// environment) or none (so the missing-secret paths run too). Property: a config that parses
// parses again, to the same result, from the same text (no hidden state).
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/config.h"
#include "fuzz/fuzz_check.h"

namespace config = musicgw::config;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  // The first byte picks the environment; the rest is the file.
  const bool resolvable = (data[0] & 1) != 0;
  const std::string text(reinterpret_cast<const char*>(data) + 1, size - 1);
  const config::EnvLookup env =
      [resolvable](const std::string& name) -> std::optional<std::string> {
    if (!resolvable) return std::nullopt;
    return absl::StrCat("secret-for-", name);
  };
  auto first = config::ParseConfig(text, env);
  auto second = config::ParseConfig(text, env);
  FUZZ_CHECK(first.ok() == second.ok(), "the same text parsed differently");
  if (!first.ok()) {
    FUZZ_CHECK(first.status().message() == second.status().message(), "unstable error text");
    return 0;
  }
  FUZZ_CHECK(first->tenants.size() == second->tenants.size() &&
                 first->providers.size() == second->providers.size(),
             "the same text parsed differently");
  for (const auto& tenant : first->tenants) (void)tenant;
  return 0;
}
