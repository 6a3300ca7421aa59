#include "experiments/provenance.h"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "experiments/experiment.h"
#include "util/file.h"

namespace bhmoe::experiments {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr const char* kVersion = "0.1.0";

std::string command_output(const std::string& command) {
  std::string out;
  if (FILE* pipe = ::popen(command.c_str(), "r")) {
    char buffer[256];
    while (std::fgets(buffer, sizeof buffer, pipe)) out += buffer;
    ::pclose(pipe);
  }
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
  return out;
}

std::string git_commit() {
  if (const char* env = std::getenv("BHMOE_COMMIT"); env && *env) return env;
  std::string commit = command_output("git rev-parse --short=12 HEAD 2>/dev/null");
  if (commit.empty()) return "unknown (not run from a git checkout)";
  if (!command_output("git status --porcelain --untracked-files=no 2>/dev/null").empty())
    commit += "+dirty";
  return commit;
}

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      auto colon = line.find(':');
      if (colon != std::string::npos) return line.substr(line.find_first_not_of(' ', colon + 1));
    }
  }
  return "unknown CPU";
}

std::string hostname() {
  char buffer[256] = {};
  if (::gethostname(buffer, sizeof buffer - 1) != 0) return "unknown";
  return buffer;
}

std::string lower(std::string text) {
  for (char& c : text) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return text;
}

// Every family's count (OLMoE's formula alone missed shared experts, MLA and dense layers).
int64_t parameter_count(const model::ModelConfig& c) {
  return model::count_parameters(c).total;
}

std::string params_text(int64_t n) {
  char buffer[32];
  if (n >= 1'000'000'000) {
    std::snprintf(buffer, sizeof buffer, "%.2fB", n / 1e9);
  } else if (n >= 1'000'000) {
    std::snprintf(buffer, sizeof buffer, "%.1fM", n / 1e6);
  } else {
    std::snprintf(buffer, sizeof buffer, "%.1fK", n / 1e3);
  }
  return buffer;
}

}  // namespace

ModelCard read_model_card(const std::string& readme, int64_t params) {
  ModelCard card;
  if (readme.empty()) {
    card.synthetic = params < 100'000'000;
    card.provenance = "No model card: presumably a random-weight checkpoint (bhmoe make-model).";
    return card;
  }
  // The first paragraph after the title (the whole text when it has a single paragraph).
  size_t start = readme.find("\n\n");
  std::string para = readme.substr(start == std::string::npos ? 0 : start + 2);
  para = para.substr(0, para.find("\n\n"));
  for (char& ch : para) {
    if (ch == '\n') ch = ' ';
  }
  const std::string para_lower = lower(para);
  card.synthetic = para_lower.find("synthetic") != std::string::npos ||
                   para_lower.find("random") != std::string::npos;
  card.provenance = "Model card: \"" + para.substr(0, 400) + (para.size() > 400 ? "…" : "") + "\"";
  return card;
}

json model_identity(const model::Model& m) {
  const model::ModelConfig& c = m.config();
  const fs::path& dir = m.dir();
  std::string material;
  const bool single_file = fs::is_regular_file(dir);  // a GGUF file
  if (single_file) {
    // Its config as read, name and size: hashing gigabytes of tensors would cost more than runs.
    material = model::to_json(c).dump() + dir.filename().string() + ":" +
               std::to_string(fs::file_size(dir)) + ";";
  } else {
    material = read_file(dir / "config.json");
    if (fs::exists(dir / "tokenizer.json")) material += read_file(dir / "tokenizer.json");
    std::vector<fs::path> weights;
    for (const auto& entry : fs::directory_iterator(dir)) {
      if (entry.path().extension() == ".safetensors") weights.push_back(entry.path());
    }
    std::sort(weights.begin(), weights.end());
    for (const fs::path& w : weights)
      material += w.filename().string() + ":" + std::to_string(fs::file_size(w)) + ";";
  }
  int64_t params = parameter_count(c);
  ModelCard card;
  if (single_file) {
    card.provenance = "A GGUF file (no model card).";
  } else {
    card =
        read_model_card(fs::exists(dir / "README.md") ? read_file(dir / "README.md") : "", params);
  }
  return {{"name", dir.filename().string()},
          {"dir", fs::absolute(dir).lexically_normal().string()},
          {"fingerprint", fnv1a_hex(material)},
          {"weights", m.weights_kind()},
          {"params", params},
          {"params_text", params_text(params)},
          {"num_layers", c.num_layers},
          {"num_experts", c.num_experts},
          {"top_k", c.num_experts_per_tok},
          {"hidden_size", c.hidden_size},
          {"vocab_size", c.vocab_size},
          {"native_router", c.native_router_spec()},
          {"synthetic", card.synthetic},
          {"small", params < 1'000'000'000},
          {"provenance", card.provenance}};
}

json host_identity() {
  return {{"commit", git_commit()},
          {"bhmoe_version", kVersion},
          {"host", hostname()},
          {"cpu", cpu_model()},
          {"hardware_threads", std::thread::hardware_concurrency()}};
}

}  // namespace bhmoe::experiments
