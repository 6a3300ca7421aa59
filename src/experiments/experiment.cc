#include "experiments/experiment.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <set>

#include "routing/spec.h"
#include "util/error.h"
#include "util/file.h"
#include "util/json.h"

namespace bhmoe::experiments {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string alpha_tag(double alpha) {
  double hundredths = alpha * 100;
  if (std::fabs(hundredths - std::round(hundredths)) < 1e-9 && hundredths >= 1) {
    char buffer[16];
    std::snprintf(buffer, sizeof buffer, "%03d", static_cast<int>(std::lround(hundredths)));
    return buffer;
  }
  std::string text = routing::format_number(alpha);
  text.erase(std::remove(text.begin(), text.end(), '.'), text.end());
  return text;
}

void check_keys(const json& object, const std::set<std::string>& allowed,
                const std::string& where) {
  for (auto it = object.begin(); it != object.end(); ++it) {
    if (!allowed.count(it.key())) {
      std::string list;
      for (const std::string& k : allowed) list += (list.empty() ? "" : ", ") + k;
      fail(where, ": unknown key '", it.key(), "' (allowed: ", list, ")");
    }
  }
}

// The integer at `key` (which the object holds), if it fits an int: a larger one (4294967297)
// would otherwise wrap silently into range (to 1) before validate_experiment's range checks.
int get_int(const json& object, const char* key, const std::string& where) {
  const json& v = *object.find(key);
  if (!v.is_number_integer()) fail(where, ": key '", key, "' should be an integer");
  if (v.is_number_unsigned() ? v.get<uint64_t>() > uint64_t{INT32_MAX}
                             : v.get<int64_t>() < INT32_MIN || v.get<int64_t>() > INT32_MAX) {
    fail(where, ": key '", key, "' value ", v.dump(), " is out of range");
  }
  return v.get<int>();
}

std::string get_string(const json& object, const char* key, const std::string& where,
                       bool required) {
  auto it = object.find(key);
  if (it == object.end()) {
    if (required) fail(where, ": missing key '", key, "'");
    return {};
  }
  if (!it->is_string()) fail(where, ": key '", key, "' should be a string");
  return it->get<std::string>();
}

std::vector<RouterEntry> parse_routers(const json& list, const std::string& where) {
  if (!list.is_array()) fail(where, ": should be an array of router specs");
  std::vector<RouterEntry> routers;
  for (size_t i = 0; i < list.size(); ++i) {
    std::string at = where + "[" + std::to_string(i) + "]";
    const json& item = list[i];
    RouterEntry r;
    if (item.is_string()) {
      r.spec = item.get<std::string>();
    } else if (item.is_object()) {
      check_keys(item, {"name", "spec"}, at);
      r.spec = get_string(item, "spec", at, true);
      r.name = get_string(item, "name", at, false);
    } else {
      fail(at, ": should be a spec string or {\"name\", \"spec\"}");
    }
    try {
      routing::parse_router_spec(r.spec);
    } catch (const Error& e) {
      fail(at, ": ", e.what());
    }
    if (r.name.empty()) r.name = default_router_name(r.spec);
    routers.push_back(r);
  }
  return routers;
}

fs::path resolve(const fs::path& base, const std::string& path) {
  fs::path p(path);
  return p.is_absolute() || base.empty() ? p : base / p;
}

std::vector<PromptEntry> read_prompt_file(const fs::path& path, const std::string& category,
                                          const std::string& where) {
  if (!fs::is_regular_file(path)) fail(where, ": prompt file ", path.string(), " does not exist");
  std::string text = read_file(path);
  std::vector<PromptEntry> prompts;
  bool jsonl = path.extension() == ".jsonl";
  size_t begin = 0;
  int line_number = 0;
  while (begin <= text.size()) {
    size_t end = text.find('\n', begin);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(begin, end - begin);
    begin = end + 1;
    ++line_number;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    std::string at = path.string() + " line " + std::to_string(line_number);
    PromptEntry p;
    if (jsonl) {
      const json j = parse_json(line, at);
      if (!j.is_object()) fail(at, ": not a JSON object");
      check_keys(j, {"id", "text", "category", "description"}, at);
      p.text = get_string(j, "text", at, true);
      p.category = get_string(j, "category", at, false);
      p.description = get_string(j, "description", at, false);
      p.id = get_string(j, "id", at, false);
    } else {
      p.text = line;
    }
    if (p.category.empty()) p.category = category.empty() ? "uncategorised" : category;
    if (p.id.empty()) p.id = path.stem().string() + ":" + std::to_string(line_number);
    if (p.description.empty())
      p.description = path.filename().string() + " line " + std::to_string(line_number);
    prompts.push_back(p);
  }
  if (prompts.empty()) fail(where, ": prompt file ", path.string(), " holds no prompts");
  return prompts;
}

}  // namespace

