// The reference for Generate-to-SUCCEEDED at concurrency 1: the same sample generation sent
// straight to the Soundpiece emulator, one at a time, the way a client without the gateway
// would: PUT /v1/create.new_sample, then GET ?id=…&wait=true until the job is ready, and with
// --fetch_outputs a GET of each output's bytes (the gateway holds them in custody before it
// says SUCCEEDED). One keep-alive connection, like the gateway's pool. Prints one JSON object:
// per-operation latency percentiles in ms.
//
//   SOUNDPIECE_API_KEY=... direct_generate --base_url=http://127.0.0.1:PORT [--ops=200]
//       [--fetch_outputs]
//
// The key comes from the environment only, never the command line (it would show in ps).
#include <curl/curl.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"

namespace {

using Json = nlohmann::ordered_json;

struct Flags {
  std::string base_url;
  int ops = 200;
  bool fetch_outputs = false;
};

size_t Append(char* data, size_t size, size_t count, void* out) {
  static_cast<std::string*>(out)->append(data, size * count);
  return size * count;
}

size_t Discard(char* /*data*/, size_t size, size_t count, void* bytes) {
  *static_cast<size_t*>(bytes) += size * count;
  return size * count;
}

struct CurlDeleter {
  void operator()(CURL* curl) const { curl_easy_cleanup(curl); }
};
struct ListDeleter {
  void operator()(curl_slist* list) const { curl_slist_free_all(list); }
};

// One connection, reused for every request (curl keeps it alive between them).
class Connection {
 public:
  explicit Connection(const std::string& api_key) : curl_(curl_easy_init()) {
    headers_.reset(curl_slist_append(nullptr, "Content-Type: application/json"));
    const std::string auth = absl::StrCat("Authorization: Bearer ", api_key);
    headers_.reset(curl_slist_append(headers_.release(), auth.c_str()));
  }

  // The status and body of one JSON request; nullopt when the transfer failed.
  std::optional<Json> Call(const std::string& method, const std::string& url,
                           const std::string& body, long* status) {
    std::string answer;
    CURL* c = curl_.get();
    curl_easy_reset(c);
    curl_easy_setopt(c, CURLOPT_URL, url.c_str());
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers_.get());
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method.c_str());
    if (!body.empty()) {
      curl_easy_setopt(c, CURLOPT_POSTFIELDS, body.c_str());
      curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, static_cast<long>(body.size()));
    }
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, Append);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &answer);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 60L);
    if (curl_easy_perform(c) != CURLE_OK) return std::nullopt;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, status);
    Json parsed = Json::parse(answer, nullptr, /*allow_exceptions=*/false);
    if (parsed.is_discarded()) return std::nullopt;
    return parsed;
  }

  // The bytes behind `url` (read and discarded); 0 when the transfer failed.
  size_t Fetch(const std::string& url) {
    size_t bytes = 0;
    CURL* c = curl_.get();
    curl_easy_reset(c);
    curl_easy_setopt(c, CURLOPT_URL, url.c_str());
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, Discard);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &bytes);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 60L);
    if (curl_easy_perform(c) != CURLE_OK) return 0;
    return bytes;
  }

 private:
  std::unique_ptr<CURL, CurlDeleter> curl_;
  std::unique_ptr<curl_slist, ListDeleter> headers_;
};

std::string Uuid(int i) {
  // Distinct per run and per operation; the emulator only checks the UUID's shape.
  const uint64_t run = static_cast<uint64_t>(absl::ToUnixNanos(absl::Now()));
  char out[40];
  std::snprintf(out, sizeof(out), "%08x-%04x-4%03x-8%03x-%012llx",
                static_cast<unsigned>(run & 0xffffffffU), static_cast<unsigned>(i & 0xffff),
                static_cast<unsigned>((run >> 32) & 0xfff),
                static_cast<unsigned>((run >> 44) & 0xfff), static_cast<unsigned long long>(i));
  return out;
}

// The job inside an answer: Soundpiece wraps it in the route's name ({"sample": {...}}).
std::optional<Json> Job(std::optional<Json> answer) {
  if (!answer.has_value() || !answer->is_object()) return std::nullopt;
  if (answer->contains("sample") && (*answer)["sample"].is_object()) return (*answer)["sample"];
  return answer;
}

