// File: capabilities.h
// The one table of what each provider accepts: tasks, fields and their ranges. The request
// validator, routing and ListProviders all read it, so they can never disagree.
#pragma once

#include <vector>

#include "absl/status/status.h"
#include "musicgw/v1/musicgw.pb.h"

namespace musicgw::adapters {

// Every task `provider` supports, with the fields it honours and their ranges.
const std::vector<musicgw::v1::TaskCapability>& Capabilities(musicgw::v1::Provider provider);

// The task kind of a request (TASK_KIND_UNSPECIFIED when no task is set).
musicgw::v1::TaskKind TaskKindOf(const musicgw::v1::GenerateRequest& request);

// OK when `provider` supports the request's task and honours every field that is set, with
// every value in range; otherwise INVALID_ARGUMENT with a BadRequest naming the first offending
// field path (e.g. "text_to_music.duration_seconds").
absl::Status CheckCapabilities(musicgw::v1::Provider provider,
                               const musicgw::v1::GenerateRequest& request);

// The providers that support the task kind, in routing order.
std::vector<musicgw::v1::Provider> ProvidersFor(musicgw::v1::TaskKind task);

}  // namespace musicgw::adapters