std::string fnv1a_hex(std::string_view data) {
  uint64_t hash = 14695981039346656037ull;
  for (unsigned char c : data) {
    hash ^= c;
    hash *= 1099511628211ull;
  }
  char buffer[17];
  std::snprintf(buffer, sizeof buffer, "%016llx", static_cast<unsigned long long>(hash));
  return buffer;
}

std::string default_router_name(const std::string& spec_text) {
  routing::RouterSpec spec;
  try {
    spec = routing::parse_router_spec(spec_text);
  } catch (const Error&) {
    return spec_text;
  }
  bool plain = spec.temperature == 1.0 && !spec.renorm;
  switch (spec.rule) {
    case routing::RuleKind::kTopK:
      if (plain) return "topk_" + std::to_string(spec.k);
      break;
    case routing::RuleKind::kBH:
      if (plain && spec.min_k == 1 && spec.pvalues == routing::PValueKind::kCalibrated) {
        return "bh_k" + std::to_string(spec.max_k) + "_a" + alpha_tag(spec.alpha);
      }
      break;
    case routing::RuleKind::kTopP:
      if (plain && spec.min_k == 1) {
        std::string p = routing::format_number(spec.p);
        p.erase(std::remove(p.begin(), p.end(), '.'), p.end());
        return "topp_p" + p +
               (spec.max_k_given ? "_k" + std::to_string(spec.max_k) : std::string());
      }
      break;
    case routing::RuleKind::kSkip:
      if (plain && spec.min_k == 1) {
        return "skip_b" + alpha_tag(spec.beta) + "_k" + std::to_string(spec.max_k);
      }
      break;
    case routing::RuleKind::kThreshold:
      if (plain && spec.min_k == 1) {
        return "thr_t" + alpha_tag(spec.tau) + "_k" + std::to_string(spec.max_k);
      }
      break;
    case routing::RuleKind::kHC:
      if (plain && spec.min_k == 1 && spec.pvalues == routing::PValueKind::kCalibrated) {
        return "hc_k" + std::to_string(spec.max_k) +
               (spec.alpha0 == 0.5 ? std::string() : "_a0" + alpha_tag(spec.alpha0));
      }
      break;
    case routing::RuleKind::kEntropy:
      if (plain) {
        std::string name = "entk";
        for (int k : spec.ks) name += "_" + std::to_string(k);
        return name;
      }
      break;
  }
  return routing::canonical_spec(spec);
}

std::vector<PromptEntry> seed_prompts() {
  return {
      {"p1", "The cat sat on the", "simple", "Simple sentence completion"},
      {"p2", "Once upon a time, there was a", "simple", "Story beginning"},
      {"p3", "The capital of France is", "simple", "Factual completion"},
      {"p4", "In computer science, a linked list is a data structure that", "medium",
       "Technical explanation"},
      {"p5",
       "Climate change refers to long-term shifts in temperatures and weather patterns. These "
       "shifts",
       "medium", "Informative continuation"},
      {"p6", "The stock market crashed in 1929 because", "medium", "Historical reasoning"},
      {"p7",
       "If you have 3 apples and you give 2 to your friend, then you buy 5 more, how many apples "
       "do you "
       "have? Let me think step by step:",
       "complex", "Mathematical reasoning"},
      {"p8",
       "Compare and contrast the Renaissance and the Enlightenment periods in terms of their "
       "cultural, "
       "scientific, and philosophical contributions:",
       "complex", "Comparative analysis"},
      {"p9",
       "Explain the difference between supervised and unsupervised learning in machine learning, "
       "providing examples of each:",
       "complex", "Technical explanation with examples"},
      {"p10", "In Python, a decorator is a function that", "domain_specific",
       "Programming concepts"},
      {"p11", "The mitochondria is known as the powerhouse of the cell because it",
       "domain_specific", "Biology knowledge"},
      {"p12", "In quantum mechanics, the uncertainty principle states that", "domain_specific",
       "Physics knowledge"},
  };
}

