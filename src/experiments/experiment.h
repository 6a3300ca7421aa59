// Experiment definitions: the built-in `seed` (SPEC.md §3: 16 configs × 12 prompts, greedy, 50 new
// tokens) and `pareto` (held-out text scored under top-k, top-p and BH sweeps), and experiment
// files (JSON) naming routers, prompts or prompt files, held-out texts, generation/scoring settings
// and the calibration source. Everything is validated before any work starts; errors name the file,
// the key and the value at fault.
//
// Experiment file (JSON; relative paths are relative to the file's folder; unknown keys are
// errors):
//   {
//     "name": "my-sweep",
//     "routers": ["topk:k=8", {"name": "bh_a005", "spec": "bh:alpha=0.05,max_k=16"}],
//     "prompts": [{"text": "The cat sat on the", "category": "simple", "description": "...",
//                  "id": "cat"}],
//     "prompt_files": [{"path": "prompts.txt", "category": "domain"}],  // one prompt per line,
//                      // or a .jsonl of {"text", "category", "description", "id"} objects
//     "texts": ["heldout.txt", {"name": "wiki", "path": "wiki.txt"}],
//     "score_routers": [...],            // routers for the texts (default: "routers")
//     "generation": {"max_new_tokens": 50, "temperature": 0, "top_p": 1, "seed": 0,
//                    "stop_at_eos": true},
//     "scoring": {"window": 512, "max_tokens": 0},   // max_tokens per text, 0 = all
//     "calibration": {"file": "calibration.json"} | {"text": "calib.txt", "method": "ecdf"}
//   }
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/generate_options.h"

namespace bhmoe::experiments {

struct RouterEntry {
  std::string name;  // config_name in the results; unique within the experiment
  std::string spec;  // as written (parsed and validated; canonicalised when the model is known)
};

struct PromptEntry {
  std::string id;  // unique; "p1".. for the seed prompts
  std::string text, category, description;
};

struct TextEntry {
  std::string name;  // unique
  std::filesystem::path path;
};

// An experiment's generation settings are the engine's generate options.
using GenerationSettings = model::GenerateOptions;

struct ScoringSettings {
  int window = 512;        // tokens per window; each window is scored from an empty cache
  int64_t max_tokens = 0;  // per text; 0 = the whole text
};

struct CalibrationSource {
  std::filesystem::path file;  // a bh-calibration-grid/1 file
  std::filesystem::path text;  // or a text to fit one from (cached in the output folder)
  std::string method = "ecdf";
};

struct Experiment {
  std::string name;
  std::string source;                // "built-in" or the file path
  std::vector<RouterEntry> routers;  // generation configs
  std::vector<PromptEntry> prompts;
  std::vector<RouterEntry> score_routers;  // text-scoring configs
  std::vector<TextEntry> texts;
  GenerationSettings generation;
  ScoringSettings scoring;
  CalibrationSource calibration;
};

// The 12 prompts of SPEC.md §3 (ids p1..p12).
std::vector<PromptEntry> seed_prompts();
// topk_8/16/32/64 and bh_k{8,16,32,64}_a{001,005,010} (temperature 1, min_k 1).
std::vector<RouterEntry> seed_routers();
Experiment seed_experiment();

// top-k k = 1..8, 12, 16; top-p p sweep (max_k 16); BH alpha sweep (max_k 16). Texts: the model
// folder's held-out text (heldout/*.txt, else heldout.txt); an error naming the folder if it has
// none.
Experiment pareto_experiment(const std::filesystem::path& model_dir);

// A built-in name ("seed", "pareto") or an experiment file.
Experiment load_experiment(const std::string& name_or_path, const std::filesystem::path& model_dir);
Experiment parse_experiment(const nlohmann::json& json, const std::filesystem::path& base_dir,
                            const std::string& source);

// Checks everything that does not need the model: non-empty, unique names/ids, router specs
// (unknown keys, alpha out of range, ...), files exist and are readable, settings in range.
void validate_experiment(const Experiment& experiment);

// A config name for a spec: topk_8, bh_k16_a005, topp_p07_k16; the spec text when non-default keys
// are set.
std::string default_router_name(const std::string& spec);

// One unit of work. Indices are deterministic: generation items config-major (config × prompt),
// then text items (config × text).
struct GridItem {
  int64_t index = 0;
  std::string key;  // "<experiment>/<config>/<prompt id>" or "<experiment>/<config>/text:<name>"
  bool generate = true;
  size_t router = 0;  // into routers (generate) or score_routers
  size_t item = 0;    // into prompts or texts
};
std::vector<GridItem> expand_grid(const Experiment& experiment);

// The canonical JSON of the experiment's definition (what the results depend on), used for the
// settings hash that resume and merge check.
nlohmann::json experiment_definition(const Experiment& experiment);

// 64-bit FNV-1a, as 16 hex digits.
std::string fnv1a_hex(std::string_view data);

}  // namespace bhmoe::experiments
