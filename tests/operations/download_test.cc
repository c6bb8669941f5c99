// Downloads through the real CurlHttpClient from a local HTTP server standing in for the
// provider's file host (signed URLs that expire, Range support or not, dropped connections).
#include <curl/curl.h>
#include <httplib.h>

#include <atomic>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "adapters/http/curl_http_client.h"
#include "common/clock.h"
#include "common/crypto.h"
#include "common/errors.h"
#include "gtest/gtest.h"
#include "services/operations/asset_store.h"
#include "services/operations/custody.h"
#include "services/operations/download_stream.h"
#include "services/operations/engine.h"
#include "services/operations/ids.h"
#include "tests/operations/fake_adapter.h"
#include "tests/operations/test_util.h"
#include "tests/scratch_dir.h"

namespace musicgw::operations {
namespace {

namespace v1 = musicgw::v1;
using testing::FakeAdapter;
using testing::StreamReader;
using testing::TextRequest;

constexpr char kTenant[] = "tenant-a";

std::string MakeFile(size_t size, uint32_t seed) {
  std::string data(size, '\0');
  uint32_t x = seed;
  for (auto& c : data) {
    x = x * 1664525u + 1013904223u;
    c = static_cast<char>(x >> 24);
  }
  return data;
}

// The provider's file host. Paths: /a/<file> honours Range; /norange/<file> ignores it (and
// sends no Content-Length); /expiring/<file> drops the first transfer halfway and answers 403
// from then on (the signed URL expired).
class FileHost {
 public:
  FileHost() : files_(Files()) {
    server_.new_task_queue = [] { return new httplib::ThreadPool(8); };
    server_.Get(R"(/(a|norange|expiring)/(\w+))",
                [this](const httplib::Request& req, httplib::Response& res) { Serve(req, res); });
    port_ = server_.bind_to_any_port("127.0.0.1");
    // Bound already: connections queue in the backlog until the loop runs.
    thread_ = std::thread([this] { server_.listen_after_bind(); });
  }
  ~FileHost() {
    server_.stop();
    thread_.join();
  }

  std::string Url(const std::string& mode, const std::string& file) const {
    return absl::StrCat("http://127.0.0.1:", port_, "/", mode, "/", file);
  }
  const std::string& file(const std::string& name) const { return files_.at(name); }
  int requests(const std::string& mode) const {
    absl::MutexLock lock(&mu_);
    auto it = requests_.find(mode);
    return it == requests_.end() ? 0 : it->second;
  }
  int64_t bytes_sent() const { return bytes_sent_.load(); }
  // Waits until a transfer ended early (the client went away).
  bool WaitForAbortedTransfer(absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    return mu_.AwaitWithTimeout(absl::Condition(&aborted_), timeout);
  }

 private:
  void Serve(const httplib::Request& req, httplib::Response& res) {
    const std::string mode = req.matches[1];
    const std::string name = req.matches[2];
    int count;
    {
      absl::MutexLock lock(&mu_);
      count = ++requests_[mode];
    }
    // httplib would apply Range itself (even to error bodies); this host decides per path.
    const httplib::Ranges ranges = req.ranges;
    const_cast<httplib::Request&>(req).ranges.clear();
    auto it = files_.find(name);
    if (it == files_.end()) {
      res.status = 404;
      return;
    }
    const std::string* data = &it->second;
    const size_t size = data->size();
    if (mode == "expiring" && count > 1) {
      res.status = 403;
      res.set_content("Request has expired", "text/plain");
      return;
    }
    if (mode == "norange") {
      res.set_chunked_content_provider(
          "audio/flac", [this, data](size_t offset, httplib::DataSink& sink) {
            const size_t n = std::min<size_t>(64 * 1024, data->size() - offset);
            if (n == 0) {
              sink.done();
              return true;
            }
            bytes_sent_ += static_cast<int64_t>(n);
            return sink.write(data->data() + offset, n);
          });
      return;
    }
    size_t start = 0;
    if (!ranges.empty() && ranges[0].first >= 0) start = static_cast<size_t>(ranges[0].first);
    if (start >= size && !ranges.empty()) {
      res.status = 416;
      res.set_header("Content-Range", absl::StrCat("bytes */", size));
      return;
    }
    if (!ranges.empty()) {
      res.status = 206;
      res.set_header("Content-Range", absl::StrCat("bytes ", start, "-", size - 1, "/", size));
    }
    const size_t cut = mode == "expiring" ? size / 2 : size;
    res.set_content_provider(
        size - start, "audio/flac",
        [this, data, start, cut](size_t offset, size_t length, httplib::DataSink& sink) {
          offset += start;
          if (offset >= cut) return false;  // drop the connection mid-body
          const size_t n = std::min<size_t>({64 * 1024, length, cut - offset});
          bytes_sent_ += static_cast<int64_t>(n);
          return sink.write(data->data() + offset, n);
        },
        [this](bool success) {
          if (success) return;
          absl::MutexLock lock(&mu_);
          aborted_ = true;
        });
  }

