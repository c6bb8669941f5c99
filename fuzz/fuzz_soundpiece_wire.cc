// Soundpiece response bodies: a PUT/GET answer read as every route's, a webhook event body, and
// the error mapping of non-2xx answers.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "adapters/soundpiece/soundpiece_wire.h"
#include "fuzz/fuzz_check.h"

namespace soundpiece = musicgw::adapters::soundpiece;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string body(reinterpret_cast<const char*>(data), size);
  for (const char* name : {"create.new_song", "create.new_instrumental", "create.new_sample",
                           "create.new_fx", "adapt.auto_cut_down", "adapt.remix_instrumental",
                           "adapt.remix_song", "adapt.separate_stems"}) {
    const soundpiece::Route* route = soundpiece::RouteByName(name);
    if (route == nullptr) continue;
    (void)soundpiece::ParseOperation(body, *route);
    soundpiece::ErrorContext context{"soundpiece-main", name, true, route->task};
    for (int status : {400, 401, 402, 404, 409, 422, 429, 500, 503}) {
      FUZZ_CHECK(!soundpiece::MapHttpError(status, body, absl::Seconds(2), context).ok(),
                 "an HTTP error mapped to OK");
    }
    std::vector<std::string> loc = absl::StrSplit(body, '/');
    (void)soundpiece::FieldPathForLoc(route->task, loc);
  }
  (void)soundpiece::ParseWebhookEvent(body);
  (void)soundpiece::RouteByName(body);
  return 0;
}
