// Paid work is never lost or mis-recorded: a cancel during the submission, Loudly answers that
// cannot be read, and the single POST of a failed Loudly B2B generation. Real gateways in front of
// the emulators; each case checks the emulator's own counters (work created, credits charged)
// against the gateway's record (submission state, upstream id, outputs, budgets, GetQuota).
#include <memory>
#include <string>
#include <tuple>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/config.h"
#include "common/errors.h"
#include "emulators/loudly/loudly_emulator.h"
#include "emulators/soundpiece/soundpiece_emulator.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "services/gateway/server.h"
#include "tests/integration/harness.h"
#include "tests/scratch_dir.h"

namespace musicgw::testing {
namespace {

namespace v1 = musicgw::v1;
using v1::GenerateRequest;
using v1::Operation;

// Which provider dialect a case runs against.
enum class Dialect { kSoundpiece, kLoudlyB2B, kLoudlyWeb };

std::string DialectName(Dialect dialect) {
  switch (dialect) {
    case Dialect::kSoundpiece:
      return "Soundpiece";
    case Dialect::kLoudlyB2B:
      return "LoudlyB2B";
    case Dialect::kLoudlyWeb:
      return "LoudlyWeb";
  }
  return "?";
}

constexpr char kSoundpieceAccount[] = "acct";  // the emulator's name for spk_test_key
constexpr int64_t kCredits = 1000;             // the emulator's initial balance

class PaidWorkTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    SetTestSecrets();
    setenv("MUSICGW_TEST_LOUDLY_REFRESH", "paid-refresh-token", 1);
    dir_ = new std::string(NewTestScratchDir("paid"));

    emulators::soundpiece::Options sp;
    sp.processing_time = absl::Milliseconds(300);
    sp.initial_credits = kCredits;
    auto soundpiece = emulators::soundpiece::Emulator::Start(sp);
    ASSERT_TRUE(soundpiece.ok()) << soundpiece.status();
    soundpiece_ = std::move(*soundpiece);

    emulators::loudly::Options ld;
    ld.refresh_token = "paid-refresh-token";
    ld.client_id = "1_paid";
    // Long enough that a cancel 0, 5 or 50 ms after Generate lands during the B2B POST.
    ld.sync_latency = absl::Milliseconds(300);
    ld.bundle_song_delay = absl::Milliseconds(300);
    auto loudly = emulators::loudly::Emulator::Start(ld);
    ASSERT_TRUE(loudly.ok()) << loudly.status();
    loudly_ = std::move(*loudly);

    b2b_ = StartGateway(Config("b2b"));
    nlohmann::json web = Config("web");
    web["providers"][0] = {{"name", "loudly-web"},
                           {"type", "loudly"},
                           {"dialect", "web"},
                           {"base_url", loudly_->base_url()},
                           {"client_id", "1_paid"},
                           {"refresh_token", {{"env", "MUSICGW_TEST_LOUDLY_REFRESH"}}},
                           {"token_state_file", *dir_ + "/loudly-token.json"}};
    web_ = StartGateway(web);
  }

  static void TearDownTestSuite() {
    web_.reset();
    b2b_.reset();
    soundpiece_.reset();
    loudly_.reset();
  }

  // Both providers; Soundpiece with its balance configured so GetQuota estimates its credits;
  // acme with a budget per task the cases use.
  static nlohmann::json Config(const std::string& name) {
    nlohmann::json config = TestConfig({loudly_->base_url(), soundpiece_->base_url()},
                                       absl::StrCat(*dir_, "/", name, "-ledger.db"));
    config["providers"][1]["credits"] = {{"balance", kCredits}};
    auto& budgets = config["tenants"][0]["budgets"];
    for (const char* task : {"SAMPLE", "PARAMETRIC_MUSIC", "TEXT_TO_MUSIC"}) {
      budgets.push_back({{"task", task}, {"limit", 100}, {"period", "day"}});
    }
    return config;
  }

  static std::unique_ptr<gateway::GatewayServer> StartGateway(const nlohmann::json& doc) {
    auto config = config::ParseConfig(doc.dump(), config::ProcessEnv());
    EXPECT_TRUE(config.ok()) << config.status();
    if (!config.ok()) return nullptr;
    auto server = gateway::GatewayServer::Start(std::move(*config));
    EXPECT_TRUE(server.ok()) << server.status();
    return server.ok() ? std::move(*server) : nullptr;
  }

  static gateway::GatewayServer& Server(Dialect dialect) {
    return dialect == Dialect::kLoudlyWeb ? *web_ : *b2b_;
  }

