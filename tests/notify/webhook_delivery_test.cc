// Webhook delivery end to end on loopback: the SQLite ledger's outbox, the real libcurl sender
// and deliverer, and a receiver (cpp-httplib) that verifies every delivery with its own
// Standard Webhooks check (OpenSSL here, not the gateway's signer). Backoffs are short from
// the options; every wait is on what the receiver or the ledger observed.
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <algorithm>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "common/clock.h"
#include "common/thread_priority.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "services/notify/outbox_planner.h"
#include "services/notify/webhook_deliverer.h"
#include "services/notify/webhook_sender.h"
#include "services/operations/ids.h"
#include "services/operations/sqlite_store.h"
#include "tests/operations/test_util.h"

namespace musicgw::notify {
namespace {

namespace v1 = musicgw::v1;
namespace ops = musicgw::operations;
using ops::testing::WaitUntil;

std::string B64(const std::string& raw) {
  std::string out(4 * ((raw.size() + 2) / 3) + 1, '\0');
  out.resize(static_cast<size_t>(EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                                 reinterpret_cast<const unsigned char*>(raw.data()),
                                                 static_cast<int>(raw.size()))));
  return out;
}

std::string Secret(char fill) { return "whsec_" + B64(std::string(32, fill)); }

// What the receiver saw of one request.
struct Seen {
  std::string id;
  std::string type;
  bool verified = false;
};

// A webhook receiver verifying with `key` (raw bytes). Answers `status` (a 301 carries a
// Location the sender must not follow).
class Receiver {
 public:
  explicit Receiver(std::string key, int port = 0) : key_(std::move(key)) {
    server_.Post("/hook", [this](const httplib::Request& req, httplib::Response& res) {
      Seen seen;
      seen.id = req.get_header_value("webhook-id");
      seen.verified =
          Verify(req.get_header_value("webhook-id"), req.get_header_value("webhook-timestamp"),
                 req.get_header_value("webhook-signature"), req.body);
      const size_t at = req.body.find("\"type\":\"");
      if (at != std::string::npos) {
        seen.type = req.body.substr(at + 8, req.body.find('"', at + 8) - at - 8);
      }
      absl::MutexLock lock(&mu_);
      seen_.push_back(seen);
      res.status = status_;
      if (status_ == 301) res.set_header("Location", "/elsewhere");
    });
    server_.Post("/elsewhere", [this](const httplib::Request&, httplib::Response& res) {
      absl::MutexLock lock(&mu_);
      ++followed_;
      res.status = 204;
    });
    port_ = port == 0 ? server_.bind_to_any_port("127.0.0.1")
                      : (server_.bind_to_port("127.0.0.1", port) ? port : -1);
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    // Stopping a server whose loop has not started yet would leave the loop running.
    ops::testing::WaitUntil([this] { return server_.is_running(); });
  }
  ~Receiver() {
    server_.stop();
    thread_.join();
  }

  bool Verify(const std::string& id, const std::string& ts, const std::string& signature,
              const std::string& body) const {
    const std::string content = id + "." + ts + "." + body;
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    HMAC(EVP_sha256(), key_.data(), static_cast<int>(key_.size()),
         reinterpret_cast<const unsigned char*>(content.data()), content.size(), mac, &len);
    const std::string expected = "v1," + B64(std::string(reinterpret_cast<char*>(mac), len));
    for (absl::string_view entry : absl::StrSplit(signature, ' ')) {
      if (entry == expected) return true;
    }
    return false;
  }

  void set_status(int status) {
    absl::MutexLock lock(&mu_);
    status_ = status;
  }
  std::vector<Seen> seen() const {
    absl::MutexLock lock(&mu_);
    return seen_;
  }
  int followed() const {
    absl::MutexLock lock(&mu_);
    return followed_;
  }
  int port() const { return port_; }
  std::string url() const { return absl::StrCat("http://127.0.0.1:", port_, "/hook"); }

