// File: loudly_catalog.h
// The Loudly catalog shipped with the gateway, for accounts whose API publishes none (the web
// dialect has no `/api/ai/genres`): the genre names Loudly documents or was seen accepting
// (../shared/providers/loudly.md §2.5 and the captured web session) and the documented structure
// ids. Operators override it per account in the config (providers[].catalog).
#pragma once

#include "adapters/provider.h"

namespace musicgw::adapters::loudly {

// Genres (exact, case-sensitive names) and structures; no example prompt, read_time unset.
const ProviderCatalog& ShippedCatalog();

}  // namespace musicgw::adapters::loudly
