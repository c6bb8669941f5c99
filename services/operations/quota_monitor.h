// File: quota_monitor.h
// Reads every provider account's quota on a timer and soon after each generation, and keeps
// the latest figures for routing, GetQuota and the quota gauges. Provider limits endpoints are
// never called per client request. Figures are kept per account: two accounts of one provider
// never share a figure.
//
// Thread-safe.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "adapters/http/http_client.h"
#include "adapters/provider.h"
#include "common/clock.h"

namespace musicgw::operations {

struct AccountQuota {
  musicgw::v1::Provider provider = musicgw::v1::PROVIDER_UNSPECIFIED;
  std::string account;
  std::vector<adapters::QuotaFigure> figures;
  // When figures were last read successfully (InfinitePast: never).
  absl::Time read_time = absl::InfinitePast();
  // The last read's error, if it failed.
  std::string last_error;
};

// Replicas sharing a ledger: the one holding the reader's lease reads every account from the
// provider and publishes the figures; the others take the published figures, so a provider's
// limits endpoint is read once per interval, not once per replica. Implementations answer off
// the caller's thread.
class QuotaShare {
 public:
  virtual ~QuotaShare() = default;
  // Claims the reader's lease for this replica, or renews it, until `until`: true when held.
  virtual void ClaimReader(absl::Time now, absl::Time until,
                           absl::AnyInvocable<void(absl::StatusOr<bool>) &&> done) = 0;
  // Stores an account's figures for the others (errors are logged, not answered).
  virtual void Publish(AccountQuota quota) = 0;
  // The figures last published for an account; NOT_FOUND when none were.
  virtual void Load(musicgw::v1::Provider provider, std::string account,
                    absl::AnyInvocable<void(absl::StatusOr<AccountQuota>) &&> done) = 0;
};

class QuotaMonitor {
 public:
  // `adapters`, `timers` and `clock` must outlive the monitor; Stop() before destroying them.
  // `timers` schedules the reads; `clock` stamps them (read_time).
  QuotaMonitor(std::vector<adapters::ProviderAdapter*> adapters, http::Client* timers,
               absl::Duration interval, const Clock& clock = Clock::Real());
  ~QuotaMonitor();

  // Sees every successful read before it is kept: may complete figures the provider does not
  // publish, and tells routing (which keeps used-up accounts out). Set before Start().
  using Listener = std::function<void(const adapters::ProviderAdapter* adapter,
                                      std::vector<adapters::QuotaFigure>* figures)>;
  void set_listener(Listener listener) { listener_ = std::move(listener); }
  // Shares the reads with other replicas (must outlive every read; Stop() first). The lease
  // is claimed or renewed at each read for `lease`: longer than `interval`, so the holder
  // keeps it, and a dead holder's role passes on within `lease`. Set before Start().
  void set_share(QuotaShare* share, absl::Duration lease) {
    share_ = share;
    lease_ = lease;
  }

  // Reads every account now and then every `interval`.
  void Start();
  // No reads are started after this returns; in-flight ones are ignored.
  void Stop();
  // Reads `provider`'s quota again shortly (coalescing bursts), e.g. after a generation.
  void RefreshSoon(musicgw::v1::Provider provider);

  std::vector<AccountQuota> Snapshot() const;

 private:
  struct State;
  void Read(size_t index, bool periodic);
  void ReadProvider(size_t index, bool periodic);
  void LoadShared(size_t index, bool periodic);
  void Schedule(size_t index, absl::Duration delay);

  std::vector<adapters::ProviderAdapter*> adapters_;
  http::Client* timers_;
  absl::Duration interval_;
  const Clock& clock_;
  Listener listener_;
  QuotaShare* share_ = nullptr;
  absl::Duration lease_ = absl::ZeroDuration();
  std::shared_ptr<State> state_;
};

}  // namespace musicgw::operations
