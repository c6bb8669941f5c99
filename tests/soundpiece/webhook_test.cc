#include "adapters/soundpiece/webhook.h"

#include <arpa/inet.h>
#include <httplib.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/thread_priority.h"
#include "gtest/gtest.h"

namespace musicgw::adapters::soundpiece {
namespace {

// Signing done here with OpenSSL directly, independent of the code under test.
std::string Sign(const std::string& key, const std::string& id, int64_t timestamp,
                 const std::string& body) {
  const std::string content = absl::StrCat(id, ".", timestamp, ".", body);
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
       reinterpret_cast<const unsigned char*>(content.data()), content.size(), mac, &length);
  std::string b64(4 * ((length + 2) / 3) + 1, '\0');
  const int n =
      EVP_EncodeBlock(reinterpret_cast<unsigned char*>(b64.data()), mac, static_cast<int>(length));
  b64.resize(n);
  return absl::StrCat("v1,", b64);
}

const std::string kKeyA = "key-A-bytes-0123456789abcdef";
const std::string kKeyB = "key-B-bytes-fedcba9876543210";
std::string Secret(const std::string& key) {
  return absl::StrCat("whsec_", absl::Base64Escape(key));
}

constexpr char kBody[] =
    R"({"type":"create.new_sample.ready","data":{"id":"op_01hx7k3m9q2w5e8r4t6y1u0p3a","status":"ready","output":{"url":"https://cdn/x","expires_at":"2026-05-20T12:50:21Z","duration":8}}})";

class WebhookVerifierTest : public ::testing::Test {
 protected:
  std::unique_ptr<WebhookVerifier> Make(std::vector<std::string> secrets,
                                        WebhookVerifierOptions options = {}) {
    options.secrets = std::move(secrets);
    auto verifier = WebhookVerifier::Create(options, [this] { return now_; });
    EXPECT_TRUE(verifier.ok()) << verifier.status();
    return std::move(*verifier);
  }
  int64_t Now() const { return absl::ToUnixSeconds(now_); }

