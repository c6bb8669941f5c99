// File: registry.h
// The only code that names concrete adapters: builds one from its provider account config.
#pragma once

#include "absl/status/statusor.h"
#include "adapters/http/http_client.h"
#include "adapters/provider.h"
#include "adapters/shared_credentials.h"
#include "common/config.h"

namespace musicgw::adapters {

// `http` (and `shared`, when given) must outlive the adapter. `shared`: credentials every
// replica of a shared ledger uses (Loudly web OAuth tokens); null for a single node.
absl::StatusOr<ProviderAdapterPtr> CreateAdapter(const config::ProviderConfig& config,
                                                 http::Client* http,
                                                 SharedCredentialStore* shared = nullptr);

}  // namespace musicgw::adapters
