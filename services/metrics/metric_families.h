// File: metric_families.h
// Building blocks of the metrics module (metrics.cc only): bounded label values, label
// normalisation of enums, cached children of push families, and families assembled at scrape
// time.
#pragma once

#include <array>
#include <exception>
#include <initializer_list>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "musicgw/v1/musicgw.pb.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/histogram.h"
#include "prometheus/metric_family.h"
#include "prometheus/registry.h"

namespace musicgw::metrics::internal {

namespace v1 = ::musicgw::v1;
using prometheus::Counter;
using prometheus::Histogram;

inline constexpr char kOther[] = "other";

template <size_t N>
inline bool OneOf(absl::string_view value, const std::array<absl::string_view, N>& set) {
  return std::find(set.begin(), set.end(), value) != set.end();
}

inline std::string EnumLabel(bool valid, const std::string& name, absl::string_view prefix) {
  if (!valid) return kOther;
  return absl::AsciiStrToLower(absl::StripPrefix(name, prefix));
}

inline std::string ProviderLabel(v1::Provider provider) {
  if (provider == v1::PROVIDER_UNSPECIFIED) return "unspecified";
  return EnumLabel(v1::Provider_IsValid(provider), v1::Provider_Name(provider), "PROVIDER_");
}
inline std::string TaskLabel(v1::TaskKind task) {
  return EnumLabel(v1::TaskKind_IsValid(task), v1::TaskKind_Name(task), "TASK_KIND_");
}
inline std::string StateLabel(v1::OperationState state) {
  return EnumLabel(v1::OperationState_IsValid(state), v1::OperationState_Name(state),
                   "OPERATION_STATE_");
}
inline std::string CodeLabel(int code) {
  if (code < 0 || code > 16) return kOther;
  return absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
}

// A value an open-ended label may carry: short, and nothing that could be an id with spaces,
// a URL or free text.
inline bool PlausibleLabelValue(absl::string_view value) {
  if (value.empty() || value.size() > 64) return false;
  return std::all_of(value.begin(), value.end(), [](char c) {
    return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.' ||
           c == ':';
  });
}

inline double Seconds(absl::Time time) { return absl::ToDoubleSeconds(time - absl::UnixEpoch()); }

// The first `cap` distinct plausible values are kept; later ones collapse to "other", so a
// misbehaving caller cannot grow the series count without bound.
class BoundedValues {
 public:
  BoundedValues(size_t cap, Counter* collapsed) : cap_(cap), collapsed_(collapsed) {}

  std::string Normalize(absl::string_view value) ABSL_LOCKS_EXCLUDED(mu_) {
    if (PlausibleLabelValue(value)) {
      absl::MutexLock lock(&mu_);
      if (seen_.contains(value)) return std::string(value);
      if (seen_.size() < cap_) {
        seen_.emplace(value);
        return std::string(value);
      }
    }
    collapsed_->Increment();
    return kOther;
  }

 private:
  const size_t cap_;
  Counter* const collapsed_;
  absl::Mutex mu_;
  absl::flat_hash_set<std::string> seen_ ABSL_GUARDED_BY(mu_);
};

// Children of one family by label values, created once: Family::Add hashes a std::map of
// labels under the family's lock, too slow for every event.
template <typename T>
class Children {
 public:
  Children(prometheus::Family<T>& family, std::vector<std::string> names,
           Histogram::BucketBoundaries buckets = {})
      : family_(family), names_(std::move(names)), buckets_(std::move(buckets)) {
    if constexpr (std::is_same_v<T, Histogram>) {
      sink_ = std::make_unique<T>(buckets_);
    } else {
      sink_ = std::make_unique<T>();
    }
  }

  T& Get(std::initializer_list<std::string> values) ABSL_LOCKS_EXCLUDED(mu_) {
    std::string key = absl::StrJoin(values, "\x1f");
    absl::MutexLock lock(&mu_);
    auto it = children_.find(key);
    if (it != children_.end()) return *it->second;
    prometheus::Labels labels;
    size_t i = 0;
    for (const std::string& value : values) {
      if (i < names_.size()) labels.emplace(names_[i++], value);
    }
    T* child = sink_.get();
    try {
      if constexpr (std::is_same_v<T, Histogram>) {
        child = &family_.Add(labels, buckets_);
      } else {
        child = &family_.Add(labels);
      }
    } catch (const std::exception&) {
      // Only a programming error (bad label name) gets here; the event goes to an unexported
      // sink rather than throwing into the caller's thread.
    }
    children_.emplace(std::move(key), child);
    return *child;
  }

 private:
  prometheus::Family<T>& family_;
  const std::vector<std::string> names_;
  const Histogram::BucketBoundaries buckets_;
  std::unique_ptr<T> sink_;
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, T*> children_ ABSL_GUARDED_BY(mu_);
};

template <typename T>
prometheus::Family<T>& Register(prometheus::detail::Builder<T> builder, const std::string& name,
                                const std::string& help, prometheus::Registry& registry) {
  return builder.Name(name).Help(help).Register(registry);
}

// One family assembled at scrape time; a label set seen twice keeps its first value.
class PullFamily {
 public:
  PullFamily(std::string name, std::string help, prometheus::MetricType type) {
    family_.name = std::move(name);
    family_.help = std::move(help);
    family_.type = type;
  }

  void Add(const std::vector<std::pair<std::string, std::string>>& labels, double value) {
    std::string key;
    for (const auto& [name, label] : labels) absl::StrAppend(&key, name, "\x1f", label, "\x1f");
    if (!keys_.insert(std::move(key)).second) return;
    prometheus::ClientMetric metric;
    for (const auto& [name, label] : labels) metric.label.push_back({name, label});
    if (family_.type == prometheus::MetricType::Counter) {
      metric.counter.value = value;
    } else {
      metric.gauge.value = value;
    }
    family_.metric.push_back(std::move(metric));
  }

  void MoveTo(std::vector<prometheus::MetricFamily>& out) {
    if (!family_.metric.empty()) out.push_back(std::move(family_));
  }

 private:
  prometheus::MetricFamily family_;
  absl::flat_hash_set<std::string> keys_;
};

}  // namespace musicgw::metrics::internal