std::vector<RouterEntry> seed_routers() {
  std::vector<RouterEntry> routers;
  for (int k : {8, 16, 32, 64}) {
    routers.push_back({"topk_" + std::to_string(k), "topk:k=" + std::to_string(k)});
  }
  for (int k : {8, 16, 32, 64}) {
    for (auto [tag, alpha] : {std::pair{"001", "0.01"}, {"005", "0.05"}, {"010", "0.1"}}) {
      routers.push_back({"bh_k" + std::to_string(k) + "_a" + tag,
                         std::string("bh:alpha=") + alpha + ",max_k=" + std::to_string(k) +
                             ",min_k=1,temperature=1"});
    }
  }
  return routers;
}

Experiment seed_experiment() {
  Experiment e;
  e.name = "seed";
  e.source = "built-in";
  e.routers = seed_routers();
  e.prompts = seed_prompts();
  return e;
}

Experiment pareto_experiment(const fs::path& model_dir) {
  Experiment e;
  e.name = "pareto";
  e.source = "built-in";
  for (int k : {1, 2, 3, 4, 5, 6, 7, 8, 12, 16}) {
    e.score_routers.push_back({"topk_" + std::to_string(k), "topk:k=" + std::to_string(k)});
  }
  for (const char* p : {"0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9", "0.95"}) {
    std::string spec = std::string("topp:p=") + p + ",max_k=16";
    e.score_routers.push_back({default_router_name(spec), spec});
  }
  for (const char* alpha : {"0.001", "0.005", "0.01", "0.02", "0.05", "0.1", "0.2", "0.3", "0.5"}) {
    std::string spec = std::string("bh:alpha=") + alpha + ",max_k=16";
    e.score_routers.push_back({default_router_name(spec), spec});
  }
  // The literature's other adaptive rules (README table), each swept across the top-k range.
  std::vector<std::string> others;
  for (const char* beta : {"0.5", "0.3", "0.2", "0.1", "0.05"}) others.push_back(std::string("skip:beta=") + beta + ",max_k=8");
  for (const char* tau : {"0.2", "0.1", "0.05", "0.02", "0.01"}) others.push_back(std::string("threshold:tau=") + tau + ",max_k=16");
  for (const char* hc : {"hc:max_k=4", "hc:max_k=8", "hc:max_k=16"}) others.push_back(hc);
  for (const char* ks : {"1/2/3/4", "1/2/4/8", "2/4/6/8"}) others.push_back(std::string("entropy:ks=") + ks);
  for (const std::string& spec : others) e.score_routers.push_back({default_router_name(spec), spec});
  // Windows of 256 tokens and up to 8192 tokens per text: 32 windows per text for the bootstrap,
  // and the whole sweep still a few minutes on a small model.
  e.scoring.window = 256;
  e.scoring.max_tokens = 8192;
  fs::path folder = model_dir / "heldout";
  if (fs::is_directory(folder)) {
    std::vector<fs::path> files;
    for (const auto& entry : fs::directory_iterator(folder)) {
      if (entry.is_regular_file() && entry.path().extension() == ".txt")
        files.push_back(entry.path());
    }
    std::sort(files.begin(), files.end());
    for (const fs::path& f : files) e.texts.push_back({f.stem().string(), f});
  }
  if (e.texts.empty() && fs::is_regular_file(model_dir / "heldout.txt")) {
    e.texts.push_back({"heldout", model_dir / "heldout.txt"});
  }
  if (e.texts.empty()) {
    fail("experiment 'pareto' scores held-out text, but model folder ", model_dir.string(),
         " has no heldout/*.txt or heldout.txt; write an experiment file naming \"texts\" "
         "(see bhmoe run --help)");
  }
  return e;
}

