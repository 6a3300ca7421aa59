// The bundled trained model (models/bhmoe-tiny-moe, made by tools/build_bundled_model.sh) through
// the engine: it reproduces the training code's reference logits, its tokenizer reproduces the
// training tokenizer's ids, and its routing behaves like a trained MoE's (BH adapts with alpha,
// native top-8 beats top-1).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "kernels/ops.h"
#include "model/engine.h"
#include "model/verbs.h"
#include "routing/calibration.h"
#include "routing/router.h"
#include "util/file.h"
#include "util/npy.h"

namespace bhmoe::model {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const fs::path kModelDir = fs::path(BHMOE_MODELS_DIR) / "bhmoe-tiny-moe";
// Tokens of each domain's held-out text used by the routing tests: small enough for the sanitizer
// build, large enough for stable means.
constexpr size_t kTokensPerDomain = 192;

json read_json(const fs::path& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << path;
  return json::parse(in);
}

class BundledModelTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    model_ = Model::load(kModelDir);
    calibration_ = std::make_shared<routing::Calibration>(
        routing::Calibration::load(kModelDir / "calibration.json"));
    // The model's domains are those of its test split (reference/heldout_ids.json, one entry per
    // heldout/<domain>.txt), so the tests follow a rebuilt model without edits.
    const json ids = read_json(kModelDir / "reference" / "heldout_ids.json");
    for (const auto& [domain, all] : ids["ids"].items()) {
      domains_.push_back(domain);
      held_ids_.push_back(all.get<std::vector<int32_t>>());
    }
  }
  static void TearDownTestSuite() {
    model_.reset();
    calibration_.reset();
    held_ids_.clear();
    domains_.clear();
  }

  static std::vector<int32_t> head(const std::vector<int32_t>& ids) {
    return {ids.begin(),
            ids.begin() + static_cast<std::ptrdiff_t>(std::min(ids.size(), kTokensPerDomain))};
  }

  static std::shared_ptr<const Model> model_;
  static std::shared_ptr<routing::Calibration> calibration_;
  static std::vector<std::vector<int32_t>> held_ids_;
  static std::vector<std::string> domains_;
};
std::shared_ptr<const Model> BundledModelTest::model_;
std::shared_ptr<routing::Calibration> BundledModelTest::calibration_;
std::vector<std::vector<int32_t>> BundledModelTest::held_ids_;
std::vector<std::string> BundledModelTest::domains_;

TEST_F(BundledModelTest, HasOlmoeRoutingRegime) {
  const ModelConfig& c = model_->config();
  EXPECT_EQ(c.num_experts, 64);
  EXPECT_EQ(c.num_experts_per_tok, 8);
  EXPECT_FALSE(c.norm_topk_prob);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(model_->weights_kind(), "bf16");
  ASSERT_TRUE(c.eos_token_id.has_value());
  EXPECT_EQ(model_->tokenizer().token_to_id("<|endoftext|>"), *c.eos_token_id);
  EXPECT_EQ(calibration_->num_layers(), c.num_layers);
}

