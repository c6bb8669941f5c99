#include "adapters/http/curl_http_client.h"

#include <curl/curl.h>

#include <algorithm>
#include <atomic>
#include <deque>
#include <map>
#include <thread>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/thread_priority.h"

namespace musicgw::http {
namespace {

using Task = absl::AnyInvocable<void() &&>;

// Idle easy handles kept for reuse; connections themselves live in the multi handle's cache.
constexpr size_t kMaxIdleEasyHandles = 32;

// One transfer in flight. Lives in Loop::transfers_ (loop thread only) from start to finish.
struct Transfer {
  uint64_t id = 0;
  CURL* easy = nullptr;
  Request request;
  curl_slist* header_list = nullptr;
  Response response;
  ResponseCallback done;             // Send
  StreamHandler* handler = nullptr;  // Stream
  bool headers_delivered = false;    // Stream: OnHeaders has run
  bool paused = false;               // Stream: the handler asked for no more data
  absl::Status abort_status;         // set when we stopped the transfer ourselves
  size_t body_limit = 0;
  absl::Time start;
  char errbuf[CURL_ERROR_SIZE] = {0};
};

absl::Status MapCurlError(CURLcode code, const Transfer& transfer) {
  const std::string detail =
      absl::StrCat(transfer.request.provider, " ", transfer.request.endpoint, ": ",
                   transfer.errbuf[0] != '\0' ? transfer.errbuf : curl_easy_strerror(code));
  switch (code) {
    case CURLE_OPERATION_TIMEDOUT:
      return absl::DeadlineExceededError(absl::StrCat("HTTP request timed out (", detail, ")"));
    case CURLE_ABORTED_BY_CALLBACK:
      return absl::CancelledError(absl::StrCat("HTTP request cancelled (", detail, ")"));
    case CURLE_URL_MALFORMAT:
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_BAD_FUNCTION_ARGUMENT:
      return absl::InvalidArgumentError(absl::StrCat("bad HTTP request (", detail, ")"));
    case CURLE_OUT_OF_MEMORY:
      return absl::ResourceExhaustedError(absl::StrCat("out of memory (", detail, ")"));
    default:
      // Connect, resolve, TLS, send/recv, reset, empty reply, partial body, HTTP/2 stream
      // errors: the provider could not be reached or dropped us; trying again may work.
      return absl::UnavailableError(absl::StrCat("HTTP transport error (", detail, ")"));
  }
}

absl::string_view OutcomeLabel(const absl::Status& status, int http_status) {
  if (status.ok()) {
    switch (http_status / 100) {
      case 1:
        return "1xx";
      case 2:
        return "2xx";
      case 3:
        return "3xx";
      case 4:
        return "4xx";
      case 5:
        return "5xx";
      default:
        return "error";
    }
  }
  switch (status.code()) {
    case absl::StatusCode::kDeadlineExceeded:
      return "timeout";
    case absl::StatusCode::kUnavailable:
      return "unavailable";
    case absl::StatusCode::kCancelled:
      return "cancelled";
    default:
      return "error";
  }
}

bool HasLineBreak(absl::string_view text) {
  return text.find_first_of("\r\n") != absl::string_view::npos;
}

size_t OnHeaderLine(char* buffer, size_t size, size_t count, void* user) {
  auto* transfer = static_cast<Transfer*>(user);
  const size_t n = size * count;
  absl::string_view line(buffer, n);
  while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.remove_suffix(1);
  if (absl::StartsWith(line, "HTTP/")) {
    // A new status line: a redirect or 100-continue came first; keep only the last response.
    transfer->response.headers.clear();
    return n;
  }
  const size_t colon = line.find(':');
  if (colon == absl::string_view::npos || colon == 0) return n;
  transfer->response.headers.emplace_back(
      std::string(absl::StripAsciiWhitespace(line.substr(0, colon))),
      std::string(absl::StripAsciiWhitespace(line.substr(colon + 1))));
  return n;
}

int ResponseCode(CURL* easy) {
  long code = 0;  // NOLINT(runtime/int): libcurl's type
  curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &code);
  return static_cast<int>(code);
}

size_t OnBody(char* data, size_t size, size_t count, void* user) {
  auto* transfer = static_cast<Transfer*>(user);
  const size_t n = size * count;
  if (transfer->handler == nullptr) {
    if (transfer->response.body.size() + n > transfer->body_limit) {
      transfer->abort_status = absl::ResourceExhaustedError(
          absl::StrCat("HTTP response body exceeds ", transfer->body_limit, " bytes (",
                       transfer->request.provider, " ", transfer->request.endpoint, ")"));
      return 0;
    }
    transfer->response.body.append(data, n);
    return n;
  }
  // The handler already said stop: let libcurl hold this data and pause until Resume().
  if (transfer->paused) return CURL_WRITEFUNC_PAUSE;
  if (!transfer->headers_delivered) {
    transfer->headers_delivered = true;
    transfer->response.status = ResponseCode(transfer->easy);
    if (!transfer->handler->OnHeaders(transfer->response.status, transfer->response.headers)) {
      transfer->abort_status = absl::CancelledError("stream aborted by its handler");
      return 0;
    }
  }
  if (!transfer->handler->OnData(absl::string_view(data, n))) transfer->paused = true;
  return n;
}

}  // namespace