Experiment parse_experiment(const json& j, const fs::path& base, const std::string& source) {
  if (!j.is_object()) fail(source, ": an experiment file must hold a JSON object");
  check_keys(j,
             {"name", "routers", "prompts", "prompt_files", "texts", "score_routers", "generation",
              "scoring", "calibration", "description"},
             source);
  Experiment e;
  e.source = source;
  e.name = get_string(j, "name", source, false);
  if (e.name.empty()) e.name = fs::path(source).stem().string();
  if (j.contains("routers")) e.routers = parse_routers(j["routers"], source + ": routers");
  if (j.contains("prompts")) {
    const json& list = j["prompts"];
    if (!list.is_array()) fail(source, ": prompts: should be an array");
    for (size_t i = 0; i < list.size(); ++i) {
      std::string at = source + ": prompts[" + std::to_string(i) + "]";
      PromptEntry p;
      if (list[i].is_string()) {
        p.text = list[i].get<std::string>();
      } else if (list[i].is_object()) {
        check_keys(list[i], {"id", "text", "category", "description"}, at);
        p.text = get_string(list[i], "text", at, true);
        p.category = get_string(list[i], "category", at, false);
        p.description = get_string(list[i], "description", at, false);
        p.id = get_string(list[i], "id", at, false);
      } else {
        fail(at, ": should be a string or an object with \"text\"");
      }
      if (p.id.empty()) p.id = "p" + std::to_string(e.prompts.size() + 1);
      if (p.category.empty()) p.category = "uncategorised";
      if (p.description.empty()) p.description = p.id;
      e.prompts.push_back(p);
    }
  }
  if (j.contains("prompt_files")) {
    const json& list = j["prompt_files"];
    if (!list.is_array()) fail(source, ": prompt_files: should be an array");
    for (size_t i = 0; i < list.size(); ++i) {
      std::string at = source + ": prompt_files[" + std::to_string(i) + "]";
      std::string path, category;
      if (list[i].is_string()) {
        path = list[i].get<std::string>();
      } else if (list[i].is_object()) {
        check_keys(list[i], {"path", "category"}, at);
        path = get_string(list[i], "path", at, true);
        category = get_string(list[i], "category", at, false);
      } else {
        fail(at, ": should be a path or {\"path\", \"category\"}");
      }
      for (PromptEntry& p : read_prompt_file(resolve(base, path), category, at))
        e.prompts.push_back(p);
    }
  }
  if (j.contains("texts")) {
    const json& list = j["texts"];
    if (!list.is_array()) fail(source, ": texts: should be an array");
    for (size_t i = 0; i < list.size(); ++i) {
      std::string at = source + ": texts[" + std::to_string(i) + "]";
      TextEntry t;
      if (list[i].is_string()) {
        t.path = resolve(base, list[i].get<std::string>());
      } else if (list[i].is_object()) {
        check_keys(list[i], {"name", "path"}, at);
        t.path = resolve(base, get_string(list[i], "path", at, true));
        t.name = get_string(list[i], "name", at, false);
      } else {
        fail(at, ": should be a path or {\"name\", \"path\"}");
      }
      if (t.name.empty()) t.name = t.path.stem().string();
      e.texts.push_back(t);
    }
  }
  if (j.contains("score_routers")) {
    e.score_routers = parse_routers(j["score_routers"], source + ": score_routers");
  } else if (!e.texts.empty()) {
    e.score_routers = e.routers;
  }
  if (j.contains("generation")) {
    const json& g = j["generation"];
    std::string at = source + ": generation";
    if (!g.is_object()) fail(at, ": should be an object");
    check_keys(g, {"max_new_tokens", "temperature", "top_p", "seed", "stop_at_eos"}, at);
    auto number = [&](const char* key, double& out) {
      if (!g.contains(key)) return;
      if (!g[key].is_number()) fail(at, ": key '", key, "' should be a number");
      out = g[key].get<double>();
    };
    if (g.contains("max_new_tokens")) {
      e.generation.max_new_tokens = get_int(g, "max_new_tokens", at);
    }
    number("temperature", e.generation.temperature);
    number("top_p", e.generation.top_p);
    if (g.contains("seed")) {
      if (!g["seed"].is_number_unsigned())
        fail(at, ": key 'seed' should be a non-negative integer");
      e.generation.seed = g["seed"].get<uint64_t>();
    }
    if (g.contains("stop_at_eos")) {
      if (!g["stop_at_eos"].is_boolean()) fail(at, ": key 'stop_at_eos' should be true or false");
      e.generation.stop_at_eos = g["stop_at_eos"].get<bool>();
    }
  }
  if (j.contains("scoring")) {
    const json& s = j["scoring"];
    std::string at = source + ": scoring";
    if (!s.is_object()) fail(at, ": should be an object");
    check_keys(s, {"window", "max_tokens"}, at);
    if (s.contains("window")) e.scoring.window = get_int(s, "window", at);
    if (s.contains("max_tokens")) {
      if (!s["max_tokens"].is_number_integer()) fail(at, ": key 'max_tokens' should be an integer");
      e.scoring.max_tokens = s["max_tokens"].get<int64_t>();
    }
  }
  if (j.contains("calibration")) {
    const json& c = j["calibration"];
    std::string at = source + ": calibration";
    if (!c.is_object()) fail(at, ": should be an object {\"file\"} or {\"text\", \"method\"}");
    check_keys(c, {"file", "text", "method"}, at);
    std::string file = get_string(c, "file", at, false), text = get_string(c, "text", at, false);
    if (!file.empty() && !text.empty()) fail(at, ": give either 'file' or 'text', not both");
    if (!file.empty()) e.calibration.file = resolve(base, file);
    if (!text.empty()) e.calibration.text = resolve(base, text);
    std::string method = get_string(c, "method", at, false);
    if (!method.empty()) e.calibration.method = method;
  }
  return e;
}

