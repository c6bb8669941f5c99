// Page tokens of ListOperations, through the public OperationsEngine::List over an in-memory
// ledger (the token is checked before the store is read). The input is the token, with the
// filters drawn from its first byte. Property: every rejection is INVALID_ARGUMENT (naming
// page_token or the filters), and nothing else fails.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/strings/match.h"
#include "fuzz/fuzz_check.h"
#include "services/operations/engine.h"
#include "services/operations/operation_store.h"
#include "tests/operations/fake_adapter.h"

namespace ops = musicgw::operations;

namespace {

ops::OperationsEngine& Engine() {
  static ops::OperationsEngine* const engine = [] {
    auto store = ops::OpenSqliteOperationStore(":memory:");
    FUZZ_CHECK(store.ok(), "cannot open an in-memory ledger");
    // The engine wants a provider; List never calls it.
    static auto* const adapter =
        new ops::testing::FakeAdapter(ops::testing::FakeAdapter::Options{});
    auto created = ops::CreateOperationsEngine({}, std::move(*store), {adapter}, nullptr);
    FUZZ_CHECK(created.ok(), "cannot create the engine");
    FUZZ_CHECK((*created)->Start().ok(), "cannot start the engine");
    return created->release();  // lives for the process, as in the server
  }();
  return *engine;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  musicgw::v1::ListOperationsRequest request;
  request.set_page_token(std::string(reinterpret_cast<const char*>(data) + 1, size - 1));
  request.set_page_size(data[0] & 7);
  if (data[0] & 8) request.add_states(musicgw::v1::OperationState(data[0] >> 4));
  if (data[0] & 16) request.set_provider(musicgw::v1::PROVIDER_LOUDLY);
  auto response = Engine().List((data[0] & 32) ? "acme" : "globex", request);
  if (!response.ok()) {
    FUZZ_CHECK(response.status().code() == absl::StatusCode::kInvalidArgument,
               "a bad page token is not INVALID_ARGUMENT");
  }
  return 0;
}