  absl::Time now_ = absl::FromUnixSeconds(1779280000);
};

TEST_F(WebhookVerifierTest, AcceptsAValidSignatureOnce) {
  auto verifier = Make({Secret(kKeyA)});
  const std::string ts = absl::StrCat(Now());
  const std::string sig = Sign(kKeyA, "msg_1", Now(), kBody);
  EXPECT_EQ(verifier->Verify("msg_1", ts, sig, kBody), WebhookOutcome::kVerified);
  EXPECT_EQ(verifier->Verify("msg_1", ts, sig, kBody), WebhookOutcome::kDuplicate);
}

TEST_F(WebhookVerifierTest, RotationAcceptsAnyConfiguredSecretAndAnyListedSignature) {
  auto verifier = Make({Secret(kKeyA), Secret(kKeyB)});
  const std::string ts = absl::StrCat(Now());
  EXPECT_EQ(verifier->Verify("m1", ts, Sign(kKeyB, "m1", Now(), kBody), kBody),
            WebhookOutcome::kVerified);
  // The provider lists old and new signatures during its own rotation.
  const std::string both = absl::StrCat(Sign("unknown-key", "m2", Now(), kBody), " v2,ignored ",
                                        Sign(kKeyA, "m2", Now(), kBody));
  EXPECT_EQ(verifier->Verify("m2", ts, both, kBody), WebhookOutcome::kVerified);
}

TEST_F(WebhookVerifierTest, RejectsForgeries) {
  auto verifier = Make({Secret(kKeyA)});
  const std::string ts = absl::StrCat(Now());
  EXPECT_EQ(verifier->Verify("m1", ts, Sign(kKeyB, "m1", Now(), kBody), kBody),
            WebhookOutcome::kBadSignature);
  // Signed for another body, id or timestamp.
  const std::string sig = Sign(kKeyA, "m1", Now(), kBody);
  EXPECT_EQ(verifier->Verify("m1", ts, sig, std::string(kBody) + " "),
            WebhookOutcome::kBadSignature);
  EXPECT_EQ(verifier->Verify("m2", ts, sig, kBody), WebhookOutcome::kBadSignature);
  EXPECT_EQ(verifier->Verify("m1", absl::StrCat(Now() + 1), sig, kBody),
            WebhookOutcome::kBadSignature);
  EXPECT_EQ(verifier->Verify("m1", ts, "v1,not-base64!!", kBody), WebhookOutcome::kBadSignature);
  EXPECT_EQ(verifier->Verify("m1", ts, "v1,", kBody), WebhookOutcome::kBadSignature);
  // A forgery never marks the id as seen: the real delivery still passes.
  EXPECT_EQ(verifier->Verify("m1", ts, sig, kBody), WebhookOutcome::kVerified);
}

TEST_F(WebhookVerifierTest, StaleAndFutureTimestamps) {
  auto verifier = Make({Secret(kKeyA)});
  for (int64_t skew : {-301, 301, -3600}) {
    const int64_t ts = Now() + skew;
    EXPECT_EQ(verifier->Verify("m", absl::StrCat(ts), Sign(kKeyA, "m", ts, kBody), kBody),
              WebhookOutcome::kStale)
        << skew;
  }
  const int64_t ok = Now() - 299;
  EXPECT_EQ(verifier->Verify("m", absl::StrCat(ok), Sign(kKeyA, "m", ok, kBody), kBody),
            WebhookOutcome::kVerified);
}

TEST_F(WebhookVerifierTest, Malformed) {
  auto verifier = Make({Secret(kKeyA)});
  const std::string sig = Sign(kKeyA, "m", Now(), kBody);
  EXPECT_EQ(verifier->Verify("", absl::StrCat(Now()), sig, kBody), WebhookOutcome::kMalformed);
  EXPECT_EQ(verifier->Verify("m", "", sig, kBody), WebhookOutcome::kMalformed);
  EXPECT_EQ(verifier->Verify("m", "12:00", sig, kBody), WebhookOutcome::kMalformed);
  EXPECT_EQ(verifier->Verify("m", absl::StrCat(Now()), "", kBody), WebhookOutcome::kMalformed);
}

TEST_F(WebhookVerifierTest, DedupeSetExpiresAndIsBounded) {
  WebhookVerifierOptions options;
  options.tolerance = absl::Seconds(20);
  options.remember_for = absl::Seconds(60);
  options.max_remembered_ids = 2;
  auto verifier = Make({Secret(kKeyA)}, options);
  auto deliver = [&](const std::string& id) {
    return verifier->Verify(id, absl::StrCat(Now()), Sign(kKeyA, id, Now(), kBody), kBody);
  };
  EXPECT_EQ(deliver("a"), WebhookOutcome::kVerified);
  EXPECT_EQ(deliver("a"), WebhookOutcome::kDuplicate);
  now_ += absl::Seconds(61);  // forgotten
  EXPECT_EQ(deliver("a"), WebhookOutcome::kVerified);
  EXPECT_EQ(deliver("b"), WebhookOutcome::kVerified);
  EXPECT_EQ(deliver("c"), WebhookOutcome::kVerified);  // evicts "a", the oldest
  EXPECT_EQ(deliver("c"), WebhookOutcome::kDuplicate);
  EXPECT_EQ(deliver("a"), WebhookOutcome::kVerified);
}

TEST_F(WebhookVerifierTest, RemembersIdsForTheWholeToleranceWindow) {
  WebhookVerifierOptions options;
  options.remember_for = absl::Seconds(10);  // raised to twice the 5 min tolerance
  auto verifier = Make({Secret(kKeyA)}, options);
  const int64_t ts = Now();
  const std::string sig = Sign(kKeyA, "m", ts, kBody);
  EXPECT_EQ(verifier->Verify("m", absl::StrCat(ts), sig, kBody), WebhookOutcome::kVerified);
  now_ += absl::Minutes(4);  // the replay still passes the timestamp check
  EXPECT_EQ(verifier->Verify("m", absl::StrCat(ts), sig, kBody), WebhookOutcome::kDuplicate);
  now_ += absl::Minutes(2);
  EXPECT_EQ(verifier->Verify("m", absl::StrCat(ts), sig, kBody), WebhookOutcome::kStale);
}

TEST(WebhookVerifierCreateTest, RejectsBadSecretsWithoutEchoingThem) {
  for (const std::vector<std::string>& secrets :
       std::vector<std::vector<std::string>>{{}, {"plainsecret"}, {"whsec_"}, {"whsec_%%%%"}}) {
    auto verifier = WebhookVerifier::Create({.secrets = secrets});
    EXPECT_EQ(verifier.status().code(), absl::StatusCode::kInvalidArgument);
    for (const auto& secret : secrets) {
      if (secret.size() > 6) {
        EXPECT_FALSE(absl::StrContains(verifier.status().message(), secret));
      }
    }
  }
}

class WebhookReceiverTest : public ::testing::Test {
 protected:
  void SetUp() override {
    WebhookReceiverOptions options;
    options.host = "127.0.0.1";
    options.verifier.secrets = {Secret(kKeyA)};
    auto receiver = WebhookReceiver::Start(options, [this](const UpstreamStatus& status) {
      absl::MutexLock lock(&mu_);
      updates_.push_back(status);
    });
    ASSERT_TRUE(receiver.ok()) << receiver.status();
    receiver_ = std::move(*receiver);
  }