class CurlHttpClient::Loop {
 public:
  Loop(Options options, CURLM* multi)
      : options_(std::move(options)), multi_(multi), budget_(options_.retry_budget) {}

  ~Loop() {
    for (CURL* easy : idle_) curl_easy_cleanup(easy);
    curl_multi_cleanup(multi_);
  }

  void StartThread() {
    thread_ = std::thread([this] {
      LowerCurrentThreadPriorityOrWarn(options_.loop_thread_nice, "HTTP client thread");
      Run();
    });
  }

  // Stops the loop (transfers cancelled, timers and queued work run) and joins the thread.
  void Shutdown() ABSL_LOCKS_EXCLUDED(mu_) {
    {
      absl::MutexLock lock(&mu_);
      stopping_ = true;
    }
    curl_multi_wakeup(multi_);
    if (thread_.joinable()) thread_.join();
  }

  // Queues `fn` for the loop thread. False (and `fn` dropped) once the loop has closed.
  bool Post(Task fn) ABSL_LOCKS_EXCLUDED(mu_) {
    {
      absl::MutexLock lock(&mu_);
      if (closed_) return false;
      queue_.push_back(std::move(fn));
    }
    curl_multi_wakeup(multi_);
    return true;
  }

  void AddTimer(absl::Time when, Task fn) ABSL_LOCKS_EXCLUDED(mu_) {
    {
      absl::MutexLock lock(&mu_);
      if (closed_) return;
      timers_.emplace(std::make_pair(when, next_timer_seq_++), std::move(fn));
    }
    curl_multi_wakeup(multi_);
  }

  uint64_t NextTransferId() { return next_transfer_id_.fetch_add(1) + 1; }

  // Loop thread only from here on.
  void StartTransfer(std::unique_ptr<Transfer> owned);
  void ResumeTransfer(uint64_t id);
  void CancelTransfer(uint64_t id, absl::Status why);

  const Options& options() const { return options_; }
  RetryBudget* budget() { return &budget_; }
  Stats stats() const {
    return {transfers_done_.load(std::memory_order_relaxed),
            new_connections_.load(std::memory_order_relaxed)};
  }

 private:
  void Run();
  void RunQueued() ABSL_LOCKS_EXCLUDED(mu_);
  void RunDueTimers(bool all) ABSL_LOCKS_EXCLUDED(mu_);
  int PollTimeoutMs() ABSL_LOCKS_EXCLUDED(mu_);
  void ReadCompletions();
  void Finish(Transfer* transfer, CURLcode code);
  void Drain();
  absl::Status Configure(Transfer& transfer);
  CURL* AcquireEasy();
  void ReleaseEasy(CURL* easy);

  const Options options_;
  CURLM* const multi_;
  RetryBudget budget_;
  std::thread thread_;
  std::atomic<uint64_t> next_transfer_id_{0};
  std::atomic<int64_t> transfers_done_{0};
  std::atomic<int64_t> new_connections_{0};

  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  std::deque<Task> queue_ ABSL_GUARDED_BY(mu_);
  // Ordered by (due time, sequence): equal due times run in the order they were added.
  std::map<std::pair<absl::Time, uint64_t>, Task> timers_ ABSL_GUARDED_BY(mu_);
  uint64_t next_timer_seq_ ABSL_GUARDED_BY(mu_) = 0;

  // Loop-thread state.
  absl::flat_hash_map<uint64_t, std::unique_ptr<Transfer>> transfers_;
  std::vector<CURL*> idle_;
  bool shutting_down_ = false;
};

