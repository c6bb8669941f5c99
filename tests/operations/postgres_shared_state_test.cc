// What replicas share through the PostgreSQL ledger besides operations: the elected quota
// reader's lease and figures, and rotating credentials updated under a row lock. Each "replica"
// is its own store object with its own connections, as in separate processes.
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "common/clock.h"
#include "gtest/gtest.h"
#include "services/operations/postgres_credentials.h"
#include "services/operations/postgres_quota_share.h"
#include "services/operations/postgres_store.h"
#include "tests/pg/pg_cluster.h"

namespace musicgw::operations {
namespace {

using ::musicgw::testing::PgCluster;

class PostgresSharedStateTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto cluster = PgCluster::Start();
    ASSERT_TRUE(cluster.ok()) << cluster.status();
    cluster_ = std::move(*cluster);
    auto dsn = cluster_->CreateDatabase("shared");
    ASSERT_TRUE(dsn.ok()) << dsn.status();
    options_.dsn = *dsn;
    options_.clock = &clock_;
    // The ledger's migrations create the tables.
    ASSERT_TRUE(OpenPostgresOperationStore(options_).ok());
  }

  template <typename T>
  static absl::StatusOr<T> Await(
      const std::function<void(absl::AnyInvocable<void(absl::StatusOr<T>) &&>)>& call) {
    absl::Notification done;
    absl::StatusOr<T> result = absl::UnknownError("no answer");
    call([&](absl::StatusOr<T> r) {
      result = std::move(r);
      done.Notify();
    });
    done.WaitForNotificationWithTimeout(absl::Seconds(30));
    return result;
  }

  static absl::StatusOr<bool> Claim(PostgresQuotaShare& share, absl::Time now, absl::Time until) {
    return Await<bool>([&](auto done) { share.ClaimReader(now, until, std::move(done)); });
  }

  FakeClock clock_;
  std::unique_ptr<PgCluster> cluster_;
  PostgresOptions options_;
};

TEST_F(PostgresSharedStateTest, OneReplicaHoldsTheReaderLeaseUntilItLapses) {
  auto a = PostgresQuotaShare::Create(options_, "gw-a");
  auto b = PostgresQuotaShare::Create(options_, "gw-b");
  const absl::Duration lease = absl::Seconds(10);
  absl::Time now = clock_.Now();
  EXPECT_EQ(Claim(*a, now, now + lease).value_or(false), true);
  EXPECT_EQ(Claim(*b, now, now + lease).value_or(true), false);
  // The holder renews before it lapses; the other still waits.
  clock_.Advance(absl::Seconds(6));
  now = clock_.Now();
  EXPECT_EQ(Claim(*a, now, now + lease).value_or(false), true);
  clock_.Advance(absl::Seconds(6));
  now = clock_.Now();
  EXPECT_EQ(Claim(*b, now, now + lease).value_or(true), false);
  // The holder stops renewing (dead): after lease_until the other takes over, and the old
  // holder does not get it back while the new one renews.
  clock_.Advance(absl::Seconds(11));
  now = clock_.Now();
  EXPECT_EQ(Claim(*b, now, now + lease).value_or(false), true);
  EXPECT_EQ(Claim(*a, now, now + lease).value_or(true), false);
}

