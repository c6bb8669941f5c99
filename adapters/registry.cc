#include "adapters/registry.h"

#include <utility>

#include "adapters/loudly/loudly_adapter.h"
#include "adapters/soundpiece/soundpiece_adapter.h"
#include "common/status_macros.h"

namespace musicgw::adapters {

absl::StatusOr<ProviderAdapterPtr> CreateAdapter(const config::ProviderConfig& config,
                                                 http::Client* http,
                                                 SharedCredentialStore* shared) {
  switch (config.type) {
    case musicgw::v1::PROVIDER_LOUDLY: {
      MUSICGW_ASSIGN_OR_RETURN(loudly::LoudlyOptions options,
                               loudly::LoudlyOptionsFromConfig(config));
      options.shared_credentials = shared;
      MUSICGW_ASSIGN_OR_RETURN(auto adapter,
                               loudly::LoudlyAdapter::Create(std::move(options), http));
      return ProviderAdapterPtr(std::move(adapter));
    }
    case musicgw::v1::PROVIDER_SOUNDPIECE: {
      MUSICGW_ASSIGN_OR_RETURN(soundpiece::SoundpieceOptions options,
                               soundpiece::SoundpieceOptionsFromConfig(config));
      MUSICGW_ASSIGN_OR_RETURN(auto adapter,
                               soundpiece::SoundpieceAdapter::Create(std::move(options), http));
      return ProviderAdapterPtr(std::move(adapter));
    }
    default:
      return absl::InvalidArgumentError("unknown provider type");
  }
}

}  // namespace musicgw::adapters