// The output URLs of a ready job ("output": one object or a list; "outputs" likewise).
std::vector<std::string> OutputUrls(const Json& job) {
  std::vector<std::string> urls;
  for (const char* key : {"output", "outputs"}) {
    if (!job.contains(key)) continue;
    const Json& value = job[key];
    if (value.is_object()) urls.push_back(value.value("url", ""));
    if (value.is_array()) {
      for (const Json& entry : value) urls.push_back(entry.value("url", ""));
    }
  }
  return urls;
}

Json Percentiles(std::vector<double> ms) {
  std::sort(ms.begin(), ms.end());
  auto at = [&](double q) {
    return ms[std::min(ms.size() - 1, static_cast<size_t>(q * static_cast<double>(ms.size())))];
  };
  return Json{{"n", ms.size()}, {"p50", at(0.5)}, {"p99", at(0.99)}, {"max", ms.back()}};
}

}  // namespace

int main(int argc, char** argv) {
  Flags flags;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (absl::StartsWith(arg, "--base_url=")) {
      flags.base_url = arg.substr(11);
    } else if (absl::StartsWith(arg, "--ops=")) {
      if (!absl::SimpleAtoi(arg.substr(6), &flags.ops) || flags.ops < 1) {
        std::fprintf(stderr, "direct_generate: --ops must be a positive number\n");
        return 2;
      }
    } else if (arg == "--fetch_outputs") {
      flags.fetch_outputs = true;
    } else {
      std::fprintf(stderr, "direct_generate: unknown flag %s\n", arg.c_str());
      return 2;
    }
  }
  const char* key = std::getenv("SOUNDPIECE_API_KEY");
  if (flags.base_url.empty() || key == nullptr || *key == '\0') {
    std::fprintf(stderr, "usage: SOUNDPIECE_API_KEY=... direct_generate --base_url=URL\n");
    return 2;
  }
  curl_global_init(CURL_GLOBAL_DEFAULT);
  Json out;
  {
    Connection connection(key);
    const std::string url = absl::StrCat(flags.base_url, "/v1/create.new_sample");
    std::vector<double> latencies;
    int errors = 0;
    size_t fetched = 0;
    const absl::Time start = absl::Now();
    for (int i = 0; i < flags.ops; ++i) {
      const absl::Time began = absl::Now();
      const Json body{{"idempotency_key", Uuid(i)},
                      {"prompt", absl::StrCat("bench sample ", i)},
                      {"duration", 2},
                      {"loopable", false}};
      long status = 0;
      std::optional<Json> dto = Job(connection.Call("PUT", url, body.dump(), &status));
      bool ok = dto.has_value() && status == 200 && dto->contains("id");
      while (ok && dto->value("status", "") != "ready") {
        if (dto->value("status", "") == "failed") {
          ok = false;
          break;
        }
        dto = Job(connection.Call(
            "GET", absl::StrCat(url, "?id=", dto->value("id", ""), "&wait=true"), "", &status));
        ok = dto.has_value() && status == 200;
      }
      if (ok && flags.fetch_outputs) {
        for (const std::string& output : OutputUrls(*dto)) {
          const size_t bytes = connection.Fetch(output);
          ok = ok && bytes > 0;
          fetched += bytes;
        }
      }
      if (!ok) {
        ++errors;
        continue;
      }
      latencies.push_back(absl::ToDoubleMilliseconds(absl::Now() - began));
    }
    out = Json{{"mode", "direct_generate"},
               {"ops", flags.ops},
               {"fetch_outputs", flags.fetch_outputs},
               {"elapsed_s", absl::ToDoubleSeconds(absl::Now() - start)},
               {"errors", errors},
               {"fetched_bytes", fetched}};
    if (!latencies.empty()) out["to_done_ms"] = Percentiles(std::move(latencies));
  }
  curl_global_cleanup();
  std::printf("%s\n", out.dump().c_str());
  return out["errors"].get<int>() == 0 ? 0 : 1;
}
