// File: loudly_wire.h
// The pure wire layer of the Loudly adapter: request encoding (multipart form fields for both
// dialects, the OAuth form), JSON parsing (bundles, ai_song, token grants, JWT expiry, limits,
// genres, structures) and the mapping of HTTP failures to rich absl::Status errors. No I/O, no
// clock reads (callers pass `now`), so everything here is testable against the captured
// exchanges in /work/shared/seeds and tests/loudly/testdata.
//
// Wire decisions (see /work/shared/providers/loudly.md):
// - key_root: natural notes travel as the plain letter ("E", as the web app sends); sharps use
//   the provider's enharmonic-pair names "C#/Db", "D#/Eb", "F#/Gb", "G#/Ab", "A#/Bb" (the only
//   sharp spelling any source documents) in both dialects.
// - instruments: upper-case. Web: repeated `instruments[]` parts (as captured). B2B: by default
//   repeated `instruments[]` too (InstrumentsForm::kRepeated); kCommaJoined sends one
//   "DRUMS,BASS" string as the official Python client does (the B2B wire form is unsettled).
// - Empty fields are omitted, never sent as "".
// - Field order follows the captured web-app request: bundle_type, genre|prompt, duration,
//   instruments[], genre_blend, energy, structure_id, bpm, key_root, key_quality, then model
//   and test.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "adapters/provider.h"
#include "musicgw/v1/musicgw.pb.h"

