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

// The run's host: commit (BHMOE_COMMIT, else `git rev-parse` of the working directory, "+dirty"
// when tracked files are modified), bhmoe_version, host, cpu, hardware_threads.
nlohmann::json host_identity();

}  // namespace bhmoe::experiments