TEST_F(BundledModelTest, ReproducesTheTrainingCodesReferenceLogits) {
  const json cases = read_json(kModelDir / "reference" / "cases.json");
  ASSERT_GE(cases["cases"].size(), 5u);
  const int V = model_->config().vocab_size;
  // Twice: with fp32 activations throughout (the model's semantics), and at the CPU's best kernel
  // level, which on AVX512-BF16 rounds the activations of batched matmuls to bf16 (kernels/ops.h).
  const kernels::Isa best = kernels::detected_isa();
  const kernels::Isa exact = std::min(best, kernels::Isa::Avx512);
  for (const kernels::Isa isa : {exact, best}) {
    kernels::set_active_isa(isa);
    const bool rounds_activations = isa == kernels::Isa::Avx512Bf16;
    for (const auto& c : cases["cases"]) {
      SCOPED_TRACE(c["name"].get<std::string>() + " at " + kernels::isa_name(isa));
      const auto ids = c["ids"].get<std::vector<int32_t>>();
      const NpyArray expected = read_npy(kModelDir / c["logits"].get<std::string>());
      ASSERT_EQ(expected.shape, (std::vector<int64_t>{static_cast<int64_t>(ids.size()), V}));
      Session session(model_, nullptr, nullptr, static_cast<int64_t>(ids.size()));
      std::vector<float> logits(ids.size() * static_cast<size_t>(V));
      session.prefill(ids, logits.data());
      // Both sides use the same bf16 weights. This small model's router has near-ties (the 8th
      // and 9th expert probabilities often differ by < 1e-3), so a rounding difference flips an
      // expert choice at some positions, which moves those positions' logits by up to ~0.3; with
      // bf16 activations such flips are common. Hence: with fp32 activations most positions tight;
      // at every level every value loosely bounded, a small mean difference, and the predicted
      // token equal wherever the reference's choice is clear. A real forward-pass discrepancy
      // (RoPE, norms, routing, weights) moves logits by whole units at every position and fails
      // all of these.
      std::vector<double> position_max(ids.size(), 0.0);
      double sum_abs = 0;
      for (size_t i = 0; i < logits.size(); ++i) {
        const double d = std::fabs(static_cast<double>(logits[i]) - expected.data[i]);
        sum_abs += d;
        double& m = position_max[i / static_cast<size_t>(V)];
        m = std::max(m, d);
      }
      const double worst = *std::max_element(position_max.begin(), position_max.end());
      EXPECT_LE(worst, 0.5);
      EXPECT_LE(sum_abs / static_cast<double>(logits.size()), 1.5e-2);
      if (!rounds_activations) {
        const auto tight = std::count_if(position_max.begin(), position_max.end(),
                                         [](double m) { return m <= 2e-2; });
        EXPECT_GE(static_cast<double>(tight), 0.6 * static_cast<double>(ids.size()));
      }
      for (size_t t = 0; t < ids.size(); ++t) {
        const float* row = logits.data() + t * static_cast<size_t>(V);
        const float* ref = expected.data.data() + t * static_cast<size_t>(V);
        std::vector<float> sorted(ref, ref + V);
        std::partial_sort(sorted.begin(), sorted.begin() + 2, sorted.end(), std::greater<float>());
        if (sorted[0] - sorted[1] < 0.25f) continue;  // no clear choice to agree on
        EXPECT_EQ(std::max_element(row, row + V) - row, std::max_element(ref, ref + V) - ref)
            << "position " << t;
      }
    }
  }
  kernels::set_active_isa(best);
}

TEST_F(BundledModelTest, TokenizerReproducesTheTrainingTokenizersIds) {
  const json ids = read_json(kModelDir / "reference" / "heldout_ids.json");
  ASSERT_GE(domains_.size(), 3u);
  for (const std::string& domain : domains_) {
    SCOPED_TRACE(domain);
    const std::string text = read_file(kModelDir / ids["files"][domain].get<std::string>());
    const auto expected = ids["ids"][domain].get<std::vector<int32_t>>();
    ASSERT_GT(expected.size(), 1000u);
    const std::vector<int32_t> got = model_->tokenizer().encode(text);
    ASSERT_EQ(got.size(), expected.size());
    EXPECT_EQ(got, expected);
    EXPECT_EQ(model_->tokenizer().decode(got), text);
  }
}

// Per-token counts of every routing decision.
struct CountRecorder : RouterObserver {
  std::vector<int> counts;
  void on_route(const RouterEvent& e) override { counts.push_back(e.count); }
};

