// bhmoe merge: combine the results of `bhmoe run --shard I/N` folders and build the report.
#include <cstdio>
#include <memory>

#include "cli/command.h"
#include "experiments/merge.h"

namespace bhmoe::cli {
namespace {

CommandRegistration reg{
    "merge", "Combine shard folders' results.jsonl into one and build CSVs, plots and REPORT.md",
    [](CLI::App& app) {
      auto out = std::make_shared<std::filesystem::path>();
      auto shards = std::make_shared<std::vector<std::filesystem::path>>();
      app.add_option("--out", *out, "Output folder for the merged results and report")->required();
      app.add_option("shard_dirs", *shards, "Shard output folders (each with results.jsonl)")
          ->required();
      return [out, shards]() {
        experiments::MergeSummary s = experiments::merge_results(*out, *shards);
        for (const std::string& w : s.warnings)
          std::fprintf(stderr, "bhmoe merge: warning: %s\n", w.c_str());
        std::printf(
            "bhmoe merge: %lld rows from %lld shards (%lld duplicate keys); outputs in %s\n",
            static_cast<long long>(s.rows), static_cast<long long>(s.shards),
            static_cast<long long>(s.duplicates), out->string().c_str());
        return 0;
      };
    }};

}  // namespace
}  // namespace bhmoe::cli
