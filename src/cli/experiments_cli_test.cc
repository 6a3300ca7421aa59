// bhmoe run / merge / report end to end, on a small random OLMoE-shaped model with 64 experts and
// native top-8 (written here, so the seed grid's topk_16/32/64 are meaningful without clamping).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "util/error.h"

namespace {

namespace fs = std::filesystem;
using bhmoe::cat;
using nlohmann::json;

std::string slurp(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

void spit(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

struct Result {
  int status = -1;
  std::string out, err;
};

Result run_bhmoe(const std::string& args, const fs::path& scratch) {
  fs::path out = scratch / "stdout.txt", err = scratch / "stderr.txt";
  std::string command =
      std::string(BHMOE_BINARY) + " " + args + " >" + out.string() + " 2>" + err.string();
  int status = std::system(command.c_str());
  Result r;
  r.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = slurp(out);
  r.err = slurp(err);
  return r;
}

// A random-weight OLMoE checkpoint: D 32, 2 layers, 2 heads, 64 experts, top-8, F 16, V 1024 (the
// golden tiny model's 1024-id cut of the OLMoE tokenizer). Router weights are large enough that the
// router logits spread, so BH's count varies token to token.
void write_model(const fs::path& dir) {
  const int D = 32, L = 2, N = 64, F = 16, V = 1024;
  fs::create_directories(dir);
  json config = {{"architectures", {"OlmoeForCausalLM"}},
                 {"model_type", "olmoe"},
                 {"hidden_size", D},
                 {"intermediate_size", F},
                 {"num_hidden_layers", L},
                 {"num_attention_heads", 2},
                 {"num_key_value_heads", 2},
                 {"num_experts", N},
                 {"num_experts_per_tok", 8},
                 {"norm_topk_prob", false},
                 {"vocab_size", V},
                 {"rope_theta", 10000.0},
                 {"rms_norm_eps", 1e-5},
                 {"clip_qkv", nullptr},
                 {"tie_word_embeddings", false},
                 {"max_position_embeddings", 4096},
                 {"pad_token_id", 1},
                 {"bos_token_id", nullptr},
                 {"eos_token_id", 0},
                 {"torch_dtype", "float32"}};
  spit(dir / "config.json", config.dump(2));
  fs::copy_file(fs::path(BHMOE_SHARED_DIR) / "golden/tiny-f32/tokenizer.json",
                dir / "tokenizer.json", fs::copy_options::overwrite_existing);

  struct Tensor {
    std::string name;
    std::vector<int64_t> shape;
    float scale;  // 0: all ones (norm weights)
  };
  std::vector<Tensor> tensors = {{"model.embed_tokens.weight", {V, D}, 1.0f}};
  for (int l = 0; l < L; ++l) {
    std::string p = "model.layers." + std::to_string(l) + ".";
    tensors.push_back({p + "input_layernorm.weight", {D}, 0});
    for (const char* w : {"q_proj", "k_proj", "v_proj", "o_proj"}) {
      tensors.push_back({p + "self_attn." + w + ".weight", {D, D}, 0.3f});
    }
    tensors.push_back({p + "self_attn.q_norm.weight", {D}, 0});
    tensors.push_back({p + "self_attn.k_norm.weight", {D}, 0});
    tensors.push_back({p + "post_attention_layernorm.weight", {D}, 0});
    tensors.push_back({p + "mlp.gate.weight", {N, D}, 1.0f});
    for (int e = 0; e < N; ++e) {
      std::string q = p + "mlp.experts." + std::to_string(e) + ".";
      tensors.push_back({q + "gate_proj.weight", {F, D}, 0.4f});
      tensors.push_back({q + "up_proj.weight", {F, D}, 0.4f});
      tensors.push_back({q + "down_proj.weight", {D, F}, 0.4f});
    }
  }
  tensors.push_back({"model.norm.weight", {D}, 0});
  tensors.push_back({"lm_head.weight", {V, D}, 0.5f});

  json header = json::object();
  std::string data;
  uint64_t state = 0x9E3779B97F4A7C15ull;
  for (const Tensor& t : tensors) {
    int64_t count = 1;
    for (int64_t s : t.shape) count *= s;
    size_t begin = data.size();
    for (int64_t i = 0; i < count; ++i) {
      float v = 1.0f;
      if (t.scale != 0) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        v = t.scale * (static_cast<float>(state >> 40) / static_cast<float>(1 << 24) * 2.0f - 1.0f);
      }
      data.append(reinterpret_cast<const char*>(&v), sizeof v);
    }
    header[t.name] = {{"dtype", "F32"}, {"shape", t.shape}, {"data_offsets", {begin, data.size()}}};
  }
  std::string h = header.dump();
  while (h.size() % 8) h += ' ';
  uint64_t n = h.size();
  std::string file(reinterpret_cast<const char*>(&n), 8);
  spit(dir / "model.safetensors", file + h + data);
}

const char* kCalibrationText =
    "The history of science is the study of the development of science and scientific knowledge. "
    "Science is a body of empirical, theoretical, and practical knowledge about the natural world. "
    "Once upon a time, there was a small village by the sea, and the people there fished every "
    "day. "
    "In computer science, a hash table is a data structure that maps keys to values. "
    "The mitochondria is an organelle found in the cells of most eukaryotic organisms. "
    "If you have 12 oranges and eat 4, you have 8 left. Let me explain the reasoning step by step.";

std::vector<json> read_rows(const fs::path& results) {
  std::vector<json> rows;
  std::istringstream in(slurp(results));
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty()) rows.push_back(json::parse(line));
  }
  return rows;
}

