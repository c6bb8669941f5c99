#include "emulators/common/fault_plan.h"

#include <algorithm>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "emulators/common/util.h"

namespace musicgw::emulators {
namespace {

constexpr std::pair<FaultAction, const char*> kActionNames[] = {
    {FaultAction::kLatency, "latency"},
    {FaultAction::kStatus, "status"},
    {FaultAction::kRateLimit, "rate_limit"},
    {FaultAction::kQuotaExhausted, "quota_exhausted"},
    {FaultAction::kReset, "reset"},
    {FaultAction::kHang, "hang"},
    {FaultAction::kTruncate, "truncate"},
    {FaultAction::kMalformed, "malformed"},
    {FaultAction::kFailOperation, "fail_operation"},
    {FaultAction::kExpireUrl, "expire_url"},
    {FaultAction::kWebhookLost, "webhook_lost"},
    {FaultAction::kWebhookDuplicate, "webhook_duplicate"},
    {FaultAction::kWebhookBadSignature, "webhook_bad_signature"},
};

absl::StatusOr<FaultRule> ParseRule(const nlohmann::json& j) {
  if (!j.is_object()) return absl::InvalidArgumentError("fault rule must be an object");
  FaultRule rule;
  rule.source = j.dump();
  const std::string match = j.value("match", std::string("*"));
  const size_t space = match.find(' ');
  if (space == std::string::npos) {
    rule.method = "*";
    rule.path = match;
  } else {
    rule.method = absl::AsciiStrToUpper(match.substr(0, space));
    rule.path = match.substr(space + 1);
  }
  if (rule.path.empty()) rule.path = "*";
  if (j.contains("nth")) {
    const auto& nth = j["nth"];
    if (nth.is_number_integer()) {
      rule.nth.push_back(nth.get<int64_t>());
    } else if (nth.is_array()) {
      for (const auto& n : nth) {
        if (!n.is_number_integer()) return absl::InvalidArgumentError("nth must hold integers");
        rule.nth.push_back(n.get<int64_t>());
      }
    } else {
      return absl::InvalidArgumentError("nth must be an integer or an array of integers");
    }
  }
  const std::string action = j.value("action", std::string("status"));
  bool known = false;
  for (const auto& [value, name] : kActionNames) {
    if (action == name) {
      rule.action = value;
      known = true;
    }
  }
  if (!known) return absl::InvalidArgumentError(absl::StrCat("unknown fault action: ", action));
  auto number = [&](const char* key, double fallback) {
    return j.contains(key) && j[key].is_number() ? j[key].get<double>() : fallback;
  };
  rule.probability = number("probability", 1.0);
  rule.times = static_cast<int64_t>(number("times", -1));
  rule.status =
      static_cast<int>(number("status", rule.action == FaultAction::kRateLimit ? 429 : 503));
  rule.delay = absl::Milliseconds(number("delay_ms", 0));
  rule.retry_after = absl::Seconds(number("retry_after", 0));
  rule.url_ttl = absl::Milliseconds(number("url_ttl_ms", 0));
  rule.before = j.value("before", false);
  if (j.contains("body")) {
    rule.body = j["body"].is_string() ? j["body"].get<std::string>() : j["body"].dump();
  }
  rule.content_type = j.value("content_type", rule.content_type);
  rule.error_code = j.value("error_code", rule.error_code);
  rule.error_message = j.value("error_message", rule.error_message);
  return rule;
}

bool Matches(const FaultRule& rule, absl::string_view method, absl::string_view path) {
  if (rule.method != "*" && rule.method != method) return false;
  if (rule.path == "*") return true;
  if (absl::EndsWith(rule.path, "*")) {
    return absl::StartsWith(path, absl::string_view(rule.path).substr(0, rule.path.size() - 1));
  }
  return rule.path == path;
}

}  // namespace

const char* FaultActionName(FaultAction action) {
  for (const auto& [value, name] : kActionNames) {
    if (value == action) return name;
  }
  return "unknown";
}

absl::StatusOr<std::vector<FaultRule>> ParseFaultRules(absl::string_view json, uint64_t* seed) {
  std::vector<FaultRule> rules;
  if (absl::StripAsciiWhitespace(json).empty()) return rules;
  const nlohmann::json doc = ParseJson(json);
  if (doc.is_discarded()) return absl::InvalidArgumentError("fault plan is not valid JSON");
  const nlohmann::json* list = &doc;
  if (doc.is_object()) {
    if (doc.contains("seed") && doc["seed"].is_number_unsigned() && seed != nullptr) {
      *seed = doc["seed"].get<uint64_t>();
    }
    if (!doc.contains("rules")) return rules;
    list = &doc["rules"];
  }
  if (!list->is_array()) return absl::InvalidArgumentError("fault plan rules must be an array");
  for (const auto& item : *list) {
    auto rule = ParseRule(item);
    if (!rule.ok()) return rule.status();
    rules.push_back(*std::move(rule));
  }
  return rules;
}

absl::Status FaultPlan::Set(absl::string_view json) {
  uint64_t seed = default_seed_;
  auto rules = ParseFaultRules(json, &seed);
  if (!rules.ok()) return rules.status();
  absl::MutexLock lock(&mu_);
  rules_.clear();
  for (auto& rule : *rules) rules_.push_back(State{std::move(rule)});
  rng_.seed(seed);
  return absl::OkStatus();
}

void FaultPlan::Clear() {
  absl::MutexLock lock(&mu_);
  rules_.clear();
  rng_.seed(default_seed_);
  fired_total_ = 0;
}

std::vector<Fault> FaultPlan::Evaluate(absl::string_view method, absl::string_view path) {
  std::vector<Fault> fired;
  absl::MutexLock lock(&mu_);
  for (State& state : rules_) {
    if (!Matches(state.rule, method, path)) continue;
    ++state.seen;
    if (!state.rule.nth.empty() && std::find(state.rule.nth.begin(), state.rule.nth.end(),
                                             state.seen) == state.rule.nth.end()) {
      continue;
    }
    if (state.rule.times >= 0 && state.fired >= state.rule.times) continue;
    if (state.rule.probability < 1.0) {
      // 53 random bits -> [0,1): the same on every standard library, unlike the distributions.
      const double draw = static_cast<double>(rng_() >> 11) * 0x1.0p-53;
      if (draw >= state.rule.probability) continue;
    }
    ++state.fired;
    ++fired_total_;
    fired.push_back(state.rule);
  }
  return fired;
}

const Fault* FaultPlan::Find(const std::vector<Fault>& faults, FaultAction action) {
  for (const Fault& fault : faults) {
    if (fault.action == action) return &fault;
  }
  return nullptr;
}

std::string FaultPlan::ToJson() const {
  nlohmann::json out = nlohmann::json::array();
  absl::MutexLock lock(&mu_);
  for (const State& state : rules_) {
    nlohmann::json rule = ParseJson(state.rule.source);
    rule["seen"] = state.seen;
    rule["fired"] = state.fired;
    out.push_back(std::move(rule));
  }
  return nlohmann::json{{"rules", out}, {"fired", fired_total_}}.dump();
}

int64_t FaultPlan::fired() const {
  absl::MutexLock lock(&mu_);
  return fired_total_;
}

}  // namespace musicgw::emulators
