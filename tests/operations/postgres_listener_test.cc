// The change feed across replicas: every committed change reaches a listener on another
// connection, in order, nothing for a rolled-back one; after PostgreSQL restarts the listener
// reconnects by itself and says so (resync) before the next change.
#include "services/operations/postgres_listener.h"

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "services/operations/ids.h"
#include "services/operations/postgres_store.h"
#include "tests/pg/pg_cluster.h"

namespace musicgw::operations {
namespace {

namespace v1 = musicgw::v1;

class Recorder {
 public:
  void Change(absl::string_view id, int64_t sequence) {
    absl::MutexLock lock(&mu_);
    changes_.emplace_back(std::string(id), sequence);
  }
  void Resync() {
    absl::MutexLock lock(&mu_);
    ++resyncs_;
  }
  bool AwaitChanges(size_t count) {
    absl::MutexLock lock(&mu_);
    want_changes_ = count;
    return mu_.AwaitWithTimeout(absl::Condition(
                                    +[](Recorder* r) ABSL_EXCLUSIVE_LOCKS_REQUIRED(r->mu_) {
                                      return r->changes_.size() >= r->want_changes_;
                                    },
                                    this),
                                absl::Seconds(30));
  }
  bool AwaitResyncs(int count) {
    absl::MutexLock lock(&mu_);
    want_resyncs_ = count;
    return mu_.AwaitWithTimeout(absl::Condition(
                                    +[](Recorder* r) ABSL_EXCLUSIVE_LOCKS_REQUIRED(r->mu_) {
                                      return r->resyncs_ >= r->want_resyncs_;
                                    },
                                    this),
                                absl::Seconds(30));
  }
  std::vector<std::pair<std::string, int64_t>> changes() {
    absl::MutexLock lock(&mu_);
    return changes_;
  }