// Rows by key without the fields that legitimately differ between runs (timing, provenance of the
// process).
std::map<std::string, json> comparable(const std::vector<json>& rows) {
  std::map<std::string, json> out;
  for (json row : rows) {
    for (const char* k : {"inference_time_sec", "prefill_time_sec", "decode_time_sec",
                          "tokens_per_sec", "wall_time_sec", "timestamp", "run"}) {
      row.erase(k);
    }
    out[row["key"].get<std::string>()] = row;
  }
  return out;
}

bool is_png(const fs::path& path) {
  std::string data = slurp(path);
  return data.size() > 100 && data.compare(0, 8, "\x89PNG\r\n\x1a\n") == 0;
}

class ExperimentsCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = fs::temp_directory_path() / ("bhmoe_experiments_cli_" + std::to_string(::getpid()));
    fs::remove_all(root_);
    fs::create_directories(root_);
    write_model(root_ / "model64");
    spit(root_ / "calibration.txt", kCalibrationText);
  }
  static void TearDownTestSuite() { fs::remove_all(root_); }

  static fs::path model() { return root_ / "model64"; }
  static fs::path scratch(const std::string& name) {
    fs::path dir = root_ / name;
    fs::create_directories(dir);
    return dir;
  }
  // A small experiment for the resume/shard tests: 4 configs × 3 prompts + 2 configs × 1 text.
  static fs::path small_experiment() {
    fs::path file = root_ / "small.json";
    if (!fs::exists(file)) {
      spit(root_ / "held.txt", kCalibrationText);
      json e = {{"name", "small"},
                {"routers",
                 {"topk:k=8",
                  "topk:k=2",
                  {{"name", "bh_a005"}, {"spec", "bh:alpha=0.05,max_k=16"}},
                  "topp:p=0.5,max_k=16"}},
                {"prompts",
                 {{{"text", "The cat sat on the"}, {"category", "simple"}},
                  {{"text", "In Python, a decorator is a function that"}, {"category", "code"}},
                  "Once upon a time"}},
                {"texts", {"held.txt"}},
                {"score_routers", {"topk:k=8", "bh:alpha=0.1,max_k=16"}},
                {"generation", {{"max_new_tokens", 4}}},
                {"calibration", {{"text", "calibration.txt"}}}};
      spit(file, e.dump(2));
    }
    return file;
  }
  static fs::path root_;
};
fs::path ExperimentsCli::root_;