  // Generated once per process: the 50 MB file takes a moment.
  static const std::map<std::string, std::string>& Files() {
    static const auto* files = new std::map<std::string, std::string>{
        {"small", MakeFile(300 * 1000 + 7, 1)}, {"big", MakeFile(50 * 1000 * 1000, 2)}};
    return *files;
  }

  const std::map<std::string, std::string>& files_;
  httplib::Server server_;
  int port_ = 0;
  std::thread thread_;
  mutable absl::Mutex mu_;
  std::map<std::string, int> requests_ ABSL_GUARDED_BY(mu_);
  bool aborted_ ABSL_GUARDED_BY(mu_) = false;
  std::atomic<int64_t> bytes_sent_{0};
};

class DownloadTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { curl_global_init(CURL_GLOBAL_DEFAULT); }

  void SetUp() override {
    http_ = http::CurlHttpClient::Create();
    ASSERT_NE(http_, nullptr);
    options_.min_poll_interval = absl::Milliseconds(1);
    options_.download_chunk_bytes = 64 * 1024;
    options_.download_buffer_bytes = 256 * 1024;
  }

  void OpenEngine() {
    auto store = OpenSqliteOperationStore(testing::TempLedgerPath());
    ASSERT_TRUE(store.ok()) << store.status();
    auto engine = CreateOperationsEngine(options_, std::move(*store), {&provider_}, http_.get());
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = std::move(*engine);
    ASSERT_TRUE(engine_->Start().ok());
  }

  // A finished operation whose one asset the provider serves at `url`.
  std::string Finished(const std::string& url, absl::Time expire = absl::InfiniteFuture()) {
    adapters::ProviderOutput output;
    output.content_type = "audio/flac";
    output.format = v1::AUDIO_FORMAT_FLAC;
    output.url = url;
    output.url_expire_time = expire;
    provider_.SetOutputs({output});
    provider_.SetPollsToFinish(1);
    auto op = engine_->Generate(kTenant, TextRequest("download me"));
    EXPECT_TRUE(op.ok()) << op.status();
    absl::Notification done;
    engine_->Wait(kTenant, op->name(), absl::Seconds(10), [&](absl::StatusOr<v1::Operation> r) {
      EXPECT_TRUE(r.ok() && r->state() == v1::OPERATION_STATE_SUCCEEDED);
      done.Notify();
    });
    done.WaitForNotification();
    return op->name() + "/assets/0";
  }

  struct Result {
    v1::AssetInfo info;
    std::string data;
    absl::Status status;
    bool offsets_contiguous = true;
  };

  Result Fetch(const std::string& asset, int64_t offset) {
    Result result;
    auto stream = engine_->Download(kTenant, asset, offset);
    if (!stream.ok()) {
      result.status = stream.status();
      return result;
    }
    StreamReader<v1::DownloadChunk> reader(*std::move(stream));
    EXPECT_TRUE(reader.WaitFinished(absl::Seconds(30)));
    result.status = reader.status();
    int64_t expected = offset;
    for (const auto& chunk : reader.messages()) {
      if (chunk.has_info()) {
        result.info = chunk.info();
        continue;
      }
      if (chunk.offset() != expected) result.offsets_contiguous = false;
      expected += static_cast<int64_t>(chunk.data().size());
      result.data += chunk.data();
    }
    return result;
  }

