#include "services/gateway/validator.h"

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "adapters/capabilities.h"
#include "common/crypto.h"
#include "common/errors.h"
#include "common/status_macros.h"
#include "services/gateway/free_text.h"
#include "services/operations/ids.h"
#include "services/operations/page_token.h"

namespace musicgw::gateway {
namespace {

constexpr int kMaxStateFilters = 16;

constexpr absl::string_view kOperationsPrefix = "operations/";

absl::Status CheckProviderEnum(absl::string_view field, musicgw::v1::Provider provider) {
  if (!musicgw::v1::Provider_IsValid(provider)) {
    return InvalidFieldError(field, absl::StrCat("unknown provider value ", provider));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateGenerate(const musicgw::v1::GenerateRequest& request) {
  if (request.request_id().empty()) {
    return InvalidFieldError("request_id", "required: a UUID chosen by the client (AIP-155)");
  }
  if (!IsUuid(request.request_id())) {
    return InvalidFieldError("request_id",
                             "must be a UUID in 8-4-4-4-12 hexadecimal form, e.g. "
                             "123e4567-e89b-12d3-a456-426614174000");
  }
  MUSICGW_RETURN_IF_ERROR(CheckProviderEnum("provider", request.provider()));
  MUSICGW_RETURN_IF_ERROR(CheckFreeText(request));
  const musicgw::v1::TaskKind task = adapters::TaskKindOf(request);
  if (task == musicgw::v1::TASK_KIND_UNSPECIFIED) {
    return InvalidFieldError("task", "required: set one task message, e.g. parametric_music");
  }
  if (request.provider() != musicgw::v1::PROVIDER_UNSPECIFIED) {
    return adapters::CheckCapabilities(request.provider(), request);
  }
  // No provider chosen: some provider of the table must take the request as it is. Which
  // configured account does is the router's decision. Report why a provider that does the task
  // refused, rather than that another does not do it.
  const std::vector<musicgw::v1::Provider> capable = adapters::ProvidersFor(task);
  absl::Status first_rejection;
  for (musicgw::v1::Provider provider : capable) {
    absl::Status status = adapters::CheckCapabilities(provider, request);
    if (status.ok()) return status;
    if (first_rejection.ok()) first_rejection = std::move(status);
  }
  if (!first_rejection.ok()) return first_rejection;
  return InvalidFieldError("task", "no provider supports this task");
}

absl::Status ValidateOperationName(absl::string_view field, absl::string_view name) {
  if (name.empty()) return InvalidFieldError(field, "required: \"operations/{id}\"");
  if (!absl::StartsWith(name, kOperationsPrefix) ||
      !operations::IsOperationId(name.substr(kOperationsPrefix.size()))) {
    return InvalidFieldError(field,
                             "must be \"operations/{id}\" with a 26-character id (digits and "
                             "lower-case letters except i, l, o, u), as returned by Generate");
  }
  return absl::OkStatus();
}

absl::Status ValidateAssetName(absl::string_view field, absl::string_view name) {
  constexpr absl::string_view kAssets = "/assets/";
  const size_t assets = name.find(kAssets);
  int index = 0;
  if (name.empty() || assets == absl::string_view::npos ||
      !ValidateOperationName(field, name.substr(0, assets)).ok() ||
      !absl::SimpleAtoi(name.substr(assets + kAssets.size()), &index) || index < 0 ||
      absl::StrCat(index) != name.substr(assets + kAssets.size())) {
    return InvalidFieldError(
        field, "must be \"operations/{id}/assets/{index}\", as listed in Operation.outputs");
  }
  return absl::OkStatus();
}

absl::Status ValidateList(const musicgw::v1::ListOperationsRequest& request) {
  MUSICGW_RETURN_IF_ERROR(operations::ResolvePageSize(request.page_size()).status());
  // Six states exist; a longer filter only repeats them and costs the ledger work.
  if (request.states_size() > kMaxStateFilters) {
    return InvalidFieldError("states", absl::StrCat("at most ", kMaxStateFilters, " entries"));
  }
  for (int i = 0; i < request.states_size(); ++i) {
    const auto state = request.states(i);
    if (!musicgw::v1::OperationState_IsValid(state) ||
        state == musicgw::v1::OPERATION_STATE_UNSPECIFIED) {
      return InvalidFieldError(absl::StrCat("states[", i, "]"), "unknown state");
    }
  }
  MUSICGW_RETURN_IF_ERROR(CheckProviderEnum("provider", request.provider()));
  if (!musicgw::v1::TaskKind_IsValid(request.task())) {
    return InvalidFieldError("task", "unknown task kind");
  }
  if (request.page_token().size() > 1024) {
    return InvalidFieldError("page_token", "not a token returned by ListOperations");
  }
  return absl::OkStatus();
}

absl::Status ValidateWatch(const musicgw::v1::WatchOperationRequest& request) {
  MUSICGW_RETURN_IF_ERROR(ValidateOperationName("name", request.name()));
  if (request.after_sequence() < 0) {
    return InvalidFieldError("after_sequence", "must not be negative");
  }
  return absl::OkStatus();
}

absl::Status ValidateWait(const musicgw::v1::WaitOperationRequest& request) {
  MUSICGW_RETURN_IF_ERROR(ValidateOperationName("name", request.name()));
  const auto& timeout = request.timeout();
  if (timeout.seconds() < 0 || timeout.nanos() < 0 || timeout.nanos() > 999999999 ||
      timeout.seconds() > 600 || (timeout.seconds() == 600 && timeout.nanos() > 0)) {
    return InvalidFieldError("timeout", "must be between 0 and 600 seconds");
  }
  return absl::OkStatus();
}

absl::Status ValidateCancel(const musicgw::v1::CancelOperationRequest& request) {
  MUSICGW_RETURN_IF_ERROR(ValidateOperationName("name", request.name()));
  if (request.reason().size() > 512) {
    return InvalidFieldError("reason", "must be at most 512 characters");
  }
  return CheckFreeText(request);
}

absl::Status ValidateDownload(const musicgw::v1::DownloadRequest& request) {
  MUSICGW_RETURN_IF_ERROR(ValidateAssetName("asset", request.asset()));
  if (request.offset() < 0) return InvalidFieldError("offset", "must not be negative");
  return absl::OkStatus();
}

absl::Status ValidateGetQuota(const musicgw::v1::GetQuotaRequest& request) {
  return CheckProviderEnum("provider", request.provider());
}

}  // namespace musicgw::gateway
