#include "common/provider_names.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace musicgw {

std::string ProviderEnumName(musicgw::v1::Provider provider) {
  return musicgw::v1::Provider_Name(provider);
}

std::string ProviderSlug(musicgw::v1::Provider provider) {
  return absl::AsciiStrToLower(
      absl::StripPrefix(musicgw::v1::Provider_Name(provider), "PROVIDER_"));
}

musicgw::v1::Provider ProviderFromSlug(absl::string_view slug) {
  musicgw::v1::Provider provider = musicgw::v1::PROVIDER_UNSPECIFIED;
  if (slug.empty() || !musicgw::v1::Provider_Parse(
                          absl::StrCat("PROVIDER_", absl::AsciiStrToUpper(slug)), &provider)) {
    return musicgw::v1::PROVIDER_UNSPECIFIED;
  }
  return provider;
}

}  // namespace musicgw
