// `bhmoe merge`: combines the results.jsonl of shard folders into out_dir/results.jsonl (one row per
// key, grid order) and builds every output. Every shard must come from the same experiment
// definition, model and calibration (the settings hash); missing grid items are reported, not
// invented.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace bhmoe::experiments {

struct MergeSummary {
  int64_t rows = 0;
  int64_t shards = 0;
  int64_t duplicates = 0;
  std::vector<std::string> warnings;
};

MergeSummary merge_results(const std::filesystem::path& out_dir,
                           const std::vector<std::filesystem::path>& shard_dirs,
                           bool report = true);

}  // namespace bhmoe::experiments