TEST_F(BundledModelTest, BhAdaptsItsExpertCountWithAlpha) {
  const int N = model_->config().num_experts;
  std::vector<double> means;
  for (const double alpha : {0.01, 0.05, 0.10}) {
    const std::string spec = "bh:alpha=" + std::to_string(alpha) + ",max_k=16,min_k=1";
    SCOPED_TRACE(spec);
    const auto router = routing::make_router(spec, N, calibration_);
    Session session(model_, router.get(), nullptr, static_cast<int64_t>(kTokensPerDomain));
    CountRecorder recorder;
    session.set_observer(&recorder);
    for (const auto& ids : held_ids_) {
      session.reset();
      session.prefill(head(ids));
    }
    ASSERT_FALSE(recorder.counts.empty());
    double sum = 0;
    int at_floor = 0, at_ceiling = 0;
    for (int c : recorder.counts) {
      sum += c;
      at_floor += c == 1;
      at_ceiling += c == 16;
    }
    const double n = static_cast<double>(recorder.counts.size());
    means.push_back(sum / n);
    if (alpha == 0.05) {
      // Not pinned: some tokens above min_k, most below max_k. (With a pooled per-layer
      // calibration BH gives most tokens min_k at alpha 0.05: the model card reports 1.40 experts
      // on average, 94% of routing decisions at min_k.)
      EXPECT_GT(means.back(), 1.02);
      EXPECT_LT(means.back(), 15.0);
      EXPECT_LT(at_floor / n, 0.99);
      EXPECT_LT(at_ceiling / n, 0.5);
    }
  }
  EXPECT_LT(means[0], means[1]);
  EXPECT_LT(means[1], means[2]);
}

double mean_nll(const std::shared_ptr<const Model>& model, const routing::Router* router,
                const std::vector<std::vector<int32_t>>& texts) {
  Session session(model, router, nullptr, static_cast<int64_t>(kTokensPerDomain));
  double total = 0;
  size_t n = 0;
  for (const auto& ids : texts) {
    for (const double lp : score_tokens(session, ids)) total -= lp, ++n;
  }
  return total / static_cast<double>(n);
}

TEST_F(BundledModelTest, NativeTop8BeatsTop1AndHasLearned) {
  std::vector<std::vector<int32_t>> texts;
  for (const auto& ids : held_ids_) texts.push_back(head(ids));
  const auto top1 = routing::make_router("topk:k=1", model_->config().num_experts);
  const double native = mean_nll(model_, nullptr, texts);
  const double one = mean_nll(model_, top1.get(), texts);
  EXPECT_LT(native, one) << "perplexity top-8 " << std::exp(native) << " vs top-1 "
                         << std::exp(one);
  // Far below a uniform guess over the vocabulary (ln 8192 = 9.0 nats): at most 0.6 x ln V, the
  // bound SPEC.md sets for the seed prompts.
  EXPECT_LT(native, 0.6 * std::log(static_cast<double>(model_->config().vocab_size)));
}

// --weights q8 on a trained model: the perplexity ratio against the stored bf16 weights (the issue's
// accuracy measure for the 8-bit option), printed and bounded. The bf16 copy is the same weights,
// so its perplexity is identical.
TEST_F(BundledModelTest, Q8PerplexityStaysWithinOnePercentOfBf16) {
  std::vector<std::vector<int32_t>> texts;
  for (const auto& ids : held_ids_) texts.push_back(head(ids));
  const double native = mean_nll(model_, nullptr, texts);
  const double q8 = mean_nll(Model::load(kModelDir, {.weights = "q8"}), nullptr, texts);
  const double copy = mean_nll(Model::load(kModelDir, {.weights = "bf16"}), nullptr, texts);
  const double ratio = std::exp(q8 - native);
  size_t tokens = 0;
  for (const auto& ids : texts) tokens += ids.size();
  std::printf("bundled model, %zu held-out tokens: perplexity bf16 %.4f, q8 %.4f (ratio %.5f)\n",
              tokens, std::exp(native), std::exp(q8), ratio);
  EXPECT_NE(q8, native);  // really quantised
  EXPECT_LT(std::fabs(ratio - 1.0), 0.01);
  EXPECT_EQ(copy, native);
}

}  // namespace
}  // namespace bhmoe::model
