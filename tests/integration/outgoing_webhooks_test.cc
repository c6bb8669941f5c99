// Outgoing webhooks end to end: the musicgw binary (a child process, so it can be killed with
// SIGKILL) against the provider emulators, delivering to a receiver in the test that verifies
// every request with its own Standard Webhooks check. Retries are short from the config; every
// wait is on what the receiver got or what ListWebhookDeliveries shows.
#include <signal.h>
#include <sys/wait.h>

#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/errors.h"
#include "emulators/loudly/loudly_emulator.h"
#include "emulators/soundpiece/soundpiece_emulator.h"
#include "gtest/gtest.h"
#include "tests/integration/harness.h"
#include "tests/integration/webhook_receiver.h"
#include "tests/pg/pg_cluster.h"
#include "tests/scratch_dir.h"

namespace musicgw::testing {
namespace {

namespace v1 = musicgw::v1;

// Two secrets active at once: a rotation in its overlap.
const std::string kOldKey(32, 'o');
const std::string kNewKey = "0123456789abcdef0123456789abcdef";
constexpr char kSecretsEnv[] = "MUSICGW_TEST_WEBHOOK_SECRETS";
// A delivery claimed when the gateway was killed is due again once its claim lapses (14 s
// with a 1 s timeout).
constexpr absl::Duration kWait = absl::Seconds(40);

bool IsEvent(const ReceivedWebhook& r, const std::string& path, const std::string& type,
             const std::string& operation) {
  return r.path == path && r.type == type && absl::StrContains(r.body, operation);
}

class OutgoingWebhooksTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SetTestSecrets();
    setenv(kSecretsEnv, absl::StrCat(WebhookSecret(kOldKey), " ", WebhookSecret(kNewKey)).c_str(),
           1);
    dir_ = NewTestScratchDir("webhooks");
    emulators::soundpiece::Options sp;
    sp.processing_time = absl::Seconds(2);
    auto soundpiece = emulators::soundpiece::Emulator::Start(sp);
    ASSERT_TRUE(soundpiece.ok()) << soundpiece.status();
    soundpiece_ = std::move(*soundpiece);
    auto loudly = emulators::loudly::Emulator::Start({});
    ASSERT_TRUE(loudly.ok()) << loudly.status();
    loudly_ = std::move(*loudly);
  }

  // acme's endpoint "main" at `endpoint_url` (none when empty), both secrets, short retries.
  nlohmann::json Config(const std::string& endpoint_url, bool allow_private = true) const {
    nlohmann::json config =
        TestConfig({loudly_->base_url(), soundpiece_->base_url()}, dir_ + "/ledger.db");
    config["webhooks"] = {{"allow_private_targets", allow_private},
                          {"first_retry_seconds", 0.2},
                          {"max_retry_seconds", 0.5},
                          {"timeout_seconds", 1}};
    nlohmann::json webhooks = {{"secrets", {{"env", kSecretsEnv}}}};
    if (!endpoint_url.empty()) {
      webhooks["endpoints"] = nlohmann::json::array({{{"name", "main"}, {"url", endpoint_url}}});
    }
    config["tenants"][0]["webhooks"] = webhooks;
    if (!ledger_.is_null()) config["ledger"] = ledger_;
    return config;
  }

  void StartGateway(const nlohmann::json& config) {
    auto process = GatewayProcess::Start(config, dir_);
    ASSERT_TRUE(process.ok()) << process.status();
    gateway_ = std::move(*process);
    stub_ = Stub(gateway_->grpc_port());
  }

  void Kill() {
    auto status = gateway_->Signal(SIGKILL, absl::Seconds(5));
    ASSERT_TRUE(status.ok());
    ASSERT_TRUE(WIFSIGNALED(*status));
    gateway_.reset();
  }

  static v1::GenerateRequest Sample() {
    v1::GenerateRequest request;
    request.set_request_id(NewRequestId());
    request.set_provider(v1::PROVIDER_SOUNDPIECE);
    request.mutable_sample()->set_prompt("webhook test");
    request.mutable_sample()->set_duration_seconds(5);
    return request;
  }

