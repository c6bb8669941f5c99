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

namespace musicgw::gateway {
namespace {

constexpr absl::string_view kOperationsPrefix = "operations/";
constexpr size_t kOperationIdLength = 26;

bool IsOperationId(absl::string_view id) {
  return id.size() == kOperationIdLength && std::all_of(id.begin(), id.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z');
         });
}

absl::Status CheckProviderEnum(absl::string_view field, musicgw::v1::Provider provider) {
  if (!musicgw::v1::Provider_IsValid(provider)) {
    return InvalidFieldError(field, absl::StrCat("unknown provider value ", provider));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::vector<musicgw::v1::Provider>> ValidateGenerate(
    const musicgw::v1::GenerateRequest& request,
    const std::vector<musicgw::v1::Provider>& configured) {
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
    if (std::find(configured.begin(), configured.end(), request.provider()) == configured.end()) {
      return InvalidFieldError("provider",
                               absl::StrCat(musicgw::v1::Provider_Name(request.provider()),
                                            " is not configured on this gateway"));
    }
    MUSICGW_RETURN_IF_ERROR(adapters::CheckCapabilities(request.provider(), request));
  }
  // Candidates in routing order: the requested provider first, then (with allow_fallback or no
  // provider chosen) every other configured provider that honours the whole request.
  std::vector<musicgw::v1::Provider> candidates;
  if (request.provider() != musicgw::v1::PROVIDER_UNSPECIFIED) {
    candidates.push_back(request.provider());
  }
  // Report why a provider that does the task refused, rather than that another does not do it.
  absl::Status first_rejection;
  bool first_rejection_does_task = false;
  const std::vector<musicgw::v1::Provider> capable = adapters::ProvidersFor(task);
  if (request.provider() == musicgw::v1::PROVIDER_UNSPECIFIED || request.allow_fallback()) {
    for (musicgw::v1::Provider provider : configured) {
      if (provider == request.provider()) continue;
      absl::Status status = adapters::CheckCapabilities(provider, request);
      const bool does_task = std::find(capable.begin(), capable.end(), provider) != capable.end();
      if (status.ok()) {
        candidates.push_back(provider);
      } else if (first_rejection.ok() || (does_task && !first_rejection_does_task)) {
        first_rejection = status;
        first_rejection_does_task = does_task;
      }
    }
  }
  if (candidates.empty()) {
    if (!first_rejection.ok()) return first_rejection;
    return InvalidFieldError("task", "no configured provider supports this task");
  }
  return candidates;
}

absl::Status ValidateOperationName(absl::string_view field, absl::string_view name) {
  if (name.empty()) return InvalidFieldError(field, "required: \"operations/{id}\"");
  if (!absl::StartsWith(name, kOperationsPrefix) ||
      !IsOperationId(name.substr(kOperationsPrefix.size()))) {
    return InvalidFieldError(
        field,
        "must be \"operations/{id}\" with a 26-character lower-case id, as returned by Generate");
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
  if (request.page_size() < 0 || request.page_size() > 1000) {
    return InvalidFieldError("page_size", "must be between 0 and 1000");
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
  return absl::OkStatus();
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