TEST_F(ExperimentsCli, SeedExperimentMeasuresEveryConfigForReal) {
  fs::path out = scratch("seed");
  Result r = run_bhmoe("run --model " + model().string() + " --out " + out.string() +
                           " --max-new-tokens 3 --threads 1 --calibration-text " +
                           (root_ / "calibration.txt").string(),
                       scratch("seed_io"));
  ASSERT_EQ(r.status, 0) << r.err;
  std::vector<json> rows = read_rows(out / "results.jsonl");
  ASSERT_EQ(rows.size(), 192u);
  std::map<std::string, std::vector<json>> by_config;
  for (const json& row : rows) {
    ASSERT_EQ(row["status"], "ok") << row.dump();
    by_config[row["config_name"]].push_back(row);
  }
  ASSERT_EQ(by_config.size(), 16u);
  for (auto [name, k] :
       {std::pair{"topk_8", 8}, {"topk_16", 16}, {"topk_32", 32}, {"topk_64", 64}}) {
    for (const json& row : by_config[name]) {
      EXPECT_DOUBLE_EQ(row["avg_experts_per_token"].get<double>(), k) << name;
      EXPECT_DOUBLE_EQ(row["std_experts_per_token"].get<double>(), 0) << name;
      EXPECT_EQ(row["max_k"], k);
    }
  }
  // Native top-8 is topk_8: no divergence from itself, exactly (the native pass over the prompt
  // is computed as the config's own, not as part of a longer batch with other rounding).
  for (const json& row : by_config["topk_8"]) EXPECT_EQ(row["kl_to_native"].get<double>(), 0.0);
  for (const json& row : by_config["topk_64"]) EXPECT_GT(row["kl_to_native"].get<double>(), 0);
  // BH: the count varies from token to token, never exceeds max_k, and more alpha means more
  // experts.
  int varying = 0;
  for (const auto& [name, list] : by_config) {
    if (name.rfind("bh_", 0) != 0) continue;
    for (const json& row : list) {
      EXPECT_LE(row["max_experts"].get<double>(), row["max_k"].get<double>());
      EXPECT_GE(row["min_experts"].get<double>(), 1);
      if (row["std_experts_per_token"].get<double>() > 0) ++varying;
      EXPECT_EQ(row["calibration"]["source"], "fitted from --calibration-text (cached)");
    }
  }
  EXPECT_GT(varying, 40) << "BH counts should vary per token";
  for (const auto& [name, list] : by_config) {
    if (name.rfind("bh_", 0) != 0 || name.find("a010") == std::string::npos) continue;
    double lo = 1e9, hi = 0;
    for (const json& row : list) {
      lo = std::min(lo, row["min_experts"].get<double>());
      hi = std::max(hi, row["max_experts"].get<double>());
    }
    EXPECT_LT(lo, hi) << name << " never varied";
  }
  nlohmann::json summary = json::parse(slurp(out / "analysis_summary.json"));
  EXPECT_EQ(summary["counts"]["rows"], 192);
  double a001 = 0, a010 = 0;
  for (const json& c : summary["configs"]) {
    if (c["config_name"] == "bh_k64_a001") a001 = c["mean_experts"];
    if (c["config_name"] == "bh_k64_a010") a010 = c["mean_experts"];
  }
  EXPECT_LT(a001, a010);

  for (const char* plot :
       {"max_k_comparison_bar", "max_k_count_distribution", "max_k_alpha_heatmap",
        "max_k_saturation", "avg_experts_comparison", "inference_time_comparison",
        "expert_utilization_cv", "experts_by_category", "experts_vs_latency", "layer_heatmap",
        "kl_to_native"}) {
    EXPECT_TRUE(is_png(out / "plots" / (std::string(plot) + ".png"))) << plot;
    EXPECT_NE(slurp(out / "plots" / (std::string(plot) + ".svg")).find("<svg"), std::string::npos)
        << plot;
  }
  EXPECT_NE(slurp(out / "plots/max_k_comparison_bar.svg")
                .find("Mean experts per token by max_k: BH vs top-k"),
            std::string::npos);
  std::string report = slurp(out / "REPORT.md");
  for (const char* section :
       {"## Setup", "## Executive summary", "## Summary by config", "## Quality",
        "## Statistical tests", "## By prompt category", "## max_k analysis",
        "## Per-layer expert use", "## Plots", "## Conclusions", "## Appendix: configs",
        "this model is synthetic"}) {
    EXPECT_NE(report.find(section), std::string::npos) << section;
  }
  std::string csv = slurp(out / "max_k_comparison.csv");
  EXPECT_EQ(csv.rfind("max_k,baseline_experts,bh_mean_experts,reduction_pct,bh_mean_experts_lo,"
                      "bh_mean_experts_hi,native_experts,reduction_vs_native_pct\n8,8,",
                      0),
            0u)
      << csv;
  // Each run process warms up untimed before its first timed experiment, and says so.
  for (const json& row : rows) EXPECT_GT(row["run"]["warmup_tokens"].get<int>(), 0) << row["key"];
  EXPECT_NE(slurp(out / "run.log").find("warm-up: an untimed prefill of "), std::string::npos);
  EXPECT_NE(slurp(out / "REPORT.md").find("untimed warm-up forward pass"), std::string::npos);
  EXPECT_TRUE(fs::exists(out / "run.log"));
  EXPECT_TRUE(fs::exists(out / "bh_routing_results.csv"));

  // A re-run finds everything done and runs nothing.
  Result again = run_bhmoe("run --model " + model().string() + " --out " + out.string() +
                               " --max-new-tokens 3 --threads 1 --no-report --calibration-text " +
                               (root_ / "calibration.txt").string(),
                           scratch("seed_io"));
  ASSERT_EQ(again.status, 0) << again.err;
  EXPECT_NE(again.out.find("0 run now"), std::string::npos) << again.out;
  EXPECT_EQ(read_rows(out / "results.jsonl").size(), 192u);

  // `bhmoe report` rebuilds everything from results.jsonl alone.
  fs::remove_all(out / "plots");
  fs::remove(out / "REPORT.md");
  Result rebuilt = run_bhmoe("report --out " + out.string(), scratch("seed_io"));
  ASSERT_EQ(rebuilt.status, 0) << rebuilt.err;
  EXPECT_TRUE(is_png(out / "plots/layer_heatmap.png"));
  EXPECT_NE(slurp(out / "REPORT.md").find("## Conclusions"), std::string::npos);
}

