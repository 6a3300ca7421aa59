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
#include "util/json.h"
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

// One routing case of cases.json (bh-routing-cases/1): the original implementation's selection
// for every token of a logits file under one BH setting.
struct RoutingCase {
  std::string where;  // "<cases.json>: cases[i]", for messages
  std::string logits;
  int layer = 0;
  std::string spec;
  std::vector<int> counts;
  std::vector<std::set<int>> experts;
};

struct RoutingCases {
  fs::path calibration;
  std::vector<RoutingCase> cases;
};

// The value of `key` in `object`, which must be there; `where` names the object.
const nlohmann::json& member(const nlohmann::json& object, const char* key,
                             const std::string& where) {
  if (!object.is_object()) fail(where, ": not a JSON object");
  auto it = object.find(key);
  if (it == object.end()) fail(where, ": missing key \"", key, "\"");
  return *it;
}

int int_member(const nlohmann::json& object, const char* key, const std::string& where, int min,
               int max) {
  const nlohmann::json& v = member(object, key, where);
  if (!v.is_number_integer() || v.get<int64_t>() < min || v.get<int64_t>() > max) {
    fail(where, ".", key, ": ", v.dump(), " is not an integer in [", min, ", ", max, "]");
  }
  return v.get<int>();
}

double number_member(const nlohmann::json& object, const char* key, const std::string& where) {
  const nlohmann::json& v = member(object, key, where);
  if (!v.is_number()) fail(where, ".", key, ": ", v.dump(), " is not a number");
  return v.get<double>();
}

std::string string_member(const nlohmann::json& object, const char* key, const std::string& where) {
  const nlohmann::json& v = member(object, key, where);
  if (!v.is_string() || v.get<std::string>().empty()) {
    fail(where, ".", key, ": ", v.dump(), " is not a non-empty string");
  }
  return v.get<std::string>();
}

// Reads and checks cases.json; every error names the file and the key (cases[i].key) at fault.
// Values the router checks itself (alpha in (0, 1), min_k <= max_k) are checked when the router is
// built, and the per-token lists against the logits file when it is read.
RoutingCases load_routing_cases(const fs::path& path) {
  const std::string source = path.string();
  const nlohmann::json doc = read_json_file(path);
  RoutingCases out;
  out.calibration = path.parent_path().parent_path() / string_member(doc, "calibration", source);
  const nlohmann::json& cases = member(doc, "cases", source);
  if (!cases.is_array() || cases.empty()) fail(source, ": \"cases\" is not a non-empty array");
  for (size_t i = 0; i < cases.size(); ++i) {
    RoutingCase c;
    c.where = cat(source, ": cases[", i, "]");
    const nlohmann::json& j = cases[i];
    c.logits = string_member(j, "logits", c.where);
    c.layer = int_member(j, "layer", c.where, 0, kMaxCalibrationLayer);
    c.spec = cat("bh:alpha=", format_number(number_member(j, "alpha", c.where)),
                 ",max_k=", int_member(j, "max_k", c.where, 1, kMaxExperts),
                 ",min_k=", int_member(j, "min_k", c.where, 0, kMaxExperts),
                 ",temperature=", format_number(number_member(j, "temperature", c.where)));
    const nlohmann::json& counts = member(j, "counts", c.where);
    const nlohmann::json& experts = member(j, "experts", c.where);
    if (!counts.is_array()) fail(c.where, ".counts: not an array");
    if (!experts.is_array()) fail(c.where, ".experts: not an array");
    for (size_t t = 0; t < counts.size(); ++t) {
      if (!counts[t].is_number_integer() || counts[t].get<int64_t>() < 0 ||
          counts[t].get<int64_t>() > kMaxExperts) {
        fail(c.where, ".counts[", t, "]: ", counts[t].dump(), " is not an expert count");
      }
      c.counts.push_back(counts[t].get<int>());
    }
    for (size_t t = 0; t < experts.size(); ++t) {
      if (!experts[t].is_array()) fail(c.where, ".experts[", t, "]: not an array of expert ids");
      std::set<int> ids;
      for (size_t k = 0; k < experts[t].size(); ++k) {
        const nlohmann::json& id = experts[t][k];
        if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= kMaxExperts) {
          fail(c.where, ".experts[", t, "][", k, "]: ", id.dump(), " is not an expert id");
        }
        ids.insert(id.get<int>());
      }
      c.experts.push_back(std::move(ids));
    }
    out.cases.push_back(std::move(c));
  }
  return out;
}