void CurlHttpClient::Loop::Run() {
  while (true) {
    RunQueued();
    RunDueTimers(/*all=*/false);
    int running = 0;
    curl_multi_perform(multi_, &running);
    ReadCompletions();
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) break;
    }
    // Returns early on socket activity, curl's own timeouts, or curl_multi_wakeup (which is
    // sticky: a wakeup sent before this call still ends it at once).
    curl_multi_poll(multi_, nullptr, 0, PollTimeoutMs(), nullptr);
  }
  Drain();
}

void CurlHttpClient::Loop::RunQueued() {
  std::deque<Task> tasks;
  {
    absl::MutexLock lock(&mu_);
    tasks.swap(queue_);
  }
  for (Task& task : tasks) std::move(task)();
}

void CurlHttpClient::Loop::RunDueTimers(bool all) {
  std::vector<Task> due;
  {
    absl::MutexLock lock(&mu_);
    const absl::Time now = absl::Now();
    while (!timers_.empty() && (all || timers_.begin()->first.first <= now)) {
      due.push_back(std::move(timers_.begin()->second));
      timers_.erase(timers_.begin());
    }
  }
  for (Task& task : due) std::move(task)();
}

int CurlHttpClient::Loop::PollTimeoutMs() {
  absl::MutexLock lock(&mu_);
  // Wake at least once a second regardless; curl shortens the wait for its own timeouts.
  int64_t ms = 1000;
  if (!queue_.empty()) return 0;
  if (!timers_.empty()) {
    const absl::Duration until = timers_.begin()->first.first - absl::Now();
    ms = std::clamp<int64_t>(absl::ToInt64Milliseconds(absl::Ceil(until, absl::Milliseconds(1))), 0,
                             ms);
  }
  return static_cast<int>(ms);
}

void CurlHttpClient::Loop::ReadCompletions() {
  int left = 0;
  while (CURLMsg* msg = curl_multi_info_read(multi_, &left)) {
    if (msg->msg != CURLMSG_DONE) continue;
    Transfer* transfer = nullptr;
    curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &transfer);
    if (transfer != nullptr) Finish(transfer, msg->data.result);
  }
}

CURL* CurlHttpClient::Loop::AcquireEasy() {
  if (!idle_.empty()) {
    CURL* easy = idle_.back();
    idle_.pop_back();
    return easy;
  }
  return curl_easy_init();
}

void CurlHttpClient::Loop::ReleaseEasy(CURL* easy) {
  if (idle_.size() < kMaxIdleEasyHandles) {
    curl_easy_reset(easy);
    idle_.push_back(easy);
  } else {
    curl_easy_cleanup(easy);
  }
}

absl::Status CurlHttpClient::Loop::Configure(Transfer& transfer) {
  const Request& request = transfer.request;
  CURL* easy = transfer.easy;
  if (HasLineBreak(request.method) || HasLineBreak(request.url)) {
    return absl::InvalidArgumentError("line break in HTTP method or URL");
  }
  for (const auto& [name, value] : request.headers) {
    if (name.empty() || HasLineBreak(name) || HasLineBreak(value) ||
        name.find(':') != std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("malformed HTTP header name or value (", request.endpoint, ")"));
    }
    // "Name;" is libcurl's way to send a header with an empty value.
    const std::string line =
        value.empty() ? absl::StrCat(name, ";") : absl::StrCat(name, ": ", value);
    transfer.header_list = curl_slist_append(transfer.header_list, line.c_str());
  }
  // No "Expect: 100-continue" round trip before bodies.
  transfer.header_list = curl_slist_append(transfer.header_list, "Expect:");

  curl_easy_setopt(easy, CURLOPT_PRIVATE, &transfer);
  curl_easy_setopt(easy, CURLOPT_URL, request.url.c_str());
  curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(easy, CURLOPT_NOPROGRESS, 1L);
  curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, transfer.errbuf);
  curl_easy_setopt(easy, CURLOPT_USERAGENT, options_.user_agent.c_str());
  curl_easy_setopt(easy, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt(
      easy, CURLOPT_TIMEOUT_MS,
      static_cast<long>(std::max<int64_t>(1, absl::ToInt64Milliseconds(request.timeout))));
  curl_easy_setopt(
      easy, CURLOPT_CONNECTTIMEOUT_MS,
      static_cast<long>(std::max<int64_t>(1, absl::ToInt64Milliseconds(request.connect_timeout))));
  curl_easy_setopt(easy, CURLOPT_HTTPHEADER, transfer.header_list);
  curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, &OnHeaderLine);
  curl_easy_setopt(easy, CURLOPT_HEADERDATA, &transfer);
  curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, &OnBody);
  curl_easy_setopt(easy, CURLOPT_WRITEDATA, &transfer);
  // JSON calls accept compression; streamed files are taken byte for byte (offsets, hashes).
  if (transfer.handler == nullptr) curl_easy_setopt(easy, CURLOPT_ACCEPT_ENCODING, "");

  const std::string method = absl::AsciiStrToUpper(request.method);
  if (method == "GET" && request.body.empty()) {
    curl_easy_setopt(easy, CURLOPT_HTTPGET, 1L);
    if (options_.max_redirects > 0) {
      curl_easy_setopt(easy, CURLOPT_FOLLOWLOCATION, 1L);
      curl_easy_setopt(easy, CURLOPT_MAXREDIRS, static_cast<long>(options_.max_redirects));
      curl_easy_setopt(easy, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    }
  } else if (method == "HEAD") {
    curl_easy_setopt(easy, CURLOPT_NOBODY, 1L);
  } else if (!request.body.empty() || method == "POST" || method == "PUT" || method == "PATCH") {
    // The body lives in the Transfer, which outlives the easy handle's use of it.
    curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE,
                     static_cast<curl_off_t>(request.body.size()));
    curl_easy_setopt(easy, CURLOPT_POSTFIELDS, request.body.data());
    if (method != "POST") curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, request.method.c_str());
  } else {
    curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, request.method.c_str());
  }
  return absl::OkStatus();
}

