#include "services/operations/router.h"

#include <algorithm>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "adapters/capabilities.h"
#include "common/errors.h"
#include "common/provider_names.h"
#include "common/time_util.h"

namespace musicgw::operations {

namespace v1 = musicgw::v1;
using adapters::ProviderAdapter;

bool UsedUp(const adapters::QuotaFigure& figure, absl::Time now) {
  return figure.remaining == 0 &&
         (figure.reset_time == absl::InfinitePast() || figure.reset_time > now);
}

Router::Router(const std::vector<ProviderAdapter*>& adapters, RouterOptions options,
               const Clock& clock)
    : options_(options), clock_(clock) {
  for (ProviderAdapter* adapter : adapters) {
    Slot slot;
    slot.adapter = adapter;
    slots_.push_back(std::move(slot));
  }
}

bool Router::Supports(int slot, const v1::GenerateRequest& request) const {
  const ProviderAdapter* adapter = slots_[slot].adapter;
  return adapters::CheckCapabilities(adapter->provider(), request).ok() &&
         adapter->CheckRequest(request).ok();
}

absl::Status Router::NotConfigured(v1::Provider provider) const {
  std::string configured;
  std::set<v1::Provider> seen;
  for (const Slot& slot : slots_) {
    if (!seen.insert(slot.adapter->provider()).second) continue;
    absl::StrAppend(&configured, configured.empty() ? "" : ", ",
                    ProviderEnumName(slot.adapter->provider()));
  }
  absl::Status status = InvalidFieldError(
      "provider",
      absl::StrCat(ProviderEnumName(provider),
                   " is not configured on this gateway (configured: ", configured, ")"));
  return WithErrorInfo(std::move(status), "PROVIDER_NOT_CONFIGURED", kGatewayDomain,
                       {{"provider", ProviderEnumName(provider)}});
}

absl::StatusOr<int> Router::Route(const v1::GenerateRequest& request) const {
  const v1::Provider requested = request.provider();
  std::vector<int> preferred;
  std::vector<int> others;
  // Why a candidate refused, preferring a provider that does the task at all.
  absl::Status rejection;
  bool rejection_does_task = false;
  bool rejection_is_requested = false;
  const std::vector<v1::Provider> capable = adapters::ProvidersFor(adapters::TaskKindOf(request));
  bool requested_configured = false;
  for (int i = 0; i < size(); ++i) {
    const ProviderAdapter* adapter = slots_[i].adapter;
    const bool is_requested = adapter->provider() == requested;
    requested_configured = requested_configured || is_requested;
    if (requested != v1::PROVIDER_UNSPECIFIED && !is_requested && !request.allow_fallback()) {
      continue;
    }
    absl::Status status = adapters::CheckCapabilities(adapter->provider(), request);
    if (status.ok()) status = adapter->CheckRequest(request);
    if (status.ok()) {
      (requested == v1::PROVIDER_UNSPECIFIED || is_requested ? preferred : others).push_back(i);
      continue;
    }
    const bool does_task =
        std::find(capable.begin(), capable.end(), adapter->provider()) != capable.end();
    if (is_requested) {
      // The requested provider's own reason comes first.
      if (!rejection_is_requested) rejection = std::move(status);
      rejection_is_requested = true;
    } else if (!rejection_is_requested && (rejection.ok() || (does_task && !rejection_does_task))) {
      rejection = std::move(status);
      rejection_does_task = does_task;
    }
  }
  if (requested != v1::PROVIDER_UNSPECIFIED && !requested_configured) {
    return NotConfigured(requested);
  }
  if (requested != v1::PROVIDER_UNSPECIFIED && preferred.empty()) {
    // The requested provider refuses the request itself; fallback is for outages, not for
    // requests the chosen provider cannot take.
    return rejection;
  }
  if (preferred.empty() && others.empty()) {
    if (!rejection.ok()) return rejection;
    return WithErrorInfo(InvalidFieldError("task", "no configured provider supports this task"),
                         "NO_PROVIDER_FOR_TASK", kGatewayDomain);
  }
  std::vector<std::vector<std::string>> resources(slots_.size());
  for (int index : preferred) resources[index] = slots_[index].adapter->QuotaResources(request);
  for (int index : others) resources[index] = slots_[index].adapter->QuotaResources(request);
  const absl::Time now = clock_.Now();
  absl::MutexLock lock(&mu_);
  for (int index : preferred) {
    if (UsableLocked(slots_[index], resources[index], now)) return index;
  }
  for (int index : others) {
    if (UsableLocked(slots_[index], resources[index], now)) return index;
  }
  const int first_index = preferred.empty() ? others.front() : preferred.front();
  const Slot& first = slots_[first_index];
  if (first.cooldown_until <= now && first.quota_until <= now) {
    return KnownExhaustedStatus(first, *KnownExhaustedLocked(first, resources[first_index], now),
                                now);
  }
  return BlockedStatus(first, now);
}

int Router::PickFallback(const v1::Operation& op) const {
  std::set<std::pair<int, std::string>> tried;
  for (const auto& attempt : op.attempts()) {
    tried.emplace(static_cast<int>(attempt.provider()), attempt.account());
  }
  const absl::Time now = clock_.Now();
  for (int i = 0; i < size(); ++i) {
    const ProviderAdapter* adapter = slots_[i].adapter;
    if (tried.count({static_cast<int>(adapter->provider()), adapter->account()}) > 0) continue;
    if (!Supports(i, op.request())) continue;
    const std::vector<std::string> resources = adapter->QuotaResources(op.request());
    absl::MutexLock lock(&mu_);
    if (UsableLocked(slots_[i], resources, now)) return i;
  }
  return -1;
}

int Router::SlotFor(const v1::Operation& op) const {
  int fallback = -1;
  for (int i = 0; i < size(); ++i) {
    const ProviderAdapter* adapter = slots_[i].adapter;
    if (adapter->provider() != op.provider()) continue;
    if (adapter->account() == op.provider_account()) return i;
    if (fallback < 0) fallback = i;
  }
  return fallback;
}

void Router::RecordSuccess(int slot) {
  if (slot < 0) return;
  absl::MutexLock lock(&mu_);
  slots_[slot].consecutive_failures = 0;
  slots_[slot].cooldown_until = absl::InfinitePast();
}

void Router::RecordFailure(int slot, const absl::Status& status,
                           const v1::GenerateRequest* request) {
  if (slot < 0) return;
  const absl::Time now = clock_.Now();
  const std::string resource = status.code() == absl::StatusCode::kResourceExhausted
                                   ? ExhaustedResource(*slots_[slot].adapter, status, request)
                                   : "";
  absl::MutexLock lock(&mu_);
  Slot& s = slots_[slot];
  switch (status.code()) {
    case absl::StatusCode::kResourceExhausted: {
      google::rpc::RetryInfo retry;
      absl::Duration delay = options_.default_quota_backoff;
      if (GetRetryInfo(status, &retry)) delay = FromProtoDuration(retry.retry_delay());
      absl::Time& until = resource.empty() ? s.quota_until : s.rejected_until[resource];
      until = std::max(until, now + delay);
      return;
    }
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded:
    case absl::StatusCode::kInternal:
    case absl::StatusCode::kUnknown:
    case absl::StatusCode::kUnauthenticated:
    case absl::StatusCode::kPermissionDenied:
    case absl::StatusCode::kFailedPrecondition:
      break;
    default:
      return;  // the request's fault, not the provider's
  }
  s.last_error =
      absl::StrCat(absl::StatusCodeToString(status.code()), ": ", status.message().substr(0, 200));
  if (++s.consecutive_failures >= options_.failure_threshold) {
    s.cooldown_until = now + options_.failure_cooldown;
  }
}

void Router::UpdateQuota(const ProviderAdapter* adapter,
                         const std::vector<adapters::QuotaFigure>& figures) {
  absl::MutexLock lock(&mu_);
  for (Slot& slot : slots_) {
    if (slot.adapter != adapter) continue;
    slot.quota.clear();
    for (const auto& figure : figures) slot.quota[figure.resource] = figure;
  }
}

std::vector<ProviderState> Router::States() const {
  const absl::Time now = clock_.Now();
  std::vector<ProviderState> states;
  absl::MutexLock lock(&mu_);
  for (const Slot& slot : slots_) {
    ProviderState state;
    state.provider = slot.adapter->provider();
    state.account = slot.adapter->account();
    state.dialect = slot.adapter->dialect();
    state.consecutive_failures = slot.consecutive_failures;
    state.cooldown_until = slot.cooldown_until;
    state.quota_exhausted = slot.quota_until > now;
    state.quota_exhausted_until = slot.quota_until;
    // Every resource the last quota read shows is used up (Soundpiece after a 402).
    bool all_used_up = false;
    absl::Time until = absl::InfinitePast();
    for (const auto& [resource, figure] : slot.quota) {
      if (figure.remaining < 0) continue;
      if (!UsedUp(figure, now)) {
        all_used_up = false;
        break;
      }
      all_used_up = true;
      until = std::max(until, figure.reset_time);
    }
    if (all_used_up && !state.quota_exhausted) {
      state.quota_exhausted = true;
      state.quota_exhausted_until = until;
    }
    if (slot.cooldown_until > now) {
      state.health = v1::PROVIDER_HEALTH_UNAVAILABLE;
      state.health_detail = absl::StrCat("cooling down after ", slot.consecutive_failures,
                                         " consecutive failures: ", slot.last_error);
    } else if (slot.consecutive_failures > 0) {
      state.health = v1::PROVIDER_HEALTH_DEGRADED;
      state.health_detail = slot.last_error;
    } else {
      state.health = v1::PROVIDER_HEALTH_HEALTHY;
    }
    states.push_back(std::move(state));
  }
  return states;
}

bool Router::UsableLocked(const Slot& slot, const std::vector<std::string>& resources,
                          absl::Time now) const {
  return slot.cooldown_until <= now && slot.quota_until <= now &&
         !KnownExhaustedLocked(slot, resources, now).has_value();
}

// Which of `resources` is known to be used up on `slot`'s account, when none of them is known
// to have units left.
std::optional<Router::Exhaustion> Router::KnownExhaustedLocked(
    const Slot& slot, const std::vector<std::string>& resources, absl::Time now) {
  std::optional<Exhaustion> exhausted;
  for (const std::string& resource : resources) {
    if (auto rejected = slot.rejected_until.find(resource);
        rejected != slot.rejected_until.end() && rejected->second > now) {
      if (!exhausted.has_value()) exhausted = Exhaustion{resource, rejected->second};
      continue;
    }
    auto it = slot.quota.find(resource);
    if (it == slot.quota.end() || it->second.remaining < 0) continue;  // not known
    if (it->second.remaining > 0) return std::nullopt;
    if (!UsedUp(it->second, now)) continue;  // reset since the read
    if (!exhausted.has_value()) exhausted = Exhaustion{resource, it->second.reset_time};
  }
  return exhausted;
}

absl::Status Router::KnownExhaustedStatus(const Slot& slot, const Exhaustion& exhausted,
                                          absl::Time now) {
  const v1::Provider provider = slot.adapter->provider();
  const std::string& account = slot.adapter->account();
  absl::Status status = absl::ResourceExhaustedError(
      absl::StrCat("quota '", exhausted.resource, "' of ", ProviderSlug(provider), " account ",
                   account, " is used up; nothing was sent to the provider"));
  status = WithErrorInfo(std::move(status), "PROVIDER_QUOTA_EXHAUSTED", kGatewayDomain,
                         {{"provider", ProviderEnumName(provider)},
                          {"account", account},
                          {"resource", exhausted.resource}});
  status = WithQuotaViolation(std::move(status),
                              absl::StrCat("provider:", ProviderSlug(provider),
                                           "/account:", account, "/resource:", exhausted.resource),
                              "the provider's last quota read shows none left");
  if (exhausted.reset_time == absl::InfinitePast()) return status;
  return WithRetryInfo(std::move(status), exhausted.reset_time - now);
}

absl::Status Router::BlockedStatus(const Slot& slot, absl::Time now) {
  const std::string provider = ProviderEnumName(slot.adapter->provider());
  const std::string& account = slot.adapter->account();
  if (slot.quota_until > now) {
    absl::Status status = absl::ResourceExhaustedError(
        absl::StrCat(provider, " quota is exhausted (account ", account, ")"));
    status = WithErrorInfo(std::move(status), "PROVIDER_QUOTA_EXHAUSTED", kGatewayDomain,
                           {{"provider", provider}, {"account", account}});
    status = WithQuotaViolation(
        std::move(status),
        absl::StrCat("provider:", ProviderSlug(slot.adapter->provider()), "/account:", account),
        "the provider reported its quota exhausted");
    return WithRetryInfo(std::move(status), slot.quota_until - now);
  }
  absl::Status status =
      absl::UnavailableError(absl::StrCat(provider, " is cooling down after repeated failures"));
  status = WithErrorInfo(std::move(status), "PROVIDER_UNAVAILABLE", kGatewayDomain,
                         {{"provider", provider}, {"account", account}});
  return WithRetryInfo(std::move(status), slot.cooldown_until - now);
}

// The quota resource a RESOURCE_EXHAUSTED names ("…/resource:X" in its QuotaFailure), when it
// is one `request` is charged to; empty otherwise.
std::string Router::ExhaustedResource(const ProviderAdapter& adapter, const absl::Status& status,
                                      const v1::GenerateRequest* request) {
  google::rpc::QuotaFailure quota;
  if (request == nullptr || !GetQuotaFailure(status, &quota)) return "";
  const std::vector<std::string> resources = adapter.QuotaResources(*request);
  constexpr absl::string_view kMarker = "/resource:";
  for (const auto& violation : quota.violations()) {
    const absl::string_view subject = violation.subject();
    const size_t at = subject.rfind(kMarker);
    if (at == absl::string_view::npos) continue;
    const absl::string_view resource = subject.substr(at + kMarker.size());
    if (std::find(resources.begin(), resources.end(), resource) != resources.end()) {
      return std::string(resource);
    }
  }
  return "";
}

}  // namespace musicgw::operations
