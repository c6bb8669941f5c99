// Every failing path a client can hit, over real loopback channels to real gateways in front of
// the emulators: the gRPC code, the ErrorInfo reason and domain, and the details (BadRequest
// field, RetryInfo) the README promises. Also the health service around a ledger that cannot be
// written, and that the log stays JSON when a request cannot even be parsed.
#include <signal.h>
#include <sys/resource.h>

#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "common/config.h"
#include "common/errors.h"
#include "emulators/loudly/loudly_emulator.h"
#include "emulators/soundpiece/soundpiece_emulator.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/generic/generic_stub.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "services/gateway/server.h"
#include "tests/integration/harness.h"
#include "tests/scratch_dir.h"

namespace musicgw::testing {
namespace {

using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;
using musicgw::v1::GenerateRequest;
using musicgw::v1::Operation;

constexpr char kServiceName[] = "musicgw.v1.MusicGateway";
constexpr char kUnknownGenre[] = "Polka Step";

struct Details {
  grpc::StatusCode code = grpc::StatusCode::OK;
  std::string reason;
  std::string domain;
  std::string field;
  bool retry_info = false;
};

Details Decode(const grpc::Status& status) {
  Details details;
  details.code = status.error_code();
  const absl::Status rich = FromGrpcStatus(status);
  google::rpc::ErrorInfo info;
  if (GetErrorInfo(rich, &info)) {
    details.reason = info.reason();
    details.domain = info.domain();
  }
  google::rpc::BadRequest bad;
  if (GetBadRequest(rich, &bad) && bad.field_violations_size() > 0) {
    details.field = bad.field_violations(0).field();
  }
  google::rpc::RetryInfo retry;
  details.retry_info = GetRetryInfo(rich, &retry);
  return details;
}

// Protobuf wire encoding by hand, so a test can send what a well-behaved client library refuses
// to build (a string field that is not UTF-8).
void AppendVarint(uint64_t value, std::string* out) {
  while (value >= 0x80) {
    out->push_back(static_cast<char>((value & 0x7f) | 0x80));
    value >>= 7;
  }
  out->push_back(static_cast<char>(value));
}
std::string Bytes(int field, const std::string& payload) {
  std::string out;
  AppendVarint((static_cast<uint64_t>(field) << 3) | 2, &out);
  AppendVarint(payload.size(), &out);
  return out + payload;
}
int FieldNumber(const google::protobuf::Descriptor* type, const char* name) {
  return type->FindFieldByName(name)->number();
}

// One unary call with hand-made request bytes.
grpc::Status RawUnary(int port, const std::string& method, const std::string& bytes,
                      const std::string& key) {
  grpc::GenericStub stub(
      grpc::CreateChannel(absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials()));
  grpc::Slice slice(bytes);
  grpc::ByteBuffer request(&slice, 1);
  grpc::ByteBuffer response;
  auto context = Context(key);
  absl::Notification done;
  grpc::Status result;
  stub.UnaryCall(context.get(), method, grpc::StubOptions(), &request, &response,
                 [&result, &done](grpc::Status status) {
                   result = std::move(status);
                   done.Notify();
                 });
  done.WaitForNotification();
  return result;
}

// A GenerateRequest whose text_to_music.prompt is the bytes `prompt`, valid otherwise.
std::string TextToMusicBytes(const std::string& prompt) {
  const auto* request = GenerateRequest::descriptor();
  const auto* task = musicgw::v1::TextToMusicTask::descriptor();
  return Bytes(FieldNumber(request, "request_id"), NewRequestId()) +
         Bytes(FieldNumber(request, "text_to_music"), Bytes(FieldNumber(task, "prompt"), prompt));
}

class ErrorSurfaceTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    SetTestSecrets();
    setenv("MUSICGW_TEST_LOUDLY_REFRESH", "errors-refresh-token", 1);
    dir_ = new std::string(NewTestScratchDir("errors"));

    emulators::soundpiece::Options sp;
    sp.processing_time = absl::Milliseconds(200);
    auto soundpiece = emulators::soundpiece::Emulator::Start(sp);
    ASSERT_TRUE(soundpiece.ok()) << soundpiece.status();
    soundpiece_ = std::move(*soundpiece);

