// The experiment runner behind `bhmoe run`: one Model, one Session reused for every experiment,
// every routing config applied in every layer, expert use measured through the router observer,
// quality measured against native routing. Results are appended durably to results.jsonl one row
// per finished experiment, so a killed run resumes where it stopped; a failing experiment becomes
// an error row and the suite continues.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "experiments/experiment.h"

namespace bhmoe::experiments {

struct RunOptions {
  std::filesystem::path model_dir;
  std::filesystem::path out_dir;
  std::string experiment = "seed";         // built-in name or experiment file
  std::filesystem::path calibration;       // --calibration: a bh-calibration-grid/1 file
  std::filesystem::path calibration_text;  // --calibration-text: fit one from this text
  std::optional<int> max_new_tokens;       // overrides the experiment's
  int shard_index = 0, shard_count = 1;  // this process runs grid items with index % count == index
  int threads = 0;                       // 0: all hardware threads
  int64_t limit = -1;  // stop after this many experiments were run (tests; < 0: no limit)
  bool report = true;  // write the CSV/JSON/plots/REPORT.md outputs at the end
  std::string weights = "native";
  // Progress display: -1 auto (bar when stderr is a terminal), 0 plain lines, 1 bar.
  int progress = -1;
  bool quiet = false;  // no progress output at all (run.log is still written)
};

struct RunSummary {
  int64_t grid = 0;       // experiments in the whole grid
  int64_t in_shard = 0;   // of which this shard's
  int64_t already = 0;    // finished before this run (skipped)
  int64_t ran = 0;        // run now
  int64_t failed = 0;     // of which failed
  int64_t remaining = 0;  // not run (limit reached)
  double seconds = 0;
  std::vector<std::string> clamped;  // configs whose max_k was clamped to N
};

// Parses "I/N" (0 <= I < N). Throws bhmoe::Error naming the value.
void parse_shard(const std::string& text, int& index, int& count);

RunSummary run_experiments(const RunOptions& options);

}  // namespace bhmoe::experiments
