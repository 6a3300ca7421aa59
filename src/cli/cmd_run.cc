// bhmoe run: sweep routing configs over prompts and held-out texts on a model, measuring expert use
// and quality; writes results.jsonl (resumable), CSVs, plots and REPORT.md under --out.
#include <cstdio>
#include <memory>

#include "cli/command.h"
#include "cli/engine_common.h"
#include "experiments/runner.h"

namespace bhmoe::cli {
namespace {

CommandRegistration reg{
    "run",
    "Run an experiment (built-in seed or pareto, or a JSON file) on a model: results, CSVs, plots, "
    "REPORT.md",
    [](CLI::App& app) {
      auto o = std::make_shared<experiments::RunOptions>();
      auto shard = std::make_shared<std::string>("0/1");
      auto max_new = std::make_shared<int>(0);
      app.add_option("--model", o->model_dir,
                     "Checkpoint folder (config.json, safetensors, tokenizer.json) or GGUF file")
          ->required();
      app.add_option("--out", o->out_dir, "Output folder (created; a re-run resumes what is there)")
          ->required();
      app.add_option(
          "--experiment", o->experiment,
          "seed (default: 16 configs x 12 prompts, greedy, 50 new tokens), pareto (held-out text "
          "under top-k/top-p/BH sweeps) or an experiment JSON file");
      app.add_option("--calibration", o->calibration,
                     "bh-calibration-grid/1 file for the BH configs");
      app.add_option(
          "--calibration-text", o->calibration_text,
          "Text to fit a calibration from (cached in --out) when no calibration file is given");
      app.add_option("--max-new-tokens", *max_new,
                     "Override the experiment's new tokens per prompt")
          ->check(CLI::Range(1, 100000));
      app.add_option(
          "--shard", *shard,
          "I/N: run only grid items whose index % N == I (0-based), e.g. a Slurm array task");
      add_threads_option(app, o->threads);
      app.add_option("--weights", o->weights, kWeightsHelp)
          ->check(CLI::IsMember({"native", "bf16", "q8"}));
      app.add_option("--limit", o->limit,
                     "Stop after running this many experiments (resume later)");
      app.add_flag(
          "--no-report", [o](int64_t) { o->report = false; },
          "Only append results; skip the CSV/plots/report (e.g. in a shard, before merge)");
      app.add_flag(
          "--progress-lines", [o](int64_t) { o->progress = 0; },
          "Plain progress lines even on a terminal");
      app.add_flag("--quiet", o->quiet, "No progress output (run.log is still written)");
      return [o, shard, max_new]() {
        experiments::parse_shard(*shard, o->shard_index, o->shard_count);
        if (*max_new > 0) o->max_new_tokens = *max_new;
        experiments::RunSummary s = experiments::run_experiments(*o);
        std::printf(
            "bhmoe run: %lld experiments in this shard: %lld run now (%lld failed), %lld already "
            "done, %lld "
            "remaining; %.1f s; outputs in %s\n",
            static_cast<long long>(s.in_shard), static_cast<long long>(s.ran),
            static_cast<long long>(s.failed), static_cast<long long>(s.already),
            static_cast<long long>(s.remaining), s.seconds, o->out_dir.string().c_str());
        return 0;
      };
    }};

}  // namespace
}  // namespace bhmoe::cli
