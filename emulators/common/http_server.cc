#include "emulators/common/http_server.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace musicgw::emulators {
namespace {

// cpp-httplib listens with a backlog of 5, far too small for a burst of benchmark clients; the
// listening socket is re-armed with a large one after bind (Linux allows a second listen()).
constexpr int kListenBacklog = 4096;

// The two ends of the connection a request came on (cpp-httplib does not hand out its socket).
struct Endpoints {
  std::string remote_addr;
  int remote_port = -1;
  int local_port = -1;
};

Endpoints EndpointsOf(const httplib::Request& req) {
  return {req.remote_addr, req.remote_port, req.local_port};
}

bool SameEndpoint(const sockaddr_storage& address, const std::string& host, int port) {
  char text[INET6_ADDRSTRLEN] = {};
  if (address.ss_family == AF_INET) {
    const auto& in = reinterpret_cast<const sockaddr_in&>(address);
    inet_ntop(AF_INET, &in.sin_addr, text, sizeof(text));
    return ntohs(in.sin_port) == port && (host.empty() || host == text);
  }
  if (address.ss_family == AF_INET6) {
    const auto& in6 = reinterpret_cast<const sockaddr_in6&>(address);
    inet_ntop(AF_INET6, &in6.sin6_addr, text, sizeof(text));
    return ntohs(in6.sin6_port) == port && (host.empty() || host == text);
  }
  return false;
}

// Resets the request's connection now: the client sees ECONNRESET (an RST), not a clean end of
// stream. The socket is found among this process's descriptors by its two ends, made to linger
// 0 s, and closed by putting /dev/null in its place (dup2), so cpp-httplib's later writes,
// reads and close act on that placeholder and cannot touch a reused descriptor number.
bool ResetConnection(const Endpoints& ends) {
  DIR* fds = opendir("/proc/self/fd");
  if (fds == nullptr) return false;
  int found = -1;
  while (const dirent* entry = readdir(fds)) {
    const int fd = std::atoi(entry->d_name);
    if (fd <= 2 || fd == dirfd(fds)) continue;
    sockaddr_storage local{};
    sockaddr_storage peer{};
    socklen_t local_size = sizeof(local);
    socklen_t peer_size = sizeof(peer);
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&local), &local_size) != 0 ||
        getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &peer_size) != 0) {
      continue;
    }
    if (SameEndpoint(local, "", ends.local_port) &&
        SameEndpoint(peer, ends.remote_addr, ends.remote_port)) {
      found = fd;
      break;
    }
  }
  closedir(fds);
  if (found < 0) return false;
  const linger abort_on_close{1, 0};
  setsockopt(found, SOL_SOCKET, SO_LINGER, &abort_on_close, sizeof(abort_on_close));
  const int placeholder = open("/dev/null", O_RDWR | O_CLOEXEC);
  if (placeholder < 0) return false;
  const bool replaced = dup2(placeholder, found) == found;
  close(placeholder);
  return replaced;
}

// Lets the client read the first half of a response body, then resets the connection.
void CutBodyInHalf(const httplib::Request& req, httplib::Response& res) {
  const Endpoints ends = EndpointsOf(req);
  httplib::ContentProvider inner;
  size_t cut = 0;
  if (res.content_provider_) {
    cut = res.content_length_ / 2;
    inner = std::move(res.content_provider_);
  } else {
    auto body = std::make_shared<std::string>(std::move(res.body));
    res.body.clear();
    cut = body->size() / 2;
    const std::string content_type = res.get_header_value("Content-Type");
    // The provider stops as soon as a write fails (the client left): a provider that ignored
    // sink.write's result would be called again at the same offset, forever, at full CPU.
    inner = [body](size_t offset, size_t length, httplib::DataSink& sink) {
      return sink.write(body->data() + offset, std::min(length, body->size() - offset));
    };
    res.set_content_provider(body->size(), content_type.empty() ? "application/json" : content_type,
                             nullptr);
  }
  res.content_provider_ = [inner = std::move(inner), cut, ends](size_t offset, size_t length,
                                                                httplib::DataSink& sink) {
    if (offset >= cut) {
      ResetConnection(ends);
      return false;
    }
    return inner(offset, std::min(length, cut - offset), sink);
  };
}

}  // namespace

