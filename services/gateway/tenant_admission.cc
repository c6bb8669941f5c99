#include "services/gateway/tenant_admission.h"

#include <algorithm>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/errors.h"

namespace musicgw::gateway {
namespace {

constexpr int kMethodClasses = 5;

absl::Status RateLimited(absl::string_view tenant, absl::string_view limit,
                         absl::string_view description, absl::Duration retry_after) {
  absl::Status status = absl::ResourceExhaustedError(absl::StrCat(
      "tenant ", tenant, " is over its ", limit, " limit (", description, "); retry later"));
  status = WithErrorInfo(std::move(status), "TENANT_RATE_LIMITED", kGatewayDomain,
                         {{"tenant", std::string(tenant)}, {"limit", std::string(limit)}});
  status = WithQuotaViolation(std::move(status), absl::StrCat("tenant:", tenant, "/limit:", limit),
                              description);
  return WithRetryInfo(std::move(status), retry_after);
}

// Refilled lazily on each take; one mutex per bucket, held for a few arithmetic operations.
class TokenBucket {
 public:
  TokenBucket(config::RateLimitConfig rate, absl::Time now)
      : rate_(rate), tokens_(std::max(1.0, rate.burst)), last_(now) {}

  // True and one token less, or false with how long until one token is there.
  bool Take(absl::Time now, absl::Duration* wait) {
    absl::MutexLock lock(&mu_);
    const double burst = std::max(1.0, rate_.burst);
    if (now > last_) {
      tokens_ = std::min(burst, tokens_ + absl::ToDoubleSeconds(now - last_) * rate_.per_second);
      last_ = now;
    }
    if (tokens_ >= 1.0) {
      tokens_ -= 1.0;
      return true;
    }
    *wait = absl::Seconds((1.0 - tokens_) / std::max(rate_.per_second, 1e-9));
    return false;
  }

  const config::RateLimitConfig& rate() const { return rate_; }

 private:
  const config::RateLimitConfig rate_;
  absl::Mutex mu_;
  double tokens_ ABSL_GUARDED_BY(mu_);
  absl::Time last_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

const char* MethodClassName(MethodClass method) {
  switch (method) {
    case MethodClass::kGenerate:
      return "generate";
    case MethodClass::kRead:
      return "read";
    case MethodClass::kList:
      return "list";
    case MethodClass::kCancel:
      return "cancel";
    case MethodClass::kStream:
      return "stream";
  }
  return "read";
}

struct TenantAdmission::Tenant {
  Tenant(const config::TenantLimitsConfig& limits, absl::Time now)
      : buckets{TokenBucket(limits.generate, now), TokenBucket(limits.read, now),
                TokenBucket(limits.list, now), TokenBucket(limits.cancel, now),
                TokenBucket(limits.stream, now)},
        max_open_streams(limits.max_open_streams) {}
  TokenBucket buckets[kMethodClasses];
  const int64_t max_open_streams;
  const std::shared_ptr<std::atomic<int64_t>> open_streams =
      std::make_shared<std::atomic<int64_t>>(0);
};

TenantAdmission::TenantAdmission(const Clock& clock,
                                 const std::vector<config::TenantConfig>& tenants)
    : clock_(clock) {
  const absl::Time now = clock_.Now();
  for (const auto& tenant : tenants) {
    tenants_.emplace(tenant.name, std::make_unique<Tenant>(tenant.limits, now));
  }
}

TenantAdmission::~TenantAdmission() = default;

absl::Status TenantAdmission::Admit(absl::string_view tenant, MethodClass method) {
  auto it = tenants_.find(tenant);
  if (it == tenants_.end()) return absl::OkStatus();
  TokenBucket& bucket = it->second->buckets[static_cast<int>(method)];
  absl::Duration wait;
  if (bucket.Take(clock_.Now(), &wait)) return absl::OkStatus();
  const std::string limit = absl::StrCat(MethodClassName(method), "_rate");
  return RateLimited(
      tenant, limit,
      absl::StrCat(bucket.rate().per_second, " requests/s, bursts of ", bucket.rate().burst), wait);
}

absl::StatusOr<StreamSlot> TenantAdmission::OpenStream(absl::string_view tenant) {
  auto it = tenants_.find(tenant);
  if (it == tenants_.end()) return StreamSlot();
  Tenant& state = *it->second;
  absl::Duration wait;
  if (!state.buckets[static_cast<int>(MethodClass::kStream)].Take(clock_.Now(), &wait)) {
    const auto& rate = state.buckets[static_cast<int>(MethodClass::kStream)].rate();
    return RateLimited(tenant, "stream_rate",
                       absl::StrCat(rate.per_second, " new streams/s, bursts of ", rate.burst),
                       wait);
  }
  if (state.open_streams->fetch_add(1) >= state.max_open_streams) {
    state.open_streams->fetch_sub(1);
    return RateLimited(tenant, "open_streams",
                       absl::StrCat("at most ", state.max_open_streams,
                                    " open WatchOperation and Download streams"),
                       absl::Seconds(1));
  }
  return StreamSlot(state.open_streams);
}

int64_t TenantAdmission::open_streams(absl::string_view tenant) const {
  auto it = tenants_.find(tenant);
  return it == tenants_.end() ? 0 : it->second->open_streams->load();
}

}  // namespace musicgw::gateway
