#include "services/operations/postgres_quota_share.h"

#include <memory>
#include <utility>

#include "common/log.h"
#include "nlohmann/json.hpp"
#include "services/operations/executor.h"
#include "services/operations/postgres_connection.h"
#include "services/operations/postgres_lease.h"

namespace musicgw::operations {
namespace {

constexpr char kReaderLease[] = "quota-reader";

const pg::Statements& QuotaStatements() {
  static const auto* const statements = new pg::Statements{
      {pg::kHoldLeaseStatement, pg::kHoldLeaseSql},
      {"quota_publish",
       "INSERT INTO provider_quota (provider, account, figures, read_time_us, last_error) "
       "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (provider, account) DO UPDATE SET "
       "figures = EXCLUDED.figures, read_time_us = EXCLUDED.read_time_us, "
       "last_error = EXCLUDED.last_error"},
      {"quota_load",
       "SELECT figures, read_time_us, last_error FROM provider_quota "
       "WHERE provider = $1 AND account = $2"},
  };
  return *statements;
}

// Unknown times (InfinitePast) travel as null.
nlohmann::json TimeJson(absl::Time t) {
  if (t == absl::InfinitePast()) return nullptr;
  return absl::ToUnixMicros(t);
}

absl::Time JsonTime(const nlohmann::json& j) {
  return j.is_number_integer() ? absl::FromUnixMicros(j.get<int64_t>()) : absl::InfinitePast();
}

std::string FiguresJson(const std::vector<adapters::QuotaFigure>& figures) {
  nlohmann::json doc = nlohmann::json::array();
  for (const auto& f : figures) {
    doc.push_back({{"resource", f.resource},
                   {"limit", f.limit},
                   {"used", f.used},
                   {"remaining", f.remaining},
                   {"reset_time_us", TimeJson(f.reset_time)}});
  }
  return doc.dump();
}

absl::StatusOr<std::vector<adapters::QuotaFigure>> ParseFigures(const std::string& text) {
  const nlohmann::json doc = nlohmann::json::parse(text, nullptr, false);
  if (doc.is_discarded() || !doc.is_array()) {
    return absl::DataLossError("shared quota figures are not readable");
  }
  std::vector<adapters::QuotaFigure> figures;
  for (const auto& item : doc) {
    adapters::QuotaFigure f;
    f.resource = item.value("resource", "");
    f.limit = item.value("limit", int64_t{-1});
    f.used = item.value("used", int64_t{-1});
    f.remaining = item.value("remaining", int64_t{-1});
    f.reset_time = JsonTime(item.contains("reset_time_us") ? item["reset_time_us"] : nullptr);
    figures.push_back(std::move(f));
  }
  return figures;
}

}  // namespace

class PostgresQuotaShare::Impl {
 public:
  Impl(PostgresOptions options, std::string owner)
      : owner_(std::move(owner)), pool_(std::move(options), QuotaStatements()) {}

  void Stop() { worker_.Stop(); }
  void Post(Executor::Task task) { worker_.Post(std::move(task)); }

  absl::StatusOr<bool> Claim(absl::Time now, absl::Time until) {
    MUSICGW_ASSIGN_OR_RETURN(pg::Pool::Lease conn, pool_.Acquire());
    return pg::HoldLease(conn, kReaderLease, owner_, now, until);
  }

  absl::Status Publish(const AccountQuota& quota) {
    MUSICGW_ASSIGN_OR_RETURN(pg::Pool::Lease conn, pool_.Acquire());
    return conn
        ->Run("quota_publish", {pg::Param::Int(quota.provider), pg::Param::Text(quota.account),
                                pg::Param::Text(FiguresJson(quota.figures)),
                                pg::Param::Int(absl::ToUnixMicros(quota.read_time)),
                                pg::Param::Text(quota.last_error)})
        .status();
  }

  absl::StatusOr<AccountQuota> Load(musicgw::v1::Provider provider, const std::string& account) {
    MUSICGW_ASSIGN_OR_RETURN(pg::Pool::Lease conn, pool_.Acquire());
    MUSICGW_ASSIGN_OR_RETURN(pg::Result row, conn->Run("quota_load", {pg::Param::Int(provider),
                                                                      pg::Param::Text(account)}));
    if (PQntuples(row.get()) != 1) return absl::NotFoundError("no shared quota figures yet");
    AccountQuota quota;
    quota.provider = provider;
    quota.account = account;
    MUSICGW_ASSIGN_OR_RETURN(quota.figures, ParseFigures(pg::Cell(row.get(), 0, 0)));
    quota.read_time = absl::FromUnixMicros(pg::IntCell(row.get(), 0, 1));
    quota.last_error = pg::Cell(row.get(), 0, 2);
    return quota;
  }

 private:
  const std::string owner_;
  pg::Pool pool_;
  // Last member: joined before the pool goes.
  Executor worker_{1};
};

std::unique_ptr<PostgresQuotaShare> PostgresQuotaShare::Create(PostgresOptions options,
                                                               std::string owner) {
  if (options.clock == nullptr) options.clock = &Clock::Real();
  options.pool_size = 1;
  return std::unique_ptr<PostgresQuotaShare>(
      new PostgresQuotaShare(std::make_unique<Impl>(std::move(options), std::move(owner))));
}

PostgresQuotaShare::PostgresQuotaShare(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

PostgresQuotaShare::~PostgresQuotaShare() { impl_->Stop(); }

void PostgresQuotaShare::ClaimReader(absl::Time now, absl::Time until,
                                     absl::AnyInvocable<void(absl::StatusOr<bool>) &&> done) {
  Impl* impl = impl_.get();
  impl->Post([impl, now, until, done = std::move(done)]() mutable {
    std::move(done)(impl->Claim(now, until));
  });
}

void PostgresQuotaShare::Publish(AccountQuota quota) {
  Impl* impl = impl_.get();
  impl->Post([impl, quota = std::move(quota)] {
    const absl::Status status = impl->Publish(quota);
    if (!status.ok()) {
      log::Warning("could not share quota figures",
                   {{"account", quota.account}, {"error", std::string(status.message())}});
    }
  });
}

void PostgresQuotaShare::Load(musicgw::v1::Provider provider, std::string account,
                              absl::AnyInvocable<void(absl::StatusOr<AccountQuota>) &&> done) {
  Impl* impl = impl_.get();
  impl->Post([impl, provider, account = std::move(account), done = std::move(done)]() mutable {
    std::move(done)(impl->Load(provider, account));
  });
}

}  // namespace musicgw::operations