 private:
  const std::string key_;
  httplib::Server server_;
  int port_ = 0;
  std::thread thread_;
  mutable absl::Mutex mu_;
  std::vector<Seen> seen_;
  int status_ = 204;
  int followed_ = 0;
};

class WebhookDeliveryTest : public ::testing::Test {
 protected:
  void SetUp() override { path_ = ops::testing::TempLedgerPath(); }

  std::unique_ptr<ops::OperationStore> Open() {
    auto store = ops::OpenSqliteOperationStore(path_);
    EXPECT_TRUE(store.ok()) << store.status();
    return store.ok() ? *std::move(store) : nullptr;
  }

  // Creates a QUEUED operation and moves it to RUNNING with the planner's outbox messages, as
  // the engine's tracker does; returns the operation id.
  std::string RunOperation(ops::OperationStore& store, const OutboxPlanner& planner) {
    ops::OperationRecord record;
    record.tenant = "acme";
    record.request_id = ops::NewOperationId(absl::Now());
    record.request_hash = "h";
    record.operation.set_name(ops::OperationName(ops::NewOperationId(absl::Now())));
    record.operation.set_state(v1::OPERATION_STATE_QUEUED);
    record.operation.set_sequence(1);
    auto created = store.Create(record, {});
    EXPECT_TRUE(created.ok()) << created.status();
    ops::OperationUpdate update;
    update.operation = created->record.operation;
    update.operation.set_state(v1::OPERATION_STATE_RUNNING);
    update.operation.set_sequence(2);
    update.expected_sequence = 1;
    update.outbox = planner.Plan("acme", created->record.operation, update.operation, nullptr);
    EXPECT_EQ(update.outbox.size(), 1u);
    EXPECT_TRUE(store.Update(update).ok());
    return created->record.id();
  }

  OutboxPlanner Planner(const std::string& url, std::vector<std::string> secrets) {
    TenantWebhooks webhooks;
    webhooks.secrets = std::move(secrets);
    webhooks.endpoints.push_back({"main", url, {}});
    absl::flat_hash_map<std::string, TenantWebhooks> tenants;
    tenants["acme"] = webhooks;
    return OutboxPlanner(std::move(tenants), Clock::Real());
  }

  static DeliveryOptions Fast() {
    DeliveryOptions options;
    options.first_retry = absl::Milliseconds(100);
    options.max_retry = absl::Milliseconds(400);
    options.poll_interval = absl::Milliseconds(20);
    options.timeout = absl::Seconds(5);
    return options;
  }

  std::vector<ops::OutboxDelivery> Deliveries(ops::OperationStore& store, const std::string& op) {
    auto listed = store.ListDeliveries({"acme", op, "", 100});
    EXPECT_TRUE(listed.ok()) << listed.status();
    return listed.ok() ? *listed : std::vector<ops::OutboxDelivery>{};
  }

  std::string path_;
  const std::string key_ = std::string(32, 'k');
  const std::string secret_ = Secret('k');
};

TEST_F(WebhookDeliveryTest, SignedDeliveryVerifiesAndIsLogged) {
  Receiver receiver(key_);
  auto store = Open();
  OutboxPlanner planner = Planner(receiver.url(), {secret_});
  const std::string op = RunOperation(*store, planner);
  auto sender = NewCurlWebhookSender(/*allow_private_targets=*/true);
  WebhookDeliverer deliverer(
      *store, *sender, [&](const std::string& t) { return planner.Secrets(t); }, Clock::Real(),
      Fast());
  deliverer.Start();
  ASSERT_TRUE(WaitUntil([&] { return !receiver.seen().empty(); }));
  const Seen seen = receiver.seen()[0];
  EXPECT_TRUE(seen.verified);
  EXPECT_EQ(seen.type, "operation.running");
  EXPECT_EQ(seen.id, absl::StrCat("msg_", op, "_2"));
  ASSERT_TRUE(WaitUntil([&] {
    auto d = Deliveries(*store, op);
    return d.size() == 1 && d[0].status == ops::DeliveryStatus::kDelivered;
  }));
  const auto delivery = Deliveries(*store, op)[0];
  EXPECT_EQ(delivery.last_status_code, 204);
  EXPECT_GT(delivery.last_latency, absl::ZeroDuration());
}

// Sends through `inner`, noting the nice value of the thread each delivery runs on.
class NiceRecordingSender : public WebhookSender {
 public:
  explicit NiceRecordingSender(WebhookSender& inner) : inner_(inner) {}
  SendResult Send(const std::string& url,
                  const std::vector<std::pair<std::string, std::string>>& headers,
                  const std::string& body, absl::Duration timeout) override {
    {
      absl::MutexLock lock(&mu_);
      nices_.push_back(CurrentThreadNice());
    }
    return inner_.Send(url, headers, body, timeout);
  }
  std::vector<int> nices() {
    absl::MutexLock lock(&mu_);
    return nices_;
  }