  int Post(const std::string& id, int64_t ts, const std::string& signature,
           const std::string& body) {
    httplib::Client client("127.0.0.1", receiver_->port());
    httplib::Headers headers = {{"webhook-id", id},
                                {"webhook-timestamp", absl::StrCat(ts)},
                                {"webhook-signature", signature}};
    auto result = client.Post("/webhooks/soundpiece", headers, body, "application/json");
    return result ? result->status : -1;
  }

  std::unique_ptr<WebhookReceiver> receiver_;
  absl::Mutex mu_;
  std::vector<UpstreamStatus> updates_ ABSL_GUARDED_BY(mu_);
};

TEST_F(WebhookReceiverTest, VerifiedUpdatesReachTheSinkOnce) {
  const int64_t now = absl::ToUnixSeconds(absl::Now());
  const std::string sig = Sign(kKeyA, "msg_1", now, kBody);
  EXPECT_EQ(Post("msg_1", now, sig, kBody), 204);
  EXPECT_EQ(Post("msg_1", now, sig, kBody), 200);  // replay: acknowledged, not forwarded
  {
    absl::MutexLock lock(&mu_);
    ASSERT_EQ(updates_.size(), 1u);
    EXPECT_EQ(updates_[0].upstream_id, "op_01hx7k3m9q2w5e8r4t6y1u0p3a");
    EXPECT_EQ(updates_[0].phase, UpstreamStatus::Phase::kSucceeded);
    ASSERT_EQ(updates_[0].outputs.size(), 1u);
    EXPECT_EQ(updates_[0].outputs[0].kind, musicgw::v1::ASSET_KIND_SAMPLE);
  }
  const WebhookCounters counters = receiver_->counters();
  EXPECT_EQ(counters.verified, 1);
  EXPECT_EQ(counters.duplicate, 1);
  EXPECT_TRUE(absl::StrContains(receiver_->url(), "/webhooks/soundpiece"));
}

TEST_F(WebhookReceiverTest, ForgedStaleAndMalformedAreRejected) {
  const int64_t now = absl::ToUnixSeconds(absl::Now());
  EXPECT_EQ(Post("f1", now, Sign(kKeyB, "f1", now, kBody), kBody), 401);
  const int64_t old = now - 3600;
  EXPECT_EQ(Post("s1", old, Sign(kKeyA, "s1", old, kBody), kBody), 400);
  const std::string junk = R"({"type":"create.new_sample.ready"})";
  EXPECT_EQ(Post("j1", now, Sign(kKeyA, "j1", now, junk), junk), 400);
  EXPECT_EQ(Post("", now, Sign(kKeyA, "", now, kBody), kBody), 400);
  {
    absl::MutexLock lock(&mu_);
    EXPECT_TRUE(updates_.empty());
  }
  const WebhookCounters counters = receiver_->counters();
  EXPECT_EQ(counters.bad_signature, 1);
  EXPECT_EQ(counters.stale, 1);
  EXPECT_EQ(counters.malformed, 2);
  EXPECT_EQ(counters.verified, 0);
  // The malformed-but-signed id was not remembered: a corrected retry is not a "duplicate".
  EXPECT_EQ(Post("j1", now, Sign(kKeyA, "j1", now, kBody), kBody), 204);
}

// A validly signed body over max_body_bytes: cpp-httplib answers 413 before any route runs, and
// the delivery is still counted (outcome too_large) and logged, without body or signature.
TEST_F(WebhookReceiverTest, OversizedSignedBodyIsRefusedCountedAndLogged) {
  const int64_t now = absl::ToUnixSeconds(absl::Now());
  const std::string big(5 << 20, 'x');
  const std::string signature = Sign(kKeyA, "big_1", now, big);
  ::testing::internal::CaptureStderr();
  // Headers only: the server refuses on Content-Length without reading the body (and a client
  // still writing 5 MB into a closed connection may lose the answer to a reset).
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(receiver_->port()));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)), 0);
  const std::string head = absl::StrCat(
      "POST /webhooks/soundpiece HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n",
      "webhook-id: big_1\r\nwebhook-timestamp: ", now, "\r\nwebhook-signature: ", signature,
      "\r\nContent-Length: ", big.size(), "\r\n\r\n");
  ASSERT_EQ(send(fd, head.data(), head.size(), MSG_NOSIGNAL), static_cast<ssize_t>(head.size()));
  std::string answer;
  char buffer[4096];
  ssize_t n;
  while (answer.find("\r\n\r\n") == std::string::npos &&
         (n = recv(fd, buffer, sizeof(buffer), 0)) > 0) {
    answer.append(buffer, static_cast<size_t>(n));
  }
  close(fd);
  EXPECT_TRUE(absl::StartsWith(answer, "HTTP/1.1 413")) << answer.substr(0, 80);
  // Counted after the answer is written: wait for the count itself.
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (receiver_->counters().too_large < 1 && absl::Now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  EXPECT_EQ(receiver_->counters().too_large, 1);

  // The same through Handle (the endpoint embedded in another server).
  EXPECT_EQ(receiver_->Handle("big_2", absl::StrCat(now), Sign(kKeyA, "big_2", now, big), big),
            413);
  const std::string logs = ::testing::internal::GetCapturedStderr();
  const WebhookCounters counters = receiver_->counters();
  EXPECT_EQ(counters.too_large, 2);
  EXPECT_EQ(counters.verified + counters.bad_signature + counters.stale + counters.duplicate +
                counters.malformed,
            0);
  {
    absl::MutexLock lock(&mu_);
    EXPECT_TRUE(updates_.empty());
  }
  EXPECT_TRUE(absl::StrContains(logs, R"("outcome":"too_large")")) << logs;
  EXPECT_TRUE(absl::StrContains(logs, R"("webhook_id":"big_1")")) << logs;
  EXPECT_TRUE(absl::StrContains(logs, R"("body_bytes":5242880)")) << logs;
  EXPECT_FALSE(absl::StrContains(logs, signature.substr(3))) << "no signature in logs";
  EXPECT_FALSE(absl::StrContains(logs, "xxxxxxxx")) << "no body in logs";
}

