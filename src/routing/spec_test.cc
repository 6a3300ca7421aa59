#include "routing/spec.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <random>
#include <string>

#include "routing/router.h"
#include "util/error.h"

namespace bhmoe::routing {
namespace {

// Expects parse (and, with n != 0, resolve against n) to fail with a message containing every part.
void expect_error(const std::string& text, std::initializer_list<const char*> parts, int n = 0) {
  try {
    RouterSpec s = parse_router_spec(text);
    if (n != 0) resolve_router_spec(s, n);
    ADD_FAILURE() << "no error for \"" << text << "\"";
  } catch (const Error& e) {
    std::string message = e.what();
    for (const char* part : parts) {
      EXPECT_NE(message.find(part), std::string::npos)
          << "\"" << message << "\" lacks \"" << part << "\"";
    }
  }
}

TEST(Spec, CanonicalFormsSpellOutEveryParameter) {
  EXPECT_EQ(canonical_spec(parse_router_spec("topk:k=8")), "topk:k=8,renorm=false,temperature=1");
  EXPECT_EQ(canonical_spec(parse_router_spec("topk:temperature=0.5,k=2,renorm=true")),
            "topk:k=2,renorm=true,temperature=0.5");
  EXPECT_EQ(canonical_spec(parse_router_spec("bh:alpha=0.05,max_k=16")),
            "bh:alpha=0.05,max_k=16,min_k=1,temperature=1,renorm=false,pvalues=calibrated");
  EXPECT_EQ(canonical_spec(parse_router_spec(
                " bh: max_k=8 , alpha=1e-2, min_k=2, renorm=1, pvalues=one-minus-prob ")),
            "bh:alpha=0.01,max_k=8,min_k=2,temperature=1,renorm=true,pvalues=one-minus-prob");
  EXPECT_EQ(canonical_spec(parse_router_spec("topp:p=0.7")),
            "topp:p=0.7,max_k=16,min_k=1,temperature=1,renorm=false");
}

TEST(Spec, AdaptiveRulesCanonicalFormsAndDefaults) {
  EXPECT_EQ(canonical_spec(parse_router_spec("skip:beta=0.3")),
            "skip:beta=0.3,max_k=8,min_k=1,temperature=1,renorm=false");
  EXPECT_EQ(canonical_spec(parse_router_spec("skip: renorm=true, beta=1, max_k=4, min_k=2")),
            "skip:beta=1,max_k=4,min_k=2,temperature=1,renorm=true");
  EXPECT_EQ(canonical_spec(parse_router_spec("threshold:tau=0.05")),
            "threshold:tau=0.05,max_k=16,min_k=1,temperature=1,renorm=false");
  EXPECT_EQ(canonical_spec(parse_router_spec("hc:max_k=16")),
            "hc:max_k=16,min_k=1,alpha0=0.5,temperature=1,renorm=false,pvalues=calibrated");
  EXPECT_EQ(canonical_spec(parse_router_spec("hc:alpha0=0.25,max_k=8,min_k=2,temperature=2")),
            "hc:max_k=8,min_k=2,alpha0=0.25,temperature=2,renorm=false,pvalues=calibrated");
  EXPECT_EQ(canonical_spec(parse_router_spec("entropy:ks=1/2/4/8")),
            "entropy:ks=1/2/4/8,temperature=1,renorm=false");
  EXPECT_EQ(canonical_spec(parse_router_spec("entropy: ks = 2 / 2 / 6 ,renorm=1")),
            "entropy:ks=2/2/6,temperature=1,renorm=true");
  const RouterSpec entropy = parse_router_spec("entropy:ks=1/3/8");
  EXPECT_EQ(entropy.ks, (std::vector<int>{1, 3, 8}));
  EXPECT_EQ(max_count(entropy), 8);
  EXPECT_EQ(min_count(entropy), 1);
  EXPECT_TRUE(entropy.uses_calibration());
  EXPECT_TRUE(parse_router_spec("hc:max_k=4").uses_calibration());
  EXPECT_FALSE(parse_router_spec("skip:beta=0.5").uses_calibration());
  EXPECT_FALSE(parse_router_spec("threshold:tau=0.5").uses_calibration());
  // max_k defaults: skip min(8, N), threshold min(16, N); hc requires it.
  EXPECT_EQ(resolve_router_spec(parse_router_spec("skip:beta=0.3"), 6).max_k, 6);
  EXPECT_EQ(resolve_router_spec(parse_router_spec("threshold:tau=0.3"), 12).max_k, 12);
  expect_error("skip:beta=0.3,max_k=8", {"\"max_k\"", "exceeds N=6"}, 6);
  EXPECT_EQ(rule_name(RuleKind::kThreshold), std::string("threshold"));
}

TEST(Spec, AdaptiveRulesErrorsNameKeyAndValue) {
  expect_error("skip:max_k=4", {"\"beta\"", "missing"});
  expect_error("skip:beta=0", {"\"beta\"", "0 is outside (0, 1]"});
  expect_error("skip:beta=1.5", {"\"beta\"", "1.5 is outside (0, 1]"});
  expect_error("skip:beta=0.3,tau=0.1", {"\"tau\"", "unknown key for rule skip"});
  expect_error("skip:beta=0.3,max_k=2,min_k=3", {"\"max_k\"", "below min_k=3"});
  expect_error("threshold:min_k=2", {"\"tau\"", "missing"});
  expect_error("threshold:tau=-0.1", {"\"tau\"", "-0.1 is outside (0, 1]"});
  expect_error("threshold:tau=x", {"\"tau\"", "\"x\" is not a number"});
  expect_error("hc:min_k=2", {"\"max_k\"", "missing"});
  expect_error("hc:max_k=8,alpha0=0", {"\"alpha0\"", "0 is outside (0, 1]"});
  expect_error("hc:max_k=8,alpha0=2", {"\"alpha0\"", "2 is outside (0, 1]"});
  expect_error("hc:max_k=8,pvalues=one-minus-prob", {"\"pvalues\"", "only calibrated"});
  expect_error("hc:max_k=80", {"\"max_k\"", "exceeds N=64"}, 64);
  expect_error("entropy:temperature=2", {"\"ks\"", "missing"});
  expect_error("entropy:ks=", {"\"ks\"", "not an integer"});
  expect_error("entropy:ks=1//4", {"\"ks\"", "not an integer"});
  expect_error("entropy:ks=1/two", {"\"ks\"", "\"two\" is not an integer"});
  expect_error("entropy:ks=0/4", {"\"ks\"", "k=0 must be >= 1"});
  expect_error("entropy:ks=4/2", {"\"ks\"", "4/2 decreases at 4 then 2"});
  expect_error("entropy:ks=1/80", {"\"ks\"", "k=80 exceeds N=64"}, 64);
  expect_error("entropy:ks=1/2,max_k=4", {"\"max_k\"", "unknown key for rule entropy"});
  expect_error("entropy:ks=1/2,ks=3", {"\"ks\"", "more than once"});
}

TEST(Spec, ParsedValues) {
  RouterSpec s = parse_router_spec("bh:alpha=0.2,max_k=32,min_k=4,temperature=2,renorm=true");
  EXPECT_EQ(s.rule, RuleKind::kBH);
  EXPECT_DOUBLE_EQ(s.alpha, 0.2);
  EXPECT_EQ(s.max_k, 32);
  EXPECT_EQ(s.min_k, 4);
  EXPECT_DOUBLE_EQ(s.temperature, 2.0);
  EXPECT_TRUE(s.renorm);
  EXPECT_TRUE(s.uses_calibration());
  EXPECT_FALSE(
      parse_router_spec("bh:alpha=0.2,max_k=32,pvalues=one-minus-prob").uses_calibration());
  EXPECT_FALSE(parse_router_spec("topk:k=3").uses_calibration());
}

TEST(Spec, TopPDefaultMaxKIsCappedAtN) {
  EXPECT_EQ(resolve_router_spec(parse_router_spec("topp:p=0.5"), 8).max_k, 8);
  EXPECT_EQ(resolve_router_spec(parse_router_spec("topp:p=0.5"), 64).max_k, 16);
  expect_error("topp:p=0.5,max_k=16", {"max_k", "exceeds N=8"}, 8);
}

TEST(Spec, Errors) {
  expect_error("top:k=8", {"unknown rule", "top"});
  expect_error("topk", {"\"k\"", "missing"});
  expect_error("topk:k=8,alpha=0.1", {"\"alpha\"", "unknown key"});
  expect_error("topk:k=8,k=4", {"\"k\"", "more than once"});
  expect_error("topk:k=0", {"\"k\"", ">= 1"});
  expect_error("topk:k=eight", {"\"k\"", "not an integer"});
  expect_error("topk:k=8.5", {"\"k\"", "not an integer"});
  expect_error("topk:k=65", {"\"k\"", "exceeds N=64"}, 64);
  expect_error("topk:k=8,renorm=maybe", {"\"renorm\"", "true or false"});
  expect_error("topk:k=8,,renorm=true", {"stray comma"});
  expect_error("topk:k", {"not key=value"});
  expect_error("bh:max_k=16", {"\"alpha\"", "missing"});
  expect_error("bh:alpha=0.05", {"\"max_k\"", "missing"});
  expect_error("bh:alpha=0,max_k=16", {"\"alpha\"", "outside (0, 1)"});
  expect_error("bh:alpha=1,max_k=16", {"\"alpha\"", "outside (0, 1)"});
  expect_error("bh:alpha=-0.5,max_k=16", {"\"alpha\"", "outside (0, 1)"});
  expect_error("bh:alpha=x,max_k=16", {"\"alpha\"", "not a number"});
  expect_error("bh:alpha=nan,max_k=16", {"\"alpha\""});
  expect_error("bh:alpha=0.05,max_k=16,temperature=0", {"\"temperature\"", "> 0"});
  expect_error("bh:alpha=0.05,max_k=16,temperature=-1", {"\"temperature\"", "> 0"});
  expect_error("bh:alpha=0.05,max_k=16,temperature=1e-300", {"\"temperature\""});
  expect_error("bh:alpha=0.05,max_k=16,min_k=0", {"\"min_k\"", ">= 1"});
  expect_error("bh:alpha=0.05,max_k=2,min_k=4", {"\"max_k\"", "below min_k=4"});
  expect_error("bh:alpha=0.05,max_k=65", {"\"max_k\"", "exceeds N=64"}, 64);
  expect_error("bh:alpha=0.05,max_k=16,pvalues=softmax", {"\"pvalues\"", "calibrated"});
  expect_error("bh:alpha=0.05,max_k=16,k=3", {"\"k\"", "unknown key"});
  expect_error("topp:max_k=4", {"\"p\"", "missing"});
  expect_error("topp:p=0", {"\"p\"", "outside (0, 1]"});
  expect_error("topp:p=1.5", {"\"p\"", "outside (0, 1]"});
  expect_error("topk:k=1", {"N=-1", "outside"}, -1);
  expect_error("topk:k=1", {"N=2000"}, 2000);
}

TEST(Spec, MakeRouterReportsSpecErrors) {
  EXPECT_THROW(make_router("bh:alpha=2,max_k=16", 64), Error);
  EXPECT_THROW(make_router("topk:k=80", 64), Error);
  try {
    make_router("bh:alpha=0.05,max_k=16", 64);
    ADD_FAILURE() << "bh without a calibration was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("calibration"), std::string::npos) << e.what();
  }
}

TEST(Spec, JsonSpellsOutTheSameParametersAsTheCanonicalForm) {
  EXPECT_EQ(to_json(parse_router_spec("topk:k=8")).dump(),
            R"({"k":8,"renorm":false,"temperature":1.0,"type":"topk"})");
  EXPECT_EQ(to_json(parse_router_spec("bh:alpha=0.01,max_k=16,pvalues=one-minus-prob")).dump(),
            R"({"alpha":0.01,"max_k":16,"min_k":1,"pvalues":"one-minus-prob","renorm":false,)"
            R"("temperature":1.0,"type":"bh"})");
  EXPECT_EQ(to_json(parse_router_spec("topp:p=0.7,min_k=2,renorm=true,temperature=0.5")).dump(),
            R"({"max_k":16,"min_k":2,"p":0.7,"renorm":true,"temperature":0.5,"type":"topp"})");
  EXPECT_EQ(to_json(parse_router_spec("skip:beta=0.3")).dump(),
            R"({"beta":0.3,"max_k":8,"min_k":1,"renorm":false,"temperature":1.0,"type":"skip"})");
  EXPECT_EQ(to_json(parse_router_spec("threshold:tau=0.05,max_k=12")).dump(),
            R"({"max_k":12,"min_k":1,"renorm":false,"tau":0.05,"temperature":1.0,)"
            R"("type":"threshold"})");
  EXPECT_EQ(to_json(parse_router_spec("hc:max_k=16")).dump(),
            R"({"alpha0":0.5,"max_k":16,"min_k":1,"pvalues":"calibrated","renorm":false,)"
            R"("temperature":1.0,"type":"hc"})");
  EXPECT_EQ(to_json(parse_router_spec("entropy:ks=1/2/4/8")).dump(),
            R"({"ks":[1,2,4,8],"renorm":false,"temperature":1.0,"type":"entropy"})");
}

TEST(Spec, MakeRouterFromAValueValidatesIt) {
  RouterSpec spec = parse_router_spec("bh:alpha=0.05,max_k=8,pvalues=one-minus-prob");
  EXPECT_EQ(make_router(spec, 64)->spec(), canonical_spec(spec));
  spec.alpha = 1.5;  // what parse_router_spec would reject
  try {
    make_router(spec, 64);
    ADD_FAILURE() << "alpha 1.5 accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("\"alpha\": 1.5 is outside (0, 1)"), std::string::npos)
        << e.what();
  }
  spec.alpha = 0.05;
  spec.max_k = 65;  // what resolve_router_spec rejects for N = 64
  EXPECT_THROW(make_router(spec, 64), Error);
}

