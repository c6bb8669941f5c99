// File: tls_http_server.h
// The HTTP servers of the metrics and webhook ports, plaintext or TLS (TlsConfig, the shape of
// the gRPC port's server.tls). With TLS, every handshake uses the certificate, key and client
// CA last read from the configured files; the files are re-read when a handshake finds them
// older than reload_interval, and a changed set that parses replaces the old one, so a renewed
// certificate takes effect without a restart (as gRPC's file watcher does on the gRPC port).
// A changed set that does not parse (a half-written file) is logged and the previous one kept.
#pragma once

#include <httplib.h>

#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "common/config.h"

namespace musicgw::tls {

// Certificate, key and optional client CA read from files; what a handshake installs.
class ServerFiles {
 public:
  // Reads and checks the files now: INVALID_ARGUMENT naming `where` (e.g. "server.metrics_tls")
  // when one cannot be read or parsed, or the key does not match the certificate.
  static absl::StatusOr<std::shared_ptr<ServerFiles>> Load(const config::TlsConfig& tls,
                                                           std::string where,
                                                           const Clock& clock = Clock::Real());
  ~ServerFiles();
  ServerFiles(const ServerFiles&) = delete;
  ServerFiles& operator=(const ServerFiles&) = delete;

  // Sets `ctx` up to take its certificate from this object at each handshake (and to require
  // a client certificate from the client CA, when one is configured). This object must outlive
  // every connection made with `ctx`.
  bool SetUp(SSL_CTX& ctx);
  // The certificate (PEM, as read) the next handshake presents: re-reads the files if due.
  std::string NextCertificatePem();

  struct Material;

 private:
  ServerFiles(config::TlsConfig tls, std::string where, const Clock& clock);
  // The material to use now, re-reading the files if they are due.
  std::shared_ptr<const Material> Current();
  static int OnHandshake(SSL* ssl, void* self);

  const config::TlsConfig tls_;
  const std::string where_;
  const Clock& clock_;
  absl::Mutex mu_;
  std::shared_ptr<const Material> material_ ABSL_GUARDED_BY(mu_);
  absl::Time checked_ ABSL_GUARDED_BY(mu_);
};

// An httplib server for one port: plaintext when `tls` is not enabled, else TLS from its files.
class HttpServer {
 public:
  static absl::StatusOr<std::unique_ptr<HttpServer>> Create(const config::TlsConfig& tls,
                                                            std::string where,
                                                            const Clock& clock = Clock::Real());
  httplib::Server& server() { return *server_; }
  bool tls() const { return files_ != nullptr; }

 private:
  HttpServer() = default;
  // Declared first: destroyed after the server and its connections.
  std::shared_ptr<ServerFiles> files_;
  std::unique_ptr<httplib::Server> server_;
};

}  // namespace musicgw::tls
