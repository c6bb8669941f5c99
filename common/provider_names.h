// File: provider_names.h
// The one way to name a provider: its enum name for ErrorInfo metadata ("PROVIDER_LOUDLY"),
// and its slug for subjects, logs and config ("loudly").
#pragma once

#include <string>

#include "absl/strings/string_view.h"
#include "musicgw/v1/musicgw.pb.h"

namespace musicgw {

// "PROVIDER_LOUDLY".
std::string ProviderEnumName(musicgw::v1::Provider provider);
// "loudly", "soundpiece"; "unspecified" for PROVIDER_UNSPECIFIED.
std::string ProviderSlug(musicgw::v1::Provider provider);
// The inverse of ProviderSlug; PROVIDER_UNSPECIFIED when unknown.
musicgw::v1::Provider ProviderFromSlug(absl::string_view slug);

}  // namespace musicgw