// Two accounts of one provider on one listener: each account's secrets verify its own
// deliveries, on its own path and on the shared one, and each counts only its own.
class TwoAccountWebhookTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const auto& [account, key] : {std::pair{"sp-a", kKeyA}, std::pair{"sp-b", kKeyB}}) {
      WebhookHandlerOptions options;
      options.account = account;
      options.verifier.secrets = {Secret(key)};
      auto handler = SoundpieceWebhookHandler::Create(options);
      ASSERT_TRUE(handler.ok()) << handler.status();
      handlers_.push_back(std::move(*handler));
    }
    auto sink_for = [this](const std::string& account) {
      return [this, account](const UpstreamStatus& status) {
        absl::MutexLock lock(&mu_);
        updates_.emplace_back(account, status.upstream_id);
        sink_nices_.push_back(CurrentThreadNice());
      };
    };
    adapters::WebhookServer::Routes routes;
    routes.push_back({"/webhooks/soundpiece/sp-a", {{handlers_[0].get(), sink_for("sp-a")}}});
    routes.push_back({"/webhooks/soundpiece/sp-b", {{handlers_[1].get(), sink_for("sp-b")}}});
    routes.push_back(
        {"/webhooks/soundpiece",
         {{handlers_[0].get(), sink_for("sp-a")}, {handlers_[1].get(), sink_for("sp-b")}}});
    adapters::WebhookServerOptions options;
    options.host = "127.0.0.1";
    options.thread_nice = server_nice_;
    auto server = adapters::WebhookServer::Start(options, std::move(routes));
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
  }

  int Post(const std::string& path, const std::string& key, const std::string& id) {
    const int64_t now = absl::ToUnixSeconds(absl::Now());
    httplib::Client client("127.0.0.1", server_->port());
    httplib::Headers headers = {{"webhook-id", id},
                                {"webhook-timestamp", absl::StrCat(now)},
                                {"webhook-signature", Sign(key, id, now, kBody)}};
    auto result = client.Post(path, headers, kBody, "application/json");
    return result ? result->status : -1;
  }

  std::vector<std::pair<std::string, std::string>> Updates() {
    absl::MutexLock lock(&mu_);
    return updates_;
  }

  std::vector<std::unique_ptr<SoundpieceWebhookHandler>> handlers_;
  std::unique_ptr<adapters::WebhookServer> server_;
  absl::Mutex mu_;
  std::vector<std::pair<std::string, std::string>> updates_ ABSL_GUARDED_BY(mu_);
  std::vector<int> sink_nices_ ABSL_GUARDED_BY(mu_);
  // Below the test's own priority (nice is per thread; the test's threads keep theirs).
  const int server_nice_ = std::min(19, CurrentThreadNice() + 6);
};

