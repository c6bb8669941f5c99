#include "common/tls_http_server.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/log.h"

namespace musicgw::tls {
namespace {

struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
struct KeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
struct ChainFree {
  void operator()(STACK_OF(X509) * s) const { sk_X509_pop_free(s, X509_free); }
};
struct StoreFree {
  void operator()(X509_STORE* s) const { X509_STORE_free(s); }
};
struct NamesFree {
  void operator()(STACK_OF(X509_NAME) * s) const { sk_X509_NAME_pop_free(s, X509_NAME_free); }
};
struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

std::unique_ptr<BIO, BioFree> MemoryBio(const std::string& pem) {
  return std::unique_ptr<BIO, BioFree>(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
}

// Every certificate in a PEM text, in order.
std::vector<std::unique_ptr<X509, X509Free>> ReadCertificates(const std::string& pem) {
  std::vector<std::unique_ptr<X509, X509Free>> out;
  auto bio = MemoryBio(pem);
  while (bio != nullptr) {
    X509* cert = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr);
    if (cert == nullptr) break;
    out.emplace_back(cert);
  }
  ERR_clear_error();  // the end of the text reads as an error
  return out;
}

}  // namespace

struct ServerFiles::Material {
  std::string cert_pem, key_pem, ca_pem;  // what was read, to tell a change
  std::unique_ptr<X509, X509Free> leaf;
  std::unique_ptr<STACK_OF(X509), ChainFree> chain;
  std::unique_ptr<EVP_PKEY, KeyFree> key;
  std::unique_ptr<X509_STORE, StoreFree> client_ca;  // null without mTLS
  std::unique_ptr<STACK_OF(X509_NAME), NamesFree> client_ca_names;
};

namespace {

using Material = ServerFiles::Material;

absl::StatusOr<std::shared_ptr<const Material>> Parse(std::string cert_pem, std::string key_pem,
                                                      std::string ca_pem, const std::string& where,
                                                      bool mtls) {
  auto material = std::make_shared<Material>();
  auto certs = ReadCertificates(cert_pem);
  if (certs.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ".cert_file: no PEM certificate"));
  }
  material->leaf = std::move(certs.front());
  material->chain.reset(sk_X509_new_null());
  for (size_t i = 1; i < certs.size(); ++i) {
    X509* cert = certs[i].release();  // the chain owns it from here
    if (sk_X509_push(material->chain.get(), cert) <= 0) X509_free(cert);
  }
  auto key_bio = MemoryBio(key_pem);
  material->key.reset(key_bio == nullptr
                          ? nullptr
                          : PEM_read_bio_PrivateKey(key_bio.get(), nullptr, nullptr, nullptr));
  ERR_clear_error();
  if (material->key == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(where, ".key_file: no PEM private key"));
  }
  if (X509_check_private_key(material->leaf.get(), material->key.get()) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError(
        absl::StrCat(where, ".key_file: the key does not match the certificate"));
  }
  if (mtls) {
    auto cas = ReadCertificates(ca_pem);
    if (cas.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ".client_ca_file: no PEM certificate"));
    }
    material->client_ca.reset(X509_STORE_new());
    material->client_ca_names.reset(sk_X509_NAME_new_null());
    for (const auto& ca : cas) {
      X509_STORE_add_cert(material->client_ca.get(), ca.get());
      X509_NAME* name = X509_NAME_dup(X509_get_subject_name(ca.get()));
      if (name != nullptr && sk_X509_NAME_push(material->client_ca_names.get(), name) <= 0) {
        X509_NAME_free(name);
      }
    }
    ERR_clear_error();
  }
  material->cert_pem = std::move(cert_pem);
  material->key_pem = std::move(key_pem);
  material->ca_pem = std::move(ca_pem);
  return std::shared_ptr<const Material>(std::move(material));
}

}  // namespace

ServerFiles::ServerFiles(config::TlsConfig tls, std::string where, const Clock& clock)
    : tls_(std::move(tls)), where_(std::move(where)), clock_(clock) {}

ServerFiles::~ServerFiles() = default;