// Every family runs the experiment suite, the calibration and the trace unchanged: BH with a
// calibration fitted on the model itself, top-p and top-k, generation and scoring, on the tiny
// Qwen2-MoE (shared expert), Qwen3-MoE, Mixtral and DeepSeek-V2 (latent attention, YaRN, a dense
// first layer without a router) shapes, from their folders and their GGUF files.
TEST_F(ExperimentsCli, EveryFamilyRunsTheSuiteTraceAndCalibration) {
  json e = {{"name", "families"},
            {"routers",
             {"topk:k=2",
              "topk:k=4",
              {{"name", "bh_a02"}, {"spec", "bh:alpha=0.2,max_k=8"}},
              "topp:p=0.5,max_k=8"}},
            {"prompts", {"The cat sat on the", "Once upon a time"}},
            {"texts", {"held.txt"}},
            {"score_routers", {"topk:k=2", "bh:alpha=0.2,max_k=8"}},
            {"generation", {{"max_new_tokens", 3}}},
            {"calibration", {{"text", "calibration.txt"}}}};
  spit(root_ / "held.txt", kCalibrationText);
  spit(root_ / "families.json", e.dump(2));
  for (const char* preset :
       {"qwen2-moe-tiny", "qwen3-moe-tiny", "mixtral-tiny", "deepseek-v2-tiny-yarn"}) {
    SCOPED_TRACE(preset);
    const fs::path dir = root_ / preset;
    const fs::path io = scratch(std::string(preset) + "_io");
    ASSERT_EQ(
        run_bhmoe(cat("make-model --preset ", preset, " --dtype f32 --seed 3 ", dir.string()), io)
            .status,
        0);
    const fs::path gguf = root_ / (std::string(preset) + ".gguf");
    ASSERT_EQ(
        run_bhmoe(cat("convert --model ", dir.string(), " --type q8_0 --out ", gguf.string()), io)
            .status,
        0);
    const std::string family = std::string(preset) == "mixtral-tiny"     ? "mixtral"
                               : std::string(preset) == "qwen2-moe-tiny" ? "qwen2_moe"
                               : std::string(preset) == "qwen3-moe-tiny" ? "qwen3_moe"
                                                                         : "deepseek_v2";
    const Result inspected = run_bhmoe("inspect --model " + gguf.string(), io);
    ASSERT_EQ(inspected.status, 0) << inspected.err;
    EXPECT_NE(inspected.out.find("runs as      " + family + ", native topk:k="), std::string::npos)
        << inspected.out;
    for (const fs::path& model : {dir, gguf}) {
      SCOPED_TRACE(model.string());
      const fs::path out = scratch(cat(model.filename().string(), "_run"));
      Result r = run_bhmoe("run --model " + model.string() + " --experiment " +
                               (root_ / "families.json").string() + " --out " + out.string() +
                               " --threads 1 --no-report",
                           io);
      ASSERT_EQ(r.status, 0) << r.err;
      const std::vector<json> rows = read_rows(out / "results.jsonl");
      ASSERT_EQ(rows.size(), 4u * 2 + 2u);
      int bh_rows = 0, top4_rows = 0;
      for (const json& row : rows) {
        ASSERT_EQ(row["status"], "ok") << row.dump();
        if (row["config_name"] == "bh_a02") {
          EXPECT_GE(row["min_experts"].get<double>(), 1);
          EXPECT_LE(row["max_experts"].get<double>(), 8);
          ++bh_rows;
        }
        if (row["config_name"] == "topk_4") {
          EXPECT_DOUBLE_EQ(row["avg_experts_per_token"].get<double>(), 4) << row.dump();
          ++top4_rows;
        }
      }
      EXPECT_EQ(bh_rows, 2);
      EXPECT_EQ(top4_rows, 2);
      const fs::path calibration = out / "own-calibration.json";
      ASSERT_EQ(
          run_bhmoe("calibrate --model " + model.string() + " --text-file " +
                        (root_ / "calibration.txt").string() + " --out " + calibration.string(),
                    io)
              .status,
          0);
      const fs::path trace = out / "trace.npz";
      Result t = run_bhmoe("trace --model " + model.string() +
                               " --router bh:alpha=0.2,max_k=8 --calibration " +
                               calibration.string() + " --text-file " +
                               (root_ / "held.txt").string() + " --out " + trace.string(),
                           io);
      ASSERT_EQ(t.status, 0) << t.err;
      EXPECT_GT(fs::file_size(trace), 1000u);
    }
  }
}