HttpServer::HttpServer(HttpServerOptions options, FaultPlan* plan, DialectErrors errors)
    : options_(std::move(options)), plan_(plan), errors_(std::move(errors)) {
  const int threads = std::max(4, options_.threads);
  server_.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  // Headers and body go out in separate writes; without TCP_NODELAY, Nagle plus the peer's
  // delayed ACK adds ~40 ms to every keep-alive answer.
  server_.set_tcp_nodelay(true);
  server_.set_keep_alive_max_count(1000);
  server_.set_read_timeout(30, 0);
  server_.set_write_timeout(30, 0);
  server_.set_payload_max_length(64 << 20);
  server_.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
    if (observer_) observer_(req, res.status);
  });
}

HttpServer::~HttpServer() { Stop(); }

void HttpServer::Route(const std::string& method, const std::string& pattern, Handler handler) {
  RawRoute(
      method, pattern,
      [this, handler = std::move(handler)](const httplib::Request& req, httplib::Response& res) {
        Dispatch(handler, req, res);
      });
}

void HttpServer::RawRoute(const std::string& method, const std::string& pattern,
                          RawHandler handler) {
  if (method == "GET") {
    server_.Get(pattern, std::move(handler));
  } else if (method == "POST") {
    server_.Post(pattern, std::move(handler));
  } else if (method == "PUT") {
    server_.Put(pattern, std::move(handler));
  } else if (method == "DELETE") {
    server_.Delete(pattern, std::move(handler));
  } else if (method == "PATCH") {
    server_.Patch(pattern, std::move(handler));
  } else if (method == "OPTIONS") {
    server_.Options(pattern, std::move(handler));
  }
}

void HttpServer::Dispatch(const Handler& handler, const httplib::Request& req,
                          httplib::Response& res) {
  std::vector<Fault> faults;
  if (plan_ != nullptr) faults = plan_->Evaluate(req.method, req.path);
  if (faults.empty()) {
    handler(req, res, faults);
    return;
  }
  absl::Duration delay;
  for (const Fault& fault : faults) {
    if (fault.action != FaultAction::kHang) delay += fault.delay;
  }
  if (delay > absl::ZeroDuration() && !SleepUnlessStopped(delay)) return;

  if (const Fault* hang = FaultPlan::Find(faults, FaultAction::kHang)) {
    SleepUnlessStopped(hang->delay > absl::ZeroDuration() ? hang->delay : absl::Seconds(60));
    res.status = 200;
    res.set_content_provider(1, "application/json",
                             [](size_t, size_t, httplib::DataSink&) { return false; });
    return;
  }
  const auto answer_with = [&](int status, const std::string& body, const std::string& type,
                               absl::Duration retry_after) {
    res.status = status;
    res.set_content(body, type);
    if (retry_after > absl::ZeroDuration()) {
      res.set_header("Retry-After", absl::StrCat(absl::ToInt64Seconds(retry_after)));
    }
  };
  if (const Fault* f = FaultPlan::Find(faults, FaultAction::kStatus)) {
    const std::string body =
        !f->body.empty() ? f->body : (errors_.error_body ? errors_.error_body(f->status) : "{}");
    answer_with(f->status, body, f->content_type, f->retry_after);
    return;
  }
  if (const Fault* f = FaultPlan::Find(faults, FaultAction::kRateLimit)) {
    const absl::Duration after =
        f->retry_after > absl::ZeroDuration() ? f->retry_after : absl::Seconds(1);
    const std::string body =
        !f->body.empty() ? f->body
                         : (errors_.rate_limit_body ? errors_.rate_limit_body(after) : "{}");
    answer_with(f->status == 503 ? 429 : f->status, body, f->content_type, after);
    return;
  }
  if (const Fault* f = FaultPlan::Find(faults, FaultAction::kQuotaExhausted)) {
    auto [status, body] = errors_.quota_exhausted ? errors_.quota_exhausted()
                                                  : std::pair<int, std::string>(500, "{}");
    answer_with(status, f->body.empty() ? body : f->body, f->content_type, absl::ZeroDuration());
    return;
  }
  const Fault* reset = FaultPlan::Find(faults, FaultAction::kReset);
  if (reset != nullptr && reset->before) {
    // Reset before any byte of the answer; what cpp-httplib then writes goes to the placeholder.
    ResetConnection(EndpointsOf(req));
    res.status = 500;
    return;
  }

  handler(req, res, faults);

  if (reset != nullptr) {
    CutBodyInHalf(req, res);
  } else if (FaultPlan::Find(faults, FaultAction::kTruncate) != nullptr) {
    const std::string type = res.get_header_value("Content-Type");
    res.set_content(res.body.substr(0, res.body.size() / 2),
                    type.empty() ? "application/json" : type);
  } else if (const Fault* f = FaultPlan::Find(faults, FaultAction::kMalformed)) {
    res.set_content(f->body.empty() ? std::string("{\"detail\": [{\"loc\": <html>oops") : f->body,
                    "application/json");
  }
}