absl::StatusOr<std::shared_ptr<ServerFiles>> ServerFiles::Load(const config::TlsConfig& tls,
                                                               std::string where,
                                                               const Clock& clock) {
  std::shared_ptr<ServerFiles> files(new ServerFiles(tls, std::move(where), clock));
  auto cert = ReadFile(tls.cert_file);
  auto key = ReadFile(tls.key_file);
  absl::StatusOr<std::string> ca = std::string();
  if (!tls.client_ca_file.empty()) ca = ReadFile(tls.client_ca_file);
  for (const auto* read : {&cert, &key, &ca}) {
    if (!read->ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(files->where_, ": ", read->status().message()));
    }
  }
  auto material = Parse(*std::move(cert), *std::move(key), *std::move(ca), files->where_,
                        !tls.client_ca_file.empty());
  if (!material.ok()) return material.status();
  absl::MutexLock lock(&files->mu_);
  files->material_ = *std::move(material);
  files->checked_ = clock.Now();
  return files;
}

std::shared_ptr<const Material> ServerFiles::Current() {
  absl::MutexLock lock(&mu_);
  const absl::Time now = clock_.Now();
  if (now - checked_ < tls_.reload_interval) return material_;
  checked_ = now;
  // Unchanged files (the common case) cost three small reads and compares.
  auto cert = ReadFile(tls_.cert_file);
  auto key = ReadFile(tls_.key_file);
  absl::StatusOr<std::string> ca = std::string();
  if (!tls_.client_ca_file.empty()) ca = ReadFile(tls_.client_ca_file);
  if (!cert.ok() || !key.ok() || !ca.ok()) {
    log::Warning(absl::StrCat(where_, ": cannot re-read the TLS files; keeping the last ones"));
    return material_;
  }
  if (*cert == material_->cert_pem && *key == material_->key_pem && *ca == material_->ca_pem) {
    return material_;
  }
  auto fresh = Parse(*std::move(cert), *std::move(key), *std::move(ca), where_,
                     !tls_.client_ca_file.empty());
  if (!fresh.ok()) {
    // Likely caught between the writes of a renewal; the next check sees the finished set.
    log::Warning(absl::StrCat(where_, ": changed TLS files not usable (", fresh.status().message(),
                              "); keeping the last ones"));
    return material_;
  }
  material_ = *std::move(fresh);
  log::Info(absl::StrCat(where_, ": TLS certificate reloaded"));
  return material_;
}

std::string ServerFiles::NextCertificatePem() { return Current()->cert_pem; }

// OpenSSL's certificate callback: runs in each handshake before the server's certificate and
// its certificate request are sent, so both come from the current files.
int ServerFiles::OnHandshake(SSL* ssl, void* self) {
  std::shared_ptr<const Material> material = static_cast<ServerFiles*>(self)->Current();
  // SSL_use_cert_and_key takes its own references to the certificate, chain and key.
  if (SSL_use_cert_and_key(ssl, material->leaf.get(), material->key.get(), material->chain.get(),
                           1) != 1) {
    return 0;
  }
  if (material->client_ca != nullptr) {
    if (SSL_set1_verify_cert_store(ssl, material->client_ca.get()) != 1) return 0;
    SSL_set_client_CA_list(ssl, SSL_dup_CA_list(material->client_ca_names.get()));
  }
  return 1;
}

bool ServerFiles::SetUp(SSL_CTX& ctx) {
  SSL_CTX_set_min_proto_version(&ctx, TLS1_2_VERSION);
  SSL_CTX_set_cert_cb(&ctx, &ServerFiles::OnHandshake, this);
  if (!tls_.client_ca_file.empty()) {
    SSL_CTX_set_verify(&ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  }
  return true;
}

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Create(const config::TlsConfig& tls,
                                                               std::string where,
                                                               const Clock& clock) {
  std::unique_ptr<HttpServer> server(new HttpServer());
  if (!tls.enabled()) {
    server->server_ = std::make_unique<httplib::Server>();
    return server;
  }
  auto files = ServerFiles::Load(tls, std::move(where), clock);
  if (!files.ok()) return files.status();
  server->files_ = *std::move(files);
  ServerFiles* raw = server->files_.get();
  auto ssl = std::make_unique<httplib::SSLServer>([raw](SSL_CTX& ctx) { return raw->SetUp(ctx); });
  if (!ssl->is_valid()) return absl::InternalError("cannot set up a TLS context");
  server->server_ = std::move(ssl);
  return server;
}

}  // namespace musicgw::tls