TEST_F(ExperimentsCli, KillAndResumeAndShardsEqualOneRun) {
  std::string common = " --model " + model().string() + " --experiment " +
                       small_experiment().string() + " --threads 1 --no-report";
  fs::path io = scratch("resume_io");
  fs::path whole = scratch("whole");
  Result r = run_bhmoe("run" + common + " --out " + whole.string(), io);
  ASSERT_EQ(r.status, 0) << r.err;
  auto reference = comparable(read_rows(whole / "results.jsonl"));
  ASSERT_EQ(reference.size(), 14u);
  for (const auto& [key, row] : reference) ASSERT_EQ(row["status"], "ok") << row.dump();
  for (const auto& [key, row] : reference) {
    if (row["kind"] == "score_text") {
      EXPECT_GT(row["perplexity"].get<double>(), 1);
      EXPECT_GT(row["num_scored_tokens"].get<int>(), 10);
    }
  }

  // Interrupted after 5 experiments, with the 6th row torn mid-write; the re-run finishes the rest.
  fs::path resumed = scratch("resumed");
  r = run_bhmoe("run" + common + " --out " + resumed.string() + " --limit 6", io);
  ASSERT_EQ(r.status, 0) << r.err;
  std::string text = slurp(resumed / "results.jsonl");
  size_t last_line = text.rfind('\n', text.size() - 2);
  spit(resumed / "results.jsonl", text.substr(0, last_line + 1 + 40));
  r = run_bhmoe("run" + common + " --out " + resumed.string(), io);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("9 run now"), std::string::npos) << r.out;
  auto resumed_rows = read_rows(resumed / "results.jsonl");
  EXPECT_EQ(resumed_rows.size(), 14u);
  EXPECT_EQ(comparable(resumed_rows), reference);

  // Three shards and a merge.
  std::string shard_dirs;
  for (int i = 0; i < 3; ++i) {
    fs::path dir = scratch("shard" + std::to_string(i));
    r = run_bhmoe(
        "run" + common + " --out " + dir.string() + " --shard " + std::to_string(i) + "/3", io);
    ASSERT_EQ(r.status, 0) << r.err;
    shard_dirs += " " + dir.string();
  }
  fs::path merged = scratch("merged");
  r = run_bhmoe("merge --out " + merged.string() + shard_dirs, io);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(comparable(read_rows(merged / "results.jsonl")), reference);
  EXPECT_TRUE(is_png(merged / "plots/pareto_perplexity.png"));
  EXPECT_NE(slurp(merged / "plots/pareto_perplexity.svg")
                .find("Perplexity against mean experts per token"),
            std::string::npos);
  EXPECT_NE(slurp(merged / "REPORT.md").find("pareto"), std::string::npos);

  // Overlapping shards (the complete resumed folder and shard 0) are refused, naming an item and
  // both folders, unless --duplicates says which row wins.
  r = run_bhmoe("merge --out " + scratch("overlap").string() + " " + resumed.string() + shard_dirs,
                io);
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("shards overlap: grid item '"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(resumed.string()), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(scratch("shard0").string()), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("--duplicates"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(scratch("overlap") / "results.jsonl"));
  for (const char* policy : {"first", "last", "prefer-ok"}) {
    SCOPED_TRACE(policy);
    fs::path kept = scratch(std::string("overlap-") + policy);
    r = run_bhmoe("merge --no-report --duplicates " + std::string(policy) + " --out " +
                      kept.string() + " " + resumed.string() + shard_dirs,
                  io);
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_NE(r.out.find("(14 keys in more than one shard)"), std::string::npos) << r.out;
    EXPECT_EQ(comparable(read_rows(kept / "results.jsonl")), reference);
  }
  r = run_bhmoe("merge --duplicates newest --out " + scratch("x").string() + shard_dirs, io);
  EXPECT_EQ(r.status, 1);

  // A merge of shards from different definitions is refused.
  fs::path other = scratch("other");
  r = run_bhmoe("run --model " + model().string() + " --experiment " + small_experiment().string() +
                    " --threads 1 --no-report --max-new-tokens 2 --shard 0/3 --limit 1 --out " +
                    other.string(),
                io);
  ASSERT_EQ(r.status, 0) << r.err;
  r = run_bhmoe("merge --out " + scratch("bad_merge").string() + " " + other.string() + shard_dirs,
                io);
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.err.find("different definition"), std::string::npos) << r.err;
  // ... and so is resuming into a folder of a different definition.
  r = run_bhmoe("run" + common + " --out " + other.string(), io);
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.err.find("different definition"), std::string::npos) << r.err;
}