TEST_F(TwoAccountWebhookTest, EachAccountsSecretsVerifyItsOwnDeliveries) {
  const std::string kKeyC = "key-C-bytes-not-configured!!";
  const std::string op = "op_01hx7k3m9q2w5e8r4t6y1u0p3a";
  // Own path: only the account's own secret passes.
  EXPECT_EQ(Post("/webhooks/soundpiece/sp-a", kKeyA, "a1"), 204);
  EXPECT_EQ(Post("/webhooks/soundpiece/sp-a", kKeyB, "b1"), 401);
  EXPECT_EQ(Post("/webhooks/soundpiece/sp-b", kKeyB, "b2"), 204);
  // Shared path: the account whose secret signed it takes it.
  EXPECT_EQ(Post("/webhooks/soundpiece", kKeyB, "b3"), 204);
  EXPECT_EQ(Post("/webhooks/soundpiece", kKeyA, "a2"), 204);
  EXPECT_EQ(Post("/webhooks/soundpiece", kKeyC, "c1"), 401);
  EXPECT_EQ(Post("/webhooks/soundpiece/sp-c", kKeyA, "a3"), 404);

  EXPECT_EQ(Updates(), (std::vector<std::pair<std::string, std::string>>{
                           {"sp-a", op}, {"sp-b", op}, {"sp-b", op}, {"sp-a", op}}));
  const WebhookCounters a = handlers_[0]->counters();
  const WebhookCounters b = handlers_[1]->counters();
  EXPECT_EQ(a.verified, 2);
  EXPECT_EQ(b.verified, 2);
  // The delivery signed by sp-b on sp-a's path, and the forged one on the shared path (counted
  // by its first account).
  EXPECT_EQ(a.bad_signature, 2);
  EXPECT_EQ(b.bad_signature, 0);
}

// Deliveries are handled below the RPC threads' priority, at the configured nice.
TEST_F(TwoAccountWebhookTest, DeliveriesAreHandledAtTheConfiguredNice) {
  EXPECT_EQ(Post("/webhooks/soundpiece/sp-a", kKeyA, "n1"), 204);
  EXPECT_EQ(Post("/webhooks/soundpiece", kKeyB, "n2"), 204);
  absl::MutexLock lock(&mu_);
  EXPECT_EQ(sink_nices_, (std::vector<int>{server_nice_, server_nice_}));
}

}  // namespace
}  // namespace musicgw::adapters::soundpiece
