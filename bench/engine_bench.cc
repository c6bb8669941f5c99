// Engine-level benchmarks (no gRPC): what the operations engine itself costs.
//
//   engine_bench generate [--ops=N] [--concurrency=C] [--sync=full|normal] [--ledger=PATH]
//     Generate throughput and latency against a scripted provider (1 ms answers, done on the
//     2nd poll), then Generate->SUCCEEDED latency, upstream calls per operation.
//   engine_bench watchers [--watchers=N]
//     N watchers on one live operation: memory per watcher, threads added (should be 0),
//     fan-out time of one change to every watcher, upstream polls (should not grow).
//   engine_bench counts [--ops=N] [--days=D]
//     A ledger of N charged operations of one tenant and account over D days: the credit count
//     (each quota read) and a month's budget count (each Generate of a budgeted tenant) as the
//     ledger answers them (counters), against the row scans they replaced, run on the same file
//     and interleaved; the answers must agree.
//
// Prints one JSON object per scenario on stdout (bench/run_engine_bench.sh records them).
#include <sqlite3.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/civil_time.h"
#include "absl/time/clock.h"
#include "common/crypto.h"
#include "common/time_util.h"
#include "nlohmann/json.hpp"
#include "services/operations/engine.h"
#include "services/operations/ids.h"
#include "services/operations/sqlite_store.h"
#include "tests/operations/fake_adapter.h"

namespace musicgw::operations {
namespace {

namespace v1 = musicgw::v1;
using testing::FakeAdapter;

struct Flags {
  std::string scenario;
  int ops = 2000;
  int concurrency = 16;
  int watchers = 10000;
  int days = 30;
  bool sync_full = true;
  std::string ledger;
};

Flags Parse(int argc, char** argv) {
  Flags flags;
  if (argc > 1) flags.scenario = argv[1];
  for (int i = 2; i < argc; ++i) {
    absl::string_view arg = argv[i];
    auto value = [&](absl::string_view name) -> std::optional<std::string> {
      const std::string prefix = absl::StrCat("--", name, "=");
      if (!absl::StartsWith(arg, prefix)) return std::nullopt;
      return std::string(arg.substr(prefix.size()));
    };
    if (auto v = value("ops")) absl::SimpleAtoi(*v, &flags.ops);
    if (auto v = value("concurrency")) absl::SimpleAtoi(*v, &flags.concurrency);
    if (auto v = value("watchers")) absl::SimpleAtoi(*v, &flags.watchers);
    if (auto v = value("days")) absl::SimpleAtoi(*v, &flags.days);
    if (auto v = value("sync")) flags.sync_full = *v != "normal";
    if (auto v = value("ledger")) flags.ledger = *v;
  }
  if (flags.ledger.empty()) flags.ledger = absl::StrCat("/tmp/musicgw-bench-", getpid(), ".db");
  return flags;
}

void RemoveLedger(const std::string& path) {
  for (const char* suffix : {"", "-wal", "-shm"}) ::unlink((path + suffix).c_str());
}

// From /proc/self/status: "VmRSS:" in kB, "Threads:".
int64_t ProcStatus(absl::string_view key) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (!absl::StartsWith(line, key)) continue;
    int64_t value = 0;
    std::string digits;
    for (char c : line) {
      if (c >= '0' && c <= '9') digits += c;
    }
    absl::SimpleAtoi(digits, &value);
    return value;
  }
  return -1;
}

double Percentile(std::vector<double> values, double p) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const size_t index = std::min(values.size() - 1, static_cast<size_t>(p * values.size()));
  return values[index];
}

class LatencyObserver final : public EngineObserver {
 public:
  void OnSucceededLatency(v1::Provider, v1::TaskKind, absl::Duration latency) override {
    absl::MutexLock lock(&mu_);
    latencies_ms_.push_back(absl::ToDoubleMilliseconds(latency));
  }
  void OnCompleted(v1::Provider, v1::TaskKind, v1::OperationState, absl::StatusCode) override {
    absl::MutexLock lock(&mu_);
    ++completed_;
  }
  bool WaitCompleted(int n, absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    auto reached = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return completed_ >= n; };
    return mu_.AwaitWithTimeout(absl::Condition(&reached), timeout);
  }
  std::vector<double> latencies() {
    absl::MutexLock lock(&mu_);
    return latencies_ms_;
  }

 private:
  absl::Mutex mu_;
  std::vector<double> latencies_ms_ ABSL_GUARDED_BY(mu_);
  int completed_ ABSL_GUARDED_BY(mu_) = 0;
};

