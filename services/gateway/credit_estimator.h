// File: credit_estimator.h
// Completes a provider account's "credits" quota figure from the operator's stated balance and
// the ledger, for providers that publish no balance (Soundpiece): credits left are the balance
// bought minus what the ledger shows charged on that account since `credits_since`, at each
// task's configured cost. Keyed by provider and account, so two accounts of one provider each
// spend their own balance.
//
// Thread-safe (immutable after construction; the ledger read is the caller's).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "adapters/provider.h"
#include "common/config.h"
#include "musicgw/v1/musicgw.pb.h"

namespace musicgw::gateway {

class CreditEstimator {
 public:
  // Operations an account was charged for since a time, by task (the engine's ledger read).
  using ChargedOperations = std::function<absl::StatusOr<std::map<musicgw::v1::TaskKind, int64_t>>(
      musicgw::v1::Provider provider, const std::string& account, absl::Time since)>;

  // Keeps the accounts of `providers` that state a credit balance.
  CreditEstimator(const std::vector<config::ProviderConfig>& providers, ChargedOperations charged);

  // Rewrites the "credits" figure of `provider`/`account` in `figures` from the estimate. No
  // change for an account without a stated balance, or when the ledger cannot be read (logged).
  // A figure already reading zero (a recent 402) keeps remaining 0: the provider outranks the
  // estimate.
  void Complete(musicgw::v1::Provider provider, const std::string& account,
                std::vector<adapters::QuotaFigure>* figures) const;

 private:
  struct Balance {
    int64_t bought = 0;
    absl::Time since = absl::InfinitePast();
    std::map<musicgw::v1::TaskKind, int64_t> costs;
  };

  std::map<std::pair<musicgw::v1::Provider, std::string>, Balance> balances_;
  ChargedOperations charged_;
};

}  // namespace musicgw::gateway