Experiment load_experiment(const std::string& name_or_path, const fs::path& model_dir) {
  if (name_or_path.empty() || name_or_path == "seed") return seed_experiment();
  if (name_or_path == "pareto") return pareto_experiment(model_dir);
  fs::path path(name_or_path);
  if (!fs::is_regular_file(path)) {
    fail("--experiment ", name_or_path,
         ": not a built-in experiment (seed, pareto) and no such file");
  }
  std::string ext = path.extension().string();
  if (ext == ".toml") {
    fail("--experiment ", name_or_path,
         ": TOML experiment files are not supported; write it as JSON");
  }
  // Strict parsing: errors give the line, column and key path, and a key given twice is an error.
  const json j = read_json_file(path);
  Experiment e = parse_experiment(j, path.parent_path(), path.string());
  return e;
}

void validate_experiment(const Experiment& e) {
  const std::string& where = e.source;
  if (e.name.empty()) fail(where, ": the experiment has no name");
  if (e.name.find('/') != std::string::npos)
    fail(where, ": name '", e.name, "' must not contain '/'");
  if (e.prompts.empty() && e.texts.empty())
    fail(where, ": no prompts and no texts: nothing to run");
  if (!e.prompts.empty() && e.routers.empty()) fail(where, ": prompts given but no routers");
  if (!e.texts.empty() && e.score_routers.empty())
    fail(where, ": texts given but no score_routers");
  auto check_routers = [&](const std::vector<RouterEntry>& routers, const char* what) {
    std::set<std::string> names;
    for (const RouterEntry& r : routers) {
      try {
        routing::parse_router_spec(r.spec);
      } catch (const Error& err) {
        fail(where, ": ", what, " '", r.name, "': ", err.what());
      }
      if (r.name.empty() || r.name.find('/') != std::string::npos) {
        fail(where, ": ", what, " name '", r.name, "' must be non-empty and must not contain '/'");
      }
      if (!names.insert(r.name).second) {
        fail(where, ": ", what, " name '", r.name,
             "' is used twice; give each a distinct \"name\"");
      }
    }
  };
  check_routers(e.routers, "router");
  check_routers(e.score_routers, "score router");
  std::set<std::string> ids;
  for (const PromptEntry& p : e.prompts) {
    if (p.text.empty()) fail(where, ": prompt '", p.id, "' is empty");
    if (p.id.find('/') != std::string::npos)
      fail(where, ": prompt id '", p.id, "' must not contain '/'");
    if (!ids.insert(p.id).second) fail(where, ": prompt id '", p.id, "' is used twice");
  }
  std::set<std::string> text_names;
  for (const TextEntry& t : e.texts) {
    if (!fs::is_regular_file(t.path))
      fail(where, ": text '", t.name, "': file ", t.path.string(), " does not exist");
    if (!text_names.insert(t.name).second) fail(where, ": text name '", t.name, "' is used twice");
  }
  const GenerationSettings& g = e.generation;
  if (g.max_new_tokens < 1 || g.max_new_tokens > 100000) {
    fail(where, ": generation max_new_tokens ", g.max_new_tokens, " is out of range [1, 100000]");
  }
  if (!(g.temperature >= 0) || !std::isfinite(g.temperature)) {
    fail(where, ": generation temperature ", g.temperature, " must be >= 0");
  }
  if (!(g.top_p > 0 && g.top_p <= 1))
    fail(where, ": generation top_p ", g.top_p, " must be in (0, 1]");
  if (e.scoring.window < 2) fail(where, ": scoring window ", e.scoring.window, " must be >= 2");
  if (e.scoring.max_tokens < 0)
    fail(where, ": scoring max_tokens ", e.scoring.max_tokens, " must be >= 0");
  if (!e.calibration.file.empty() && !fs::is_regular_file(e.calibration.file)) {
    fail(where, ": calibration file ", e.calibration.file.string(), " does not exist");
  }
  if (!e.calibration.text.empty() && !fs::is_regular_file(e.calibration.text)) {
    fail(where, ": calibration text ", e.calibration.text.string(), " does not exist");
  }
  if (e.calibration.method != "ecdf" && e.calibration.method != "kde") {
    fail(where, ": calibration method '", e.calibration.method, "' is not ecdf or kde");
  }
}

