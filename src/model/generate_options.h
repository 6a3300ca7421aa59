// How model::generate samples, shared with the experiment definitions (experiments/experiment.h)
// so an experiment's generation settings are the engine's options, not a copy of them.
#pragma once

#include <cstdint>

namespace bhmoe::model {

struct GenerateOptions {
  int max_new_tokens = 50;
  double temperature = 0;  // 0: greedy. Held as given; the sampler works in float
  double top_p = 1;        // nucleus mass in (0, 1]
  uint64_t seed = 0;
  bool stop_at_eos = true;
};

}  // namespace bhmoe::model
