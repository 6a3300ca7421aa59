// Next-token selection from a logits row: greedy (argmax, ties to the lower id) or temperature /
// nucleus (top-p) sampling driven by a seeded std::mt19937_64, so a seed reproduces a generation.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

namespace bhmoe::model {

class Sampler {
 public:
  // Only ids in [0, vocab_limit) are ever returned (the tokenizer's ids; embedding rows past it are
  // padding). temperature == 0 means greedy; top_p in (0, 1]. Scratch is allocated here, once.
  Sampler(int32_t vocab_limit, float temperature, float top_p, uint64_t seed);

  int32_t sample(const float* logits);

 private:
  int32_t vocab_limit_;
  float temperature_;
  float top_p_;
  std::mt19937_64 rng_;
  std::vector<float> probs_;
  std::vector<int32_t> order_;

  double uniform();  // [0, 1), 53 random bits: identical on every platform for a seed
};

// The id of the largest of logits[0..n), the lower id on ties.
int32_t argmax(const float* logits, int32_t n);

}  // namespace bhmoe::model
