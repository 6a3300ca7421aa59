#include "experiments/merge.h"

#include <algorithm>
#include <map>

#include "experiments/report.h"
#include "experiments/results.h"
#include "util/error.h"
#include "util/file.h"

namespace bhmoe::experiments {

namespace fs = std::filesystem;

const char* duplicate_policy_name(DuplicatePolicy policy) {
  switch (policy) {
    case DuplicatePolicy::Refuse:
      return "refuse";
    case DuplicatePolicy::First:
      return "first";
    case DuplicatePolicy::Last:
      return "last";
    case DuplicatePolicy::PreferOk:
      return "prefer-ok";
  }
  return "?";
}

DuplicatePolicy parse_duplicate_policy(const std::string& name) {
  for (DuplicatePolicy p : {DuplicatePolicy::Refuse, DuplicatePolicy::First, DuplicatePolicy::Last,
                            DuplicatePolicy::PreferOk}) {
    if (name == duplicate_policy_name(p)) return p;
  }
  fail("merge: duplicates policy '", name, "' is not one of refuse, first, last, prefer-ok");
}

MergeSummary merge_results(const fs::path& out_dir, const std::vector<fs::path>& shard_dirs,
                           bool report, DuplicatePolicy duplicates) {
  if (shard_dirs.empty()) fail("merge: no shard folders given");
  if (fs::exists(out_dir)) require_directory(out_dir);  // before any shard is read
  MergeSummary summary;
  std::map<std::string, ResultRow> by_key;
  std::map<std::string, size_t> shard_of_key;  // index into shard_dirs of the row kept
  std::map<std::string, std::string> hash_of_experiment;
  std::map<std::string, int64_t> grid_size;
  for (size_t shard = 0; shard < shard_dirs.size(); ++shard) {
    const fs::path& dir = shard_dirs[shard];
    require_directory(dir);
    fs::path path = dir / "results.jsonl";
    if (!fs::is_regular_file(path)) fail("merge: ", path.string(), " does not exist");
    if (fs::equivalent(dir, out_dir))
      fail("merge: the output folder ", out_dir.string(), " is also a shard folder");
    LoadedResults loaded = load_results(path);
    ++summary.shards;
    if (loaded.torn_tail)
      summary.warnings.push_back(cat(path.string(), ": ignored an incomplete last line"));
    for (ResultRow& row : loaded.rows) {
      std::string hash = row.run.value("settings_hash", "");
      auto [it, inserted] = hash_of_experiment.try_emplace(row.experiment, hash);
      if (!inserted && it->second != hash) {
        fail("merge: ", path.string(), " holds experiment '", row.experiment,
             "' with a different definition, model or calibration (settings hash ", hash, " vs ",
             it->second, ")");
      }
      if (row.run.contains("grid_size") && row.run["grid_size"].is_number_integer()) {
        grid_size[row.experiment] = row.run["grid_size"].get<int64_t>();
      }
      auto existing = by_key.find(row.key);
      if (existing == by_key.end()) {
        shard_of_key[row.key] = shard;
        by_key.emplace(row.key, std::move(row));
        continue;
      }
      const size_t first_shard = shard_of_key[row.key];
      if (first_shard == shard) {  // a retry within one folder: an ok row replaces an error row
        if (!existing->second.ok() && row.ok()) existing->second = std::move(row);
        continue;
      }
      ++summary.duplicates;
      bool replace = false;
      switch (duplicates) {
        case DuplicatePolicy::Refuse:
          fail("merge: shards overlap: grid item '", row.key, "' is in both ",
               shard_dirs[first_shard].string(), " and ", dir.string(),
               " (a folder given twice, or runs not split by --shard I/N?); pass --duplicates "
               "first|last|prefer-ok to say which row to keep");
        case DuplicatePolicy::First:
          break;
        case DuplicatePolicy::Last:
          replace = true;
          break;
        case DuplicatePolicy::PreferOk:
          replace = !existing->second.ok() && row.ok();
          break;
      }
      if (replace) {
        existing->second = std::move(row);
        shard_of_key[existing->first] = shard;
      }
    }
  }
  std::vector<ResultRow> rows;
  for (auto& [key, row] : by_key) rows.push_back(std::move(row));
  rows = dedupe_and_sort(std::move(rows));
  for (const auto& [experiment, size] : grid_size) {
    int64_t have = std::count_if(rows.begin(), rows.end(),
                                 [&](const ResultRow& r) { return r.experiment == experiment; });
    if (have < size) {
      summary.warnings.push_back(
          cat("experiment '", experiment, "': ", have, " of ", size,
              " grid items present; the missing ones were not run by any shard"));
    }
  }
  ensure_directory(out_dir);
  const DirectoryLock lock(out_dir);  // no run, merge or report writes it meanwhile
  std::string text;
  for (const ResultRow& row : rows) text += to_jsonl_line(row) + "\n";
  write_file_atomic(out_dir / "results.jsonl", text);
  summary.rows = static_cast<int64_t>(rows.size());
  std::string log = utc_now() + cat(" bhmoe merge: ", summary.rows, " rows from ", summary.shards,
                                    " shards (", summary.duplicates, " keys in more than one shard, kept by --duplicates ",
                                    duplicate_policy_name(duplicates), ")\n");
  for (const std::string& w : summary.warnings) log += utc_now() + " warning: " + w + "\n";
  append_file_durable(out_dir / "run.log", log);
  if (report) write_outputs(out_dir, std::move(rows));
  return summary;
}

}  // namespace bhmoe::experiments
