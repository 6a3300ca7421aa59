// bhmoe demo (what `make run` runs for now): BH routing swept over max_k against top-k on the
// shared routing cases (or generated logits when they are absent), and a check that every case
// reproduces the original implementation's selections.
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "cli/command.h"
#include "routing/calibration.h"
#include "routing/router.h"
#include "routing/spec.h"
#include "routing/stats.h"
#include "util/error.h"
#include "util/file.h"
#include "util/npy.h"

namespace bhmoe::cli {
namespace {

using namespace routing;
namespace fs = std::filesystem;

struct DemoOptions {
  std::string cases = "../shared/routing-cases";
  int layer = 0;
  double alpha = 0.05;
  std::string max_ks = "8,16,32,64";
};

void print_comparison(const std::string& title, const NpyArray& logits, int layer, double alpha,
                      const std::vector<int>& max_ks,
                      std::shared_ptr<const Calibration> calibration) {
  const int n = static_cast<int>(logits.dim(1));
  std::vector<int> usable;
  for (int k : max_ks) {
    if (k <= n) usable.push_back(k);
  }
  auto rows = multi_k_table(cat("bh:alpha=", format_number(alpha), ",max_k=", n), usable,
                            logits.data.data(), logits.dim(0), n, layer, calibration);
  std::cout << "\n"
            << title << ": " << logits.dim(0) << " tokens x " << n << " experts, layer " << layer
            << ", BH alpha " << format_number(alpha) << " vs top-k (k = max_k)\n";
  std::cout << std::left << std::setw(7) << "max_k" << std::right << std::setw(8) << "top-k"
            << std::setw(9) << "BH mean" << std::setw(8) << "BH std" << std::setw(8) << "BH min"
            << std::setw(8) << "BH max" << std::setw(11) << "%ceiling" << std::setw(11)
            << "reduction"
            << "\n";
  for (const MultiKRow& row : rows) {
    const CountStats& s = row.stats;
    std::cout << std::left << std::setw(7) << row.max_k << std::right << std::setw(8) << row.max_k
              << std::fixed << std::setprecision(2) << std::setw(9) << s.mean_experts
              << std::setw(8) << s.std_experts << std::setprecision(0) << std::setw(8)
              << s.min_experts << std::setw(8) << s.max_experts << std::setprecision(1)
              << std::setw(10) << s.pct_at_ceiling << "%" << std::setw(10)
              << 100.0 * (1.0 - s.mean_experts / row.max_k) << "%\n";
  }
  std::cout << "multi-k table (CSV):\n" << multi_k_csv(rows);
}

// Returns the number of mismatching cases (and prints the first few mismatches).
int check_cases(const nlohmann::json& doc, const fs::path& dir,
                std::shared_ptr<const Calibration> calibration, int* total) {
  std::map<std::string, NpyArray> files;
  int bad = 0;
  *total = 0;
  for (const auto& c : doc.at("cases")) {
    ++*total;
    const std::string file = c.at("logits");
    if (!files.count(file)) files[file] = read_npy(dir / file);
    const NpyArray& x = files[file];
    const int n = static_cast<int>(x.dim(1));
    const std::string spec =
        cat("bh:alpha=", format_number(c.at("alpha").get<double>()),
            ",max_k=", c.at("max_k").get<int>(), ",min_k=", c.at("min_k").get<int>(),
            ",temperature=", format_number(c.at("temperature").get<double>()));
    auto router = make_router(spec, n, calibration);
    const int stride = router->max_count();
    const int64_t tokens = x.dim(0);
    std::vector<int32_t> ids(tokens * stride), counts(tokens);
    std::vector<float> weights(ids.size());
    const int layer = c.at("layer");
    router->route_batch(x.data.data(), tokens, layer, ids.data(), weights.data(), counts.data());
    int wrong = 0;
    for (int64_t t = 0; t < tokens; ++t) {
      std::set<int> got(ids.begin() + t * stride, ids.begin() + t * stride + counts[t]);
      if (counts[t] != c.at("counts").at(t).get<int>() ||
          got != c.at("experts").at(t).get<std::set<int>>()) {
        ++wrong;
      }
    }
    if (wrong) {
      if (bad < 5) {
        std::cout << "MISMATCH " << file << " layer " << layer << " " << spec << ": " << wrong
                  << " tokens differ\n";
      }
      ++bad;
    }
  }
  return bad;
}

int run(const DemoOptions& o) {
  const std::vector<int> max_ks = parse_positive_int_list(o.max_ks, "--max-k");
  if (!(o.alpha > 0.0 && o.alpha < 1.0)) fail("--alpha ", o.alpha, " is outside (0, 1)");
  const fs::path dir = o.cases;
  std::cout << "bhmoe demo: Benjamini-Hochberg adaptive expert routing vs top-k\n";
  if (fs::exists(dir / "cases.json")) {
    const nlohmann::json doc = nlohmann::json::parse(read_file(dir / "cases.json"));
    const fs::path calibration_path = dir.parent_path() / doc.at("calibration").get<std::string>();
    auto calibration = std::make_shared<const Calibration>(Calibration::load(calibration_path));
    std::cout << "routing cases: " << dir.string() << "\ncalibration: " << calibration_path.string()
              << " (" << calibration->model << ", " << calibration->num_layers() << " layers)\n";
    std::set<std::string> files;
    for (const auto& c : doc.at("cases")) files.insert(c.at("logits").get<std::string>());
    for (const std::string& file : files) {
      print_comparison(file, read_npy(dir / file), o.layer, o.alpha, max_ks, calibration);
    }
    int total = 0;
    const int bad = check_cases(doc, dir, calibration, &total);
    std::cout << "\nreproduction of the original implementation: " << total - bad << "/" << total
              << " routing cases match (every token's count and expert set)\n";
    if (bad) {
      std::cerr << "bhmoe: error: " << bad << " routing cases do not match\n";
      return 1;
    }
    return 0;
  }
  // No shared cases: generated logits and a calibration fitted on generated null logits.
  std::cout << "no " << (dir / "cases.json").string()
            << "; using generated logits (seed 42) and a KDE calibration fitted on 128,000 "
               "standard normal logits\n";
  std::mt19937_64 rng(42);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::map<int, std::vector<float>> pool;
  for (int i = 0; i < 128000; ++i) pool[o.layer].push_back(normal(rng));
  auto calibration =
      std::make_shared<const Calibration>(fit_calibration(pool, FitMethod::kKde, 2000));
  NpyArray plain{{200, 64}, std::vector<float>(200 * 64)};
  for (float& v : plain.data) v = normal(rng);
  NpyArray boosted{{100, 64}, std::vector<float>(100 * 64)};
  for (int t = 0; t < 100; ++t) {
    for (int e = 0; e < 64; ++e) {
      boosted.data[t * 64 + e] = normal(rng) + (e < 8 ? 2.0f : 0.0f) + (e < 3 ? 1.0f : 0.0f);
    }
  }
  print_comparison("generated boosted logits (experts 0-7 +2, 0-2 +1 more)", boosted, o.layer,
                   o.alpha, max_ks, calibration);
  print_comparison("generated standard normal logits", plain, o.layer, o.alpha, max_ks,
                   calibration);
  std::cout << "\nreproduction check skipped: no routing cases\n";
  return 0;
}

CommandRegistration registration{
    "demo",
    "BH vs top-k multi-k comparison on the shared routing cases, and a check that they reproduce",
    [](CLI::App& app) -> Action {
      auto o = std::make_shared<DemoOptions>();
      app.add_option("--cases", o->cases, "routing-cases folder (generated logits when absent)")
          ->capture_default_str();
      app.add_option("--layer", o->layer, "calibration layer for the comparison tables")
          ->capture_default_str();
      app.add_option("--alpha", o->alpha, "BH alpha for the comparison tables")
          ->capture_default_str();
      app.add_option("--max-k", o->max_ks, "max_k values to sweep")->capture_default_str();
      return [o] { return run(*o); };
    }};

}  // namespace
}  // namespace bhmoe::cli
