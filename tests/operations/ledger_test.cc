// The engine when the ledger refuses writes (disk full): UNAVAILABLE LEDGER_UNAVAILABLE with
// RetryInfo, LedgerStatus() not OK until a write succeeds again, and recovery without client
// traffic (the maintenance probe). Also the engine's other errors, each with its ErrorInfo.
#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "common/clock.h"
#include "common/errors.h"
#include "gtest/gtest.h"
#include "services/operations/engine.h"
#include "services/operations/ids.h"
#include "services/operations/sqlite_store.h"
#include "tests/operations/fake_adapter.h"
#include "tests/operations/test_util.h"

namespace musicgw::operations {
namespace {

namespace v1 = musicgw::v1;
using testing::FakeAdapter;
using testing::TempLedgerPath;
using testing::TextRequest;
using testing::WaitUntil;

constexpr char kTenant[] = "tenant-a";

std::string Reason(const absl::Status& status) {
  google::rpc::ErrorInfo info;
  return GetErrorInfo(status, &info) && info.domain() == kGatewayDomain ? info.reason() : "";
}

bool HasRetryInfo(const absl::Status& status) {
  google::rpc::RetryInfo retry;
  return GetRetryInfo(status, &retry);
}

// The SQLite ledger, whose writes fail as a full disk makes them fail while told to.
class FlakyStore final : public OperationStore {
 public:
  explicit FlakyStore(std::unique_ptr<OperationStore> inner) : inner_(std::move(inner)) {}

  void FailWrites(bool fail) { fail_ = fail; }
  // Only updates of existing operations fail (a tracker's writes), creations succeed.
  void FailUpdates(bool fail) { fail_updates_ = fail; }
  int probes() const { return probes_.load(); }
  // Runs `hook` once, after the next read of an operation has been answered.
  void AfterNextGet(std::function<void()> hook) {
    absl::MutexLock lock(&hook_mu_);
    after_get_ = std::move(hook);
  }

  absl::StatusOr<CreateResult> Create(const OperationRecord& record,
                                      const std::vector<BudgetCheck>& budgets) override {
    if (fail_) return Full();
    return inner_->Create(record, budgets);
  }
  absl::Status Update(const OperationUpdate& update) override {
    if (fail_ || fail_updates_) return Full();
    return inner_->Update(update);
  }
  absl::StatusOr<OperationRecord> Get(absl::string_view id) override {
    absl::StatusOr<OperationRecord> record = inner_->Get(id);
    std::function<void()> hook;
    {
      absl::MutexLock lock(&hook_mu_);
      hook.swap(after_get_);
    }
    if (hook) hook();
    return record;
  }
  absl::StatusOr<OperationRecord> FindByRequestId(absl::string_view tenant,
                                                  absl::string_view request_id) override {
    return inner_->FindByRequestId(tenant, request_id);
  }
  absl::StatusOr<std::vector<OperationRecord>> List(const ListQuery& query) override {
    return inner_->List(query);
  }
  absl::StatusOr<std::vector<StoredEvent>> EventsAfter(absl::string_view id,
                                                       int64_t after_sequence) override {
    return inner_->EventsAfter(id, after_sequence);
  }
  absl::StatusOr<std::vector<OperationRecord>> ClaimLive(absl::string_view owner,
                                                         absl::Time lease_until) override {
    return inner_->ClaimLive(owner, lease_until);
  }
  absl::Status RenewLeases(absl::string_view owner, absl::Time lease_until) override {
    return inner_->RenewLeases(owner, lease_until);  // no live rows: succeeds on a full disk
  }
  absl::Status ProbeWrite() override {
    ++probes_;
    if (fail_) return Full();
    return inner_->ProbeWrite();
  }
  absl::Status SetUpstreamOutputs(absl::string_view id,
                                  const std::vector<UpstreamOutput>& outputs) override {
    if (fail_) return Full();
    return inner_->SetUpstreamOutputs(id, outputs);
  }
  absl::Status SetAssetFacts(absl::string_view id, int index, int64_t size_bytes,
                             absl::string_view sha256) override {
    if (fail_) return Full();
    return inner_->SetAssetFacts(id, index, size_bytes, sha256);
  }
  absl::StatusOr<int64_t> PruneEvents(absl::Time done_before) override {
    return inner_->PruneEvents(done_before);
  }
  absl::Status AddPendingCustody(absl::string_view id, absl::string_view tenant, int count,
                                 absl::Time now, absl::Time next_attempt) override {
    if (fail_) return Full();
    return inner_->AddPendingCustody(id, tenant, count, now, next_attempt);
  }
  absl::Status RecordCustody(absl::string_view id, int index, int64_t size_bytes,
                             absl::string_view sha256, absl::Time expire_time) override {
    if (fail_) return Full();
    return inner_->RecordCustody(id, index, size_bytes, sha256, expire_time);
  }
  absl::Status DeferCustody(absl::string_view id, int index, int attempts,
                            absl::Time next_attempt) override {
    if (fail_) return Full();
    return inner_->DeferCustody(id, index, attempts, next_attempt);
  }
  absl::StatusOr<std::vector<CustodyRecord>> GetCustody(absl::string_view id) override {
    return inner_->GetCustody(id);
  }
  absl::StatusOr<std::vector<CustodyRecord>> DueCustody(absl::Time now, int limit) override {
    return inner_->DueCustody(now, limit);
  }
  absl::StatusOr<std::vector<CustodyRecord>> ExpireCustody(absl::Time now, int limit) override {
    if (fail_) return Full();
    return inner_->ExpireCustody(now, limit);
  }
  absl::StatusOr<int64_t> CountHeldDigest(absl::string_view sha256) override {
    return inner_->CountHeldDigest(sha256);
  }
  absl::StatusOr<CustodySummary> ReadCustodySummary() override {
    return inner_->ReadCustodySummary();
  }
  absl::StatusOr<BudgetUsage> ReadBudget(absl::string_view tenant, v1::TaskKind task,
                                         absl::Time period_start) override {
    return inner_->ReadBudget(tenant, task, period_start);
  }
  absl::StatusOr<std::map<v1::TaskKind, int64_t>> CountCharged(v1::Provider provider,
                                                               absl::string_view account,
                                                               absl::Time since) override {
    return inner_->CountCharged(provider, account, since);
  }