 private:
  WebhookSender& inner_;
  absl::Mutex mu_;
  std::vector<int> nices_ ABSL_GUARDED_BY(mu_);
};

TEST_F(WebhookDeliveryTest, DeliveriesRunAtTheConfiguredNice) {
  Receiver receiver(key_);
  auto store = Open();
  OutboxPlanner planner = Planner(receiver.url(), {secret_});
  RunOperation(*store, planner);
  auto curl = NewCurlWebhookSender(/*allow_private_targets=*/true);
  NiceRecordingSender sender(*curl);
  DeliveryOptions options = Fast();
  const int before = CurrentThreadNice();
  options.thread_nice = std::min(19, before + 10);
  WebhookDeliverer deliverer(
      *store, sender, [&](const std::string& t) { return planner.Secrets(t); }, Clock::Real(),
      options);
  deliverer.Start();
  ASSERT_TRUE(WaitUntil([&] { return !receiver.seen().empty(); }));
  ASSERT_FALSE(sender.nices().empty());
  for (int nice : sender.nices()) EXPECT_EQ(nice, options.thread_nice);
  EXPECT_EQ(CurrentThreadNice(), before);
}

TEST_F(WebhookDeliveryTest, WrittenBeforeACrashIsDeliveredAfterRestartWithTheSameId) {
  Receiver receiver(key_);
  std::string op;
  OutboxPlanner planner = Planner(receiver.url(), {secret_});
  {
    auto store = Open();
    op = RunOperation(*store, planner);
    // The process ends here: the change is committed, nothing was sent.
  }
  auto store = Open();
  auto sender = NewCurlWebhookSender(true);
  WebhookDeliverer deliverer(
      *store, *sender, [&](const std::string& t) { return planner.Secrets(t); }, Clock::Real(),
      Fast());
  deliverer.Start();
  ASSERT_TRUE(WaitUntil([&] { return !receiver.seen().empty(); }));
  EXPECT_EQ(receiver.seen()[0].id, absl::StrCat("msg_", op, "_2"));
  EXPECT_TRUE(receiver.seen()[0].verified);
}

TEST_F(WebhookDeliveryTest, ReceiverDownThenUpIsRetriedThenDelivered) {
  int port = 0;
  { port = Receiver(key_).port(); }  // a free port, closed again: the receiver is down
  auto store = Open();
  OutboxPlanner planner = Planner(absl::StrCat("http://127.0.0.1:", port, "/hook"), {secret_});
  const std::string op = RunOperation(*store, planner);
  auto sender = NewCurlWebhookSender(true);
  WebhookDeliverer deliverer(
      *store, *sender, [&](const std::string& t) { return planner.Secrets(t); }, Clock::Real(),
      Fast());
  deliverer.Start();
  ASSERT_TRUE(WaitUntil([&] {
    auto d = Deliveries(*store, op);
    return d.size() == 1 && d[0].attempts >= 2;
  }));
  EXPECT_EQ(Deliveries(*store, op)[0].status, ops::DeliveryStatus::kPending);
  EXPECT_EQ(Deliveries(*store, op)[0].last_error, "connect");
  Receiver receiver(key_, port);
  ASSERT_EQ(receiver.port(), port);
  ASSERT_TRUE(WaitUntil([&] { return !receiver.seen().empty(); }));
  EXPECT_TRUE(receiver.seen()[0].verified);
  ASSERT_TRUE(WaitUntil(
      [&] { return Deliveries(*store, op)[0].status == ops::DeliveryStatus::kDelivered; }));
  const std::string delivery_id = Deliveries(*store, op)[0].message.delivery_id;
  auto attempts = store->ListDeliveryAttempts(delivery_id);
  ASSERT_TRUE(attempts.ok());
  ASSERT_GE(attempts->size(), 3u);
  EXPECT_EQ(attempts->front().status_code, 0);
  EXPECT_EQ(attempts->back().status_code, 204);
}

TEST_F(WebhookDeliveryTest, RedirectIsNotFollowedAndCountsAsAFailure) {
  Receiver receiver(key_);
  receiver.set_status(301);
  auto store = Open();
  OutboxPlanner planner = Planner(receiver.url(), {secret_});
  const std::string op = RunOperation(*store, planner);
  auto sender = NewCurlWebhookSender(true);
  std::vector<std::string> outcomes;
  absl::Mutex mu;
  WebhookDeliverer deliverer(
      *store, *sender, [&](const std::string& t) { return planner.Secrets(t); }, Clock::Real(),
      Fast(),
      [&](absl::string_view outcome, bool) {
        absl::MutexLock lock(&mu);
        outcomes.emplace_back(outcome);
      });
  EXPECT_EQ(deliverer.RunOnce(), 1);
  EXPECT_EQ(receiver.seen().size(), 1u);
  EXPECT_EQ(receiver.followed(), 0);
  const auto delivery = Deliveries(*store, op)[0];
  EXPECT_EQ(delivery.status, ops::DeliveryStatus::kPending);  // retried later
  EXPECT_EQ(delivery.last_status_code, 301);
  EXPECT_EQ(delivery.last_error, "HTTP 301");
  absl::MutexLock lock(&mu);
  EXPECT_EQ(outcomes, std::vector<std::string>{"redirect"});
}

TEST_F(WebhookDeliveryTest, PrivateTargetsAreRefusedAtRegistrationAndDelivery) {
  Receiver receiver(key_);
  TenantWebhooks webhooks;
  webhooks.secrets = {secret_};
  webhooks.endpoints.push_back({"main", receiver.url(), {"operation.succeeded"}});
  EXPECT_EQ(ValidateTenantWebhooks(webhooks, /*allow_private=*/false).code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(ValidateTenantWebhooks(webhooks, /*allow_private=*/true).ok());

  auto store = Open();
  OutboxPlanner planner = Planner(receiver.url(), {secret_});
  const std::string op = RunOperation(*store, planner);
  auto sender = NewCurlWebhookSender(/*allow_private_targets=*/false);
  WebhookDeliverer deliverer(
      *store, *sender, [&](const std::string& t) { return planner.Secrets(t); }, Clock::Real(),
      Fast());
  EXPECT_EQ(deliverer.RunOnce(), 1);
  EXPECT_TRUE(receiver.seen().empty());
  EXPECT_EQ(Deliveries(*store, op)[0].last_error, "refused_target");
}

TEST_F(WebhookDeliveryTest, BothSecretsVerifyDuringRotation) {
  const std::string old_key(32, 'o');
  const std::string new_key(32, 'n');
  Receiver old_receiver(old_key);
  Receiver new_receiver(new_key);
  auto store = Open();
  TenantWebhooks webhooks;
  webhooks.secrets = {Secret('n'), Secret('o')};
  webhooks.endpoints.push_back({"old", old_receiver.url(), {}});
  webhooks.endpoints.push_back({"new", new_receiver.url(), {}});
  absl::flat_hash_map<std::string, TenantWebhooks> tenants;
  tenants["acme"] = webhooks;
  OutboxPlanner planner(std::move(tenants), Clock::Real());
  ops::OperationRecord record;
  record.tenant = "acme";
  record.request_id = "r";
  record.operation.set_name(ops::OperationName(ops::NewOperationId(absl::Now())));
  record.operation.set_state(v1::OPERATION_STATE_RUNNING);
  record.operation.set_sequence(1);
  auto created = store->Create(record, {});
  ASSERT_TRUE(created.ok());
  ops::OperationUpdate update;
  update.operation = record.operation;
  update.operation.set_state(v1::OPERATION_STATE_SUCCEEDED);
  update.operation.set_done(true);
  update.operation.set_sequence(2);
  update.expected_sequence = 1;
  update.outbox = planner.Plan("acme", record.operation, update.operation, nullptr);
  ASSERT_EQ(update.outbox.size(), 2u);
  ASSERT_TRUE(store->Update(update).ok());
  auto sender = NewCurlWebhookSender(true);
  WebhookDeliverer deliverer(
      *store, *sender, [&](const std::string& t) { return planner.Secrets(t); }, Clock::Real(),
      Fast());
  EXPECT_EQ(deliverer.RunOnce(), 2);
  ASSERT_EQ(old_receiver.seen().size(), 1u);
  ASSERT_EQ(new_receiver.seen().size(), 1u);
  EXPECT_TRUE(old_receiver.seen()[0].verified);
  EXPECT_TRUE(new_receiver.seen()[0].verified);
  EXPECT_EQ(old_receiver.seen()[0].type, "operation.succeeded");
}

TEST_F(WebhookDeliveryTest, RedeliverySendsTheSameIdAndEveryAttemptIsListed) {
  Receiver receiver(key_);
  auto store = Open();
  OutboxPlanner planner = Planner(receiver.url(), {secret_});
  const std::string op = RunOperation(*store, planner);
  auto sender = NewCurlWebhookSender(true);
  WebhookDeliverer deliverer(
      *store, *sender, [&](const std::string& t) { return planner.Secrets(t); }, Clock::Real(),
      Fast());
  EXPECT_EQ(deliverer.RunOnce(), 1);
  const std::string delivery_id = Deliveries(*store, op)[0].message.delivery_id;
  EXPECT_EQ(store->Redeliver("other-tenant", delivery_id, absl::Now()).code(),
            absl::StatusCode::kNotFound);
  ASSERT_TRUE(store->Redeliver("acme", delivery_id, absl::Now()).ok());
  EXPECT_EQ(deliverer.RunOnce(), 1);
  const auto seen = receiver.seen();
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0].id, seen[1].id);
  EXPECT_TRUE(seen[1].verified);
  auto attempts = store->ListDeliveryAttempts(delivery_id);
  ASSERT_TRUE(attempts.ok());
  ASSERT_EQ(attempts->size(), 2u);
  EXPECT_EQ((*attempts)[0].attempt, 1);
  EXPECT_EQ((*attempts)[1].attempt, 2);
  EXPECT_EQ((*attempts)[1].status_code, 204);
}

TEST(RetryDelay, GrowsExponentiallyWithJitterAndACap) {
  DeliveryOptions options;
  options.first_retry = absl::Seconds(5);
  options.max_retry = absl::Hours(1);
  EXPECT_EQ(RetryDelay(1, options, 1.0), absl::Seconds(5));
  EXPECT_EQ(RetryDelay(2, options, 1.0), absl::Seconds(10));
  EXPECT_EQ(RetryDelay(3, options, 0.0), absl::Seconds(10));  // half, at the lowest jitter
  EXPECT_EQ(RetryDelay(40, options, 1.0), absl::Hours(1));
  // The default schedule keeps retrying for more than a day.
  EXPECT_GE(DeliveryOptions{}.retry_for, absl::Hours(24));
}

}  // namespace
}  // namespace musicgw::notify
