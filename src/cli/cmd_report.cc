// bhmoe report: rebuild the analysis, CSVs, plots and REPORT.md from results.jsonl alone; with
// --schema, print the columns of those outputs (experiments/schema.h).
#include <cstdio>
#include <memory>

#include "cli/command.h"
#include "experiments/report.h"
#include "experiments/results.h"
#include "experiments/schema.h"
#include "util/error.h"
#include "util/file.h"

namespace bhmoe::cli {
namespace {

CommandRegistration reg{
    "report", "Rebuild CSVs, analysis_summary.json, plots and REPORT.md from DIR/results.jsonl",
    [](CLI::App& app) {
      auto out = std::make_shared<std::filesystem::path>();
      auto schema = std::make_shared<bool>(false);
      auto* out_option =
          app.add_option("--out", *out, "The run's output folder (holding results.jsonl)");
      app.add_flag("--schema", *schema,
                   "Print every column of results.jsonl and of the CSV files the report writes "
                   "(type, unit, meaning) and exit")
          ->excludes(out_option);
      return [out, schema, out_option]() {
        if (*schema) {
          std::fputs(experiments::schema_text().c_str(), stdout);
          return 0;
        }
        if (out_option->count() == 0) fail("report: --out DIR is required (or --schema)");
        if (std::filesystem::exists(*out)) {
          try {
            require_directory(*out);
          } catch (const Error& e) {
            fail("--out: ", e.what());
          }
        }
        std::filesystem::path results = *out / "results.jsonl";
        if (!std::filesystem::is_regular_file(results))
          fail("report: ", results.string(), " does not exist");
        const DirectoryLock lock(*out);  // a run or merge writing the folder would race the report
        experiments::LoadedResults loaded = experiments::load_results(results);
        if (loaded.torn_tail) {
          std::fprintf(stderr, "bhmoe report: ignored an incomplete last line in %s\n",
                       results.string().c_str());
        }
        if (loaded.rows.empty()) fail("report: ", results.string(), " holds no results");
        size_t rows = loaded.rows.size();
        experiments::OutputSummary s = experiments::write_outputs(*out, std::move(loaded.rows));
        std::printf("bhmoe report: %zu rows, %zu plots; wrote %s\n", rows, s.plots.size(),
                    (*out / "REPORT.md").string().c_str());
        return 0;
      };
    }};

}  // namespace
}  // namespace bhmoe::cli