  FileHost host_;
  FakeAdapter provider_;
  std::unique_ptr<http::CurlHttpClient> http_;
  EngineOptions options_;
  std::unique_ptr<OperationsEngine> engine_;
};

TEST_F(DownloadTest, FullDownloadStreamsEveryByteAndRecordsTheDigest) {
  OpenEngine();
  const std::string asset = Finished(host_.Url("a", "small"));
  const std::string& file = host_.file("small");
  Result first = Fetch(asset, 0);
  ASSERT_TRUE(first.status.ok()) << first.status;
  EXPECT_EQ(first.info.asset(), asset);
  EXPECT_EQ(first.info.content_type(), "audio/flac");
  EXPECT_EQ(first.info.size_bytes(), static_cast<int64_t>(file.size()));
  EXPECT_EQ(first.info.format(), v1::AUDIO_FORMAT_FLAC);
  EXPECT_TRUE(first.offsets_contiguous);
  EXPECT_EQ(first.data.size(), file.size());
  EXPECT_TRUE(first.data == file);

  // The first full pass stored size and digest on the asset before the stream ended.
  const std::string expected_sha = Sha256Hex(file);
  auto stored = engine_->Get(kTenant, asset.substr(0, asset.find("/assets/")));
  ASSERT_TRUE(stored.ok());
  EXPECT_EQ(stored->outputs(0).sha256(), expected_sha);
  Result second = Fetch(asset, 0);
  ASSERT_TRUE(second.status.ok());
  EXPECT_EQ(second.info.sha256(), expected_sha);
  // Known size: an offset past the end is refused before any transfer.
  EXPECT_EQ(engine_->Download(kTenant, asset, file.size() + 1).status().code(),
            absl::StatusCode::kOutOfRange);
  Result at_end = Fetch(asset, static_cast<int64_t>(file.size()));
  EXPECT_TRUE(at_end.status.ok());
  EXPECT_TRUE(at_end.data.empty());
}

TEST_F(DownloadTest, ResumeAtOffsetReturnsTheTail) {
  OpenEngine();
  const std::string& file = host_.file("small");
  const std::string asset = Finished(host_.Url("a", "small"));
  Result tail = Fetch(asset, 100000);
  ASSERT_TRUE(tail.status.ok()) << tail.status;
  EXPECT_EQ(tail.info.offset(), 100000);
  EXPECT_TRUE(tail.offsets_contiguous);
  EXPECT_TRUE(tail.data == file.substr(100000));
  EXPECT_TRUE(tail.info.sha256().empty());  // a partial pass proves nothing about the whole
}

TEST_F(DownloadTest, ResumeWorksWhenTheProviderIgnoresRange) {
  OpenEngine();
  const std::string& file = host_.file("small");
  const std::string asset = Finished(host_.Url("norange", "small"));
  Result tail = Fetch(asset, 123457);
  ASSERT_TRUE(tail.status.ok()) << tail.status;
  EXPECT_TRUE(tail.data == file.substr(123457));
}

TEST_F(DownloadTest, OffsetBeyondTheEndIsOutOfRange) {
  OpenEngine();
  const std::string asset = Finished(host_.Url("a", "small"));
  Result result = Fetch(asset, 10 * 1000 * 1000);
  EXPECT_EQ(result.status.code(), absl::StatusCode::kOutOfRange) << result.status;
}

TEST_F(DownloadTest, ExpiredUrlMidTransferIsRefreshedAndTheTransferContinues) {
  OpenEngine();
  const std::string& file = host_.file("small");
  const std::string asset = Finished(host_.Url("expiring", "small"));
  // From now on the provider mints fresh URLs on the good path.
  adapters::ProviderOutput fresh;
  fresh.content_type = "audio/flac";
  fresh.url = host_.Url("a", "small");
  provider_.SetOutputs({fresh});
  Result result = Fetch(asset, 0);
  ASSERT_TRUE(result.status.ok()) << result.status;
  EXPECT_TRUE(result.offsets_contiguous);
  EXPECT_EQ(result.data.size(), file.size());
  EXPECT_TRUE(result.data == file);
  EXPECT_EQ(provider_.refresh_polls(), 1);
  EXPECT_EQ(host_.requests("expiring"), 2);  // the cut transfer, then the 403
  EXPECT_EQ(host_.requests("a"), 1);         // resumed with a Range at the current offset
}

TEST_F(DownloadTest, UrlPastItsExpiryIsRefreshedBeforeUse) {
  OpenEngine();
  const std::string asset =
      Finished(host_.Url("expiring", "small"), absl::Now() - absl::Minutes(1));
  adapters::ProviderOutput fresh;
  fresh.url = host_.Url("a", "small");
  provider_.SetOutputs({fresh});
  Result result = Fetch(asset, 0);
  ASSERT_TRUE(result.status.ok()) << result.status;
  EXPECT_TRUE(result.data == host_.file("small"));
  EXPECT_EQ(host_.requests("expiring"), 0);
  EXPECT_EQ(provider_.refresh_polls(), 1);
}

TEST_F(DownloadTest, ClientCancelStopsTheUpstreamTransfer) {
  options_.download_buffer_bytes = 64 * 1024;
  OpenEngine();
  const std::string asset = Finished(host_.Url("a", "big"));
  auto stream = engine_->Download(kTenant, asset, 0);
  ASSERT_TRUE(stream.ok());
  {
    StreamReader<v1::DownloadChunk> reader(*std::move(stream), /*auto_drain=*/false);
    // Read the info and a little data, then go away like a cancelled call.
    ASSERT_TRUE(reader.WaitForWakeThenDrain(2));
    EXPECT_EQ(engine_->Stats().open_downloads, 1);
  }
  EXPECT_TRUE(host_.WaitForAbortedTransfer(absl::Seconds(10)));
  EXPECT_LT(host_.bytes_sent(), static_cast<int64_t>(host_.file("big").size()));
  EXPECT_EQ(engine_->Stats().open_downloads, 0);
}

TEST_F(DownloadTest, MemoryStaysBoundedForALargeFile) {
  options_.download_chunk_bytes = 32 * 1024;
  options_.download_buffer_bytes = 64 * 1024;
  OpenEngine();
  const std::string& file = host_.file("big");
  const std::string asset = Finished(host_.Url("a", "big"));
  auto stream = engine_->Download(kTenant, asset, 0);
  ASSERT_TRUE(stream.ok());
  auto* download = dynamic_cast<DownloadStream*>(stream->get());
  ASSERT_NE(download, nullptr);
  // A reactor-like consumer: Next() until nothing is ready, then wait for the wake-up.
  absl::Mutex mu;
  bool woken = false;
  (*stream)->SetWakeup([&] {
    absl::MutexLock lock(&mu);
    woken = true;
  });
  std::string received;
  received.reserve(file.size());
  absl::Status status;
  bool finished = false;
  while (!finished) {
    auto chunk = (*stream)->Next(&finished, &status);
    if (chunk.has_value()) {
      if (!chunk->has_info()) received += chunk->data();
      continue;
    }
    if (finished) break;
    absl::MutexLock lock(&mu);
    ASSERT_TRUE(mu.AwaitWithTimeout(absl::Condition(&woken), absl::Seconds(30)));
    woken = false;
  }
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_EQ(received.size(), file.size());
  EXPECT_TRUE(received == file);
  // The buffer never held more than its bound plus one socket read held back by libcurl.
  EXPECT_LE(download->pipe().max_buffered_bytes(), 64 * 1024 + CURL_MAX_WRITE_SIZE);
}

TEST_F(DownloadTest, OnlySucceededOperationsAndKnownAssets) {
  OpenEngine();
  const std::string asset = Finished(host_.Url("a", "small"));
  const std::string name = asset.substr(0, asset.find("/assets/"));
  EXPECT_EQ(engine_->Download(kTenant, name + "/assets/1", 0).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(engine_->Download(kTenant, name, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  provider_.SetPollsToFinish(0);
  auto running = engine_->Generate(kTenant, TextRequest("not yet"));
  ASSERT_TRUE(running.ok());
  EXPECT_EQ(engine_->Download(kTenant, running->name() + "/assets/0", 0).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

// Asset custody on its own (AssetCustody over a SQLite ledger, a directory store and real
// HTTP), time on a fake clock: retention, the sweeper, background retries, stats.
class CountingObserver final : public EngineObserver {
 public:
  void OnCustodyFetch(absl::string_view outcome) override {
    absl::MutexLock lock(&mu_);
    ++counts_[std::string(outcome)];
  }
  bool Await(const std::string& outcome, int at_least) {
    absl::MutexLock lock(&mu_);
    auto reached = [&]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return counts_[outcome] >= at_least; };
    return mu_.AwaitWithTimeout(absl::Condition(&reached), absl::Seconds(30));
  }
  int count(const std::string& outcome) {
    absl::MutexLock lock(&mu_);
    return counts_[outcome];
  }

 private:
  absl::Mutex mu_;
  std::map<std::string, int> counts_ ABSL_GUARDED_BY(mu_);
};

class CustodyUnitTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { curl_global_init(CURL_GLOBAL_DEFAULT); }

  void SetUp() override {
    http_ = http::CurlHttpClient::Create();
    ASSERT_NE(http_, nullptr);
    SqliteOptions sqlite;
    sqlite.synchronous_full = false;
    sqlite.clock = &clock_;
    auto store = OpenSqliteOperationStore(testing::TempLedgerPath(), sqlite);
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::shared_ptr<OperationStore>(std::move(*store));
    dir_ = NewTestScratchDir("custody");
    auto assets = OpenDirectoryAssetStore(dir_);
    ASSERT_TRUE(assets.ok()) << assets.status();
    assets_ = std::shared_ptr<AssetStore>(std::move(*assets));
    executor_ = std::make_shared<Executor>(2, clock_);
    options_.observer = &observer_;
    options_.custody_retry_initial = absl::Seconds(10);
    options_.custody_sweep_interval = absl::Hours(100);  // passes run when the test says
    options_.asset_retention = [](const std::string& tenant) {
      return tenant == "short" ? absl::Hours(1) : absl::Hours(2);
    };
    custody_ =
        std::make_shared<AssetCustody>(options_, clock_, store_, executor_, http_.get(), assets_);
  }
  void TearDown() override {
    custody_->Shutdown();
    executor_->Stop();
  }

  // A SUCCEEDED operation of `tenant` with one output.
  std::string Succeeded(const std::string& tenant, const std::string& url) {
    OperationRecord record;
    record.tenant = tenant;
    record.request_id = absl::StrCat("request-", ++requests_);
    record.request_hash = "h";
    std::string id = NewOperationId(clock_.Now());
    record.operation.set_name(OperationName(id));
    record.operation.set_state(v1::OPERATION_STATE_RUNNING);
    record.operation.set_sequence(1);
    EXPECT_TRUE(store_->Create(record, {}).ok());
    OperationUpdate update;
    update.operation = record.operation;
    update.operation.set_state(v1::OPERATION_STATE_SUCCEEDED);
    update.operation.set_done(true);
    update.operation.add_outputs()->set_name(id + "/assets/0");
    update.operation.set_sequence(2);
    update.expected_sequence = 1;
    update.upstream_outputs = std::vector<UpstreamOutput>{{url, absl::InfiniteFuture()}};
    EXPECT_TRUE(store_->Update(update).ok());
    return id;
  }

  std::vector<std::optional<StoredObject>> FetchNow(const std::string& id,
                                                    const std::string& tenant,
                                                    const std::string& url) {
    absl::Notification done;
    std::vector<std::optional<StoredObject>> results;
    custody_->FetchBeforeSuccess(id, tenant, v1::PROVIDER_SOUNDPIECE,
                                 {UpstreamOutput{url, absl::InfiniteFuture()}},
                                 [&](std::vector<std::optional<StoredObject>> r) {
                                   results = std::move(r);
                                   done.Notify();
                                 });
    EXPECT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(30)));
    return results;
  }

  bool ObjectExists(const std::string& sha256) const {
    return std::filesystem::exists(std::filesystem::path(dir_) / sha256.substr(0, 2) / sha256);
  }

  int requests_ = 0;
  FakeClock clock_;
  FileHost host_;
  CountingObserver observer_;
  std::unique_ptr<http::CurlHttpClient> http_;
  std::shared_ptr<OperationStore> store_;
  std::string dir_;
  std::shared_ptr<AssetStore> assets_;
  std::shared_ptr<Executor> executor_;
  EngineOptions options_;
  std::shared_ptr<AssetCustody> custody_;
};

TEST_F(CustodyUnitTest, FetchStoresTheBytesUnderTheirDigest) {
  const std::string url = host_.Url("a", "small");
  const std::string id = Succeeded("short", url);
  auto results = FetchNow(id, "short", url);
  ASSERT_EQ(results.size(), 1u);
  ASSERT_TRUE(results[0].has_value());
  const std::string& file = host_.file("small");
  EXPECT_EQ(results[0]->sha256, Sha256Hex(file));
  EXPECT_EQ(results[0]->size_bytes, static_cast<int64_t>(file.size()));
  EXPECT_EQ(observer_.count("stored"), 1);
  auto held = custody_->OpenHeld(id, 0);
  ASSERT_TRUE(held.ok()) << held.status();
  ASSERT_NE(held->reader, nullptr);
  std::string read;
  ASSERT_TRUE(held->reader->ReadAt(0, 1 << 30, &read).ok());
  EXPECT_TRUE(read == file);
  auto record = store_->Get(id);
  ASSERT_TRUE(record.ok());
  EXPECT_TRUE(record->operation.outputs(0).in_custody());
  EXPECT_EQ(record->operation.outputs(0).sha256(), Sha256Hex(file));
}

// Two tenants hold the same bytes with different retention: the object stays until the last
// reference expires; each expired asset reads NOT_FOUND ASSET_EXPIRED.
TEST_F(CustodyUnitTest, RetentionExpiresPerTenantAndKeepsSharedBytes) {
  const std::string url = host_.Url("a", "small");
  const std::string short_id = Succeeded("short", url);
  const std::string long_id = Succeeded("long", url);
  ASSERT_TRUE(FetchNow(short_id, "short", url)[0].has_value());
  ASSERT_TRUE(FetchNow(long_id, "long", url)[0].has_value());
  const std::string sha = Sha256Hex(host_.file("small"));
  custody_->RunPass();
  EXPECT_EQ(custody_->Stats().held_bytes, static_cast<int64_t>(host_.file("small").size()));

  clock_.Advance(absl::Minutes(90));
  custody_->RunPass();
  auto expired = custody_->OpenHeld(short_id, 0);
  ASSERT_FALSE(expired.ok());
  EXPECT_EQ(expired.status().code(), absl::StatusCode::kNotFound);
  google::rpc::ErrorInfo info;
  ASSERT_TRUE(GetErrorInfo(expired.status(), &info));
  EXPECT_EQ(info.reason(), "ASSET_EXPIRED");
  EXPECT_TRUE(ObjectExists(sha)) << "still referenced by the other tenant's asset";
  auto held = custody_->OpenHeld(long_id, 0);
  ASSERT_TRUE(held.ok());
  EXPECT_NE(held->reader, nullptr);

  clock_.Advance(absl::Minutes(31));
  custody_->RunPass();
  EXPECT_FALSE(ObjectExists(sha));
  expired = custody_->OpenHeld(long_id, 0);
  EXPECT_EQ(expired.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(custody_->Stats().held_bytes, 0);
}

// A fetch the provider refuses stays pending (counted, aged) and is retried after its backoff
// with a fresh URL.
TEST_F(CustodyUnitTest, FailedFetchIsRetriedInTheBackgroundWithAFreshUrl) {
  const std::string missing = host_.Url("a", "missing");
  const std::string id = Succeeded("short", missing);
  auto results = FetchNow(id, "short", missing);
  ASSERT_EQ(results.size(), 1u);
  EXPECT_FALSE(results[0].has_value());
  EXPECT_EQ(observer_.count("upstream_error"), 1);
  auto held = custody_->OpenHeld(id, 0);
  ASSERT_TRUE(held.ok());
  EXPECT_EQ(held->reader, nullptr);  // Download falls back to the provider

  std::atomic<int> refreshes{0};
  custody_->SetUrlRefresher([&](const std::string&, int,
                                absl::AnyInvocable<void(absl::StatusOr<UpstreamOutput>) &&> done) {
    ++refreshes;
    std::move(done)(UpstreamOutput{host_.Url("a", "small"), absl::InfiniteFuture()});
  });
  clock_.Advance(absl::Seconds(5));
  custody_->RunPass();  // not due yet (backoff 10 s)
  EXPECT_EQ(refreshes.load(), 0);
  CustodyStats stats = custody_->Stats();
  EXPECT_EQ(stats.pending, 1);
  EXPECT_EQ(stats.oldest_pending_age, absl::Seconds(5));

  clock_.Advance(absl::Seconds(6));
  custody_->RunPass();
  ASSERT_TRUE(observer_.Await("stored", 1));
  EXPECT_EQ(refreshes.load(), 1);
  held = custody_->OpenHeld(id, 0);
  ASSERT_TRUE(held.ok());
  EXPECT_NE(held->reader, nullptr);
  custody_->RunPass();
  stats = custody_->Stats();
  EXPECT_EQ(stats.pending, 0);
  EXPECT_EQ(stats.oldest_pending_age, absl::ZeroDuration());
}

}  // namespace
}  // namespace musicgw::operations