void CurlHttpClient::Loop::StartTransfer(std::unique_ptr<Transfer> owned) {
  Transfer* transfer = owned.get();
  transfer->start = absl::Now();
  transfer->body_limit = options_.max_response_bytes;
  if (transfer->id == 0) transfer->id = NextTransferId();
  absl::Status status;
  if (shutting_down_) {
    status = absl::CancelledError("HTTP client shutting down");
  } else if ((transfer->easy = AcquireEasy()) == nullptr) {
    status = absl::ResourceExhaustedError("curl_easy_init failed");
  } else {
    status = Configure(*transfer);
    if (status.ok() && curl_multi_add_handle(multi_, transfer->easy) != CURLM_OK) {
      status = absl::InternalError("curl_multi_add_handle failed");
    }
  }
  transfers_.emplace(transfer->id, std::move(owned));
  if (!status.ok()) {
    transfer->abort_status = std::move(status);
    Finish(transfer, CURLE_ABORTED_BY_CALLBACK);
  }
}

void CurlHttpClient::Loop::ResumeTransfer(uint64_t id) {
  auto it = transfers_.find(id);
  if (it == transfers_.end()) return;
  Transfer* transfer = it->second.get();
  if (!transfer->paused) return;
  transfer->paused = false;
  // May deliver the held-back data (OnData) synchronously, here on the loop thread.
  curl_easy_pause(transfer->easy, CURLPAUSE_CONT);
}

void CurlHttpClient::Loop::CancelTransfer(uint64_t id, absl::Status why) {
  auto it = transfers_.find(id);
  if (it == transfers_.end()) return;
  it->second->abort_status = std::move(why);
  Finish(it->second.get(), CURLE_ABORTED_BY_CALLBACK);
}

void CurlHttpClient::Loop::Finish(Transfer* transfer, CURLcode code) {
  auto node = transfers_.extract(transfer->id);
  std::unique_ptr<Transfer> owned = std::move(node.mapped());
  if (owned->easy != nullptr) {
    curl_multi_remove_handle(multi_, owned->easy);
    long connects = 0;  // NOLINT(runtime/int): libcurl's type
    curl_easy_getinfo(owned->easy, CURLINFO_NUM_CONNECTS, &connects);
    new_connections_.fetch_add(connects, std::memory_order_relaxed);
    if (owned->response.status == 0) owned->response.status = ResponseCode(owned->easy);
    ReleaseEasy(owned->easy);
    owned->easy = nullptr;
  }
  curl_slist_free_all(owned->header_list);
  owned->header_list = nullptr;

  absl::Status status = !owned->abort_status.ok() ? owned->abort_status
                        : code == CURLE_OK        ? absl::OkStatus()
                                                  : MapCurlError(code, *owned);
  transfers_done_.fetch_add(1, std::memory_order_relaxed);
  if (HttpObserver* observer = options_.observer.get(); observer != nullptr) {
    observer->OnRequestDone(owned->request.provider, owned->request.endpoint,
                            OutcomeLabel(status, owned->response.status),
                            absl::Now() - owned->start);
  }
  if (owned->handler != nullptr) {
    if (status.ok() && !owned->headers_delivered) {
      owned->headers_delivered = true;
      if (!owned->handler->OnHeaders(owned->response.status, owned->response.headers)) {
        status = absl::CancelledError("stream aborted by its handler");
      }
    }
    owned->handler->OnComplete(std::move(status));
    return;
  }
  if (status.ok()) {
    std::move(owned->done)(std::move(owned->response));
  } else {
    std::move(owned->done)(std::move(status));
  }
}