  static GenerateRequest Request(Dialect dialect) {
    GenerateRequest request;
    request.set_request_id(NewRequestId());
    if (dialect == Dialect::kSoundpiece) {
      request.set_provider(v1::PROVIDER_SOUNDPIECE);
      request.mutable_sample()->set_prompt("rock guitar");
      request.mutable_sample()->set_duration_seconds(5);
    } else {
      request.set_provider(v1::PROVIDER_LOUDLY);
      request.mutable_parametric_music()->set_genre("House");
      request.mutable_parametric_music()->set_duration_seconds(30);
    }
    return request;
  }

  static v1::TaskKind Task(Dialect dialect) {
    return dialect == Dialect::kSoundpiece ? v1::TASK_KIND_SAMPLE : v1::TASK_KIND_PARAMETRIC_MUSIC;
  }

  // Upstream work the emulator created for `dialect` (every POST/PUT that reached processing).
  static int64_t Created(Dialect dialect) {
    switch (dialect) {
      case Dialect::kSoundpiece:
        return soundpiece_->stats().operations_created;
      case Dialect::kLoudlyB2B:
        return loudly_->stats().b2b_song_requests;
      case Dialect::kLoudlyWeb:
        return loudly_->stats().bundles_created;
    }
    return -1;
  }

  static Operation Get(gateway::GatewayServer& server, const std::string& name) {
    v1::GetOperationRequest request;
    request.set_name(name);
    Operation op;
    const grpc::Status status =
        Stub(server.grpc_port())->GetOperation(Context(kAcmeKey).get(), request, &op);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return op;
  }

  static v1::QuotaReport Quota(gateway::GatewayServer& server) {
    v1::QuotaReport report;
    const grpc::Status status =
        Stub(server.grpc_port())->GetQuota(Context(kAcmeKey).get(), {}, &report);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return report;
  }

  // The acme budget's `used` for `task`: operations counted as charged.
  static int64_t BudgetUsed(gateway::GatewayServer& server, v1::TaskKind task) {
    const v1::QuotaReport report = Quota(server);
    for (const auto& budget : report.tenant_budgets()) {
      if (budget.task() == task) return budget.used();
    }
    ADD_FAILURE() << "no budget for " << v1::TaskKind_Name(task);
    return -1;
  }

  // GetQuota's Soundpiece credits remaining (the gateway's estimate from what it recorded as
  // charged), or -1.
  static int64_t SoundpieceCreditsRemaining(gateway::GatewayServer& server) {
    const v1::QuotaReport report = Quota(server);
    for (const auto& quota : report.provider_quotas()) {
      if (quota.provider() == v1::PROVIDER_SOUNDPIECE && quota.resource() == "credits") {
        return quota.remaining();
      }
    }
    return -1;
  }

  static int64_t EmulatorCredits() { return soundpiece_->stats().credits[kSoundpieceAccount]; }

  // The record once nothing about the money is pending: the submission answered, and an
  // accepted asynchronous job finished by the provider (its outputs attached).
  static Operation Settled(gateway::GatewayServer& server, const std::string& name) {
    Operation op;
    const bool settled = Eventually(
        [&] {
          op = Get(server, name);
          if (!op.done() || op.submission() == v1::SUBMISSION_STATE_SUBMITTING) return false;
          return op.submission() != v1::SUBMISSION_STATE_ACCEPTED || op.outputs_size() > 0;
        },
        absl::Seconds(30));
    EXPECT_TRUE(settled) << op.DebugString();
    return op;
  }

  static int64_t DownloadedBytes(gateway::GatewayServer& server, const std::string& asset) {
    v1::DownloadRequest request;
    request.set_asset(asset);
    auto context = Context(kAcmeKey, absl::Seconds(60));
    auto reader = Stub(server.grpc_port())->Download(context.get(), request);
    v1::DownloadChunk chunk;
    int64_t bytes = 0;
    while (reader->Read(&chunk)) bytes += static_cast<int64_t>(chunk.data().size());
    const grpc::Status status = reader->Finish();
    EXPECT_TRUE(status.ok()) << asset << ": " << status.error_message();
    return bytes;
  }