std::vector<GridItem> expand_grid(const Experiment& e) {
  std::vector<GridItem> grid;
  int64_t index = 0;
  for (size_t r = 0; r < e.routers.size(); ++r) {
    for (size_t p = 0; p < e.prompts.size(); ++p) {
      grid.push_back(
          {index++, e.name + "/" + e.routers[r].name + "/" + e.prompts[p].id, true, r, p});
    }
  }
  for (size_t r = 0; r < e.score_routers.size(); ++r) {
    for (size_t t = 0; t < e.texts.size(); ++t) {
      grid.push_back({index++, e.name + "/" + e.score_routers[r].name + "/text:" + e.texts[t].name,
                      false, r, t});
    }
  }
  return grid;
}

json experiment_definition(const Experiment& e) {
  json routers = json::array(), score_routers = json::array(), prompts = json::array(),
       texts = json::array();
  for (const RouterEntry& r : e.routers) routers.push_back({r.name, r.spec});
  for (const RouterEntry& r : e.score_routers) score_routers.push_back({r.name, r.spec});
  for (const PromptEntry& p : e.prompts) prompts.push_back({p.id, p.text, p.category});
  for (const TextEntry& t : e.texts) texts.push_back({t.name, fnv1a_hex(read_file(t.path))});
  return {{"name", e.name},
          {"routers", routers},
          {"score_routers", score_routers},
          {"prompts", prompts},
          {"texts", texts},
          {"generation",
           {{"max_new_tokens", e.generation.max_new_tokens},
            {"temperature", e.generation.temperature},
            {"top_p", e.generation.top_p},
            {"seed", e.generation.seed},
            {"stop_at_eos", e.generation.stop_at_eos}}},
          {"scoring", {{"window", e.scoring.window}, {"max_tokens", e.scoring.max_tokens}}}};
}

}  // namespace bhmoe::experiments
