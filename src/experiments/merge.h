// `bhmoe merge`: combines the results.jsonl of shard folders into out_dir/results.jsonl (one row per
// key, grid order) and builds every output. Every shard must come from the same experiment
// definition, model and calibration (the settings hash); missing grid items are reported, not
// invented. Shards that overlap (one key in two shard folders) are refused unless the caller says
// which row wins (DuplicatePolicy): silently picking one hides a mistake such as a shard passed twice
// or a run that was not split the way the user thinks.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace bhmoe::experiments {

// Which row a key keeps when two shard folders hold it. Within one folder, an error row followed by
// an ok row of the same key is a retry and the ok row is kept, whatever the policy.
enum class DuplicatePolicy {
  Refuse,    // an error naming the key and both folders (the default)
  First,     // the row of the folder listed first
  Last,      // the row of the folder listed last
  PreferOk,  // the first ok row; an error row only when no folder has an ok one
};
// "refuse", "first", "last", "prefer-ok"; parse_duplicate_policy throws on anything else.
const char* duplicate_policy_name(DuplicatePolicy policy);
DuplicatePolicy parse_duplicate_policy(const std::string& name);

struct MergeSummary {
  int64_t rows = 0;
  int64_t shards = 0;
  int64_t duplicates = 0;
  std::vector<std::string> warnings;
};

MergeSummary merge_results(const std::filesystem::path& out_dir,
                           const std::vector<std::filesystem::path>& shard_dirs,
                           bool report = true,
                           DuplicatePolicy duplicates = DuplicatePolicy::Refuse);

}  // namespace bhmoe::experiments
