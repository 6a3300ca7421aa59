// Where a run's rows come from: the model's identity (a fingerprint and what its card says) and the
// host's (commit, version, host name, CPU). Both are recorded in every row.
#pragma once

#include <nlohmann/json.hpp>

#include "model/engine.h"

namespace bhmoe::experiments {

// Model identity for the rows: name, folder, a fingerprint of config + tokenizer + weight file names
// and sizes (hashing multi-GB weights would cost more than many experiments), shape, parameter
// count, whether it looks synthetic, and the model card's first paragraph.
nlohmann::json model_identity(const model::Model& m);

// What a model card (README.md, "" when there is none) says about the model: its first paragraph
// after the title, quoted as provenance, and whether the model is synthetic (random or trained on
// generated data). Only that paragraph decides: a card may mention synthetic models further down
// (a model it replaced, a comparison) without being one. No card and fewer than 100 M parameters
// counts as synthetic (bhmoe make-model writes none).
struct ModelCard {
  bool synthetic = false;
  std::string provenance;
};
ModelCard read_model_card(const std::string& readme, int64_t params);

// The run's host: commit (BHMOE_COMMIT, else `git rev-parse` of the working directory, "+dirty"
// when tracked files are modified), bhmoe_version, host, cpu, hardware_threads.
nlohmann::json host_identity();

}  // namespace bhmoe::experiments
