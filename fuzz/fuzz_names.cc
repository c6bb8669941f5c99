// Operation and asset names from requests ("operations/{id}", "operations/{id}/assets/{n}").
// Properties: what parses names an id IsOperationId accepts, and prints back to itself.
#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "fuzz/fuzz_check.h"
#include "services/operations/ids.h"

namespace ops = musicgw::operations;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string name(reinterpret_cast<const char*>(data), size);
  if (auto id = ops::ParseOperationName(name); id.ok()) {
    FUZZ_CHECK(ops::IsOperationId(*id), "a parsed operation name holds a bad id");
    FUZZ_CHECK(ops::OperationName(*id) == name, "an operation name does not print back");
  } else {
    FUZZ_CHECK(id.status().code() == absl::StatusCode::kInvalidArgument, "wrong error code");
  }
  if (auto asset = ops::ParseAssetName(name); asset.ok()) {
    FUZZ_CHECK(ops::IsOperationId(asset->operation_id), "a parsed asset name holds a bad id");
    FUZZ_CHECK(asset->index >= 0, "a negative asset index");
    FUZZ_CHECK(ops::AssetName(asset->operation_id, asset->index) == name,
               "an asset name does not print back");
  } else {
    FUZZ_CHECK(asset.status().code() == absl::StatusCode::kInvalidArgument, "wrong error code");
  }
  if (ops::IsOperationId(name)) {
    auto again = ops::ParseOperationName(ops::OperationName(name));
    FUZZ_CHECK(again.ok() && *again == name, "a valid id does not round-trip");
  }
  // Request ids are outside input too: they key idempotency.
  (void)ops::ProviderIdempotencyKey("acme", name);
  return 0;
}