// The rows record the scoring window the runner used: a window beyond the model's context (4096)
// is cut to it, and settings, protocol and REPORT.md all say 4096 (the experiment's 8192 is kept
// as scoring_window_requested).
TEST_F(ExperimentsCli, RowsRecordTheScoringWindowActuallyUsed) {
  fs::path io = scratch("window_io");
  spit(io / "t.txt", kCalibrationText);
  spit(io / "e.json", json({{"name", "window"},
                            {"texts", {"t.txt"}},
                            {"score_routers", {"topk:k=8"}},
                            {"scoring", {{"window", 8192}}}})
                          .dump());
  fs::path out = io / "out";
  Result r = run_bhmoe("run --model " + model().string() + " --threads 1 --out " + out.string() +
                           " --experiment " + (io / "e.json").string(),
                       io);
  ASSERT_EQ(r.status, 0) << r.err;
  std::vector<json> rows = read_rows(out / "results.jsonl");
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0]["settings"]["scoring_window"], 4096);
  EXPECT_EQ(rows[0]["settings"]["scoring_window_requested"], 8192);
  EXPECT_NE(rows[0]["protocol"].get<std::string>().find("windows of 4096 tokens"),
            std::string::npos)
      << rows[0]["protocol"];
  EXPECT_GT(rows[0]["run"]["warmup_tokens"].get<int>(), 0);
  std::string report = slurp(out / "REPORT.md");
  EXPECT_NE(report.find("4096-token windows (8192 requested, cut to the model's context)"),
            std::string::npos)
      << report;
  EXPECT_EQ(report.find("windows of 8192"), std::string::npos);
}

// `bhmoe report --schema` prints the columns of every output file; --out is then not needed.
TEST_F(ExperimentsCli, ReportSchemaPrintsEveryOutputsColumns) {
  fs::path io = scratch("schema_io");
  Result r = run_bhmoe("report --schema", io);
  ASSERT_EQ(r.status, 0) << r.err;
  for (const char* text : {"## results.jsonl", "## bh_routing_results.csv",
                           "## max_k_comparison.csv", "## matched_compute.csv",
                           "| kl_to_native | number or null/empty | nats per prompt position |",
                           "| reduction_vs_native_pct |", "warmup_tokens"}) {
    EXPECT_NE(r.out.find(text), std::string::npos) << text;
  }
  Result missing = run_bhmoe("report", io);
  EXPECT_EQ(missing.status, 1);
  EXPECT_NE(missing.err.find("--out"), std::string::npos) << missing.err;
}

// `bhmoe route --stats` spells the utilization columns as the experiment outputs do (one name per
// quantity across outputs, American spelling).
TEST_F(ExperimentsCli, RouteStatsSpellUtilizationAsTheExperimentOutputs) {
  fs::path io = scratch("route_io");
  // A float32 [4, 8] .npy (format 1.0: magic, header length, a header padded to 64 bytes).
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (4, 8), }";
  while ((10 + header.size() + 1) % 64) header += ' ';
  header += '\n';
  std::string npy = std::string("\x93NUMPY\x01\x00", 8);
  npy += static_cast<char>(header.size() & 0xff);
  npy += static_cast<char>(header.size() >> 8);
  npy += header;
  for (int i = 0; i < 32; ++i) {
    float v = static_cast<float>((i * 7) % 11) / 3.0f;
    npy.append(reinterpret_cast<const char*>(&v), sizeof v);
  }
  spit(io / "logits.npy", npy);
  Result r = run_bhmoe("route --logits " + (io / "logits.npy").string() +
                           " --layer 0 --router topk:k=2 --stats " + (io / "s.csv").string(),
                       io);
  ASSERT_EQ(r.status, 0) << r.err;
  const std::string csv = slurp(io / "s.csv");
  const std::string first = csv.substr(0, csv.find('\n'));
  EXPECT_NE(first.find(",expert_utilization_cv,expert_utilization_max_min_ratio,"),
            std::string::npos)
      << first;
  EXPECT_EQ(first.find("utilisation"), std::string::npos) << first;
}

