#include "services/operations/postgres_credentials.h"

#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "services/operations/executor.h"
#include "services/operations/postgres_connection.h"

namespace musicgw::operations {
namespace {

using adapters::SharedCredential;

const pg::Statements& CredentialStatements() {
  static const auto* const statements = new pg::Statements{
      {"credential_seed",
       "INSERT INTO provider_credentials (key, refresh_token, access_token, access_expiry_us, "
       "updated_time_us) VALUES ($1, $2, '', 0, $3) ON CONFLICT (key) DO NOTHING"},
      {"credential_lock",
       "SELECT refresh_token, access_token, access_expiry_us FROM provider_credentials "
       "WHERE key = $1 FOR UPDATE"},
      {"credential_store",
       "UPDATE provider_credentials SET refresh_token = $2, access_token = $3, "
       "access_expiry_us = $4, updated_time_us = $5 WHERE key = $1"},
  };
  return *statements;
}

// The update's answer, shared with its callback (which may arrive after a timeout).
struct Pending {
  absl::Notification done;
  absl::StatusOr<SharedCredential> result = absl::UnknownError("no answer");
};

bool SameCredential(const SharedCredential& a, const SharedCredential& b) {
  return a.refresh_token == b.refresh_token && a.access_token == b.access_token &&
         a.access_expiry == b.access_expiry;
}

}  // namespace

class PostgresCredentialStore::Impl {
 public:
  Impl(PostgresOptions options, absl::Duration update_timeout)
      : clock_(*options.clock),
        update_timeout_(update_timeout),
        pool_(std::move(options), CredentialStatements()) {}

  void Stop() { worker_.Stop(); }

  void Post(Executor::Task task) { worker_.Post(std::move(task)); }

  absl::StatusOr<SharedCredential> RunLocked(const std::string& key, const SharedCredential& seed,
                                             Update update) {
    MUSICGW_ASSIGN_OR_RETURN(pg::Pool::Lease conn, pool_.Acquire());
    pg::Transaction txn(conn);
    MUSICGW_RETURN_IF_ERROR(txn.Begin());
    const int64_t now_us = absl::ToUnixMicros(clock_.Now());
    MUSICGW_RETURN_IF_ERROR(
        conn->Run("credential_seed", {pg::Param::Text(key), pg::Param::Text(seed.refresh_token),
                                      pg::Param::Int(now_us)})
            .status());
    MUSICGW_ASSIGN_OR_RETURN(pg::Result row, conn->Run("credential_lock", {pg::Param::Text(key)}));
    if (PQntuples(row.get()) != 1) return absl::InternalError("credential row vanished");
    SharedCredential current;
    current.refresh_token = pg::Cell(row.get(), 0, 0);
    current.access_token = pg::Cell(row.get(), 0, 1);
    if (!current.access_token.empty()) {
      current.access_expiry = absl::FromUnixMicros(pg::IntCell(row.get(), 0, 2));
    }

    auto pending = std::make_shared<Pending>();
    std::move(update)(current, [pending](absl::StatusOr<SharedCredential> result) {
      pending->result = std::move(result);
      pending->done.Notify();
    });
    if (!pending->done.WaitForNotificationWithTimeout(update_timeout_)) {
      return absl::DeadlineExceededError("credential update did not finish in time");
    }
    MUSICGW_ASSIGN_OR_RETURN(SharedCredential next, pending->result);
    if (SameCredential(next, current)) {
      MUSICGW_RETURN_IF_ERROR(txn.Commit());
      return next;
    }
    MUSICGW_RETURN_IF_ERROR(
        conn->Run("credential_store",
                  {pg::Param::Text(key), pg::Param::Text(next.refresh_token),
                   pg::Param::Text(next.access_token),
                   pg::Param::Int(
                       next.access_token.empty() ? 0 : absl::ToUnixMicros(next.access_expiry)),
                   pg::Param::Int(absl::ToUnixMicros(clock_.Now()))})
            .status());
    MUSICGW_RETURN_IF_ERROR(txn.Commit());
    return next;
  }

 private:
  const Clock& clock_;
  const absl::Duration update_timeout_;
  pg::Pool pool_;
  // Last member: stopped (joined) before the pool goes.
  Executor worker_{1};
};

std::unique_ptr<PostgresCredentialStore> PostgresCredentialStore::Create(
    PostgresOptions options, absl::Duration update_timeout) {
  if (options.clock == nullptr) options.clock = &Clock::Real();
  options.pool_size = 1;  // one update at a time per replica
  return std::unique_ptr<PostgresCredentialStore>(
      new PostgresCredentialStore(std::make_unique<Impl>(std::move(options), update_timeout)));
}

PostgresCredentialStore::PostgresCredentialStore(std::unique_ptr<Impl> impl)
    : impl_(std::move(impl)) {}

PostgresCredentialStore::~PostgresCredentialStore() { impl_->Stop(); }

void PostgresCredentialStore::UpdateLocked(const std::string& key, SharedCredential seed,
                                           Update update,
                                           adapters::Callback<SharedCredential> done) {
  Impl* impl = impl_.get();
  impl->Post([impl, key, seed = std::move(seed), update = std::move(update),
              done = std::move(done)]() mutable {
    absl::StatusOr<SharedCredential> result = impl->RunLocked(key, seed, std::move(update));
    std::move(done)(std::move(result));
  });
}

}  // namespace musicgw::operations