TEST_F(PostgresSharedStateTest, PublishedFiguresAreWhatOtherReplicasLoad) {
  auto reader = PostgresQuotaShare::Create(options_, "gw-a");
  auto other = PostgresQuotaShare::Create(options_, "gw-b");
  auto none = Await<AccountQuota>(
      [&](auto done) { other->Load(musicgw::v1::PROVIDER_LOUDLY, "loudly-web", std::move(done)); });
  EXPECT_TRUE(absl::IsNotFound(none.status())) << none.status();

  AccountQuota quota;
  quota.provider = musicgw::v1::PROVIDER_LOUDLY;
  quota.account = "loudly-web";
  quota.read_time = absl::FromUnixSeconds(1'800'000'100);
  adapters::QuotaFigure known{"generate_vega_song", 3000, 12, 2988,
                              absl::FromUnixSeconds(1'802'000'000)};
  adapters::QuotaFigure unknown_reset{"download_song", 100, 1, 99, absl::InfinitePast()};
  quota.figures = {known, unknown_reset};
  reader->Publish(quota);
  // Publish answers nothing, but the publisher's one worker runs its tasks in order: once a
  // Load posted after the Publish has answered, the row is committed.
  auto own = Await<AccountQuota>([&](auto done) {
    reader->Load(musicgw::v1::PROVIDER_LOUDLY, "loudly-web", std::move(done));
  });
  ASSERT_TRUE(own.ok()) << own.status();
  auto loaded = Await<AccountQuota>(
      [&](auto done) { other->Load(musicgw::v1::PROVIDER_LOUDLY, "loudly-web", std::move(done)); });
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->read_time, quota.read_time);
  ASSERT_EQ(loaded->figures.size(), 2u);
  EXPECT_EQ(loaded->figures[0].resource, "generate_vega_song");
  EXPECT_EQ(loaded->figures[0].remaining, 2988);
  EXPECT_EQ(loaded->figures[0].reset_time, known.reset_time);
  EXPECT_EQ(loaded->figures[1].reset_time, absl::InfinitePast());
  // Another account has no figures.
  auto soundpiece = Await<AccountQuota>([&](auto done) {
    other->Load(musicgw::v1::PROVIDER_SOUNDPIECE, "loudly-web", std::move(done));
  });
  EXPECT_TRUE(absl::IsNotFound(soundpiece.status()));
}

// Two replicas update one credential concurrently, each update reading the stored value and
// storing it plus one, answered later from another thread (as a token exchange is) and only once
// the other replica is itself asking or has finished: every update is made while the other
// contends for the row lock. Under the lock no update is lost, which is what keeps a rotated
// refresh token from being spent twice.
TEST_F(PostgresSharedStateTest, CredentialUpdatesOfReplicasNeverInterleave) {
  constexpr int kUpdates = 10;
  std::vector<std::unique_ptr<PostgresCredentialStore>> replicas;
  replicas.push_back(PostgresCredentialStore::Create(options_));
  replicas.push_back(PostgresCredentialStore::Create(options_));
  absl::Mutex mu;
  bool asking[2] = {false, false};
  bool finished[2] = {false, false};
  std::vector<std::thread> threads;
  threads.reserve(replicas.size());
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&, r] {
      PostgresCredentialStore& replica = *replicas[r];
      const int other = 1 - r;
      for (int i = 0; i < kUpdates; ++i) {
        adapters::SharedCredential seed;
        seed.refresh_token = "0";
        {
          absl::MutexLock lock(&mu);
          asking[r] = true;
        }
        auto result = Await<adapters::SharedCredential>([&](auto done) {
          replica.UpdateLocked(
              "loudly/acct/1_client", seed,
              [&mu, &asking, &finished, other](
                  const adapters::SharedCredential& current,
                  adapters::Callback<adapters::SharedCredential> answer) {
                int n = 0;
                EXPECT_TRUE(absl::SimpleAtoi(current.refresh_token, &n));
                adapters::SharedCredential next = current;
                next.refresh_token = absl::StrCat(n + 1);
                next.access_token = absl::StrCat("access-", n + 1);
                next.access_expiry = absl::FromUnixSeconds(1'800'000'000 + n);
                // Answered from another thread, later: the lock is held meanwhile.
                std::thread([&mu, &asking, &finished, other, next,
                             answer = std::move(answer)]() mutable {
                  {
                    auto other_contends = [&asking, &finished, other] {
                      return asking[other] || finished[other];
                    };
                    absl::MutexLock lock(&mu);
                    mu.Await(absl::Condition(&other_contends));
                  }
                  std::move(answer)(next);
                }).detach();
              },
              std::move(done));
        });
        {
          absl::MutexLock lock(&mu);
          asking[r] = false;
        }
        EXPECT_TRUE(result.ok()) << result.status();
      }
      absl::MutexLock lock(&mu);
      finished[r] = true;
    });
  }
  for (auto& thread : threads) thread.join();
  adapters::SharedCredential seed;
  auto final_value = Await<adapters::SharedCredential>([&](auto done) {
    replicas[0]->UpdateLocked(
        "loudly/acct/1_client", seed,
        [](const adapters::SharedCredential& current,
           adapters::Callback<adapters::SharedCredential> answer) { std::move(answer)(current); },
        std::move(done));
  });
  ASSERT_TRUE(final_value.ok()) << final_value.status();
  EXPECT_EQ(final_value->refresh_token, absl::StrCat(2 * kUpdates));
  EXPECT_EQ(final_value->access_token, absl::StrCat("access-", 2 * kUpdates));
  EXPECT_EQ(final_value->access_expiry, absl::FromUnixSeconds(1'800'000'000 + 2 * kUpdates - 1));
}

// An update that fails stores nothing, not even the seed: the next update starts from its own.
TEST_F(PostgresSharedStateTest, AFailedUpdateStoresNothing) {
  auto store = PostgresCredentialStore::Create(options_);
  adapters::SharedCredential seed;
  seed.refresh_token = "configured";
  auto failed = Await<adapters::SharedCredential>([&](auto done) {
    store->UpdateLocked(
        "k", seed,
        [](const adapters::SharedCredential&,
           adapters::Callback<adapters::SharedCredential> answer) {
          std::move(answer)(absl::UnauthenticatedError("invalid_grant"));
        },
        std::move(done));
  });
  EXPECT_TRUE(absl::IsUnauthenticated(failed.status()));
  adapters::SharedCredential second_seed;
  second_seed.refresh_token = "second";
  auto current = Await<adapters::SharedCredential>([&](auto done) {
    store->UpdateLocked(
        "k", second_seed,
        [](const adapters::SharedCredential& c,
           adapters::Callback<adapters::SharedCredential> answer) { std::move(answer)(c); },
        std::move(done));
  });
  ASSERT_TRUE(current.ok());
  EXPECT_EQ(current->refresh_token, "second");
  EXPECT_TRUE(current->access_token.empty());
}

}  // namespace
}  // namespace musicgw::operations