TEST_F(ExperimentsCli, AFailingExperimentIsRecordedAndTheSuiteContinues) {
  fs::path io = scratch("failing_io");
  spit(io / "one.txt", "a");  // one token: nothing to score
  spit(io / "two.txt", kCalibrationText);
  spit(io / "e.json", json({{"name", "failing"},
                            {"texts", {"one.txt", "two.txt"}},
                            {"score_routers", {"topk:k=2"}}})
                          .dump());
  fs::path out = io / "out";
  Result r = run_bhmoe("run --model " + model().string() + " --threads 1 --out " + out.string() +
                           " --experiment " + (io / "e.json").string(),
                       io);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("(1 failed)"), std::string::npos) << r.out;
  std::vector<json> rows = read_rows(out / "results.jsonl");
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0]["status"], "error");
  EXPECT_NE(rows[0]["error"].get<std::string>().find("fewer than 2 tokens"), std::string::npos)
      << rows[0];
  EXPECT_EQ(rows[1]["status"], "ok");
  std::string report = slurp(out / "REPORT.md");
  EXPECT_NE(report.find("## Errors"), std::string::npos);
  EXPECT_NE(report.find("fewer than 2 tokens"), std::string::npos);
  EXPECT_NE(slurp(out / "run.log").find("FAILED"), std::string::npos);
}

// A calibration must fit the model (two layers here): one missing a layer, or one of a deeper
// model, is refused before any experiment runs, naming the file and the layer.
TEST_F(ExperimentsCli, ACalibrationThatDoesNotFitTheModelIsRefused) {
  fs::path io = scratch("calibration_fit_io");
  auto calibration = [](std::vector<int> layers) {
    json out = {{"format", "bh-calibration-grid/1"}, {"layers", json::array()}};
    for (int layer : layers) {
      out["layers"].push_back({{"layer", layer}, {"x", {-1.0, 1.0}}, {"cdf", {0.0, 1.0}}});
    }
    return out.dump();
  };
  spit(io / "only_layer0.json", calibration({0}));
  spit(io / "three_layers.json", calibration({0, 1, 2}));
  spit(io / "bh.json", json({{"routers", {"bh:alpha=0.05,max_k=8"}}, {"prompts", {"hi"}}}).dump());
  struct Case {
    std::string file;
    std::string expect;
  };
  for (const Case& c : {Case{"only_layer0.json", "has no layer 1 of the model's 2 layers"},
                        Case{"three_layers.json", "layer 2 is beyond the model's 2 layers"}}) {
    fs::path out = io / ("out_" + c.file);
    Result r =
        run_bhmoe("run --model " + model().string() + " --out " + out.string() + " --experiment " +
                      (io / "bh.json").string() + " --calibration " + (io / c.file).string(),
                  io);
    EXPECT_EQ(r.status, 1) << c.file << ": " << r.err;
    EXPECT_NE(r.err.find((io / c.file).string()), std::string::npos) << r.err;
    EXPECT_NE(r.err.find(c.expect), std::string::npos) << r.err;
    EXPECT_FALSE(fs::exists(out / "results.jsonl")) << c.file << " started work";
  }
}

