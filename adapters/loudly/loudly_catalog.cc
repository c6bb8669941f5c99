#include "adapters/loudly/loudly_catalog.h"

#include <string>
#include <utility>

namespace musicgw::adapters::loudly {
namespace {

musicgw::v1::SongStructure Structure(int32_t id, const char* name) {
  musicgw::v1::SongStructure structure;
  structure.set_id(id);
  structure.set_name(name);
  return structure;
}

ProviderCatalog Build() {
  ProviderCatalog catalog;
  // The genre list of loudly.md §2.5, then the names the web app accepted in the capture.
  catalog.genres = {"Ambient",
                    "Downtempo",
                    "Drum 'n' Bass",
                    "EDM",
                    "Epic Score",
                    "Hip Hop",
                    "House",
                    "Lo Fi",
                    "Reggaeton",
                    "Rock",
                    "Synthwave",
                    "Techno",
                    "Trap Double Tempo",
                    "Trap Half Tempo",
                    "Zen",
                    "Deep House",
                    "Alternative Hip Hop"};
  // Structure 2 is documented by an official client's test; 0 ("Classic") by a third party.
  catalog.structures = {Structure(0, "Classic"), Structure(2, "Intro-Verse-Chorus")};
  return catalog;
}

}  // namespace

const ProviderCatalog& ShippedCatalog() {
  static const ProviderCatalog* const catalog = new ProviderCatalog(Build());
  return *catalog;
}

}  // namespace musicgw::adapters::loudly