 private:
  absl::Mutex mu_;
  std::vector<std::pair<std::string, int64_t>> changes_ ABSL_GUARDED_BY(mu_);
  size_t want_changes_ ABSL_GUARDED_BY(mu_) = 0;
  int resyncs_ ABSL_GUARDED_BY(mu_) = 0;
  int want_resyncs_ ABSL_GUARDED_BY(mu_) = 0;
};

OperationUpdate Next(const v1::Operation& op, int64_t sequence) {
  OperationUpdate update;
  update.operation = op;
  update.operation.set_sequence(sequence);
  update.expected_sequence = sequence - 1;
  return update;
}

TEST(PostgresChangeListenerTest, CommittedChangesArriveInOrderAcrossARestart) {
  auto cluster = ::musicgw::testing::PgCluster::Start();
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  auto dsn = (*cluster)->CreateDatabase("feed");
  ASSERT_TRUE(dsn.ok());
  PostgresOptions store_options;
  store_options.dsn = *dsn;
  auto store = OpenPostgresOperationStore(store_options);
  ASSERT_TRUE(store.ok()) << store.status();

  Recorder recorder;
  PostgresListenerOptions options;
  options.dsn = *dsn;
  options.max_backoff = absl::Milliseconds(200);
  auto listener = PostgresChangeListener::Start(
      options, [&](absl::string_view id, int64_t seq) { recorder.Change(id, seq); },
      [&] { recorder.Resync(); });
  ASSERT_TRUE(recorder.AwaitResyncs(1));
  EXPECT_TRUE(listener->connected());

  OperationRecord record;
  record.tenant = "t";
  record.request_id = "r";
  record.operation.set_name(OperationName(NewOperationId(absl::Now())));
  record.operation.set_sequence(1);
  auto created = (*store)->Create(record, {});
  ASSERT_TRUE(created.ok()) << created.status();
  const std::string id = created->record.id();
  ASSERT_TRUE((*store)->Update(Next(record.operation, 2)).ok());
  // A compare-and-set that loses commits nothing, so announces nothing.
  EXPECT_EQ((*store)->Update(Next(record.operation, 2)).code(), absl::StatusCode::kAborted);
  ASSERT_TRUE((*store)->Update(Next(record.operation, 3)).ok());
  ASSERT_TRUE(recorder.AwaitChanges(3));
  std::vector<std::pair<std::string, int64_t>> expected = {{id, 1}, {id, 2}, {id, 3}};
  EXPECT_EQ(recorder.changes(), expected);

  ASSERT_TRUE((*cluster)->Restart().ok());
  ASSERT_TRUE(recorder.AwaitResyncs(2));  // reconnected, and told its consumer to replay
  absl::Status updated = (*store)->Update(Next(record.operation, 4));
  if (absl::IsUnavailable(updated)) updated = (*store)->Update(Next(record.operation, 4));
  ASSERT_TRUE(updated.ok()) << updated;
  ASSERT_TRUE(recorder.AwaitChanges(4));
  EXPECT_EQ(recorder.changes().back(), std::make_pair(id, int64_t{4}));
  EXPECT_EQ(recorder.changes().size(), 4u);
}

// A webhook that reached a replica not tracking its operation is passed on: every listening
// replica hears the nudge (provider and upstream id), apart from the changes.
TEST(PostgresChangeListenerTest, NudgesReachEveryListener) {
  auto cluster = ::musicgw::testing::PgCluster::Start();
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  auto dsn = (*cluster)->CreateDatabase("nudges");
  ASSERT_TRUE(dsn.ok());
  PostgresOptions store_options;
  store_options.dsn = *dsn;
  auto store = OpenPostgresOperationStore(store_options);
  ASSERT_TRUE(store.ok()) << store.status();

  Recorder recorder;
  PostgresListenerOptions options;
  options.dsn = *dsn;
  options.on_nudge = [&](int provider, absl::string_view upstream_id) {
    recorder.Change(upstream_id, provider);
  };
  auto listener = PostgresChangeListener::Start(
      options, [&](absl::string_view, int64_t) { ADD_FAILURE() << "a nudge is not a change"; },
      [&] { recorder.Resync(); });
  ASSERT_TRUE(recorder.AwaitResyncs(1));
  ASSERT_TRUE((*store)->Nudge(v1::PROVIDER_SOUNDPIECE, "op_with:colon").ok());
  ASSERT_TRUE(recorder.AwaitChanges(1));
  std::vector<std::pair<std::string, int64_t>> expected = {
      {"op_with:colon", static_cast<int64_t>(v1::PROVIDER_SOUNDPIECE)}};
  EXPECT_EQ(recorder.changes(), expected);
}

// A cancel request recorded on one replica is announced to every listener (the operation's id),
// apart from the changes; a request for a missing operation records and announces nothing.
TEST(PostgresChangeListenerTest, CancelRequestsReachEveryListener) {
  auto cluster = ::musicgw::testing::PgCluster::Start();
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  auto dsn = (*cluster)->CreateDatabase("cancels");
  ASSERT_TRUE(dsn.ok());
  PostgresOptions store_options;
  store_options.dsn = *dsn;
  auto store = OpenPostgresOperationStore(store_options);
  ASSERT_TRUE(store.ok()) << store.status();
  OperationRecord record;
  record.tenant = "t";
  record.request_id = "r";
  record.operation.set_name(OperationName(NewOperationId(absl::Now())));
  record.operation.set_sequence(1);
  ASSERT_TRUE((*store)->Create(record, {}).ok());

  Recorder recorder;
  PostgresListenerOptions options;
  options.dsn = *dsn;
  options.on_cancel = [&](absl::string_view id) { recorder.Change(id, 0); };
  auto listener = PostgresChangeListener::Start(
      options, [&](absl::string_view, int64_t) { ADD_FAILURE() << "a cancel is not a change"; },
      [&] { recorder.Resync(); });
  ASSERT_TRUE(recorder.AwaitResyncs(1));
  EXPECT_EQ((*store)->RequestCancel("missing", "why", absl::Now()).code(),
            absl::StatusCode::kNotFound);
  ASSERT_TRUE((*store)->RequestCancel(record.id(), "why", absl::Now()).ok());
  ASSERT_TRUE(recorder.AwaitChanges(1));
  std::vector<std::pair<std::string, int64_t>> expected = {{record.id(), 0}};
  EXPECT_EQ(recorder.changes(), expected);
}

}  // namespace
}  // namespace musicgw::operations