// The logits file of case `c`: [tokens, experts] with 1..kMaxExperts experts. Errors name the
// case and the file.
const NpyArray& case_logits(std::map<std::string, NpyArray>& files, const fs::path& dir,
                            const RoutingCase& c) {
  auto it = files.find(c.logits);
  if (it != files.end()) return it->second;
  NpyArray x;
  try {
    x = read_npy(dir / c.logits);
  } catch (const Error& e) {
    fail(c.where, ".logits: ", e.what());
  }
  if (x.shape.size() != 2 || x.dim(0) < 1 || x.dim(1) < 1 || x.dim(1) > kMaxExperts) {
    fail(c.where, ".logits: ", (dir / c.logits).string(),
         ": expected logits of shape [tokens, experts] with 1 to ", kMaxExperts, " experts");
  }
  return files.emplace(c.logits, std::move(x)).first->second;
}

// Returns the number of mismatching cases (and prints the first few mismatches).
int check_cases(const RoutingCases& doc, const fs::path& dir,
                std::map<std::string, NpyArray>& files,
                std::shared_ptr<const Calibration> calibration) {
  int bad = 0;
  for (const RoutingCase& c : doc.cases) {
    const NpyArray& x = case_logits(files, dir, c);
    const int n = static_cast<int>(x.dim(1));
    const int64_t tokens = x.dim(0);
    if (static_cast<int64_t>(c.counts.size()) != tokens ||
        static_cast<int64_t>(c.experts.size()) != tokens) {
      fail(c.where, ": counts and experts must have one entry per token of ", c.logits, " (",
           tokens, "), not ", c.counts.size(), " and ", c.experts.size());
    }
    if (!calibration->has_layer(c.layer)) {
      fail(c.where, ".layer: ", c.layer, " is not a layer of the calibration ",
           doc.calibration.string());
    }
    std::unique_ptr<Router> router;
    try {
      router = make_router(c.spec, n, calibration);
    } catch (const Error& e) {
      fail(c.where, ": ", e.what());
    }
    const int stride = router->max_count();
    std::vector<int32_t> ids(tokens * stride), counts(tokens);
    std::vector<float> weights(ids.size());
    router->route_batch(x.data.data(), tokens, c.layer, ids.data(), weights.data(), counts.data());
    int wrong = 0;
    for (int64_t t = 0; t < tokens; ++t) {
      std::set<int> got(ids.begin() + t * stride, ids.begin() + t * stride + counts[t]);
      if (counts[t] != c.counts[t] || got != c.experts[t]) ++wrong;
    }
    if (wrong) {
      if (bad < 5) {
        std::cout << "MISMATCH " << c.logits << " layer " << c.layer << " " << c.spec << ": "
                  << wrong << " tokens differ\n";
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
  // An absent folder means generated logits (said on stdout); a file where the folder should be is
  // a mistake, not a reason to show something else.
  if (fs::exists(dir)) {
    try {
      require_directory(dir);
    } catch (const Error& e) {
      fail("--cases: ", e.what());
    }
  }
  std::cout << "bhmoe demo: Benjamini-Hochberg adaptive expert routing vs top-k\n";
  if (fs::exists(dir / "cases.json")) {
    // Everything is read and checked before anything is printed.
    const RoutingCases doc = load_routing_cases(dir / "cases.json");
    auto calibration = std::make_shared<const Calibration>(Calibration::load(doc.calibration));
    std::map<std::string, NpyArray> files;
    for (const RoutingCase& c : doc.cases) case_logits(files, dir, c);
    std::cout << "routing cases: " << dir.string() << "\ncalibration: " << doc.calibration.string()
              << " (" << calibration->model << ", " << calibration->num_layers() << " layers)\n";
    for (const auto& [file, logits] : files) {
      print_comparison(file, logits, o.layer, o.alpha, max_ks, calibration);
    }
    const int total = static_cast<int>(doc.cases.size());
    const int bad = check_cases(doc, dir, files, calibration);
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
      app.add_option("--cases", o->cases,
                     "routing-cases folder with cases.json (generated logits when absent)")
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
