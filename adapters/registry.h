// File: registry.h
// The only code that names concrete adapters: builds one from its provider account config.
#pragma once

#include "absl/status/statusor.h"
#include "adapters/http/http_client.h"
#include "adapters/provider.h"
#include "common/config.h"

namespace musicgw::adapters {

// `http` must outlive the adapter.
absl::StatusOr<ProviderAdapterPtr> CreateAdapter(const config::ProviderConfig& config,
                                                 http::Client* http);

}  // namespace musicgw::adapters