    emulators::loudly::Options ld;
    ld.refresh_token = "errors-refresh-token";
    ld.client_id = "1_errors";
    ld.sync_latency = absl::Milliseconds(20);
    ld.bundle_song_delay = absl::Milliseconds(200);
    auto loudly = emulators::loudly::Emulator::Start(ld);
    ASSERT_TRUE(loudly.ok()) << loudly.status();
    loudly_ = std::move(*loudly);

    b2b_ = StartGateway(Config("b2b"));
    nlohmann::json web = Config("web");
    web["providers"][0] = {{"name", "loudly-web"},
                           {"type", "loudly"},
                           {"dialect", "web"},
                           {"base_url", loudly_->base_url()},
                           {"client_id", "1_errors"},
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

  static nlohmann::json Config(const std::string& name) {
    return TestConfig({loudly_->base_url(), soundpiece_->base_url()},
                      absl::StrCat(*dir_, "/", name, "-ledger.db"));
  }

  static std::unique_ptr<gateway::GatewayServer> StartGateway(const nlohmann::json& doc) {
    auto config = config::ParseConfig(doc.dump(), config::ProcessEnv());
    EXPECT_TRUE(config.ok()) << config.status();
    if (!config.ok()) return nullptr;
    auto server = gateway::GatewayServer::Start(std::move(*config));
    EXPECT_TRUE(server.ok()) << server.status();
    return server.ok() ? std::move(*server) : nullptr;
  }

  static grpc::Status Generate(gateway::GatewayServer& server, const GenerateRequest& request,
                               Operation* operation = nullptr, const std::string& key = kAcmeKey) {
    Operation ignored;
    return Stub(server.grpc_port())
        ->Generate(Context(key).get(), request, operation == nullptr ? &ignored : operation);
  }

  static GenerateRequest Parametric(const std::string& genre) {
    GenerateRequest request;
    request.set_request_id(NewRequestId());
    request.set_provider(musicgw::v1::PROVIDER_LOUDLY);
    request.mutable_parametric_music()->set_genre(genre);
    return request;
  }

  static GenerateRequest Sample() {
    GenerateRequest request;
    request.set_request_id(NewRequestId());
    request.mutable_sample()->set_prompt("rock guitar");
    request.mutable_sample()->set_duration_seconds(5);
    return request;
  }

  // The Loudly account's ListProviders entry on `server`.
  static musicgw::v1::ProviderInfo LoudlyInfo(gateway::GatewayServer& server) {
    musicgw::v1::ListProvidersResponse response;
    const grpc::Status status =
        Stub(server.grpc_port())->ListProviders(Context(kAcmeKey).get(), {}, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    for (const auto& provider : response.providers()) {
      if (provider.provider() == musicgw::v1::PROVIDER_LOUDLY) return provider;
    }
    ADD_FAILURE() << "no Loudly account listed";
    return {};
  }

  // An unknown genre or genre_blend is refused at once, naming the field, and every genre and
  // structure ListProviders lists passes validation.
  static void ExpectCatalogEnforced(gateway::GatewayServer& server) {
    const musicgw::v1::ProviderInfo info = LoudlyInfo(server);
    ASSERT_GT(info.genres_size(), 0) << info.dialect();
    ASSERT_GT(info.structures_size(), 0) << info.dialect();
    Details genre = Decode(Generate(server, Parametric(kUnknownGenre)));
    EXPECT_EQ(genre.code, grpc::StatusCode::INVALID_ARGUMENT) << info.dialect();
    EXPECT_EQ(genre.reason, "INVALID_ARGUMENT");
    EXPECT_EQ(genre.field, "parametric_music.genre");
    GenerateRequest blend = Parametric(info.genres(0));
    blend.mutable_parametric_music()->set_genre_blend(kUnknownGenre);
    Details blend_details = Decode(Generate(server, blend));
    EXPECT_EQ(blend_details.code, grpc::StatusCode::INVALID_ARGUMENT) << info.dialect();
    EXPECT_EQ(blend_details.field, "parametric_music.genre_blend");
    GenerateRequest structure = Parametric(info.genres(0));
    structure.mutable_parametric_music()->set_structure_id(999);
    EXPECT_EQ(Decode(Generate(server, structure)).field, "parametric_music.structure_id");

    for (const std::string& name : info.genres()) {
      GenerateRequest request = Parametric(name);
      request.set_validate_only(true);
      const grpc::Status status = Generate(server, request);
      EXPECT_TRUE(status.ok()) << info.dialect() << " " << name << ": " << status.error_message();
    }
    for (const auto& listed : info.structures()) {
      GenerateRequest request = Parametric(info.genres(0));
      request.mutable_parametric_music()->set_structure_id(listed.id());
      request.set_validate_only(true);
      const grpc::Status status = Generate(server, request);
      EXPECT_TRUE(status.ok()) << info.dialect() << " structure " << listed.id() << ": "
                               << status.error_message();
    }
  }

  inline static std::string* dir_ = nullptr;
  inline static std::unique_ptr<emulators::soundpiece::Emulator> soundpiece_;
  inline static std::unique_ptr<emulators::loudly::Emulator> loudly_;
  inline static std::unique_ptr<gateway::GatewayServer> b2b_;
  inline static std::unique_ptr<gateway::GatewayServer> web_;
};

TEST_F(ErrorSurfaceTest, UnauthenticatedCarriesApiKeyInvalid) {
  for (const std::string& key : {std::string("not-a-key"), std::string()}) {
    auto context = key.empty() ? std::make_unique<grpc::ClientContext>() : Context(key);
    Operation operation;
    const Details details =
        Decode(Stub(b2b_->grpc_port())->Generate(context.get(), Sample(), &operation));
    EXPECT_EQ(details.code, grpc::StatusCode::UNAUTHENTICATED);
    EXPECT_EQ(details.reason, "API_KEY_INVALID");
    EXPECT_EQ(details.domain, "musicgw.dev");
  }
}

TEST_F(ErrorSurfaceTest, NotFoundAndAnotherTenantsOperationLookAlike) {
  Operation mine;
  ASSERT_TRUE(Generate(*b2b_, Sample(), &mine).ok());
  auto stub = Stub(b2b_->grpc_port());
  musicgw::v1::GetOperationRequest request;
  request.set_name("operations/0000000000000000000000000a");
  Operation response;
  const Details missing = Decode(stub->GetOperation(Context(kAcmeKey).get(), request, &response));
  EXPECT_EQ(missing.code, grpc::StatusCode::NOT_FOUND);
  EXPECT_FALSE(missing.reason.empty());
  EXPECT_EQ(missing.domain, "musicgw.dev");

  request.set_name(mine.name());
  const Details foreign = Decode(stub->GetOperation(Context(kGlobexKey).get(), request, &response));
  EXPECT_EQ(foreign.code, grpc::StatusCode::NOT_FOUND);
  // The same answer as for an id that does not exist: nothing tells another tenant it does.
  EXPECT_EQ(foreign.reason, missing.reason);
  EXPECT_EQ(foreign.domain, missing.domain);
}

TEST_F(ErrorSurfaceTest, InvalidArgumentNamesTheFieldInABadRequest) {
  GenerateRequest request = Sample();
  request.set_request_id("not-a-uuid");
  const Details details = Decode(Generate(*b2b_, request));
  EXPECT_EQ(details.code, grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(details.reason, "INVALID_ARGUMENT");
  EXPECT_EQ(details.domain, "musicgw.dev");
  EXPECT_EQ(details.field, "request_id");
}

TEST_F(ErrorSurfaceTest, RequestIdReusedIsAlreadyExists) {
  GenerateRequest request = Sample();
  ASSERT_TRUE(Generate(*b2b_, request).ok());
  request.mutable_sample()->set_prompt("something else");
  const Details details = Decode(Generate(*b2b_, request));
  EXPECT_EQ(details.code, grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_EQ(details.reason, "REQUEST_ID_REUSED");
}

TEST_F(ErrorSurfaceTest, CancellingADoneOperationIsFailedPrecondition) {
  Operation operation;
  ASSERT_TRUE(Generate(*b2b_, Sample(), &operation).ok());
  auto stub = Stub(b2b_->grpc_port());
  musicgw::v1::WaitOperationRequest wait;
  wait.set_name(operation.name());
  wait.mutable_timeout()->set_seconds(30);
  Operation done;
  ASSERT_TRUE(stub->WaitOperation(Context(kAcmeKey, absl::Seconds(40)).get(), wait, &done).ok());
  ASSERT_TRUE(done.done());
  musicgw::v1::CancelOperationRequest cancel;
  cancel.set_name(operation.name());
  Operation response;
  const Details details = Decode(stub->CancelOperation(Context(kAcmeKey).get(), cancel, &response));
  EXPECT_EQ(details.code, grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(details.reason, "OPERATION_DONE");
}

TEST_F(ErrorSurfaceTest, UnknownLoudlyGenreIsRefusedInTheWebDialect) {
  ExpectCatalogEnforced(*web_);
}

TEST_F(ErrorSurfaceTest, UnknownLoudlyGenreIsRefusedInTheB2BDialect) {
  // The B2B account reads its catalog from the provider at start; wait until it is listed.
  ASSERT_TRUE(Eventually([] { return LoudlyInfo(*b2b_).genres_size() > 0; }, absl::Seconds(20)));
  ExpectCatalogEnforced(*b2b_);
}

TEST_F(ErrorSurfaceTest, ControlCharactersAreRefusedNamingTheField) {
  GenerateRequest lyrics;
  lyrics.set_request_id(NewRequestId());
  lyrics.mutable_song()->set_lyrics(std::string("first line\0second", 17));
  Details details = Decode(Generate(*b2b_, lyrics));
  EXPECT_EQ(details.code, grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(details.reason, "INVALID_ARGUMENT");
  EXPECT_EQ(details.field, "song.lyrics");

  GenerateRequest prompt;
  prompt.set_request_id(NewRequestId());
  prompt.mutable_text_to_music()->set_prompt("calm \x07 piano");
  details = Decode(Generate(*b2b_, prompt));
  EXPECT_EQ(details.code, grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(details.field, "text_to_music.prompt");

  GenerateRequest genre = Parametric("Deep\x1bHouse");
  EXPECT_EQ(Decode(Generate(*web_, genre)).field, "parametric_music.genre");

  // Lyrics keep their line breaks and tabs.
  GenerateRequest verses;
  verses.set_request_id(NewRequestId());
  verses.set_validate_only(true);
  verses.mutable_song()->set_lyrics("first line\n\tsecond line\r\nthird");
  verses.mutable_song()->set_prompt("upbeat pop,\nbig chorus");
  const grpc::Status ok = Generate(*b2b_, verses);
  EXPECT_TRUE(ok.ok()) << ok.error_message();
}

TEST_F(ErrorSurfaceTest, InvalidUtf8IsInvalidArgumentNamingTheField) {
  const std::string not_utf8 = "calm \xff\xfe piano";
  Details details = Decode(RawUnary(b2b_->grpc_port(), "/musicgw.v1.MusicGateway/Generate",
                                    TextToMusicBytes(not_utf8), kAcmeKey));
  EXPECT_EQ(details.code, grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(details.reason, "INVALID_ARGUMENT");
  EXPECT_EQ(details.domain, "musicgw.dev");
  EXPECT_EQ(details.field, "text_to_music.prompt");

  const auto* get = musicgw::v1::GetOperationRequest::descriptor();
  details = Decode(RawUnary(b2b_->grpc_port(), "/musicgw.v1.MusicGateway/GetOperation",
                            Bytes(FieldNumber(get, "name"), "operations/\xc3\x28"), kAcmeKey));
  EXPECT_EQ(details.code, grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(details.field, "name");

  // WatchOperation parses its request itself (a raw method): the same answer.
  const auto* watch = musicgw::v1::WatchOperationRequest::descriptor();
  details = Decode(RawUnary(b2b_->grpc_port(), "/musicgw.v1.MusicGateway/WatchOperation",
                            Bytes(FieldNumber(watch, "name"), "operations/\xc3\x28"), kAcmeKey));
  EXPECT_EQ(details.code, grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(details.reason, "INVALID_ARGUMENT");
  EXPECT_EQ(details.field, "name");
  // So does Download, the other raw method.
  const auto* download = musicgw::v1::DownloadRequest::descriptor();
  details =
      Decode(RawUnary(b2b_->grpc_port(), "/musicgw.v1.MusicGateway/Download",
                      Bytes(FieldNumber(download, "asset"), "operations/\xc3\x28"), kAcmeKey));
  EXPECT_EQ(details.code, grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(details.reason, "INVALID_ARGUMENT");
  EXPECT_EQ(details.field, "asset");

  // Bytes that are no protobuf message at all: still INVALID_ARGUMENT, without a field, from a
  // typed method and from both raw ones alike; answered before the caller is authenticated,
  // as gRPC answers a typed method before its handler runs.
  for (const char* method :
       {"/musicgw.v1.MusicGateway/Generate", "/musicgw.v1.MusicGateway/WatchOperation",
        "/musicgw.v1.MusicGateway/Download"}) {
    for (const std::string& key : {std::string(kAcmeKey), std::string("not-a-key")}) {
      SCOPED_TRACE(absl::StrCat(method, " key ", key));
      details =
          Decode(RawUnary(b2b_->grpc_port(), method, std::string("\x0a\xff\xff\xff", 4), key));
      EXPECT_EQ(details.code, grpc::StatusCode::INVALID_ARGUMENT);
      EXPECT_EQ(details.reason, "INVALID_ARGUMENT");
      EXPECT_EQ(details.domain, "musicgw.dev");
      EXPECT_EQ(details.field, "");
    }
  }

  // Even an error gRPC produces itself carries an ErrorInfo.
  details = Decode(RawUnary(b2b_->grpc_port(), "/musicgw.v1.MusicGateway/NoSuchMethod",
                            std::string(), kAcmeKey));
  EXPECT_EQ(details.code, grpc::StatusCode::UNIMPLEMENTED);
  EXPECT_EQ(details.reason, "UNIMPLEMENTED");
  EXPECT_EQ(details.domain, "musicgw.dev");

  // The same request, well formed, is accepted: the refusal was about the bytes.
  const grpc::Status fine = RawUnary(b2b_->grpc_port(), "/musicgw.v1.MusicGateway/Generate",
                                     TextToMusicBytes("calm piano"), kAcmeKey);
  EXPECT_TRUE(fine.ok()) << fine.error_message();
}

TEST_F(ErrorSurfaceTest, InvalidUtf8LeavesTheBinarysLogAllJson) {
  LoopbackListener blackhole;
  auto process = GatewayProcess::Start(
      TestConfig({blackhole.url(), blackhole.url()}, *dir_ + "/process-ledger.db"), *dir_);
  ASSERT_TRUE(process.ok()) << process.status();
  const Details details =
      Decode(RawUnary((*process)->grpc_port(), "/musicgw.v1.MusicGateway/Generate",
                      TextToMusicBytes("\xff"), kAcmeKey));
  EXPECT_EQ(details.code, grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(details.field, "text_to_music.prompt");
  ASSERT_TRUE((*process)->Signal(SIGTERM, absl::Seconds(30)).ok());
  const std::string logs = (*process)->Logs();
  bool saw_protobuf = false;
  for (absl::string_view line : absl::StrSplit(logs, '\n', absl::SkipEmpty())) {
    const nlohmann::json parsed = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    EXPECT_FALSE(parsed.is_discarded()) << "not JSON: " << line;
    if (!parsed.is_discarded() && parsed.value("msg", "") == "libprotobuf") saw_protobuf = true;
  }
  EXPECT_TRUE(saw_protobuf) << logs;
}

// Reads a Watch stream until it reports `want` or the call's deadline passes.
bool WatchUntil(grpc::ClientReader<HealthCheckResponse>& reader,
                HealthCheckResponse::ServingStatus want) {
  HealthCheckResponse response;
  while (reader.Read(&response)) {
    if (response.status() == want) return true;
  }
  return false;
}

TEST_F(ErrorSurfaceTest, HealthAnswersForTheServiceNameAndEndsServingOnDrain) {
  auto server = StartGateway(Config("drain"));
  ASSERT_NE(server, nullptr);
  auto health = grpc::health::v1::Health::NewStub(grpc::CreateChannel(
      absl::StrCat("127.0.0.1:", server->grpc_port()), grpc::InsecureChannelCredentials()));
  for (const std::string& service : {std::string(), std::string(kServiceName)}) {
    HealthCheckRequest request;
    request.set_service(service);
    HealthCheckResponse response;
    grpc::ClientContext context;
    const grpc::Status status = health->Check(&context, request, &response);
    ASSERT_TRUE(status.ok()) << "service \"" << service << "\": " << status.error_message();
    EXPECT_EQ(response.status(), HealthCheckResponse::SERVING) << "service \"" << service << "\"";
  }
  HealthCheckRequest unknown;
  unknown.set_service("musicgw.v1.NoSuchService");
  HealthCheckResponse response;
  grpc::ClientContext unknown_context;
  EXPECT_EQ(health->Check(&unknown_context, unknown, &response).error_code(),
            grpc::StatusCode::NOT_FOUND);

  HealthCheckRequest watch_request;
  watch_request.set_service(kServiceName);
  grpc::ClientContext watch_context;
  watch_context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
  auto watch = health->Watch(&watch_context, watch_request);
  ASSERT_TRUE(WatchUntil(*watch, HealthCheckResponse::SERVING));
  // A drain reports NOT_SERVING to watchers before the server stops (or ends the stream).
  std::thread drain([&server] { server->Drain(absl::Seconds(5)); });
  HealthCheckResponse last;
  while (watch->Read(&last)) {
    if (last.status() != HealthCheckResponse::SERVING) break;
  }
  watch_context.TryCancel();  // the drain waits for open calls
  drain.join();
  EXPECT_EQ(last.status(), HealthCheckResponse::NOT_SERVING);
}

TEST_F(ErrorSurfaceTest, LedgerFailureIsUnavailableAndHealthFollowsIt) {
  auto server = StartGateway(Config("full"));
  ASSERT_NE(server, nullptr);
  auto channel = grpc::CreateChannel(absl::StrCat("127.0.0.1:", server->grpc_port()),
                                     grpc::InsecureChannelCredentials());
  auto health = grpc::health::v1::Health::NewStub(channel);
  for (const std::string& service : {std::string(), std::string(kServiceName)}) {
    HealthCheckRequest request;
    request.set_service(service);
    HealthCheckResponse response;
    grpc::ClientContext context;
    ASSERT_TRUE(health->Check(&context, request, &response).ok())
        << "service \"" << service << "\"";
    EXPECT_EQ(response.status(), HealthCheckResponse::SERVING);
  }
  HealthCheckRequest watch_request;
  watch_request.set_service(kServiceName);
  grpc::ClientContext watch_context;
  // Health is checked every second; the deadline only bounds a failure.
  watch_context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
  auto watch = health->Watch(&watch_context, watch_request);
  ASSERT_TRUE(WatchUntil(*watch, HealthCheckResponse::SERVING));

  // No file of this process may grow now: the ledger's next write fails as on a full disk.
  signal(SIGXFSZ, SIG_IGN);
  rlimit saved{};
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &saved), 0);
  rlimit full = saved;
  full.rlim_cur = 1;
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &full), 0);
  const Details details = Decode(Generate(*server, Sample()));
  const bool not_serving = WatchUntil(*watch, HealthCheckResponse::NOT_SERVING);
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &saved), 0);
  EXPECT_EQ(details.code, grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(details.reason, "LEDGER_UNAVAILABLE");
  EXPECT_TRUE(details.retry_info);
  EXPECT_TRUE(not_serving) << "health stayed SERVING while the ledger could not be written";

  // Once the disk has room again, the next write succeeds and health returns to SERVING.
  grpc::Status written;
  const absl::Time give_up = absl::Now() + absl::Seconds(30);
  do {
    written = Generate(*server, Sample());
  } while (!written.ok() && absl::Now() < give_up);
  EXPECT_TRUE(written.ok()) << written.error_message();
  EXPECT_TRUE(WatchUntil(*watch, HealthCheckResponse::SERVING));
  watch_context.TryCancel();
}

}  // namespace
}  // namespace musicgw::testing
