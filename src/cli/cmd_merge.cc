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
      auto duplicates = std::make_shared<std::string>("refuse");
      auto no_report = std::make_shared<bool>(false);
      app.add_option("--out", *out, "Output folder for the merged results and report")->required();
      app.add_option("shard_dirs", *shards, "Shard output folders (each with results.jsonl)")
          ->required();
      app.add_option("--duplicates", *duplicates,
                     "When a grid item is in two shard folders: refuse (the default: an error "
                     "naming both), first, last (the folder listed first/last wins) or prefer-ok "
                     "(the first ok row)")
          ->check(CLI::IsMember({"refuse", "first", "last", "prefer-ok"}));
      app.add_flag("--no-report", *no_report,
                   "Write the merged results.jsonl only (build the outputs later with bhmoe report)");
      return [out, shards, duplicates, no_report]() {
        experiments::MergeSummary s = experiments::merge_results(
            *out, *shards, !*no_report, experiments::parse_duplicate_policy(*duplicates));
        for (const std::string& w : s.warnings)
          std::fprintf(stderr, "bhmoe merge: warning: %s\n", w.c_str());
        std::printf(
            "bhmoe merge: %lld rows from %lld shards (%lld keys in more than one shard); outputs in "
            "%s\n",
            static_cast<long long>(s.rows), static_cast<long long>(s.shards),
            static_cast<long long>(s.duplicates), out->string().c_str());
        return 0;
      };
    }};

}  // namespace
}  // namespace bhmoe::cli
