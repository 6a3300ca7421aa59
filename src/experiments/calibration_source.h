// The calibration a run's BH configs use, and its identity for the rows. Order: --calibration, the
// experiment's file, --calibration-text, the experiment's text, the model folder's calibration.json,
// the model folder's calibration.txt. A text is fitted once (native routing, windows of 512 tokens,
// at most 4096 tokens) and cached in the output folder under a name keyed by text, model
// fingerprint, method, window and token limit, so shards and resumed runs share it.
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "experiments/experiment.h"
#include "experiments/runner.h"
#include "kernels/thread_pool.h"
#include "model/engine.h"
#include "routing/calibration.h"

namespace bhmoe::experiments {

struct ResolvedCalibration {
  std::shared_ptr<const routing::Calibration> calibration;
  nlohmann::json identity = nullptr;  // source, path, method, fingerprint, description
  std::string path;                   // the file it was read from, named in messages
};

// `model_id` is model_identity(*model) (its fingerprint keys the cache). Throws bhmoe::Error when
// no source is found, naming the flags that would give one. Whether the calibration fits the model
// is checked where it meets the model's routers (model::make_model_router, given `path`).
ResolvedCalibration resolve_calibration(const RunOptions& o, const Experiment& e,
                                        const std::shared_ptr<const model::Model>& model,
                                        kernels::ThreadPool* pool, const nlohmann::json& model_id);

}  // namespace bhmoe::experiments