// Two runs on one --out: the second fails at once, naming the folder, while the first holds the
// folder's lock (held here by the test, as a running `bhmoe run` would hold it).
TEST_F(ExperimentsCli, ASecondRunOnTheSameOutputFolderFailsFast) {
  fs::path io = scratch("lock_io");
  fs::path out = io / "out";
  fs::create_directories(out);
  spit(io / "e.json", json({{"routers", {"topk:k=8"}},
                            {"prompts", {"hi"}},
                            {"generation", {{"max_new_tokens", 2}}}})
                          .dump());
  const std::string args = "run --model " + model().string() + " --threads 1 --quiet --out " +
                           out.string() + " --experiment " + (io / "e.json").string();
  {
    const int fd = ::open((out / "bhmoe.lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::flock(fd, LOCK_EX | LOCK_NB), 0);
    Result r = run_bhmoe(args, io);
    ::close(fd);
    EXPECT_EQ(r.status, 1) << r.err;
    EXPECT_NE(r.err.find("the folder " + out.string() + " is in use"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("another bhmoe process"), std::string::npos) << r.err;
    EXPECT_FALSE(fs::exists(out / "results.jsonl"));
    EXPECT_FALSE(fs::exists(out / "run.log"));
  }
  // Released, the same command runs.
  Result r = run_bhmoe(args, io);
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_TRUE(fs::exists(out / "results.jsonl"));
}

// Folders given as files, and a prompt beyond the model's context, are clear errors before work.
TEST_F(ExperimentsCli, PathsAndPromptsThatCannotWorkAreRefused) {
  fs::path io = scratch("paths_io");
  spit(io / "a-file", "x");
  Result out_file =
      run_bhmoe("run --model " + model().string() + " --out " + (io / "a-file").string(), io);
  EXPECT_EQ(out_file.status, 1);
  EXPECT_NE(out_file.err.find("--out: " + (io / "a-file").string() +
                              " is not a directory (it is a regular file)"),
            std::string::npos)
      << out_file.err;
  Result model_file = run_bhmoe(
      "run --model " + (model() / "config.json").string() + " --out " + (io / "o").string(), io);
  EXPECT_EQ(model_file.status, 1);
  EXPECT_NE(model_file.err.find("--model: " + (model() / "config.json").string() +
                                " is not a directory (it is a regular file)"),
            std::string::npos)
      << model_file.err;
  Result merge_into_file =
      run_bhmoe("merge --out " + (io / "a-file").string() + " " + io.string(), io);
  EXPECT_EQ(merge_into_file.status, 1);
  EXPECT_NE(merge_into_file.err.find((io / "a-file").string() + " is not a directory"),
            std::string::npos)
      << merge_into_file.err;
  Result merge_from_file =
      run_bhmoe("merge --out " + (io / "merged").string() + " " + (io / "a-file").string(), io);
  EXPECT_EQ(merge_from_file.status, 1);
  EXPECT_NE(merge_from_file.err.find((io / "a-file").string() + " is not a directory"),
            std::string::npos)
      << merge_from_file.err;

  // A 100 KB prompt (one line of a prompt file) is far beyond the 4096-token context.
  std::string long_prompt;
  while (long_prompt.size() < 100 * 1024) long_prompt += "the cat sat on the mat ";
  spit(io / "long.txt", long_prompt + "\n");
  spit(io / "long.json",
       json({{"routers", {"topk:k=8"}}, {"prompt_files", {{{"path", "long.txt"}}}}}).dump());
  fs::path out = io / "long_out";
  Result r = run_bhmoe("run --model " + model().string() + " --out " + out.string() +
                           " --experiment " + (io / "long.json").string(),
                       io);
  EXPECT_EQ(r.status, 1) << r.err;
  EXPECT_NE(r.err.find("prompt 'long:1' is"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("exceeds the model's context of 4096 tokens"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(out / "results.jsonl"));
}

TEST_F(ExperimentsCli, BadExperimentFilesFailBeforeAnyWork) {
  fs::path io = scratch("bad_io");
  struct Case {
    json experiment;
    std::string expect;
  };
  std::vector<Case> cases = {
      {{{"routers", {"bh:alpha=0.05,max_k=16,bogus=1"}}, {"prompts", {"hi there"}}}, "bogus"},
      {{{"routers", {"bh:alpha=1.5,max_k=16"}}, {"prompts", {"hi there"}}}, "alpha"},
      {{{"routers", {"topk:k=8"}}, {"prompt_files", {"no_such_prompts.txt"}}},
       "no_such_prompts.txt"},
      {{{"routers", {"topk:k=8"}}, {"prompts", {"hi"}}, {"temperature", 1}}, "temperature"},
      {{{"routers", {"topk:k=8"}}, {"texts", {"missing_text.txt"}}}, "missing_text.txt"},
      {{{"routers", {"topk:k=8", "topk:k=8"}}, {"prompts", {"hi"}}}, "topk_8"},
      {{{"routers", {"topk:k=8"}}, {"prompts", {"hi"}}, {"generation", {{"max_new_tokens", 0}}}},
       "max_new_tokens"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    fs::path file = io / ("bad" + std::to_string(i) + ".json");
    spit(file, cases[i].experiment.dump());
    fs::path out = io / ("out" + std::to_string(i));
    Result r = run_bhmoe("run --model " + model().string() + " --out " + out.string() +
                             " --experiment " + file.string(),
                         io);
    EXPECT_EQ(r.status, 1) << i;
    EXPECT_NE(r.err.find("bhmoe: error:"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find(cases[i].expect), std::string::npos) << "case " << i << ": " << r.err;
    EXPECT_FALSE(fs::exists(out / "results.jsonl")) << "case " << i << " started work";
  }
  Result r = run_bhmoe(
      "run --model " + model().string() + " --out " + (io / "o").string() + " --experiment nope",
      io);
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("nope"), std::string::npos) << r.err;
  r = run_bhmoe(
      "run --model " + model().string() + " --out " + (io / "o").string() + " --shard 3/2", io);
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("--shard"), std::string::npos) << r.err;
  r = run_bhmoe("report --out " + (io / "empty").string(), io);
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("results.jsonl"), std::string::npos) << r.err;
  // BH needs a calibration: this model folder has none and no text was given.
  spit(io / "bh.json", json({{"routers", {"bh:alpha=0.05,max_k=8"}}, {"prompts", {"hi"}}}).dump());
  r = run_bhmoe("run --model " + model().string() + " --out " + (io / "o2").string() +
                    " --experiment " + (io / "bh.json").string(),
                io);
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("calibration"), std::string::npos) << r.err;
}

}  // namespace
