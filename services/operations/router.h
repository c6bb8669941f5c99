// File: router.h
// Which provider account serves a request: one slot per configured adapter (provider account),
// in routing order. Tracks each account's health (consecutive failures put it in cooldown, an
// outlier detector) and quota (the quota monitor's reads, and the provider's own quota
// rejections), and chooses the route of a new request and the fallback after a rejection. This
// is the one place that decides which account can serve a request; validate_only goes through
// it too.
//
// Thread-safe. Time comes from the Clock given at construction.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "adapters/provider.h"
#include "common/clock.h"
#include "musicgw/v1/musicgw.pb.h"

namespace musicgw::operations {

// Health and quota of one configured adapter (provider account), as routing sees it.
struct ProviderState {
  musicgw::v1::Provider provider = musicgw::v1::PROVIDER_UNSPECIFIED;
  std::string account;
  std::string dialect;
  musicgw::v1::ProviderHealth health = musicgw::v1::PROVIDER_HEALTH_UNSPECIFIED;
  std::string health_detail;  // why, when not healthy
  int consecutive_failures = 0;
  absl::Time cooldown_until = absl::InfinitePast();
  bool quota_exhausted = false;
  absl::Time quota_exhausted_until = absl::InfinitePast();
};

struct RouterOptions {
  // This many consecutive failures put an account in cooldown for failure_cooldown.
  int failure_threshold = 3;
  absl::Duration failure_cooldown = absl::Seconds(30);
  // A quota rejection without RetryInfo blocks routing to that account this long.
  absl::Duration default_quota_backoff = absl::Seconds(60);
};

class Router {
 public:
  // `adapters` in routing order, not owned; they outlive the router.
  Router(const std::vector<adapters::ProviderAdapter*>& adapters, RouterOptions options,
         const Clock& clock);

  int size() const { return static_cast<int>(slots_.size()); }
  adapters::ProviderAdapter* adapter(int slot) const { return slots_[slot].adapter; }

  // The slot to serve a new request: the first usable account of the requested provider, or
  // (no provider requested, or allow_fallback) of any provider whose capabilities and adapter
  // accept the whole request. Errors: INVALID_ARGUMENT (BadRequest on `provider`, ErrorInfo
  // PROVIDER_NOT_CONFIGURED) for a provider with no account here; INVALID_ARGUMENT for a
  // request no account supports; RESOURCE_EXHAUSTED or UNAVAILABLE (with RetryInfo) when every
  // candidate is out of quota or cooling down.
  absl::StatusOr<int> Route(const musicgw::v1::GenerateRequest& request) const;
  // An account not tried yet for `op` (its attempts) that accepts its request and is usable;
  // -1 when none.
  int PickFallback(const musicgw::v1::Operation& op) const;
  // The slot serving `op`: same provider and account, else the provider's first account; -1
  // when the provider is no longer configured.
  int SlotFor(const musicgw::v1::Operation& op) const;

  // A provider call on `slot` succeeded: its failure count and cooldown are cleared.
  void RecordSuccess(int slot);
  // A provider call on `slot` failed with `status`. Provider-side failures count towards
  // cooldown; quota rejections block the account (or only the resource they name, when
  // `request` is given and is charged to it) until their RetryInfo says.
  void RecordFailure(int slot, const absl::Status& status,
                     const musicgw::v1::GenerateRequest* request = nullptr);
  // The latest quota read of `adapter`'s account (replaces the previous read).
  void UpdateQuota(const adapters::ProviderAdapter* adapter,
                   const std::vector<adapters::QuotaFigure>& figures);
  // Every slot's state, in routing order.
  std::vector<ProviderState> States() const;

 private:
  struct Slot {
    adapters::ProviderAdapter* adapter = nullptr;
    int consecutive_failures = 0;
    absl::Time cooldown_until = absl::InfinitePast();
    absl::Time quota_until = absl::InfinitePast();
    std::string last_error;
    // The account's last quota read, by resource.
    std::map<std::string, adapters::QuotaFigure> quota;
    // Resources the provider refused for quota, until when (the rejection's RetryInfo).
    std::map<std::string, absl::Time> rejected_until;
  };
  // A quota resource a request needs, known to be used up.
  struct Exhaustion {
    std::string resource;
    absl::Time reset_time = absl::InfinitePast();  // InfinitePast: unknown
  };

  bool Supports(int slot, const musicgw::v1::GenerateRequest& request) const;
  absl::Status NotConfigured(musicgw::v1::Provider provider) const;
  // Usable: not cooling down, not blocked for quota, and not known out of `resources`.
  bool UsableLocked(const Slot& slot, const std::vector<std::string>& resources,
                    absl::Time now) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  static std::optional<Exhaustion> KnownExhaustedLocked(const Slot& slot,
                                                        const std::vector<std::string>& resources,
                                                        absl::Time now);
  static absl::Status KnownExhaustedStatus(const Slot& slot, const Exhaustion& exhausted,
                                           absl::Time now);
  static absl::Status BlockedStatus(const Slot& slot, absl::Time now);
  static std::string ExhaustedResource(const adapters::ProviderAdapter& adapter,
                                       const absl::Status& status,
                                       const musicgw::v1::GenerateRequest* request);

  const RouterOptions options_;
  const Clock& clock_;
  mutable absl::Mutex mu_;
  // The vector itself never changes after construction; the routing fields are guarded.
  std::vector<Slot> slots_;
};

// A quota read showing no units left that has not reset since (an unknown reset time counts as
// not yet).
bool UsedUp(const adapters::QuotaFigure& figure, absl::Time now);

}  // namespace musicgw::operations
