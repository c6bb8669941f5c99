// File: postgres_lease.h
// Named leases on the PostgreSQL ledger (table leases, ledger migration 2): one elected replica
// per job. A replica holds a lease while lease_until is ahead of the clock and renews it before
// then; when the holder stops renewing, the first replica to ask after lease_until takes it.
// Times come from the caller's Clock, so every replica must run on synchronized clocks (a few
// seconds of skew only shorten or lengthen a takeover by as much).
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "services/operations/postgres_connection.h"

namespace musicgw::operations::pg {

// The statement HoldLease runs; add it to the pool's statements.
inline constexpr char kHoldLeaseStatement[] = "lease_hold";
inline constexpr char kHoldLeaseSql[] =
    "INSERT INTO leases (name, owner, lease_until_us) VALUES ($1, $2, $3) "
    "ON CONFLICT (name) DO UPDATE SET owner = EXCLUDED.owner, "
    "lease_until_us = EXCLUDED.lease_until_us "
    "WHERE leases.owner = EXCLUDED.owner OR leases.lease_until_us < $4 RETURNING owner";

// Claims lease `name` for `owner` until `until`, or renews it when `owner` holds it already.
// True when `owner` holds it afterwards; false while another owner's lease runs.
inline absl::StatusOr<bool> HoldLease(Pool::Lease& conn, const std::string& name,
                                      const std::string& owner, absl::Time now, absl::Time until) {
  MUSICGW_ASSIGN_OR_RETURN(Result result,
                           conn->Run(kHoldLeaseStatement, {Param::Text(name), Param::Text(owner),
                                                           Param::Int(absl::ToUnixMicros(until)),
                                                           Param::Int(absl::ToUnixMicros(now))}));
  return PQntuples(result.get()) == 1;
}

}  // namespace musicgw::operations::pg