absl::Status HttpServer::Start() {
  server_.set_socket_options([this](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    listen_fd_ = sock;
  });
  if (options_.port == 0) {
    port_ = server_.bind_to_any_port(options_.host);
    if (port_ < 0) port_ = 0;
  } else if (server_.bind_to_port(options_.host, options_.port)) {
    port_ = options_.port;
  }
  if (port_ <= 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", options_.host, ":", options_.port));
  }
  if (listen_fd_ >= 0) ::listen(listen_fd_, kListenBacklog);
  listener_ = std::thread([this] { server_.listen_after_bind(); });
  // cpp-httplib's stop() is a no-op until the listener thread has marked itself running, which
  // would leave a quick Start-then-Stop blocked in accept() forever; wait for it here.
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (!server_.is_running() && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(1));
  if (!server_.is_running()) return absl::UnavailableError("the HTTP listener did not start");
  return absl::OkStatus();
}

void HttpServer::Stop() {
  if (stopping_.exchange(true)) {
    if (listener_.joinable()) listener_.join();
    return;
  }
  if (!stopped_.HasBeenNotified()) stopped_.Notify();
  server_.stop();
  if (listener_.joinable()) listener_.join();
}

std::string HttpServer::base_url() const {
  return absl::StrCat("http://", options_.host == "0.0.0.0" ? "127.0.0.1" : options_.host, ":",
                      port_);
}

bool HttpServer::SleepUnlessStopped(absl::Duration d) {
  return !stopped_.WaitForNotificationWithTimeout(d);
}

absl::Status ServeFile(const std::string& path, const std::string& content_type,
                       httplib::Response& res) {
  std::FILE* probe = std::fopen(path.c_str(), "rb");
  if (probe == nullptr) return absl::NotFoundError(absl::StrCat("no file ", path));
  std::fseek(probe, 0, SEEK_END);
  const long size = std::ftell(probe);
  std::fclose(probe);
  if (size < 0) return absl::InternalError(absl::StrCat("cannot size ", path));
  // One stream per response, opened lazily and closed by the releaser.
  auto file = std::make_shared<std::ifstream>();
  res.set_content_provider(
      static_cast<size_t>(size), content_type,
      [file, path](size_t offset, size_t length, httplib::DataSink& sink) {
        if (!file->is_open()) {
          file->open(path, std::ios::binary);
          if (!file->is_open()) return false;
        }
        char buffer[64 * 1024];
        file->seekg(static_cast<std::streamoff>(offset));
        const size_t want = std::min(length, sizeof(buffer));
        file->read(buffer, static_cast<std::streamsize>(want));
        const auto got = file->gcount();
        if (got <= 0) return false;
        return sink.write(buffer, static_cast<size_t>(got));
      },
      [file](bool) { file->close(); });
  return absl::OkStatus();
}

}  // namespace musicgw::emulators
