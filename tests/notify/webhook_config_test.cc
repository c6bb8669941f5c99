// The gateway's webhook config turned into the planner and the engine's outbox hook: refused
// targets fail the start unless allowed, and a request's own notify target (kept in
// Operation.request) gets its deliveries next to the tenant's endpoints.
#include "services/notify/webhook_config.h"

#include <string>

#include "absl/strings/match.h"
#include "common/clock.h"
#include "gtest/gtest.h"

namespace musicgw::notify {
namespace {

namespace v1 = musicgw::v1;

constexpr char kSecret[] = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

config::Config OneTenant(const std::string& url, bool allow_private) {
  config::Config config;
  config::TenantConfig tenant;
  tenant.name = "acme";
  tenant.webhooks.secrets = {kSecret};
  tenant.webhooks.endpoints.push_back({"main", url, {}});
  config.tenants.push_back(tenant);
  config.webhook_delivery.allow_private_targets = allow_private;
  return config;
}

TEST(WebhookConfig, RefusedTargetsFailUnlessAllowed) {
  auto refused = PlannerFromConfig(OneTenant("http://127.0.0.1:9/hook", false), Clock::Real());
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StartsWith(refused.status().message(), "tenants[0].webhooks: "))
      << refused.status();
  EXPECT_FALSE(absl::StrContains(refused.status().message(), kSecret));
  EXPECT_FALSE(PlannerFromConfig(OneTenant("http://169.254.169.254/x", false), Clock::Real()).ok());
  EXPECT_TRUE(PlannerFromConfig(OneTenant("http://127.0.0.1:9/hook", true), Clock::Real()).ok());
}

TEST(WebhookConfig, TheHookAddsTheRequestsOwnTarget) {
  auto planner = PlannerFromConfig(OneTenant("http://127.0.0.1:9/hook", true), Clock::Real());
  ASSERT_TRUE(planner.ok()) << planner.status();
  auto hook = OutboxHook(**planner);
  v1::Operation from;
  from.set_name("operations/abc");
  from.set_state(v1::OPERATION_STATE_RUNNING);
  from.set_sequence(2);
  v1::Operation to = from;
  to.set_state(v1::OPERATION_STATE_SUCCEEDED);
  to.set_sequence(3);
  EXPECT_EQ(hook("acme", from, to).size(), 1u);
  EXPECT_TRUE(hook("globex", from, to).empty());

  to.mutable_request()->mutable_notify()->set_url("http://127.0.0.1:9/own");
  auto messages = hook("acme", from, to);
  ASSERT_EQ(messages.size(), 2u);
  EXPECT_EQ(messages[1].endpoint, "request");
  EXPECT_EQ(messages[1].url, "http://127.0.0.1:9/own");
  EXPECT_EQ(messages[0].event_id, messages[1].event_id);
  EXPECT_NE(messages[0].delivery_id, messages[1].delivery_id);
  // The request's target asked for failures only.
  to.mutable_request()->mutable_notify()->add_events("operation.failed");
  EXPECT_EQ(hook("acme", from, to).size(), 1u);
}

TEST(WebhookConfig, DeliveryOptionsFollowTheConfig) {
  config::WebhookDeliveryConfig delivery;
  delivery.timeout = absl::Seconds(3);
  delivery.per_endpoint_concurrency = 2;
  delivery.first_retry = absl::Seconds(1);
  delivery.max_retry = absl::Minutes(5);
  delivery.retry_for = absl::Hours(30);
  const DeliveryOptions options = DeliveryOptionsFromConfig(delivery);
  EXPECT_EQ(options.timeout, absl::Seconds(3));
  EXPECT_EQ(options.per_endpoint_concurrency, 2);
  EXPECT_EQ(options.first_retry, absl::Seconds(1));
  EXPECT_EQ(options.max_retry, absl::Minutes(5));
  EXPECT_EQ(options.retry_for, absl::Hours(30));
  // A claim outlasts the batch it is part of.
  EXPECT_GT(options.claim, options.timeout * (options.batch / 2));
  EXPECT_GE(config::WebhookDeliveryConfig().retry_for, absl::Hours(24));
}

}  // namespace
}  // namespace musicgw::notify