  // The gateway's record of an operation whose answer could not be read: possibly submitted,
  // counted as charged, an error that does not invite a blind retry; the provider created the
  // work exactly once.
  static void ExpectOutcomeUnknown(Dialect dialect, const Operation& done, int64_t created_before,
                                   int64_t budget_before) {
    gateway::GatewayServer& server = Server(dialect);
    EXPECT_EQ(done.state(), v1::OPERATION_STATE_FAILED) << done.DebugString();
    EXPECT_EQ(done.submission(), v1::SUBMISSION_STATE_POSSIBLY_SUBMITTED) << done.DebugString();
    EXPECT_EQ(done.error().code(), grpc::StatusCode::UNKNOWN) << done.error().message();
    const absl::Status error = FromRpcStatus(done.error());
    google::rpc::ErrorInfo info;
    ASSERT_TRUE(GetErrorInfo(error, &info));
    EXPECT_EQ(info.reason(), "PROVIDER_OUTCOME_UNKNOWN");
    EXPECT_EQ(info.domain(), kGatewayDomain);
    google::rpc::RetryInfo retry;
    EXPECT_FALSE(GetRetryInfo(error, &retry)) << "a blind retry may pay twice";
    EXPECT_TRUE(absl::StrContains(done.error().message(), "check")) << done.error().message();
    EXPECT_EQ(Created(dialect) - created_before, 1) << "created exactly once, never re-sent";
    EXPECT_EQ(BudgetUsed(server, Task(dialect)) - budget_before, 1) << "counted as charged";
  }

  inline static std::string* dir_ = nullptr;
  inline static std::unique_ptr<emulators::soundpiece::Emulator> soundpiece_;
  inline static std::unique_ptr<emulators::loudly::Emulator> loudly_;
  inline static std::unique_ptr<gateway::GatewayServer> b2b_;
  inline static std::unique_ptr<gateway::GatewayServer> web_;
};

// ---- Cancel at any moment ----

class CancelDuringSubmissionTest : public PaidWorkTest,
                                   public ::testing::WithParamInterface<std::tuple<Dialect, int>> {
};

TEST_P(CancelDuringSubmissionTest, RecordsTheCancelAtOnceAndTheSubmissionWhenItsAnswerComes) {
  const auto [dialect, delay_ms] = GetParam();
  gateway::GatewayServer& server = Server(dialect);
  // The asynchronous submissions take a while to answer, so the cancel lands while they are in
  // flight (the B2B POST takes the emulator's sync_latency).
  if (dialect == Dialect::kSoundpiece) {
    ASSERT_TRUE(soundpiece_
                    ->SetFaultPlan(R"({"rules":[{"match":"PUT /v1/create.new_sample",)"
                                   R"("action":"latency","delay_ms":150}]})")
                    .ok());
  } else if (dialect == Dialect::kLoudlyWeb) {
    ASSERT_TRUE(loudly_
                    ->SetFaultPlan(R"({"rules":[{"match":"POST /ai/vega/bundles",)"
                                   R"("action":"latency","delay_ms":150}]})")
                    .ok());
  }
  const int64_t created_before = Created(dialect);
  const int64_t credits_before = EmulatorCredits();
  const int64_t budget_before = BudgetUsed(server, Task(dialect));

  const Operation started = GenerateOk(*Stub(server.grpc_port()), Request(dialect));
  ASSERT_FALSE(started.name().empty());
  // Timing of the cancel relative to the submission, not a wait for anything to happen.
  if (delay_ms > 0) absl::SleepFor(absl::Milliseconds(delay_ms));
  v1::CancelOperationRequest cancel;
  cancel.set_name(started.name());
  cancel.set_reason("changed my mind");
  Operation cancelled;
  const grpc::Status status =
      Stub(server.grpc_port())->CancelOperation(Context(kAcmeKey).get(), cancel, &cancelled);
  ASSERT_TRUE(status.ok()) << status.error_message();
  // Recorded at once, with the reason.
  EXPECT_EQ(cancelled.state(), v1::OPERATION_STATE_CANCELLED);
  EXPECT_TRUE(cancelled.done());
  EXPECT_EQ(cancelled.cancellation().reason(), "changed my mind");

  const Operation done = Settled(server, started.name());
  EXPECT_EQ(done.state(), v1::OPERATION_STATE_CANCELLED) << done.DebugString();
  EXPECT_EQ(done.cancellation().reason(), "changed my mind");
  const int64_t created = Created(dialect) - created_before;
  if (done.submission() == v1::SUBMISSION_STATE_ACCEPTED) {
    // The provider created (and charged for) the work: recorded with its id, counted as
    // charged, and its outputs, finished anyway, are the user's to download.
    EXPECT_EQ(created, 1);
    EXPECT_FALSE(done.upstream_id().empty());
    ASSERT_GT(done.attempts_size(), 0);
    EXPECT_EQ(done.attempts(done.attempts_size() - 1).upstream_id(), done.upstream_id());
    EXPECT_EQ(BudgetUsed(server, Task(dialect)) - budget_before, 1);
    ASSERT_GT(done.outputs_size(), 0);
    EXPECT_GT(DownloadedBytes(server, done.outputs(0).name()), 0);
  } else {
    // Cancelled before anything was sent (SUBMITTING is recorded before the request leaves).
    EXPECT_EQ(done.submission(), v1::SUBMISSION_STATE_NOT_SUBMITTED) << done.DebugString();
    EXPECT_EQ(created, 0);
    EXPECT_TRUE(done.upstream_id().empty());
    EXPECT_EQ(BudgetUsed(server, Task(dialect)) - budget_before, 0);
  }
  if (dialect == Dialect::kSoundpiece) {
    EXPECT_EQ(credits_before - EmulatorCredits(), created);
    // The gateway's credit estimate follows what the provider charged.
    EXPECT_TRUE(Eventually([&] { return SoundpieceCreditsRemaining(server) == EmulatorCredits(); }))
        << "GetQuota credits " << SoundpieceCreditsRemaining(server) << ", emulator balance "
        << EmulatorCredits();
  }
}

