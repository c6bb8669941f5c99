// File: soundpiece_wire.h
// The Soundpiece v1 dialect without I/O (/work/shared/providers/soundpiece.md): the route table,
// PUT bodies built from the normalized task messages, lenient parsing of operation DTOs and
// webhook events, and the mapping of HTTP and operation failures to rich absl::Status errors.
//
// Error mapping (HTTP layer; ErrorInfo domain "soundpiece.co", metadata http_status, account,
// route; the provider's `detail` text where it helps):
//   400, other unlisted 4xx on PUT -> INVALID_ARGUMENT  PROVIDER_REJECTED
//   422                -> INVALID_ARGUMENT  PROVIDER_REJECTED, BadRequest field violations with
//                         the provider's `loc` mapped to our field paths (e.g. body.lyrics ->
//                         song.lyrics; body.reference.url -> song.reference.url)
//   401                -> UNAUTHENTICATED   PROVIDER_AUTH_FAILED (the gateway's own provider
//                         key: a configuration fault for the operator, never the caller's key)
//   402                -> RESOURCE_EXHAUSTED PROVIDER_QUOTA_EXHAUSTED, QuotaFailure subject
//                         "provider:soundpiece/account:<account>/resource:credits"
//   404, 405           -> FAILED_PRECONDITION PROVIDER_ENDPOINT_MISSING (wrong base_url or an
//                         API change: the docs say 404 means only "no such path")
//   409                -> ALREADY_EXISTS    PROVIDER_IDEMPOTENCY_CONFLICT (strict mode: the key
//                         came with another body)
//   429                -> RESOURCE_EXHAUSTED PROVIDER_RATE_LIMITED + RetryInfo (Retry-After)
//   5xx                -> UNAVAILABLE       PROVIDER_UNAVAILABLE
//   GET, any other 4xx -> NOT_FOUND         PROVIDER_OPERATION_UNKNOWN (the provider does not
//                         know the operation id: the emulator answers 422 not_found)
//   transport errors   -> same code (UNAVAILABLE / DEADLINE_EXCEEDED / CANCELLED),
//                         PROVIDER_UNREACHABLE or PROVIDER_TIMEOUT
//   unreadable 2xx     -> UNAVAILABLE       PROVIDER_BAD_RESPONSE
//
// Failed operations (status "failed", error {code, message}) -> UpstreamStatus kFailed with
// ErrorInfo PROVIDER_OPERATION_FAILED {provider_code, provider_message}. The code is
// INVALID_ARGUMENT when the provider's code names the caller's input (it contains one of
// "source", "reference", "input", "invalid", "unsupported", "too_long", "too_short", "decode",
// "format", "lyrics", "prompt", "duration", "moderation", "policy"), otherwise INTERNAL
// (internal_error, unknown and future codes, as the docs require).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "adapters/provider.h"
#include "musicgw/v1/musicgw.pb.h"

namespace musicgw::adapters::soundpiece {

inline constexpr absl::string_view kDomain = "soundpiece.co";

// One Soundpiece route and how its answers look.
struct Route {
  musicgw::v1::TaskKind task;
  const char* name;             // path after /v1/, e.g. "create.new_song"
  const char* wrapper;          // key wrapping the DTO in answers, e.g. "song"
  const char* task_field;       // our GenerateRequest oneof field, e.g. "song"
  musicgw::v1::AssetKind kind;  // kind of every output (stems: by each output's `kind`)
};

// The route serving a task (TEXT_TO_MUSIC -> create.new_instrumental with its prompt); nullptr
// for tasks Soundpiece does not offer.
const Route* RouteForTask(musicgw::v1::TaskKind task);
// The route with path name `name` (e.g. "adapt.separate_stems"); nullptr when unknown.
const Route* RouteByName(absl::string_view name);

// The JSON body of the PUT for `request`. `callback_url` empty = no webhook requested.
absl::StatusOr<std::string> BuildSubmitBody(const musicgw::v1::GenerateRequest& request,
                                            absl::string_view idempotency_key,
                                            absl::string_view callback_url);

// Parses a PUT or GET answer leniently: unknown fields are ignored; the DTO is taken from the
// route's wrapper key, else from the single top-level object (or the body itself when it
// already looks like a DTO); `outputs` or `output`; an unknown status is still running; an
// unknown error code is internal_error. INVALID_ARGUMENT describes what could not be read.
absl::StatusOr<UpstreamStatus> ParseOperation(absl::string_view body, const Route& route);

// A webhook body {type: "<route>.ready|failed", data: <DTO, unwrapped>}.
absl::StatusOr<UpstreamStatus> ParseWebhookEvent(absl::string_view body);

// Context for error messages and metadata (never secrets).
struct ErrorContext {
  std::string account;
  std::string route;      // e.g. "create.new_song"
  bool is_submit = true;  // PUT (submit) or GET (poll)
  musicgw::v1::TaskKind task = musicgw::v1::TASK_KIND_UNSPECIFIED;
};

// A non-2xx answer (after retries) as a rich error; see the table at the top.
absl::Status MapHttpError(int http_status, absl::string_view body,
                          std::optional<absl::Duration> retry_after, const ErrorContext& context);
// A transport failure (after retries).
absl::Status MapTransportError(const absl::Status& status, const ErrorContext& context);
// A 2xx answer that could not be read.
absl::Status BadResponseError(const absl::Status& parse_error, const ErrorContext& context);
// The error of a failed operation; see the table at the top.
absl::Status OperationFailedError(absl::string_view provider_code,
                                  absl::string_view provider_message);

// Our field path for a provider `loc` (["body","reference","url"]) under `task`, or empty when
// it names nothing the caller sent (e.g. callback_url).
std::string FieldPathForLoc(musicgw::v1::TaskKind task, const std::vector<std::string>& loc);

}  // namespace musicgw::adapters::soundpiece