namespace musicgw::adapters::loudly {

// ErrorInfo domain for errors the provider decided.
inline constexpr absl::string_view kDomain = "loudly.com";

enum class Dialect { kWeb, kB2B };
// "loudly-web" / "loudly-b2b".
const char* DialectName(Dialect dialect);

enum class InstrumentsForm { kRepeated, kCommaJoined };

struct FormField {
  std::string name;
  std::string value;
  bool operator==(const FormField& other) const {
    return name == other.name && value == other.value;
  }
};
using Form = std::vector<FormField>;

// Wire spellings; empty for the UNSPECIFIED values.
std::string KeyRootWire(musicgw::v1::KeyRoot root);
std::string KeyQualityWire(musicgw::v1::KeyQuality quality);
std::string EnergyWire(musicgw::v1::Energy energy);
std::string ModelWire(musicgw::v1::LoudlyModel model);

// Web dialect: the `POST /ai/vega/bundles` fields (bundle_type ADVANCED for parametric_music,
// TEXT2MUSIC for text_to_music). INVALID_ARGUMENT for any other task.
absl::StatusOr<Form> EncodeWebBundle(const musicgw::v1::GenerateRequest& request);

// B2B dialect: the fields of `POST /api/ai/songs` (parametric) or `/api/ai/prompt/songs`
// (text); `test` adds test=true (dry run, no credits).
absl::StatusOr<Form> EncodeB2BSong(const musicgw::v1::GenerateRequest& request, bool test,
                                   InstrumentsForm instruments = InstrumentsForm::kRepeated);
// "/api/ai/songs" or "/api/ai/prompt/songs"; empty for other tasks.
std::string B2BSongPath(const musicgw::v1::GenerateRequest& request);

// multipart/form-data with CRLF line ends; `content_type` carries the boundary.
struct EncodedBody {
  std::string content_type;
  std::string body;
};
EncodedBody EncodeMultipart(const Form& form, absl::string_view boundary);
EncodedBody EncodeFormUrlencoded(const Form& form);

// "2025-04-03T11:04:42+0200" (also "+02:00" and "Z").
std::optional<absl::Time> ParseLoudlyTime(absl::string_view text);

// A bundle as read from `POST /ai/vega/bundles` or `GET /ai/vega/bundles/{id}`.
struct Bundle {
  // kSucceeded as soon as one song has a non-empty music_file_path (not on is_finished, which
  // stays false in the captures); kFailed when `errors` is non-empty and no song is ready;
  // kRunning otherwise. next_poll_after is left zero for the caller to choose.
  UpstreamStatus status;
  std::optional<absl::Time> created_at;
};
absl::StatusOr<Bundle> ParseBundle(absl::string_view body);

// The B2B `ai_song` object: kSucceeded with one MP3 output, or kFailed (UNAVAILABLE, reason
// PROVIDER_EMPTY_RESULT) when music_file_path is empty.
absl::StatusOr<UpstreamStatus> ParseAiSong(absl::string_view body);

// "D minor" / "D Minor" / "E-minor" -> "D-minor" (the Asset.key form).
std::string NormalizeKeyName(absl::string_view name);

// The OAuth token response. `expiry` comes from the JWT's `exp` claim, or now + expires_in
// when the token is not a readable JWT.
struct TokenGrant {
  std::string access_token;
  std::string refresh_token;  // empty when the server did not rotate it
  absl::Time expiry = absl::InfinitePast();
};
absl::StatusOr<TokenGrant> ParseTokenResponse(absl::string_view body, absl::Time now);
// `exp` of a JWT (header.payload.signature, payload base64url JSON); nullopt when unreadable.
std::optional<absl::Time> JwtExpiry(absl::string_view jwt);
// RFC 4648 §5 base64url: decoding takes padding or none; encoding writes none (as JWTs do).
absl::StatusOr<std::string> Base64UrlDecode(absl::string_view text);
std::string Base64UrlEncode(absl::string_view data);

// Web `GET /users/limits`: one figure per usage_data key. A top_up object adds its total, used
// and available to limit, used and remaining. reset_time: next_reset_date, 00:00 UTC.
absl::StatusOr<std::vector<QuotaFigure>> ParseWebLimits(absl::string_view body);
// B2B `GET /api/account/limits`: a bare array of {request_type, limit, used, left, date_from,
// date_to}, or {limits:[…], top_up:{total, available}}; the top-up becomes a figure "top_up".
// reset_time: the day after date_to, 00:00 UTC.
absl::StatusOr<std::vector<QuotaFigure>> ParseB2BLimits(absl::string_view body);

// `GET /api/ai/genres`: every genre name and every micro-genre name (objects with a `name`, or
// plain strings), in order, without duplicates.
absl::StatusOr<std::vector<std::string>> ParseGenres(absl::string_view body);
// `GET /api/ai/structures`.
absl::StatusOr<std::vector<musicgw::v1::SongStructure>> ParseStructures(absl::string_view body);
// `GET /api/ai/prompt/random` -> the prompt.
absl::StatusOr<std::string> ParseRandomPrompt(absl::string_view body);

// The quota 500: "External service calling limit exceeded: (service: <name>, Timer seconds
// remaining: <n>, Attempts remaining: <n>)".
struct QuotaMessage {
  std::string service;
  int64_t timer_seconds_remaining = 0;
  int64_t attempts_remaining = 0;
};
std::optional<QuotaMessage> ParseQuotaMessage(absl::string_view text);
// Looks for the quota message anywhere in an error body (JSON `error`/`message`/
// `error_description`, or raw text).
std::optional<QuotaMessage> FindQuotaMessage(absl::string_view body);

// What an error body says: `error`, then `message`, then the raw text (whitespace collapsed,
// truncated to 200 bytes), and `error_description` when present. Every occurrence of a string
// in `secrets` (and anything shaped like a JWT or a Bearer credential) is replaced by
// "[redacted]".
struct ErrorText {
  std::string error;
  std::string description;
};
ErrorText ReadErrorText(absl::string_view body, const std::vector<std::string>& secrets);
std::string Redact(absl::string_view text, const std::vector<std::string>& secrets);

// Maps a non-2xx HTTP answer to the status the engine acts on:
// - 400 (and other 4xx not below) -> INVALID_ARGUMENT, ErrorInfo PROVIDER_REJECTED with the
//   provider's error/error_description in metadata;
// - 401/403 -> UNAUTHENTICATED, PROVIDER_AUTH_FAILED (a gateway configuration fault);
// - 404 -> NOT_FOUND, PROVIDER_NOT_FOUND;
// - 429 -> RESOURCE_EXHAUSTED, PROVIDER_RATE_LIMITED, RetryInfo from Retry-After (default 1 s);
// - 500 with the quota message -> RESOURCE_EXHAUSTED, PROVIDER_QUOTA_EXHAUSTED, QuotaFailure
//   subject "provider:loudly/account:<account>/resource:<service>", RetryInfo of the timer;
// - other 5xx -> UNAVAILABLE, PROVIDER_UNAVAILABLE;
// - anything else -> INTERNAL, PROVIDER_UNEXPECTED_STATUS.
// Every ErrorInfo has domain "loudly.com" and metadata http_status and account.
struct ErrorContext {
  std::string account;
  // Secret values that must never appear in the error (API key, tokens).
  std::vector<std::string> secrets;
};
absl::Status MapHttpError(int http_status, absl::string_view body,
                          std::optional<absl::Duration> retry_after, const ErrorContext& context);
// A transport failure (retries exhausted): same code, ErrorInfo PROVIDER_UNREACHABLE or
// PROVIDER_TIMEOUT.
absl::Status MapTransportError(const absl::Status& status, const ErrorContext& context);
// A 2xx body that could not be read: UNAVAILABLE, PROVIDER_BAD_RESPONSE.
absl::Status BadResponseError(absl::string_view what, const absl::Status& parse_error,
                              const ErrorContext& context);

// The web dialect has no long-poll: the first song usually lands 7-10 s after the bundle is
// created, so poll at `min` early and back off toward `max` as the bundle ages
// (elapsed / 5, clamped).
absl::Duration NextPollInterval(absl::Duration elapsed, absl::Duration min, absl::Duration max);

// Checks genre, genre_blend and structure ids against the provider's catalog. Genre names are
// case-sensitive exact names (micro-genres included). An empty list accepts anything (catalog
// unavailable: the provider judges). INVALID_ARGUMENT with a BadRequest naming the field.
absl::Status CheckAgainstCatalog(const musicgw::v1::GenerateRequest& request,
                                 const ProviderCatalog& catalog);

}  // namespace musicgw::adapters::loudly