TEST(Spec, NumbersPrintShortest) {
  EXPECT_EQ(format_number(0.05), "0.05");
  EXPECT_EQ(format_number(1.0), "1");
  EXPECT_EQ(format_number(1e-5), "1e-05");
  EXPECT_EQ(format_number(0.1 + 0.2), "0.30000000000000004");
}

TEST(Spec, RandomCanonicalSpecsRoundTrip) {
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<double> unit(1e-6, 1.0 - 1e-6);
  std::uniform_int_distribution<int> small(1, 64);
  for (int i = 0; i < 500; ++i) {
    RouterSpec s;
    s.rule = static_cast<RuleKind>(i % 7);
    s.k = small(rng);
    s.alpha = unit(rng);
    s.p = unit(rng);
    s.min_k = small(rng);
    s.max_k = std::max(s.min_k, small(rng));
    s.max_k_given = true;
    s.temperature = 0.01 + 10.0 * unit(rng);
    s.renorm = (i / 3) % 2 == 0;
    s.pvalues = (i / 6) % 2 == 0 || s.rule == RuleKind::kHC ? PValueKind::kCalibrated
                                                            : PValueKind::kOneMinusProb;
    s.beta = unit(rng);
    s.tau = unit(rng);
    s.alpha0 = unit(rng);
    s.ks.clear();
    for (int b = 0, k = 1; b < 1 + i % 5; ++b) s.ks.push_back(k += small(rng) % 4);
    const std::string text = canonical_spec(s);
    const RouterSpec back = parse_router_spec(text);
    EXPECT_EQ(canonical_spec(back), text);
    EXPECT_EQ(back.rule, s.rule);
    if (s.rule == RuleKind::kBH) {
      EXPECT_EQ(back.alpha, s.alpha) << text;
    }
    if (s.rule == RuleKind::kTopP) {
      EXPECT_EQ(back.p, s.p) << text;
    }
    if (s.rule == RuleKind::kSkip) {
      EXPECT_EQ(back.beta, s.beta) << text;
    }
    if (s.rule == RuleKind::kThreshold) {
      EXPECT_EQ(back.tau, s.tau) << text;
    }
    if (s.rule == RuleKind::kHC) {
      EXPECT_EQ(back.alpha0, s.alpha0) << text;
    }
    if (s.rule == RuleKind::kEntropy) {
      EXPECT_EQ(back.ks, s.ks) << text;
    }
    EXPECT_EQ(to_json(back), to_json(s)) << text;
    EXPECT_EQ(back.temperature, s.temperature) << text;
  }
}

}  // namespace
}  // namespace bhmoe::routing
