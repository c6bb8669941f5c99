#include "adapters/submit_outcome.h"

#include "common/errors.h"

namespace musicgw::adapters {

absl::Status OutcomeUnknownError(absl::string_view message, absl::string_view domain,
                                 const std::map<std::string, std::string>& metadata) {
  return WithErrorInfo(absl::UnknownError(message), kOutcomeUnknownReason, domain, metadata);
}

bool IsOutcomeUnknown(const absl::Status& status) {
  google::rpc::ErrorInfo info;
  return !status.ok() && GetErrorInfo(status, &info) && info.reason() == kOutcomeUnknownReason;
}

}  // namespace musicgw::adapters
