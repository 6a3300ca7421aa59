// Fuzzes the experiment file parser as load_experiment runs it: parse_json, parse_experiment, then
// validate_experiment. Relative paths resolve against a folder that does not exist, so file checks
// fail in our words instead of reading the machine's files. A definition that validates must
// expand into a grid of unique keys (routers x prompts + score_routers x texts), keep the integers
// it was given (no silent wrap into range).
#include <set>

#include "experiments/experiment.h"
#include "fuzz/fuzz_common.h"
#include "util/json.h"

using namespace bhmoe;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  experiments::Experiment e;
  nlohmann::json j;
  try {
    j = parse_json(text, "experiment.json");
    e = experiments::parse_experiment(j, "/nonexistent-bhmoe-fuzz", "experiment.json");
    experiments::validate_experiment(e);
  } catch (const Error& ex) {
    fuzz::check_message(ex, text);
    return 0;
  }
  const auto grid = experiments::expand_grid(e);
  const size_t expected =
      e.routers.size() * e.prompts.size() + e.score_routers.size() * e.texts.size();
  if (grid.size() != expected) fuzz::crash("grid size", "");
  std::set<std::string> keys;
  for (const auto& item : grid) {
    if (!keys.insert(item.key).second) fuzz::crash("duplicate grid key", item.key);
  }
  if (j.contains("generation") && j["generation"].contains("max_new_tokens") &&
      j["generation"]["max_new_tokens"] != e.generation.max_new_tokens) {
    fuzz::crash("max_new_tokens changed", j["generation"]["max_new_tokens"].dump());
  }
  if (j.contains("scoring") && j["scoring"].contains("window") &&
      j["scoring"]["window"] != e.scoring.window) {
    fuzz::crash("window changed", j["scoring"]["window"].dump());
  }
  return 0;
}