  v1::ListWebhookDeliveriesResponse List(const std::string& operation,
                                         const std::string& key = kAcmeKey) {
    v1::ListWebhookDeliveriesRequest request;
    request.set_operation(operation);
    v1::ListWebhookDeliveriesResponse response;
    grpc::Status status = stub_->ListWebhookDeliveries(Context(key).get(), request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response;
  }

  // The operation's delivery of `type` to `endpoint`, once `done` holds for it.
  v1::WebhookDelivery AwaitDelivery(const std::string& operation, const std::string& type,
                                    const std::function<bool(const v1::WebhookDelivery&)>& done,
                                    const std::string& endpoint = "main") {
    v1::WebhookDelivery found;
    const bool ok = Eventually(
        [&] {
          const v1::ListWebhookDeliveriesResponse listed = List(operation);
          for (const auto& delivery : listed.deliveries()) {
            if (delivery.event_type() == type && delivery.endpoint() == endpoint &&
                done(delivery)) {
              found = delivery;
              return true;
            }
          }
          return false;
        },
        kWait);
    EXPECT_TRUE(ok) << operation << " " << type << " " << endpoint;
    return found;
  }

  std::string dir_;
  nlohmann::json ledger_;  // null: SQLite in dir_
  std::unique_ptr<emulators::soundpiece::Emulator> soundpiece_;
  std::unique_ptr<emulators::loudly::Emulator> loudly_;
  std::unique_ptr<GatewayProcess> gateway_;
  std::unique_ptr<v1::MusicGateway::Stub> stub_;
};

// Every event type reaches the configured endpoint, and the succeeded one also the request's
// own notify target (which asked for that event only); every request verifies with each of the
// two active secrets, and carries the {type, timestamp, data} envelope.
TEST_F(OutgoingWebhooksTest, EveryEventIsSignedWithBothSecretsAndListed) {
  WebhookReceiver receiver({kOldKey, kNewKey});
  ASSERT_TRUE(receiver.ok());
  StartGateway(Config(receiver.url("/hook")));

  v1::GenerateRequest succeeding = Sample();
  succeeding.mutable_notify()->set_url(receiver.url("/notify"));
  succeeding.mutable_notify()->add_events("operation.succeeded");
  const v1::Operation ok = GenerateOk(*stub_, succeeding);
  v1::GenerateRequest failing;
  failing.set_request_id(NewRequestId());
  failing.mutable_separate_stems()->mutable_source()->set_url("https://example.com/__fail__.mp3");
  const v1::Operation failed = GenerateOk(*stub_, failing);
  const v1::Operation cancelled = GenerateOk(*stub_, Sample());
  v1::CancelOperationRequest cancel;
  cancel.set_name(cancelled.name());
  v1::Operation cancel_answer;
  ASSERT_TRUE(stub_->CancelOperation(Context(kAcmeKey).get(), cancel, &cancel_answer).ok());

  std::vector<ReceivedWebhook> seen(5);
  const std::vector<std::tuple<std::string, std::string, std::string>> wanted = {
      {"/hook", "operation.running", ok.name()},
      {"/hook", "operation.succeeded", ok.name()},
      {"/hook", "operation.failed", failed.name()},
      {"/hook", "operation.cancelled", cancelled.name()},
      {"/notify", "operation.succeeded", ok.name()}};
  for (size_t i = 0; i < wanted.size(); ++i) {
    const auto& want = wanted[i];
    ASSERT_TRUE(receiver.Await(
        [&want](const ReceivedWebhook& r) {
          return IsEvent(r, std::get<0>(want), std::get<1>(want), std::get<2>(want));
        },
        kWait, &seen[i]))
        << std::get<0>(want) << " " << std::get<1>(want) << " " << std::get<2>(want);
  }
  const std::map<std::string, std::string> states = {
      {"operation.running", "OPERATION_STATE_RUNNING"},
      {"operation.succeeded", "OPERATION_STATE_SUCCEEDED"},
      {"operation.failed", "OPERATION_STATE_FAILED"},
      {"operation.cancelled", "OPERATION_STATE_CANCELLED"}};
  for (const ReceivedWebhook& r : seen) {
    EXPECT_EQ(r.verified, (std::vector<bool>{true, true})) << r.type;
    EXPECT_FALSE(r.id.empty());
    const nlohmann::json body = nlohmann::json::parse(r.body);
    EXPECT_TRUE(body["timestamp"].is_string());
    EXPECT_EQ(body["data"]["state"], states.at(r.type)) << r.body;
  }
  // The request's target asked for operation.succeeded only.
  for (const ReceivedWebhook& r : receiver.received()) {
    if (r.path == "/notify") EXPECT_EQ(r.type, "operation.succeeded");
  }

  // The log: delivered, 200, the same webhook-id the receiver saw, every attempt listed.
  const v1::WebhookDelivery main = AwaitDelivery(ok.name(), "operation.succeeded", [](auto& d) {
    return d.status() == v1::WEBHOOK_DELIVERY_STATUS_DELIVERED;
  });
  EXPECT_EQ(main.webhook_id(), seen[1].id);
  EXPECT_EQ(main.last_status_code(), 200);
  EXPECT_EQ(main.attempt_count(), main.attempts_size());
  EXPECT_EQ(main.operation(), ok.name());
  const v1::WebhookDelivery own = AwaitDelivery(
      ok.name(), "operation.succeeded",
      [](auto& d) { return d.status() == v1::WEBHOOK_DELIVERY_STATUS_DELIVERED; }, "request");
  EXPECT_EQ(own.webhook_id(), seen[4].id);
  EXPECT_EQ(own.url(), receiver.url("/notify"));

  // Another tenant sees none of it.
  EXPECT_EQ(List(ok.name(), kGlobexKey).deliveries_size(), 0);
  v1::RedeliverWebhookRequest redeliver;
  redeliver.set_delivery_id(main.delivery_id());
  v1::WebhookDelivery answer;
  EXPECT_EQ(stub_->RedeliverWebhook(Context(kGlobexKey).get(), redeliver, &answer).error_code(),
            grpc::StatusCode::NOT_FOUND);
}

// SIGKILL while the receiver refuses the succeeded event: after the restart it is delivered
// from the ledger's outbox, with the webhook-id it had before the crash.
TEST_F(OutgoingWebhooksTest, KilledBeforeDeliveryIsDeliveredAfterRestartWithTheSameId) {
  WebhookReceiver receiver({kOldKey, kNewKey});
  ASSERT_TRUE(receiver.ok());
  receiver.set_status(503);
  const nlohmann::json config = Config(receiver.url("/hook"));
  StartGateway(config);
  const v1::Operation op = GenerateOk(*stub_, Sample());
  ReceivedWebhook refused;
  ASSERT_TRUE(receiver.Await(
      [&](const ReceivedWebhook& r) {
        return IsEvent(r, "/hook", "operation.succeeded", op.name()) && r.answered == 503;
      },
      kWait, &refused));
  Kill();
  receiver.set_status(200);
  StartGateway(config);
  ReceivedWebhook delivered;
  ASSERT_TRUE(receiver.Await(
      [&](const ReceivedWebhook& r) {
        return IsEvent(r, "/hook", "operation.succeeded", op.name()) && r.answered == 200;
      },
      kWait, &delivered));
  EXPECT_EQ(delivered.id, refused.id);
  EXPECT_EQ(delivered.verified, (std::vector<bool>{true, true}));
  const v1::WebhookDelivery logged = AwaitDelivery(op.name(), "operation.succeeded", [](auto& d) {
    return d.status() == v1::WEBHOOK_DELIVERY_STATUS_DELIVERED;
  });
  // The refused attempt may not be in the log: the kill can land between its answer and its
  // record. The delivery after the restart is.
  ASSERT_GE(logged.attempts_size(), 1);
  EXPECT_EQ(logged.attempts(logged.attempts_size() - 1).status_code(), 200);
  EXPECT_EQ(logged.webhook_id(), refused.id);
}

// Nothing listens at the endpoint: attempts fail (connection refused) and are retried with
// backoff; once a receiver is up on that port the event is delivered.
TEST_F(OutgoingWebhooksTest, ReceiverDownIsRetriedThenDelivered) {
  const int port = FreePort();
  StartGateway(Config(absl::StrCat("http://127.0.0.1:", port, "/hook")));
  const v1::Operation op = GenerateOk(*stub_, Sample());
  AwaitDelivery(op.name(), "operation.succeeded", [](auto& d) {
    return d.attempt_count() >= 3 && d.status() == v1::WEBHOOK_DELIVERY_STATUS_PENDING;
  });
  WebhookReceiver receiver({kOldKey, kNewKey}, port);
  ASSERT_TRUE(receiver.ok());
  ASSERT_TRUE(receiver.Await(
      [&](const ReceivedWebhook& r) {
        return IsEvent(r, "/hook", "operation.succeeded", op.name());
      },
      kWait));
  const v1::WebhookDelivery logged = AwaitDelivery(op.name(), "operation.succeeded", [](auto& d) {
    return d.status() == v1::WEBHOOK_DELIVERY_STATUS_DELIVERED;
  });
  ASSERT_GE(logged.attempts_size(), 4);
  EXPECT_EQ(logged.attempts(0).status_code(), 0);
  EXPECT_FALSE(logged.attempts(0).error().empty());
  EXPECT_EQ(logged.attempts(logged.attempts_size() - 1).status_code(), 200);
  EXPECT_TRUE(logged.attempts(logged.attempts_size() - 1).error().empty());
}

// A 301 is the endpoint's answer: not followed, recorded as a failed attempt, retried.
TEST_F(OutgoingWebhooksTest, RedirectIsNotFollowedAndRecordedAsAFailure) {
  WebhookReceiver receiver({kOldKey, kNewKey});
  ASSERT_TRUE(receiver.ok());
  receiver.set_status(301);
  StartGateway(Config(receiver.url("/hook")));
  const v1::Operation op = GenerateOk(*stub_, Sample());
  const v1::WebhookDelivery logged = AwaitDelivery(op.name(), "operation.succeeded",
                                                   [](auto& d) { return d.attempt_count() >= 2; });
  EXPECT_EQ(logged.status(), v1::WEBHOOK_DELIVERY_STATUS_PENDING);
  EXPECT_EQ(logged.last_status_code(), 301);
  EXPECT_EQ(logged.attempts(0).status_code(), 301);
  EXPECT_EQ(logged.attempts(0).error(), "HTTP 301");
  EXPECT_TRUE(logged.has_next_attempt_time());
  EXPECT_EQ(receiver.count("/moved"), 0);
}

// Without the allowance, a loopback, private or metadata target is refused in the config (the
// gateway does not start), in GenerateRequest.notify and SendTestWebhook (INVALID_ARGUMENT on
// the field), and at delivery: a target stored while allowed is refused at connect time after
// a restart without the allowance.
TEST_F(OutgoingWebhooksTest, PrivateTargetsAreRefusedAtRegistrationAndAtDelivery) {
  {
    const std::string saved = dir_;
    dir_ = NewTestScratchDir("webhooks-refused");
    auto refused = GatewayProcess::Start(Config("http://127.0.0.1:9/hook", false), dir_);
    ASSERT_FALSE(refused.ok());
    EXPECT_TRUE(absl::StrContains(refused.status().message(), "tenants[0].webhooks"))
        << refused.status();
    dir_ = saved;
  }

  WebhookReceiver receiver({kOldKey, kNewKey});
  ASSERT_TRUE(receiver.ok());
  receiver.set_status(503);
  StartGateway(Config(""));
  v1::GenerateRequest stored = Sample();
  stored.mutable_notify()->set_url(receiver.url("/notify"));
  const v1::Operation op = GenerateOk(*stub_, stored);
  ASSERT_TRUE(receiver.Await(
      [&](const ReceivedWebhook& r) {
        return IsEvent(r, "/notify", "operation.succeeded", op.name());
      },
      kWait));
  Kill();

  StartGateway(Config("", /*allow_private=*/false));
  for (const std::string& url :
       {receiver.url("/notify"), std::string("http://169.254.169.254/latest"),
        std::string("http://10.1.2.3/hook"), std::string("http://[::1]:8080/hook"),
        std::string("ftp://example.com/hook")}) {
    v1::GenerateRequest request = Sample();
    request.mutable_notify()->set_url(url);
    v1::Operation answer;
    const grpc::Status status = stub_->Generate(Context(kAcmeKey).get(), request, &answer);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << url;
    const absl::Status rich = FromGrpcStatus(status);
    google::rpc::BadRequest bad;
    ASSERT_TRUE(GetBadRequest(rich, &bad)) << url;
    ASSERT_EQ(bad.field_violations_size(), 1);
    EXPECT_EQ(bad.field_violations(0).field(), "notify.url");
    google::rpc::ErrorInfo info;
    EXPECT_TRUE(GetErrorInfo(rich, &info));
  }
  v1::SendTestWebhookRequest ping;
  ping.set_url(receiver.url("/ping"));
  v1::WebhookDelivery answer;
  EXPECT_EQ(stub_->SendTestWebhook(Context(kAcmeKey).get(), ping, &answer).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);

  const int before = receiver.count("/notify");
  const v1::WebhookDelivery refused = AwaitDelivery(
      op.name(), "operation.succeeded", [](auto& d) { return d.last_error() == "refused_target"; },
      "request");
  EXPECT_EQ(refused.last_status_code(), 0);
  EXPECT_EQ(receiver.count("/notify"), before);
}

// RedeliverWebhook sends a delivered event again with the same webhook-id, and the log lists
// both attempts; SendTestWebhook pings a configured endpoint or a URL, signed.
TEST_F(OutgoingWebhooksTest, RedeliveryKeepsTheIdAndTestPingsAreSigned) {
  WebhookReceiver receiver({kOldKey, kNewKey});
  ASSERT_TRUE(receiver.ok());
  StartGateway(Config(receiver.url("/hook")));
  const v1::Operation op = GenerateOk(*stub_, Sample());
  const v1::WebhookDelivery first = AwaitDelivery(op.name(), "operation.succeeded", [](auto& d) {
    return d.status() == v1::WEBHOOK_DELIVERY_STATUS_DELIVERED;
  });
  ASSERT_EQ(first.attempt_count(), 1);

  v1::RedeliverWebhookRequest redeliver;
  redeliver.set_delivery_id(first.delivery_id());
  v1::WebhookDelivery answer;
  ASSERT_TRUE(stub_->RedeliverWebhook(Context(kAcmeKey).get(), redeliver, &answer).ok());
  EXPECT_EQ(answer.delivery_id(), first.delivery_id());
  EXPECT_EQ(answer.webhook_id(), first.webhook_id());
  ReceivedWebhook resent;
  ASSERT_TRUE(receiver.Await([&](const ReceivedWebhook& r) { return r.id == first.webhook_id(); },
                             kWait, &resent, /*times=*/2));
  EXPECT_EQ(resent.verified, (std::vector<bool>{true, true}));
  const v1::WebhookDelivery again = AwaitDelivery(op.name(), "operation.succeeded", [](auto& d) {
    return d.attempt_count() == 2 && d.status() == v1::WEBHOOK_DELIVERY_STATUS_DELIVERED;
  });
  ASSERT_EQ(again.attempts_size(), 2);
  EXPECT_EQ(again.attempts(0).attempt(), 1);
  EXPECT_EQ(again.attempts(1).attempt(), 2);
  EXPECT_EQ(again.attempts(1).status_code(), 200);
  redeliver.set_delivery_id("whd_unknown");
  EXPECT_EQ(stub_->RedeliverWebhook(Context(kAcmeKey).get(), redeliver, &answer).error_code(),
            grpc::StatusCode::NOT_FOUND);

  v1::SendTestWebhookRequest ping;
  ping.set_endpoint("main");
  v1::WebhookDelivery queued;
  ASSERT_TRUE(stub_->SendTestWebhook(Context(kAcmeKey).get(), ping, &queued).ok());
  EXPECT_EQ(queued.event_type(), "webhook.ping");
  ReceivedWebhook pinged;
  ASSERT_TRUE(receiver.Await([&](const ReceivedWebhook& r) { return r.id == queued.webhook_id(); },
                             kWait, &pinged));
  EXPECT_EQ(pinged.type, "webhook.ping");
  EXPECT_EQ(pinged.path, "/hook");
  EXPECT_EQ(pinged.verified, (std::vector<bool>{true, true}));
  ping.set_endpoint("");
  ping.set_url(receiver.url("/other"));
  ASSERT_TRUE(stub_->SendTestWebhook(Context(kAcmeKey).get(), ping, &queued).ok());
  ASSERT_TRUE(receiver.Await(
      [&](const ReceivedWebhook& r) { return r.id == queued.webhook_id() && r.path == "/other"; },
      kWait));
  v1::ListWebhookDeliveriesRequest by_endpoint;
  by_endpoint.set_endpoint("main");
  v1::ListWebhookDeliveriesResponse listed;
  ASSERT_TRUE(stub_->ListWebhookDeliveries(Context(kAcmeKey).get(), by_endpoint, &listed).ok());
  bool ping_listed = false;
  for (const auto& d : listed.deliveries()) ping_listed |= d.event_type() == "webhook.ping";
  EXPECT_TRUE(ping_listed);
  ping.set_url("");
  ping.set_endpoint("nope");
  EXPECT_EQ(stub_->SendTestWebhook(Context(kAcmeKey).get(), ping, &queued).error_code(),
            grpc::StatusCode::NOT_FOUND);
}

// The same outbox on the shared PostgreSQL ledger: written with the state change, delivered
// after a SIGKILL with the same webhook-id, and sent again by RedeliverWebhook.
class OutgoingWebhooksPostgresTest : public OutgoingWebhooksTest {
 protected:
  void SetUp() override {
    OutgoingWebhooksTest::SetUp();
    auto cluster = StartLedgerCluster();
    ASSERT_TRUE(cluster.ok()) << cluster.status();
    cluster_ = std::move(*cluster);
    ledger_ = PostgresLedgerConfig("gw-a");
  }
  void TearDown() override {
    gateway_.reset();  // before its database
  }

