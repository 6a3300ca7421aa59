// What the rows record about a model from its card.
#include "experiments/provenance.h"

#include <gtest/gtest.h>

namespace bhmoe::experiments {
namespace {

TEST(ModelCard, OnlyTheFirstParagraphDecidesWhetherAModelIsSynthetic) {
  // A model trained on real text whose card mentions, further down, the synthetic model it replaced.
  const std::string real =
      "# tiny\n\nA stand-in trained on English prose.\nSecond line.\n\n## Results\n\nThe previous "
      "model, trained on a synthetic corpus, scored worse.\n";
  const ModelCard card = read_model_card(real, 30'000'000);
  EXPECT_FALSE(card.synthetic);
  EXPECT_EQ(card.provenance,
            "Model card: \"A stand-in trained on English prose. Second line.\"");

  EXPECT_TRUE(read_model_card("# m\n\nRandom weights for tests.\n", 30'000'000).synthetic);
  EXPECT_TRUE(read_model_card("# m\n\nTrained on a SYNTHETIC corpus.\n", 30'000'000).synthetic);
}

TEST(ModelCard, NoCardMeansSyntheticWhenSmall) {
  EXPECT_TRUE(read_model_card("", 1'000'000).synthetic);
  EXPECT_FALSE(read_model_card("", 7'000'000'000).synthetic);
  EXPECT_NE(read_model_card("", 1'000'000).provenance.find("No model card"), std::string::npos);
}

TEST(ModelCard, LongFirstParagraphIsCutAt400Characters) {
  const ModelCard card = read_model_card("# m\n\n" + std::string(500, 'x') + "\n", 1);
  EXPECT_EQ(card.provenance, "Model card: \"" + std::string(400, 'x') + "…\"");
}

}  // namespace
}  // namespace bhmoe::experiments