 private:
  static absl::Status Full() { return absl::InternalError("database or disk is full"); }

  const std::unique_ptr<OperationStore> inner_;
  std::atomic<bool> fail_{false};
  std::atomic<bool> fail_updates_{false};
  std::atomic<int> probes_{0};
  absl::Mutex hook_mu_;
  std::function<void()> after_get_ ABSL_GUARDED_BY(hook_mu_);
};

class LedgerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SqliteOptions sqlite;
    sqlite.synchronous_full = false;
    sqlite.clock = &clock_;
    auto inner = OpenSqliteOperationStore(TempLedgerPath(), sqlite);
    ASSERT_TRUE(inner.ok()) << inner.status();
    auto store = std::make_unique<FlakyStore>(std::move(*inner));
    store_ = store.get();
    EngineOptions options;
    options.clock = &clock_;
    options.lease = absl::Seconds(30);  // maintenance every 10 s
    options.ledger_probe_interval = absl::Seconds(2);
    options.watch_heartbeat = absl::Hours(1);
    auto engine = CreateOperationsEngine(options, std::move(store), {&adapter_}, nullptr);
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = std::move(*engine);
    ASSERT_TRUE(engine_->Start().ok());
  }

  // Moves the fake clock a little; true, for use inside WaitUntil predicates.
  bool Tick() {
    clock_.Advance(absl::Milliseconds(20));
    return true;
  }

  FakeClock clock_;
  FakeAdapter adapter_;
  FlakyStore* store_ = nullptr;
  std::unique_ptr<OperationsEngine> engine_;
};

