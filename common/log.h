// File: log.h
// Structured logs: one JSON object per line on stderr, so log pipelines need no parser rules.
// Never pass secrets (keys, tokens, signatures) or request bodies as fields.
#pragma once

#include <initializer_list>
#include <string>
#include <utility>

#include "absl/strings/string_view.h"

namespace musicgw::log {

enum class Level { kDebug, kInfo, kWarning, kError };

// A field value: strings, numbers and booleans.
class Value {
 public:
  Value(const char* s) : kind_(kString), string_(s) {}         // NOLINT: implicit for brevity
  Value(absl::string_view s) : kind_(kString), string_(s) {}   // NOLINT
  Value(const std::string& s) : kind_(kString), string_(s) {}  // NOLINT
  Value(int v) : kind_(kInt), int_(v) {}                       // NOLINT
  Value(long v) : kind_(kInt), int_(v) {}                      // NOLINT
  Value(long long v) : kind_(kInt), int_(v) {}                 // NOLINT
  Value(unsigned long v) : kind_(kInt), int_(static_cast<long long>(v)) {}  // NOLINT
  Value(double v) : kind_(kDouble), double_(v) {}                           // NOLINT
  Value(bool v) : kind_(kBool), int_(v) {}                                  // NOLINT

  enum Kind { kString, kInt, kDouble, kBool };
  Kind kind() const { return kind_; }
  const std::string& string() const { return string_; }
  long long integer() const { return int_; }
  double real() const { return double_; }

 private:
  Kind kind_;
  std::string string_;
  long long int_ = 0;
  double double_ = 0;
};

using Fields = std::initializer_list<std::pair<absl::string_view, Value>>;

// Lines below this level are dropped. Default kInfo.
void SetMinLevel(Level level);
// Writes one line: {"ts":..., "level":..., "msg":..., <fields>}. Thread-safe.
void Write(Level level, absl::string_view message, Fields fields = {});

inline void Info(absl::string_view message, Fields fields = {}) {
  Write(Level::kInfo, message, fields);
}
inline void Warning(absl::string_view message, Fields fields = {}) {
  Write(Level::kWarning, message, fields);
}
inline void Error(absl::string_view message, Fields fields = {}) {
  Write(Level::kError, message, fields);
}
inline void Debug(absl::string_view message, Fields fields = {}) {
  Write(Level::kDebug, message, fields);
}

}  // namespace musicgw::log
