#include "routing/rule_parameter.h"

#include <gtest/gtest.h>

#include "routing/spec.h"
#include "util/error.h"

namespace bhmoe::routing {
namespace {

TEST(RuleParameter, KnowsTheKnobOfEachAdaptiveRule) {
  ASSERT_NE(find_rule_parameter("bh"), nullptr);
  EXPECT_EQ(find_rule_parameter("bh")->key, "alpha");
  EXPECT_TRUE(find_rule_parameter("bh")->more_when_larger);
  ASSERT_NE(find_rule_parameter("topp"), nullptr);
  EXPECT_EQ(find_rule_parameter("topp")->key, "p");
  EXPECT_FALSE(find_rule_parameter("skip")->more_when_larger);  // a larger beta skips more
  EXPECT_EQ(find_rule_parameter("threshold")->key, "tau");
  EXPECT_EQ(find_rule_parameter("topk"), nullptr);  // k is the count itself
  EXPECT_EQ(find_rule_parameter("nope"), nullptr);
}

TEST(RuleParameter, AppendsTheParameterToARuleTemplate) {
  const RuleParameter& bh = *find_rule_parameter("bh");
  EXPECT_EQ(with_parameter("bh:max_k=16", bh, 0.05), "bh:alpha=0.05,max_k=16");
  EXPECT_EQ(with_parameter("bh", bh, 0.25), "bh:alpha=0.25");
  EXPECT_EQ(parse_router_spec(with_parameter("bh:max_k=8,min_k=2", bh, 0.1)).alpha, 0.1);
  EXPECT_EQ(rule_name(" topp :max_k=4"), "topp");
  EXPECT_THROW(with_parameter("bh:alpha=0.1,max_k=16", bh, 0.05), Error);
  EXPECT_THROW(with_parameter("bh:max_k=16, alpha =0.1", bh, 0.05), Error);
  // Every range end gives a valid spec.
  for (const char* rule : {"bh:max_k=16", "topp", "skip:max_k=8", "threshold"}) {
    const RuleParameter& p = *find_rule_parameter(rule_name(rule));
    EXPECT_NO_THROW(parse_router_spec(with_parameter(rule, p, p.lo)));
    EXPECT_NO_THROW(parse_router_spec(with_parameter(rule, p, p.hi)));
  }
}

}  // namespace
}  // namespace bhmoe::routing