  std::unique_ptr<PgCluster> cluster_;
};

TEST_F(OutgoingWebhooksPostgresTest, KilledBeforeDeliveryIsDeliveredAndRedelivered) {
  WebhookReceiver receiver({kOldKey, kNewKey});
  ASSERT_TRUE(receiver.ok());
  receiver.set_status(503);
  const nlohmann::json config = Config(receiver.url("/hook"));
  StartGateway(config);
  const v1::Operation op = GenerateOk(*stub_, Sample());
  ReceivedWebhook refused;
  ASSERT_TRUE(receiver.Await(
      [&](const ReceivedWebhook& r) {
        return IsEvent(r, "/hook", "operation.succeeded", op.name()) && r.answered == 503;
      },
      kWait, &refused));
  Kill();
  receiver.set_status(200);
  StartGateway(config);
  const auto delivered = [&](const ReceivedWebhook& r) {
    return IsEvent(r, "/hook", "operation.succeeded", op.name()) && r.answered == 200;
  };
  ReceivedWebhook first;
  ASSERT_TRUE(receiver.Await(delivered, kWait, &first));
  EXPECT_EQ(first.id, refused.id);
  EXPECT_EQ(first.verified, (std::vector<bool>{true, true}));
  const v1::WebhookDelivery logged = AwaitDelivery(op.name(), "operation.succeeded", [](auto& d) {
    return d.status() == v1::WEBHOOK_DELIVERY_STATUS_DELIVERED;
  });
  EXPECT_EQ(logged.webhook_id(), refused.id);

  v1::RedeliverWebhookRequest redeliver;
  redeliver.set_delivery_id(logged.delivery_id());
  v1::WebhookDelivery answer;
  ASSERT_TRUE(stub_->RedeliverWebhook(Context(kAcmeKey).get(), redeliver, &answer).ok());
  ASSERT_TRUE(receiver.Await(delivered, kWait, nullptr, /*times=*/2));
  const int before = logged.attempt_count();
  const v1::WebhookDelivery again =
      AwaitDelivery(op.name(), "operation.succeeded", [before](auto& d) {
        return d.attempt_count() == before + 1 &&
               d.status() == v1::WEBHOOK_DELIVERY_STATUS_DELIVERED;
      });
  EXPECT_EQ(again.attempts_size(), again.attempt_count());
  EXPECT_EQ(again.webhook_id(), refused.id);
}

}  // namespace
}  // namespace musicgw::testing