TEST_F(LedgerTest, AFailedWriteIsLedgerUnavailableUntilAProbeSucceeds) {
  EXPECT_TRUE(engine_->LedgerStatus().ok());
  store_->FailWrites(true);
  auto refused = engine_->Generate(kTenant, TextRequest("calm piano"));
  ASSERT_EQ(refused.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(Reason(refused.status()), "LEDGER_UNAVAILABLE");
  EXPECT_TRUE(HasRetryInfo(refused.status()));
  EXPECT_EQ(refused.status().message().find("disk is full"), absl::string_view::npos)
      << "the client is not told the ledger's internals";
  EXPECT_EQ(Reason(engine_->LedgerStatus()), "LEDGER_UNAVAILABLE");

  // Still failing: the probe keeps the status down. (Time moves in small steps until the
  // maintenance timer, wherever it was armed, has fired.)
  const int probes = store_->probes();
  ASSERT_TRUE(WaitUntil([&] { return Tick() && store_->probes() > probes; }));
  EXPECT_FALSE(engine_->LedgerStatus().ok());

  // The disk has room again: the next probe, with no client call, brings the status back.
  store_->FailWrites(false);
  ASSERT_TRUE(WaitUntil([&] { return Tick() && engine_->LedgerStatus().ok(); }));
  EXPECT_TRUE(engine_->Generate(kTenant, TextRequest("calm piano")).ok());
}

TEST_F(LedgerTest, AFailedTrackerWriteMarksTheLedgerAndTheOperationCarriesOn) {
  store_->FailUpdates(true);
  auto op = engine_->Generate(kTenant, TextRequest("calm piano"));
  ASSERT_TRUE(op.ok()) << op.status();
  // The tracker cannot record SUBMITTING: nothing is sent, and the ledger is reported down.
  ASSERT_TRUE(WaitUntil([&] { return !engine_->LedgerStatus().ok(); }));
  EXPECT_EQ(Reason(engine_->LedgerStatus()), "LEDGER_UNAVAILABLE");
  EXPECT_EQ(adapter_.submit_calls(), 0);

  // Writable again: the tracker's retry (one second later) submits, the status recovers.
  store_->FailUpdates(false);
  ASSERT_TRUE(WaitUntil([&] { return Tick() && engine_->LedgerStatus().ok(); }));
  // The probe may bring the status back before the tracker's retry timer is due: time moves on.
  ASSERT_TRUE(WaitUntil([&] { return Tick() && adapter_.submit_calls() == 1; }));
  auto read = engine_->Get(kTenant, op->name());
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_NE(read->submission(), v1::SUBMISSION_STATE_NOT_SUBMITTED);
}

// The tracker retires after committing the end: a Wait or Cancel that read the ledger before that
// and finds no tracker after it answers with the end, not the stale read.
TEST_F(LedgerTest, AnOperationThatEndsBetweenTheReadAndTheTrackerLookupIsAnsweredDone) {
  auto op = engine_->Generate(kTenant, TextRequest("calm piano"));
  ASSERT_TRUE(op.ok()) << op.status();
  ASSERT_TRUE(WaitUntil([&] { return adapter_.submit_calls() == 1; }));
  auto finish = [&] {
    ASSERT_TRUE(WaitUntil([&] { return Tick() && engine_->Stats().live_operations == 0; }));
  };

  store_->AfterNextGet(finish);
  absl::Notification waited;
  absl::StatusOr<v1::Operation> result;
  engine_->Wait(kTenant, op->name(), absl::Hours(1),
                [&](const absl::StatusOr<v1::Operation>& answer) {
                  result = answer;
                  waited.Notify();
                });
  waited.WaitForNotification();
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_TRUE(result->done());
  EXPECT_EQ(result->state(), v1::OPERATION_STATE_SUCCEEDED);

  auto second = engine_->Generate(kTenant, TextRequest("calm guitar"));
  ASSERT_TRUE(second.ok()) << second.status();
  ASSERT_TRUE(WaitUntil([&] { return adapter_.submit_calls() == 2; }));
  store_->AfterNextGet(finish);
  absl::Notification cancelled;
  absl::Status cancel_status;
  engine_->Cancel(kTenant, second->name(), "changed my mind",
                  [&](const absl::StatusOr<v1::Operation>& answer) {
                    cancel_status = answer.status();
                    cancelled.Notify();
                  });
  cancelled.WaitForNotification();
  EXPECT_EQ(cancel_status.code(), absl::StatusCode::kFailedPrecondition) << cancel_status;
  EXPECT_EQ(Reason(cancel_status), "OPERATION_DONE") << cancel_status;
}

TEST_F(LedgerTest, EveryEngineErrorCarriesErrorInfo) {
  const std::string unknown = OperationName(NewOperationId(clock_.Now()));
  auto missing = engine_->Get(kTenant, unknown);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Reason(missing.status()), "OPERATION_NOT_FOUND");

  auto asset = engine_->Download(kTenant, unknown + "/assets/0", 0);
  EXPECT_EQ(asset.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Reason(asset.status()), "ASSET_NOT_FOUND");

  auto bad_name = engine_->Get(kTenant, "operations/NOT-AN-ID");
  EXPECT_EQ(bad_name.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(Reason(bad_name.status()).empty());

  v1::ListOperationsRequest list;
  list.set_page_token("garbage");
  EXPECT_EQ(Reason(engine_->List(kTenant, list).status()), "INVALID_PAGE_TOKEN");
  list.clear_page_token();
  list.set_page_size(1001);
  EXPECT_EQ(engine_->List(kTenant, list).status().code(), absl::StatusCode::kInvalidArgument);

  v1::GenerateRequest other = TextRequest("x");
  other.set_provider(v1::PROVIDER_LOUDLY);
  auto not_configured = engine_->Generate(kTenant, other);
  EXPECT_EQ(not_configured.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Reason(not_configured.status()), "PROVIDER_NOT_CONFIGURED");

  engine_->Shutdown();
  auto down = engine_->Generate(kTenant, TextRequest("x"));
  EXPECT_EQ(down.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(Reason(down.status()), "SHUTTING_DOWN");
  EXPECT_TRUE(HasRetryInfo(down.status()));
  auto watch = engine_->Watch(kTenant, unknown, 0);
  EXPECT_EQ(Reason(watch.status()), "OPERATION_NOT_FOUND");
}

}  // namespace
}  // namespace musicgw::operations
