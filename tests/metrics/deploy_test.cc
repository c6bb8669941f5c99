// The Grafana dashboard, the Prometheus rules and the metrics reference name only metrics the
// module exports (or recording rules the rules file defines), so none of them silently breaks
// when a metric is renamed.
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/strip.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "services/metrics/metrics.h"
#include "tests/metrics/metrics_test_util.h"

namespace musicgw::metrics {
namespace {

using nlohmann::json;

std::string ReadFile(const std::string& relative) {
  std::ifstream in(std::string(MUSICGW_SOURCE_DIR) + "/" + relative);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// Metric names a query may use: every exported family, with the histogram series suffixes.
std::set<std::string> ExportedNames() {
  auto metrics = Metrics::Create();
  EXPECT_TRUE(metrics.ok());
  testing::ScriptedEngine engine;
  testing::Populate(**metrics, engine);
  std::set<std::string> names;
  for (const auto& family : (*metrics)->Collect()) {
    names.insert(family.name);
    if (family.type == prometheus::MetricType::Histogram) {
      for (const char* suffix : {"_bucket", "_sum", "_count"}) names.insert(family.name + suffix);
    }
  }
  (*metrics)->ClearSources();
  return names;
}

std::set<std::string> RecordingRules(const std::string& rules) {
  std::set<std::string> names;
  const std::regex record(R"(record:\s*([A-Za-z_:][A-Za-z0-9_:]*))");
  for (std::sregex_iterator it(rules.begin(), rules.end(), record), end; it != end; ++it) {
    names.insert((*it)[1]);
  }
  return names;
}

std::vector<std::string> ReferencedNames(const std::string& text) {
  std::vector<std::string> names;
  const std::regex name(R"(\bmusicgw[_:][A-Za-z0-9_:]*)");
  for (std::sregex_iterator it(text.begin(), text.end(), name), end; it != end; ++it) {
    names.push_back(it->str());
  }
  return names;
}

TEST(MetricsDeployTest, RulesReferenceOnlyExportedMetrics) {
  const std::string rules = ReadFile("deploy/prometheus/musicgw-rules.yml");
  ASSERT_FALSE(rules.empty());
  const std::set<std::string> exported = ExportedNames();
  const std::set<std::string> recorded = RecordingRules(rules);
  EXPECT_GE(recorded.size(), 5u);
  for (const std::string& name : ReferencedNames(rules)) {
    EXPECT_TRUE(exported.count(name) > 0 || recorded.count(name) > 0)
        << "deploy/prometheus/musicgw-rules.yml names unknown metric " << name;
  }
  for (const char* alert :
       {"MusicgwProviderQuotaLow", "MusicgwProviderQuotaResetSoon", "MusicgwProviderErrorRatioHigh",
        "MusicgwOperationsStuck", "MusicgwWebhookSignatureFailures"}) {
    EXPECT_TRUE(absl::StrContains(rules, std::string("alert: ") + alert)) << alert;
  }
}

TEST(MetricsDeployTest, DashboardIsValidAndEveryPanelQueriesExportedMetrics) {
  const std::string text = ReadFile("deploy/grafana/musicgw-dashboard.json");
  const json dashboard = json::parse(text, nullptr, false);
  ASSERT_FALSE(dashboard.is_discarded()) << "deploy/grafana/musicgw-dashboard.json is not JSON";
  ASSERT_TRUE(dashboard.is_object());
  EXPECT_TRUE(dashboard.value("title", "") != "");
  EXPECT_TRUE(dashboard.value("uid", "") != "");
  ASSERT_TRUE(dashboard.contains("panels") && dashboard["panels"].is_array());

  const std::set<std::string> exported = ExportedNames();
  const std::set<std::string> recorded =
      RecordingRules(ReadFile("deploy/prometheus/musicgw-rules.yml"));
  std::set<int> ids;
  std::set<std::string> used;
  int queries = 0;
  for (const json& panel : dashboard["panels"]) {
    ASSERT_TRUE(panel.is_object());
    const std::string title = panel.value("title", "");
    EXPECT_FALSE(title.empty());
    EXPECT_TRUE(ids.insert(panel.value("id", -1)).second) << "duplicate panel id in " << title;
    ASSERT_TRUE(panel.contains("gridPos")) << title;
    const json& grid = panel["gridPos"];
    EXPECT_LE(grid.value("x", 0) + grid.value("w", 0), 24) << title;
    if (panel.value("type", "") == "row") continue;
    ASSERT_TRUE(panel.contains("targets") && panel["targets"].is_array() &&
                !panel["targets"].empty())
        << title << " has no queries";
    for (const json& target : panel["targets"]) {
      const std::string expr = target.value("expr", "");
      ASSERT_FALSE(expr.empty()) << title;
      ++queries;
      const std::vector<std::string> names = ReferencedNames(expr);
      EXPECT_FALSE(names.empty()) << title << ": " << expr;
      for (const std::string& name : names) {
        used.insert(std::string(absl::StripSuffix(
            absl::StripSuffix(absl::StripSuffix(name, "_bucket"), "_count"), "_sum")));
        EXPECT_TRUE(exported.count(name) > 0 || recorded.count(name) > 0)
            << "panel \"" << title << "\" queries unknown metric " << name;
      }
    }
  }
  EXPECT_GE(queries, 15);
  // The main panels the issue asks for are there.
  for (const char* name :
       {"musicgw_grpc_requests_total", "musicgw_upstream_requests_total", "musicgw_operations_live",
        "musicgw_operation_time_to_success_seconds", "musicgw_provider_quota_remaining",
        "musicgw_provider_quota_reset_timestamp_seconds", "musicgw_webhooks_received_total"}) {
    EXPECT_TRUE(used.count(name) > 0) << "no panel shows " << name;
  }
  // Template variables query exported metrics too.
  for (const std::string& name : ReferencedNames(dashboard["templating"].dump())) {
    EXPECT_TRUE(exported.count(name) > 0) << "template variable queries unknown metric " << name;
  }
}

TEST(MetricsDeployTest, ReferenceDocumentsEveryFamily) {
  const std::string readme = ReadFile("services/metrics/README.md");
  ASSERT_FALSE(readme.empty());
  auto metrics = Metrics::Create();
  ASSERT_TRUE(metrics.ok());
  testing::ScriptedEngine engine;
  testing::Populate(**metrics, engine);
  for (const auto& family : (*metrics)->Collect()) {
    EXPECT_TRUE(absl::StrContains(readme, "`" + family.name + "`"))
        << family.name << " is missing from services/metrics/README.md";
  }
  (*metrics)->ClearSources();
}

}  // namespace
}  // namespace musicgw::metrics
