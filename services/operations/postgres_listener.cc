#include "services/operations/postgres_listener.h"

#include <libpq-fe.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <thread>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "services/operations/postgres_connection.h"
#include "services/operations/postgres_store.h"

namespace musicgw::operations {
namespace {

using pg::Conn;

class ListenerImpl final : public PostgresChangeListener {
 public:
  ListenerImpl(PostgresListenerOptions options, OnChange on_change, OnResync on_resync)
      : options_(std::move(options)),
        on_change_(std::move(on_change)),
        on_resync_(std::move(on_resync)),
        wake_fd_(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {
    thread_ = std::thread([this] { Loop(); });
  }

  ~ListenerImpl() override {
    stopping_ = true;
    const uint64_t one = 1;
    if (write(wake_fd_, &one, sizeof(one)) < 0) {
      // The eventfd cannot be full here; a failed write only delays the exit to the next poll.
    }
    thread_.join();
    close(wake_fd_);
  }

  bool connected() const override { return connected_; }

 private:
  // Waits up to `timeout` (infinite: -1) for `fd` or the stop signal; false once stopping.
  bool Wait(int fd, int timeout_ms) {
    pollfd fds[2] = {{wake_fd_, POLLIN, 0}, {fd, POLLIN, 0}};
    poll(fds, fd >= 0 ? 2 : 1, timeout_ms);
    return !stopping_;
  }

  Conn Connect() {
    Conn conn = pg::Connect(options_.dsn, options_.connect_timeout, "musicgw-listener");
    if (conn == nullptr || PQstatus(conn.get()) != CONNECTION_OK) return nullptr;
    std::string sql = absl::StrCat("LISTEN ", kPostgresChangeChannel);
    if (options_.on_nudge) absl::StrAppend(&sql, "; LISTEN ", kPostgresNudgeChannel);
    if (options_.on_cancel) absl::StrAppend(&sql, "; LISTEN ", kPostgresCancelChannel);
    PGresult* listen = PQexec(conn.get(), sql.c_str());
    const bool ok = PQresultStatus(listen) == PGRES_COMMAND_OK;
    PQclear(listen);
    if (!ok) return nullptr;
    return conn;
  }

  void Loop() {
    absl::Duration backoff = options_.min_backoff;
    Conn conn;
    while (!stopping_) {
      if (conn == nullptr) {
        conn = Connect();
        if (conn == nullptr) {
          if (!Wait(-1, static_cast<int>(absl::ToInt64Milliseconds(backoff)))) break;
          backoff = std::min(backoff * 2, options_.max_backoff);
          continue;
        }
        backoff = options_.min_backoff;
        connected_ = true;
        log::Info("ledger change feed listening", {});
        // Whatever was committed while nobody listened is only in the events table.
        on_resync_();
      }
      if (!Wait(PQsocket(conn.get()), -1)) break;
      if (PQconsumeInput(conn.get()) == 0 || PQstatus(conn.get()) != CONNECTION_OK) {
        log::Warning("ledger change feed lost its connection; reconnecting", {});
        connected_ = false;
        conn.reset();
        continue;
      }
      while (PGnotify* notify = PQnotifies(conn.get())) {
        const absl::string_view channel = notify->relname;
        if (channel == kPostgresNudgeChannel) {
          DeliverNudge(notify->extra);
        } else if (channel == kPostgresCancelChannel) {
          if (options_.on_cancel) options_.on_cancel(notify->extra);
        } else {
          Deliver(notify->extra);
        }
        PQfreemem(notify);
      }
    }
    connected_ = false;
  }

  void Deliver(absl::string_view payload) {
    const size_t colon = payload.rfind(':');
    int64_t sequence = 0;
    if (colon == absl::string_view::npos ||
        !absl::SimpleAtoi(payload.substr(colon + 1), &sequence)) {
      return;  // not ours
    }
    on_change_(payload.substr(0, colon), sequence);
  }

  void DeliverNudge(absl::string_view payload) {
    const size_t colon = payload.find(':');
    int provider = 0;
    if (colon == absl::string_view::npos ||
        !absl::SimpleAtoi(payload.substr(0, colon), &provider)) {
      return;  // not ours
    }
    options_.on_nudge(provider, payload.substr(colon + 1));
  }

  const PostgresListenerOptions options_;
  const OnChange on_change_;
  const OnResync on_resync_;
  const int wake_fd_;
  std::atomic<bool> stopping_{false};
  std::atomic<bool> connected_{false};
  std::thread thread_;
};

}  // namespace

std::unique_ptr<PostgresChangeListener> PostgresChangeListener::Start(
    PostgresListenerOptions options, OnChange on_change, OnResync on_resync) {
  return std::make_unique<ListenerImpl>(std::move(options), std::move(on_change),
                                        std::move(on_resync));
}

}  // namespace musicgw::operations