std::unique_ptr<OperationsEngine> OpenEngine(const Flags& flags, EngineOptions options,
                                             adapters::ProviderAdapter* adapter) {
  RemoveLedger(flags.ledger);
  SqliteOptions sqlite;
  sqlite.synchronous_full = flags.sync_full;
  auto store = OpenSqliteOperationStore(flags.ledger, sqlite);
  if (!store.ok()) {
    std::fprintf(stderr, "ledger: %s\n", store.status().ToString().c_str());
    return nullptr;
  }
  auto engine = CreateOperationsEngine(std::move(options), std::move(*store), {adapter}, nullptr);
  if (!engine.ok() || !(*engine)->Start().ok()) return nullptr;
  return std::move(*engine);
}

v1::GenerateRequest Request(int i) {
  v1::GenerateRequest request;
  request.set_request_id(RandomUuid());
  request.mutable_text_to_music()->set_prompt(absl::StrCat("bench track ", i));
  return request;
}

int RunGenerate(const Flags& flags) {
  FakeAdapter::Options adapter_options;
  adapter_options.latency = absl::Milliseconds(1);
  FakeAdapter adapter(adapter_options);
  adapter.SetPollsToFinish(2);
  adapter.SetNextPollAfter(absl::Milliseconds(10));
  LatencyObserver observer;
  EngineOptions options;
  options.min_poll_interval = absl::Milliseconds(1);
  options.observer = &observer;
  auto engine = OpenEngine(flags, options, &adapter);
  if (engine == nullptr) return 1;

  std::atomic<int> next{0};
  std::atomic<int> errors{0};
  std::vector<std::vector<double>> per_thread(flags.concurrency);
  const absl::Time start = absl::Now();
  std::vector<std::thread> threads;
  threads.reserve(flags.concurrency);
  for (int t = 0; t < flags.concurrency; ++t) {
    threads.emplace_back([&, t] {
      for (int i = next++; i < flags.ops; i = next++) {
        const absl::Time begin = absl::Now();
        auto op = engine->Generate("bench", Request(i));
        per_thread[t].push_back(absl::ToDoubleMilliseconds(absl::Now() - begin));
        if (!op.ok()) ++errors;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  const absl::Duration generate_time = absl::Now() - start;
  const bool all_done = observer.WaitCompleted(flags.ops - errors.load(), absl::Minutes(5));
  const absl::Duration total_time = absl::Now() - start;

  std::vector<double> generate_ms;
  for (auto& v : per_thread) generate_ms.insert(generate_ms.end(), v.begin(), v.end());
  const auto e2e = observer.latencies();
  nlohmann::ordered_json out;
  out["scenario"] = "generate";
  out["ledger_synchronous"] = flags.sync_full ? "FULL" : "NORMAL";
  out["ops"] = flags.ops;
  out["concurrency"] = flags.concurrency;
  out["errors"] = errors.load();
  out["all_succeeded"] = all_done;
  out["generate_per_second"] = flags.ops / absl::ToDoubleSeconds(generate_time);
  out["generate_ms_p50"] = Percentile(generate_ms, 0.50);
  out["generate_ms_p99"] = Percentile(generate_ms, 0.99);
  out["completed_per_second"] = flags.ops / absl::ToDoubleSeconds(total_time);
  out["generate_to_succeeded_ms_p50"] = Percentile(e2e, 0.50);
  out["generate_to_succeeded_ms_p99"] = Percentile(e2e, 0.99);
  out["upstream_submits_per_op"] = static_cast<double>(adapter.submit_calls()) / flags.ops;
  out["upstream_polls_per_op"] = static_cast<double>(adapter.poll_calls()) / flags.ops;
  std::printf("%s\n", out.dump().c_str());
  engine.reset();
  RemoveLedger(flags.ledger);
  return all_done && errors.load() == 0 ? 0 : 1;
}

// Counts what a watcher receives without a thread of its own (like a gRPC reactor).
class CountingWatcher {
 public:
  CountingWatcher(std::unique_ptr<EventStream<v1::OperationEvent>> stream,
                  std::atomic<int>* finished)
      : stream_(std::move(stream)), finished_(finished) {
    stream_->SetWakeup([this] { Drain(); });
    Drain();
  }

 private:
  void Drain() {
    absl::MutexLock lock(&mu_);
    while (true) {
      bool done = false;
      absl::Status status;
      auto event = stream_->Next(&done, &status);
      if (event.has_value()) continue;
      if (done && !counted_) {
        counted_ = true;
        finished_->fetch_add(1);
      }
      return;
    }
  }

  absl::Mutex mu_;
  std::unique_ptr<EventStream<v1::OperationEvent>> stream_;
  std::atomic<int>* finished_;
  bool counted_ = false;
};

int RunWatchers(const Flags& flags) {
  FakeAdapter adapter;
  adapter.SetPollsToFinish(0);
  adapter.SetNextPollAfter(absl::Seconds(1));
  EngineOptions options;
  options.max_poll_interval = absl::Seconds(1);
  auto engine = OpenEngine(flags, options, &adapter);
  if (engine == nullptr) return 1;
  auto op = engine->Generate("bench", Request(0));
  if (!op.ok() || !adapter.WaitForPollCalls(1, absl::Seconds(10))) return 1;
  // Find the upstream id (accepted by now).
  std::string upstream;
  for (int i = 0; i < 1000 && upstream.empty(); ++i) {
    auto current = engine->Get("bench", op->name());
    if (current.ok()) upstream = current->upstream_id();
    if (upstream.empty()) absl::SleepFor(absl::Milliseconds(1));
  }

  const int64_t rss_before = ProcStatus("VmRSS:");
  const int64_t threads_before = ProcStatus("Threads:");
  const int polls_before = adapter.poll_calls();
  std::atomic<int> finished{0};
  std::vector<std::unique_ptr<CountingWatcher>> watchers;
  watchers.reserve(flags.watchers);
  const absl::Time open_start = absl::Now();
  for (int i = 0; i < flags.watchers; ++i) {
    auto stream = engine->Watch("bench", op->name(), 0);
    if (!stream.ok()) return 1;
    watchers.push_back(std::make_unique<CountingWatcher>(*std::move(stream), &finished));
  }
  const absl::Duration open_time = absl::Now() - open_start;
  const int64_t rss_after = ProcStatus("VmRSS:");
  const int64_t threads_after = ProcStatus("Threads:");

  adapters::UpstreamStatus status;
  status.upstream_id = upstream;
  status.phase = adapters::UpstreamStatus::Phase::kSucceeded;
  adapters::ProviderOutput output;
  output.url = "http://127.0.0.1:9/x";
  status.outputs.push_back(output);
  const absl::Time fanout_start = absl::Now();
  engine->OnProviderUpdate(v1::PROVIDER_SOUNDPIECE, status);
  while (finished.load() < flags.watchers && absl::Now() - fanout_start < absl::Seconds(60)) {
    absl::SleepFor(absl::Microseconds(200));
  }
  const absl::Duration fanout = absl::Now() - fanout_start;

  nlohmann::ordered_json out;
  out["scenario"] = "watchers";
  out["watchers"] = flags.watchers;
  out["open_watchers_ms"] = absl::ToDoubleMilliseconds(open_time);
  out["rss_bytes_per_watcher"] =
      static_cast<double>(rss_after - rss_before) * 1024.0 / std::max(1, flags.watchers);
  out["threads_added"] = threads_after - threads_before;
  out["fanout_terminal_to_all_ms"] = absl::ToDoubleMilliseconds(fanout);
  out["watchers_finished"] = finished.load();
  out["upstream_polls_during_watch"] = adapter.poll_calls() - polls_before;
  std::printf("%s\n", out.dump().c_str());
  watchers.clear();
  engine.reset();
  RemoveLedger(flags.ledger);
  return finished.load() == flags.watchers ? 0 : 1;
}

// Median of `rounds` timings of `read`, in microseconds.
template <typename Read>
double MedianMicros(int rounds, Read read) {
  std::vector<double> micros;
  for (int i = 0; i < rounds; ++i) {
    const absl::Time begin = absl::Now();
    read();
    micros.push_back(absl::ToDoubleMicroseconds(absl::Now() - begin));
  }
  return Percentile(micros, 0.5);
}

// One COUNT over the rows, on its own connection: what the ledger ran before its counters.
int64_t ScanCount(sqlite3* db, const char* sql, const std::string& text, int64_t task,
                  int64_t since_us) {
  sqlite3_stmt* stmt = nullptr;
  if (sqlite3_prepare_v2(db, sql, -1, &stmt, nullptr) != SQLITE_OK) return -1;
  sqlite3_bind_text(stmt, 1, text.c_str(), -1, SQLITE_TRANSIENT);
  sqlite3_bind_int64(stmt, 2, task);
  sqlite3_bind_int64(stmt, 3, since_us);
  const int64_t count = sqlite3_step(stmt) == SQLITE_ROW ? sqlite3_column_int64(stmt, 0) : -1;
  sqlite3_finalize(stmt);
  return count;
}

int RunCounts(const Flags& flags) {
  RemoveLedger(flags.ledger);
  SqliteOptions sqlite;
  sqlite.synchronous_full = false;
  auto store = OpenSqliteOperationStore(flags.ledger, sqlite);
  if (!store.ok()) {
    std::fprintf(stderr, "ledger: %s\n", store.status().ToString().c_str());
    return 1;
  }
  const absl::Time now = absl::Now();
  const absl::Duration spacing = absl::Hours(24) * flags.days / std::max(1, flags.ops);
  const absl::Time fill_start = absl::Now();
  for (int i = 0; i < flags.ops; ++i) {
    OperationRecord record;
    record.tenant = "bench";
    record.request_id = absl::StrCat("r", i);
    record.request_hash = "h";
    const absl::Time created = now - spacing * (i + 1);
    record.operation.set_name(OperationName(NewOperationId(created)));
    record.operation.set_state(v1::OPERATION_STATE_SUCCEEDED);
    record.operation.set_done(true);
    record.operation.set_task(v1::TASK_KIND_SAMPLE);
    record.operation.set_provider(v1::PROVIDER_SOUNDPIECE);
    record.operation.set_provider_account("acct");
    record.operation.set_sequence(1);
    *record.operation.mutable_create_time() = ToProtoTimestamp(created);
    record.charged = true;
    if (!(*store)->Create(record, {}).ok()) return 1;
  }
  const double fill_s = absl::ToDoubleSeconds(absl::Now() - fill_start);
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(flags.ledger.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) != SQLITE_OK) {
    return 1;
  }
  // A credit balance bought 40 days ago at 10:17, and the budget period of this month's day 1
  // (or the day `days` ago, whichever is later): what the gateway asks.
  const absl::Time since = now - absl::Hours(24 * 40) + absl::Minutes(17);
  const absl::Time month =
      absl::FromCivil(absl::CivilDay(absl::ToCivilDay(
                          now - absl::Hours(24) * std::min(flags.days, 28), absl::UTCTimeZone())),
                      absl::UTCTimeZone());
  int64_t counted_credits = 0;
  int64_t scanned_credits = 0;
  int64_t counted_budget = 0;
  int64_t scanned_budget = 0;
  constexpr int kRounds = 9;
  const double credits_us = MedianMicros(kRounds, [&] {
    auto counts = (*store)->CountCharged(v1::PROVIDER_SOUNDPIECE, "acct", since);
    counted_credits = counts.ok() ? (*counts)[v1::TASK_KIND_SAMPLE] : -1;
  });
  const double credits_scan_us = MedianMicros(kRounds, [&] {
    scanned_credits = ScanCount(db,
                                "SELECT COUNT(*) FROM operations WHERE provider = 2 AND "
                                "provider_account = ?1 AND task = ?2 AND create_time_us >= ?3 "
                                "AND charged = 1",
                                "acct", v1::TASK_KIND_SAMPLE, absl::ToUnixMicros(since));
  });
  const double budget_us = MedianMicros(kRounds, [&] {
    auto usage = (*store)->ReadBudget("bench", v1::TASK_KIND_SAMPLE, month);
    counted_budget = usage.ok() ? usage->reserved + usage->used : -1;
  });
  const double budget_scan_us = MedianMicros(kRounds, [&] {
    scanned_budget = ScanCount(db,
                               "SELECT COUNT(*) FROM operations WHERE tenant = ?1 AND task = ?2 "
                               "AND create_time_us >= ?3 AND (state NOT IN (4, 5) OR charged = 1)",
                               "bench", v1::TASK_KIND_SAMPLE, absl::ToUnixMicros(month));
  });
  sqlite3_close(db);
  store->reset();
  RemoveLedger(flags.ledger);
  nlohmann::json out;
  out["scenario"] = "counts";
  out["ops"] = flags.ops;
  out["days"] = flags.days;
  out["fill_s"] = fill_s;
  out["credits"] = {{"counted", counted_credits},
                    {"scanned", scanned_credits},
                    {"counters_us", credits_us},
                    {"row_scan_us", credits_scan_us}};
  out["budget_month"] = {{"counted", counted_budget},
                         {"scanned", scanned_budget},
                         {"counters_us", budget_us},
                         {"row_scan_us", budget_scan_us}};
  std::printf("%s\n", out.dump().c_str());
  const bool agree = counted_credits == scanned_credits && counted_budget == scanned_budget;
  if (!agree) std::fprintf(stderr, "engine_bench counts: the counters disagree with the rows\n");
  return agree ? 0 : 1;
}

}  // namespace
}  // namespace musicgw::operations

int main(int argc, char** argv) {
  const auto flags = musicgw::operations::Parse(argc, argv);
  if (flags.scenario == "generate") return musicgw::operations::RunGenerate(flags);
  if (flags.scenario == "watchers") return musicgw::operations::RunWatchers(flags);
  if (flags.scenario == "counts") return musicgw::operations::RunCounts(flags);
  std::fprintf(stderr,
               "usage: engine_bench generate [--ops=N] [--concurrency=C] [--sync=full|normal]\n"
               "       engine_bench watchers [--watchers=N]\n"
               "       engine_bench counts [--ops=N] [--days=D]\n");
  return 2;
}