void CurlHttpClient::Loop::Drain() {
  shutting_down_ = true;
  // Callbacks may start more work; new transfers are refused at once, so this settles quickly.
  for (int round = 0; round < 64; ++round) {
    while (!transfers_.empty()) {
      CancelTransfer(transfers_.begin()->first, absl::CancelledError("HTTP client shutting down"));
    }
    bool idle = false;
    {
      absl::MutexLock lock(&mu_);
      idle = queue_.empty() && timers_.empty();
    }
    if (idle) break;
    RunQueued();
    RunDueTimers(/*all=*/true);
  }
  std::deque<Task> dropped_tasks;
  std::map<std::pair<absl::Time, uint64_t>, Task> dropped_timers;
  {
    absl::MutexLock lock(&mu_);
    closed_ = true;
    dropped_tasks.swap(queue_);
    dropped_timers.swap(timers_);
  }
}

class CurlStreamHandle final : public StreamHandle {
 public:
  CurlStreamHandle(std::shared_ptr<CurlHttpClient::Loop> loop, uint64_t id)
      : loop_(std::move(loop)), id_(id) {}
  ~CurlStreamHandle() override { Cancel(); }

  void Resume() override {
    loop_->Post([loop = loop_.get(), id = id_] { loop->ResumeTransfer(id); });
  }
  void Cancel() override {
    loop_->Post([loop = loop_.get(), id = id_] {
      loop->CancelTransfer(id, absl::CancelledError("stream cancelled"));
    });
  }

 private:
  // Shared so a handle outliving the client is harmless: Post is refused once closed.
  const std::shared_ptr<CurlHttpClient::Loop> loop_;
  const uint64_t id_;
};

std::unique_ptr<CurlHttpClient> CurlHttpClient::Create(Options options) {
  CURLM* multi = curl_multi_init();
  if (multi == nullptr) return nullptr;
  curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, static_cast<long>(options.max_cached_connections));
  curl_multi_setopt(multi, CURLMOPT_MAX_HOST_CONNECTIONS,
                    static_cast<long>(options.max_host_connections));
  curl_multi_setopt(multi, CURLMOPT_MAX_TOTAL_CONNECTIONS,
                    static_cast<long>(options.max_total_connections));
  auto loop = std::make_shared<Loop>(std::move(options), multi);
  loop->StartThread();
  return std::unique_ptr<CurlHttpClient>(new CurlHttpClient(std::move(loop)));
}

CurlHttpClient::CurlHttpClient(std::shared_ptr<Loop> loop) : loop_(std::move(loop)) {}

CurlHttpClient::~CurlHttpClient() { loop_->Shutdown(); }

void CurlHttpClient::Send(Request request, ResponseCallback done) {
  auto transfer = std::make_unique<Transfer>();
  transfer->request = std::move(request);
  transfer->done = std::move(done);
  loop_->Post([loop = loop_.get(), transfer = std::move(transfer)]() mutable {
    loop->StartTransfer(std::move(transfer));
  });
}

std::unique_ptr<StreamHandle> CurlHttpClient::Stream(Request request, StreamHandler* handler) {
  auto transfer = std::make_unique<Transfer>();
  transfer->id = loop_->NextTransferId();
  transfer->request = std::move(request);
  transfer->handler = handler;
  const uint64_t id = transfer->id;
  loop_->Post([loop = loop_.get(), transfer = std::move(transfer)]() mutable {
    loop->StartTransfer(std::move(transfer));
  });
  return std::make_unique<CurlStreamHandle>(loop_, id);
}

void CurlHttpClient::RunAfter(absl::Duration delay, absl::AnyInvocable<void() &&> fn) {
  loop_->AddTimer(absl::Now() + std::max(delay, absl::ZeroDuration()), std::move(fn));
}

HttpObserver* CurlHttpClient::observer() const { return loop_->options().observer.get(); }

RetryBudget* CurlHttpClient::retry_budget() const { return loop_->budget(); }

CurlHttpClient::Stats CurlHttpClient::stats() const { return loop_->stats(); }

}  // namespace musicgw::http