INSTANTIATE_TEST_SUITE_P(AllDialects, CancelDuringSubmissionTest,
                         ::testing::Combine(::testing::Values(Dialect::kSoundpiece,
                                                              Dialect::kLoudlyB2B,
                                                              Dialect::kLoudlyWeb),
                                            ::testing::Values(0, 5, 50)),
                         [](const ::testing::TestParamInfo<std::tuple<Dialect, int>>& info) {
                           return absl::StrCat(DialectName(std::get<0>(info.param)), "At",
                                               std::get<1>(info.param), "ms");
                         });

// ---- Loudly answers that cannot be read ----

class UnreadableAnswerTest
    : public PaidWorkTest,
      public ::testing::WithParamInterface<std::tuple<Dialect, std::string>> {};

TEST_P(UnreadableAnswerTest, IsPossiblySubmittedAndChargedNeverRejected) {
  const auto [dialect, action] = GetParam();
  const char* path =
      dialect == Dialect::kLoudlyWeb ? "POST /ai/vega/bundles" : "POST /api/ai/songs";
  ASSERT_TRUE(loudly_
                  ->SetFaultPlan(absl::StrCat(R"({"rules":[{"match":")", path,
                                              R"(","times":1,"action":")", action, R"("}]})"))
                  .ok());
  gateway::GatewayServer& server = Server(dialect);
  const int64_t created_before = Created(dialect);
  const int64_t budget_before = BudgetUsed(server, Task(dialect));
  const int64_t faults_before = loudly_->stats().faults_injected;
  const Operation started = GenerateOk(*Stub(server.grpc_port()), Request(dialect));
  const Operation done = WaitDone(*Stub(server.grpc_port()), started.name());
  EXPECT_EQ(loudly_->stats().faults_injected - faults_before, 1) << "the 200 was cut or garbled";
  ExpectOutcomeUnknown(dialect, done, created_before, budget_before);
}

INSTANTIATE_TEST_SUITE_P(
    LoudlyDialects, UnreadableAnswerTest,
    ::testing::Combine(::testing::Values(Dialect::kLoudlyB2B, Dialect::kLoudlyWeb),
                       ::testing::Values(std::string("truncate"), std::string("malformed"))),
    [](const ::testing::TestParamInfo<std::tuple<Dialect, std::string>>& info) {
      return absl::StrCat(DialectName(std::get<0>(info.param)),
                          std::get<1>(info.param) == "truncate" ? "Truncated" : "NotJson");
    });

// ---- Loudly B2B "generation failed" ----

TEST_F(PaidWorkTest, LoudlyB2BGenerationFailedIsOnePostAndPossiblySubmitted) {
  ASSERT_TRUE(loudly_
                  ->SetFaultPlan(R"({"rules":[{"match":"POST /api/ai/songs",)"
                                 R"("action":"fail_operation","error_code":"internal_error",)"
                                 R"("error_message":"Generation failed"}]})")
                  .ok());
  const int64_t created_before = Created(Dialect::kLoudlyB2B);
  const int64_t budget_before = BudgetUsed(*b2b_, v1::TASK_KIND_PARAMETRIC_MUSIC);
  const int64_t failures_before = loudly_->stats().responses_by_status[500];
  const Operation started = GenerateOk(*Stub(b2b_->grpc_port()), Request(Dialect::kLoudlyB2B));
  const Operation done = WaitDone(*Stub(b2b_->grpc_port()), started.name());
  ExpectOutcomeUnknown(Dialect::kLoudlyB2B, done, created_before, budget_before);
  EXPECT_EQ(loudly_->stats().responses_by_status[500] - failures_before, 1)
      << "one POST, never re-sent";
  EXPECT_TRUE(absl::StrContains(done.error().message(), "Generation failed"))
      << done.error().message();
}

}  // namespace
}  // namespace musicgw::testing
