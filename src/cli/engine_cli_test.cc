// The engine subcommands (logits, generate, score, calibrate, bench model) run as a user runs them,
// on the tiny-f32 golden checkpoint.
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <cmath>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "cli/engine_common.h"
#include "util/npy.h"
#include "util/npz.h"

namespace bhmoe {
namespace {

namespace fs = std::filesystem;

const fs::path kGolden = fs::path(BHMOE_SHARED_DIR) / "golden" / "tiny-f32";

struct CliRun {
  int status = -1;
  std::string out;
  std::string err;
};

std::string slurp(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

fs::path scratch_dir() {
  fs::path dir = fs::path(::testing::TempDir()) /
                 ("engine_cli_" +
                  std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()));
  fs::create_directories(dir);
  return dir;
}

CliRun bhmoe(const std::string& args) {
  const fs::path dir = scratch_dir();
  const fs::path out = dir / "stdout", err = dir / "stderr";
  const std::string cmd = std::string("'") + BHMOE_BINARY + "' " + args + " >'" + out.string() +
                          "' 2>'" + err.string() + "'";
  CliRun run;
  const int raw = std::system(cmd.c_str());
  run.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
  run.out = slurp(out);
  run.err = slurp(err);
  return run;
}

std::string model_arg() {
  return "--model '" + kGolden.string() + "' --threads 2";
}

double max_abs_diff(const NpyArray& a, const NpyArray& b) {
  EXPECT_EQ(a.shape, b.shape);
  double worst = 0;
  for (size_t i = 0; i < std::min(a.data.size(), b.data.size()); ++i) {
    worst = std::max(worst, std::fabs(static_cast<double>(a.data[i]) - b.data[i]));
  }
  return worst;
}

void expect_user_error(const CliRun& run, const std::string& fragment) {
  EXPECT_EQ(run.status, 1) << run.err;
  EXPECT_NE(run.err.find("bhmoe: error:"), std::string::npos) << run.err;
  EXPECT_NE(run.err.find(fragment), std::string::npos) << run.err;
}

TEST(EngineCli, LogitsReproduceTheGoldenFiles) {
  const fs::path dir = scratch_dir();
  const std::string ids = "1 306 465 278 659 310 283 338";  // cases.json case 0
  struct Case {
    std::string router_args;
    std::string golden;
  };
  const std::vector<Case> cases = {
      {"", "topk_0.npy"},
      {"--router topk:k=4", "topk4_0.npy"},
      {"--router bh:alpha=0.05,max_k=4,min_k=1 --calibration '" +
           (kGolden / "calibration.json").string() + "'",
       "bh_a005_k4_0.npy"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.golden);
    const fs::path out = dir / ("logits_" + c.golden);
    const CliRun run = bhmoe("logits " + model_arg() + " --ids '" + ids + "' " + c.router_args +
                             " --out '" + out.string() + "'");
    ASSERT_EQ(run.status, 0) << run.err;
    const NpyArray got = read_npy(out);
    ASSERT_EQ(got.shape, (std::vector<int64_t>{8, 1024}));
    EXPECT_LE(max_abs_diff(got, read_npy(kGolden / c.golden)), 1e-4);
  }
}

TEST(EngineCli, GenerateJsonReportsSpeedAndExperts) {
  const CliRun run =
      bhmoe("generate " + model_arg() + " --prompt 'Hello world' --max-new-tokens 5 --json");
  ASSERT_EQ(run.status, 0) << run.err;
  const auto j = nlohmann::json::parse(run.out);
  for (const char* key :
       {"tokens", "tokens_per_s", "mean_experts", "per_layer_mean_experts", "text"}) {
    EXPECT_TRUE(j.contains(key)) << key << " missing in " << run.out;
  }
  EXPECT_LE(j["tokens"].get<int>(), 5);
  EXPECT_GE(j["tokens"].get<int>(), 1);
  EXPECT_DOUBLE_EQ(j["mean_experts"].get<double>(), 2.0);  // native top-2
  EXPECT_EQ(j["per_layer_mean_experts"].size(), 2u);

  // A forced k shows in the counts; greedy decoding is deterministic.
  const CliRun k1 = bhmoe("generate " + model_arg() +
                          " --prompt 'Hello world' --max-new-tokens 5 --router topk:k=1 --json");
  ASSERT_EQ(k1.status, 0) << k1.err;
  EXPECT_DOUBLE_EQ(nlohmann::json::parse(k1.out)["mean_experts"].get<double>(), 1.0);
  const CliRun again =
      bhmoe("generate " + model_arg() + " --prompt 'Hello world' --max-new-tokens 5 --json");
  EXPECT_EQ(nlohmann::json::parse(again.out)["token_ids"], j["token_ids"]);
}

TEST(EngineCli, GenerateStreamsTextAndSummarisesOnStderr) {
  const CliRun run =
      bhmoe("generate " + model_arg() +
            " --prompt 'The cat' --max-new-tokens 4 --temperature 0.9 --top-p 0.9 --seed 5");
  ASSERT_EQ(run.status, 0) << run.err;
  EXPECT_FALSE(run.out.empty());
  EXPECT_NE(run.err.find("tokens/s"), std::string::npos) << run.err;
  EXPECT_NE(run.err.find("mean experts per token"), std::string::npos) << run.err;
  const CliRun same =
      bhmoe("generate " + model_arg() +
            " --prompt 'The cat' --max-new-tokens 4 --temperature 0.9 --top-p 0.9 --seed 5");
  EXPECT_EQ(same.out, run.out);
}

TEST(EngineCli, ScoreReportsNllAndPerplexity) {
  const fs::path text = scratch_dir() / "text.txt";
  std::ofstream(text)
      << "The quick brown fox jumps over the lazy dog. It was the best of times, it "
         "was the worst of times.";
  const CliRun run =
      bhmoe("score " + model_arg() + " --text-file '" + text.string() + "' --max-length 8 --json");
  ASSERT_EQ(run.status, 0) << run.err;
  const auto j = nlohmann::json::parse(run.out);
  for (const char* key :
       {"tokens", "nll", "perplexity", "tokens_per_s", "mean_experts", "per_layer_mean_experts"}) {
    EXPECT_TRUE(j.contains(key)) << key;
  }
  EXPECT_GT(j["nll"].get<double>(), 0.0);
  EXPECT_NEAR(j["perplexity"].get<double>(), std::exp(j["nll"].get<double>()),
              1e-6 * j["perplexity"].get<double>());
  EXPECT_GT(j["windows"].get<int>(), 1);
  // Random weights over a 1024-token vocabulary: close to uniform, far from a trained model.
  EXPECT_GT(j["perplexity"].get<double>(), 50.0);
  const CliRun text_run = bhmoe("score " + model_arg() + " --text-file '" + text.string() + "'");
  ASSERT_EQ(text_run.status, 0) << text_run.err;
  EXPECT_NE(text_run.out.find("protocol:"), std::string::npos);
  EXPECT_NE(text_run.out.find("perplexity:"), std::string::npos);
}

TEST(EngineCli, CalibrateWritesACalibrationBhCanUse) {
  const fs::path dir = scratch_dir();
  const fs::path text = dir / "text.txt", calib = dir / "calib.json";
  std::ofstream(text)
      << "Calibration needs some text. Router logits of every layer are pooled, and a "
         "per-layer cumulative distribution is fitted to them.";
  for (const char* method : {"ecdf", "kde"}) {
    SCOPED_TRACE(method);
    const CliRun run =
        bhmoe("calibrate " + model_arg() + " --text-file '" + text.string() + "' --out '" +
              calib.string() + "' --method " + method + " --grid-points 200");
    ASSERT_EQ(run.status, 0) << run.err;
    const auto j = nlohmann::json::parse(slurp(calib));
    EXPECT_EQ(j["format"], "bh-calibration-grid/1");
    ASSERT_EQ(j["layers"].size(), 2u);
    const CliRun gen =
        bhmoe("generate " + model_arg() + " --prompt 'Hi there' --max-new-tokens 3 --json " +
              "--router bh:alpha=0.2,max_k=8,min_k=1 --calibration '" + calib.string() + "'");
    ASSERT_EQ(gen.status, 0) << gen.err;
    const double mean = nlohmann::json::parse(gen.out)["mean_experts"].get<double>();
    EXPECT_GE(mean, 1.0);
    EXPECT_LE(mean, 8.0);
  }
}

TEST(EngineCli, BenchModelPrintsOneJsonLine) {
  const CliRun run = bhmoe("bench model " + model_arg() +
                           " --bandwidth-mib 8 --decode-tokens 3 --k-decode-tokens 2 --repeats 1 "
                           "--router bh:alpha=0.2,max_k=8,min_k=1 --calibration '" +
                           (kGolden / "calibration.json").string() + "'");
  ASSERT_EQ(run.status, 0) << run.err;
  const auto j = nlohmann::json::parse(run.out);
  for (const char* key :
       {"prefill_tokens_per_s_64", "prefill_tokens_per_s_256", "decode_tokens_per_s",
        "decode_ms_per_token_by_k", "threads", "weights", "read_bandwidth_gbs",
        "decode_bound_tokens_per_s", "read_bandwidth_4k_pages_gbs", "adaptive_mean_k",
        "adaptive_decode_ms_per_token", "fixed_at_mean_k_decode_ms_per_token",
        "adaptive_over_fixed_time", "decode_ms_fixed", "decode_ms_per_expert",
        "decode_ms_fit_max_relative_error", "anon_huge_pages_mib"}) {
    EXPECT_TRUE(j.contains(key)) << key << " missing in " << run.out;
  }
  // The fixed-k comparison brackets the adaptive mean count.
  const double mean_k = j["adaptive_mean_k"].get<double>();
  EXPECT_LE(j["fixed_k_low"].get<int>(), mean_k);
  EXPECT_GE(j["fixed_k_high"].get<int>(), std::min(mean_k, 64.0));
  EXPECT_GT(j["adaptive_over_fixed_time"].get<double>(), 0.0);
  EXPECT_EQ(j["threads"], 2);
  EXPECT_EQ(j["weights"], "f32");
  for (const char* k : {"1", "2", "4", "8"})
    EXPECT_GT(j["decode_ms_per_token_by_k"][k].get<double>(), 0.0);
  EXPECT_GT(j["prefill_tokens_per_s_64"].get<double>(), 0.0);

  // --record appends the same line, and bench/summarize.py turns the record into the README's
  // table (one row per weights and router, medians).
  const fs::path record = scratch_dir() / "model.jsonl";
  fs::remove(record);
  for (int i = 0; i < 2; ++i) {
    const CliRun again = bhmoe("bench model " + model_arg() +
                               " --bandwidth-mib 8 --decode-tokens 2 --k-decode-tokens 1 "
                               "--repeats 1 --weights q8 --record '" +
                               record.string() + "'");
    ASSERT_EQ(again.status, 0) << again.err;
  }
  const fs::path table = scratch_dir() / "table.md";
  const std::string summarize = std::string("python3 '") + BHMOE_SOURCE_DIR +
                                "/bench/summarize.py' '" + record.string() + "' >'" +
                                table.string() + "'";
  ASSERT_EQ(std::system(summarize.c_str()), 0);
  const std::string md = slurp(table);
  EXPECT_NE(md.find("| q8 | topk:k=2,renorm=false | 2 |"), std::string::npos) << md;

  // A torn record names the file and line; a record without bench model lines is an error too.
  {
    std::ofstream torn(record, std::ios::app);
    torn << "{\"bench\": \"model\", \"weig\n";
  }
  const fs::path err = scratch_dir() / "summarize.err";
  const std::string bad = std::string("python3 '") + BHMOE_SOURCE_DIR + "/bench/summarize.py' '" +
                          record.string() + "' >/dev/null 2>'" + err.string() + "'";
  EXPECT_NE(std::system(bad.c_str()), 0);
  EXPECT_NE(slurp(err).find(record.string() + ":3: not JSON"), std::string::npos) << slurp(err);
  const fs::path other = scratch_dir() / "routing.jsonl";
  std::ofstream(other) << "{\"bench\": \"routing\"}\n";
  const std::string none = std::string("python3 '") + BHMOE_SOURCE_DIR + "/bench/summarize.py' '" +
                           other.string() + "' >/dev/null 2>'" + err.string() + "'";
  EXPECT_NE(std::system(none.c_str()), 0);
  EXPECT_NE(slurp(err).find("no matching bench model lines"), std::string::npos) << slurp(err);
}

// Numbers from the command line are bounded before they size anything, and every parse error
// (CLI11's included) is "bhmoe: error: ..." naming the flag, with status 1.
TEST(EngineCli, NumericOptionsAreBoundedAndNamed) {
  expect_user_error(bhmoe("generate " + model_arg() + " --prompt hi --threads 5000"),
                    "--threads: Value 5000 not in range 0 to 1024");
  expect_user_error(bhmoe("generate --model '" + kGolden.string() + "' --prompt hi --threads -1"),
                    "--threads");
  expect_user_error(bhmoe("generate " + model_arg() + " --prompt hi --seed -1"), "--seed");
  expect_user_error(bhmoe("generate " + model_arg() + " --prompt hi --seed 1e30"), "--seed");
  expect_user_error(bhmoe("generate " + model_arg() + " --prompt hi --max-new-tokens 99999999999"),
                    "--max-new-tokens");
  // Within int, but beyond the context: refused before the KV cache is sized by it.
  expect_user_error(bhmoe("generate " + model_arg() + " --prompt hi --max-new-tokens 2000000000"),
                    "--max-new-tokens 2000000000: with the 2-token prompt this exceeds the "
                    "model's context of 4096 tokens (max_position_embeddings); at most 4094");
  expect_user_error(bhmoe("generate " + model_arg() + " --prompt hi --no-such-flag"),
                    "--no-such-flag");
  expect_user_error(bhmoe("generate " + model_arg()), "--prompt");
  expect_user_error(bhmoe("score " + model_arg() + " --text-file x --max-length 1"),
                    "--max-length");

  // A 100 KB prompt file is beyond the 4096-token context: a clear error, not a crash.
  const fs::path long_prompt = scratch_dir() / "long_prompt.txt";
  {
    std::ofstream out(long_prompt);
    for (size_t n = 0; n < 100 * 1024; n += 23) out << "the cat sat on the mat ";
  }
  const CliRun too_long = bhmoe("generate " + model_arg() + " --prompt-file '" +
                                long_prompt.string() + "' --max-new-tokens 5");
  expect_user_error(too_long, "--prompt-file " + long_prompt.string() + ": the prompt is ");
  expect_user_error(too_long, "longer than the model's context of 4096 tokens");
  const CliRun as_flag = bhmoe("generate " + model_arg() + " --prompt \"$(cat '" +
                               long_prompt.string() + "')\" --max-new-tokens 5");
  expect_user_error(as_flag, "--prompt: the prompt is ");
  expect_user_error(bhmoe("logits " + model_arg() +
                          " --ids \"$(seq -s ' ' 1 5000 | tr -d '\\n')\" "
                          "--out '" +
                          (scratch_dir() / "l.npy").string() + "'"),
                    "--ids: 5000 tokens, more than the model's context of 4096");

  // The prompt file gives the same tokens as the flag.
  const fs::path short_prompt = scratch_dir() / "short_prompt.txt";
  std::ofstream(short_prompt) << "Hello world";
  const CliRun from_file = bhmoe("generate " + model_arg() + " --prompt-file '" +
                                 short_prompt.string() + "' --max-new-tokens 3 --json");
  const CliRun from_flag =
      bhmoe("generate " + model_arg() + " --prompt 'Hello world' --max-new-tokens 3 --json");
  ASSERT_EQ(from_file.status, 0) << from_file.err;
  ASSERT_EQ(from_flag.status, 0) << from_flag.err;
  EXPECT_EQ(nlohmann::json::parse(from_file.out)["token_ids"],
            nlohmann::json::parse(from_flag.out)["token_ids"]);
  expect_user_error(
      bhmoe("generate " + model_arg() + " --prompt-file '" + scratch_dir().string() + "'"),
      "is a directory, not a regular file");
}

TEST(EngineCli, BadInputGivesAClearErrorAndExitStatus1) {
  const fs::path out = scratch_dir() / "x.npy";
  expect_user_error(bhmoe("logits " + model_arg() + " --ids '1 x 3' --out '" + out.string() + "'"),
                    "'x'");
  expect_user_error(bhmoe("logits " + model_arg() + " --ids '1 5000' --out '" + out.string() + "'"),
                    "outside the vocabulary");
  EXPECT_FALSE(fs::exists(out));
  expect_user_error(bhmoe("generate " + model_arg() + " --prompt ''"), "empty prompt");
  expect_user_error(bhmoe("generate --model /nonexistent/model --prompt hi"), "/nonexistent/model");
  expect_user_error(bhmoe("generate " + model_arg() + " --prompt hi --router bogus:k=1"), "bogus");
  expect_user_error(
      bhmoe("generate " + model_arg() + " --prompt hi --router bh:alpha=0.05,max_k=4"),
      "calibration");
  expect_user_error(bhmoe("score " + model_arg() + " --text-file /nonexistent/text.txt"),
                    "/nonexistent/text.txt");
  expect_user_error(bhmoe("generate " + model_arg() + " --prompt hi --top-p 2 --temperature 1"),
                    "top-p");
  // A calibration that does not fit the model (tiny-f32 has layers 0 and 1) is refused by name.
  const fs::path partial = scratch_dir() / "layer0_only.json";
  std::ofstream(partial) << R"({"format": "bh-calibration-grid/1", "layers": [)"
                         << R"({"layer": 0, "x": [-1, 1], "cdf": [0, 1]}]})";
  const CliRun no_layer1 =
      bhmoe("generate " + model_arg() +
            " --prompt hi --router bh:alpha=0.05,max_k=4 --calibration '" + partial.string() + "'");
  expect_user_error(no_layer1, partial.string());
  expect_user_error(no_layer1, "has no layer 1 of the model's 2 layers");
  // Command-line syntax errors (CLI11) exit 1 too, in the same form.
  expect_user_error(bhmoe("logits " + model_arg() + " --ids 1"), "--out");
  // --help is not an error.
  const CliRun help = bhmoe("generate --help");
  EXPECT_EQ(help.status, 0) << help.err;
  EXPECT_NE(help.out.find("--max-new-tokens"), std::string::npos);
  // --model naming a file.
  expect_user_error(
      bhmoe("generate --model '" + (kGolden / "config.json").string() + "' --prompt hi"),
      (kGolden / "config.json").string() + " is not a directory (it is a regular file)");
}

// A trace as numpy.load sees it, read with the util layer only (not the writer's own reader).
struct TraceArrays {
  NpyInt32Array tokens, ids, counts;
  NpyArray weights, router_logits;
  std::string router;
};

TraceArrays load_trace(const fs::path& path) {
  const auto m = read_npz(path);
  TraceArrays t;
  t.tokens = parse_npy_int32(m.at("tokens"), "tokens");
  t.ids = parse_npy_int32(m.at("ids"), "ids");
  t.counts = parse_npy_int32(m.at("counts"), "counts");
  t.weights = parse_npy(m.at("weights"), "weights");
  if (m.count("router_logits")) t.router_logits = parse_npy(m.at("router_logits"), "router_logits");
  t.router = parse_npy_string(m.at("router"), "router");
  return t;
}

// `bhmoe route --out` JSONL lines of one layer must equal the trace's decisions in that layer.
void expect_route_matches_trace(const std::string& jsonl, const TraceArrays& t, int layer) {
  const int64_t T = t.ids.shape[0], L = t.ids.shape[1], K = t.ids.shape[2];
  std::istringstream lines(jsonl);
  int64_t token = 0;
  for (std::string line; std::getline(lines, line); ++token) {
    ASSERT_LT(token, T);
    const auto row = nlohmann::json::parse(line);
    const int64_t r = token * L + layer;
    ASSERT_EQ(row["count"].get<int>(), t.counts.data[static_cast<size_t>(r)]) << "token " << token;
    for (int j = 0; j < row["count"].get<int>(); ++j) {
      EXPECT_EQ(row["experts"][j].get<int>(), t.ids.data[static_cast<size_t>(r * K + j)]);
      EXPECT_EQ(row["weights"][j].get<float>(), t.weights.data[static_cast<size_t>(r * K + j)]);
    }
  }
  EXPECT_EQ(token, T);
}

TEST(EngineCli, TraceWritesTheDocumentedArraysAndRoundTripsThroughRoute) {
  const fs::path dir = scratch_dir();
  const std::string ids = "1 306 465 278 659 310 283 338 17 940 5";
  CliRun run =
      bhmoe("trace " + model_arg() + " --ids '" + ids +
            "' --router topk:k=3 --router-logits --out '" + (dir / "t.npz").string() + "'");
  ASSERT_EQ(run.status, 0) << run.err;
  const TraceArrays t = load_trace(dir / "t.npz");
  EXPECT_EQ(t.tokens.shape, (std::vector<int64_t>{11}));
  EXPECT_EQ(t.tokens.data[1], 306);
  EXPECT_EQ(t.ids.shape, (std::vector<int64_t>{11, 2, 3}));
  EXPECT_EQ(t.weights.shape, (std::vector<int64_t>{11, 2, 3}));
  EXPECT_EQ(t.counts.shape, (std::vector<int64_t>{11, 2}));
  EXPECT_EQ(t.router_logits.shape, (std::vector<int64_t>{11, 2, 8}));
  EXPECT_EQ(t.router.rfind("topk:k=3", 0), 0u) << t.router;
  for (int32_t c : t.counts.data) EXPECT_EQ(c, 3);
  // The top-3 of each stored logit row are the stored ids, in order.
  for (int64_t r = 0; r < 22; ++r) {
    const float* row = t.router_logits.data.data() + r * 8;
    std::vector<int> order = {0, 1, 2, 3, 4, 5, 6, 7};
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return row[a] > row[b]; });
    for (int j = 0; j < 3; ++j) EXPECT_EQ(t.ids.data[static_cast<size_t>(r * 3 + j)], order[j]);
  }
  for (int layer = 0; layer < 2; ++layer) {
    const fs::path out = dir / ("route" + std::to_string(layer) + ".jsonl");
    run = bhmoe("route --logits '" + (dir / "t.npz").string() + "' --layer " +
                std::to_string(layer) + " --router topk:k=3 --out '" + out.string() + "'");
    ASSERT_EQ(run.status, 0) << run.err;
    expect_route_matches_trace(slurp(out), t, layer);
  }
  expect_user_error(
      bhmoe("route --logits '" + (dir / "t.npz").string() + "' --layer 2 --router topk:k=3"),
      "--layer 2");
}

// BH end to end on the engine's own data: a calibration fitted from a trace's router logits, then a
// BH trace under it, and `route` on the logits file deciding exactly as the engine did.
TEST(EngineCli, BhTraceAgreesWithRouteUnderACalibrationFittedFromATrace) {
  const fs::path dir = scratch_dir();
  const std::string ids = "1 306 465 278 659 310 283 338 17 940 5 77 12 600 431 9";
  const std::string logits_npz = (dir / "logits.npz").string();
  ASSERT_EQ(bhmoe("trace " + model_arg() + " --ids '" + ids + "' --router-logits --out '" +
                  logits_npz + "'")
                .status,
            0);
  const std::string cal = (dir / "cal.json").string();
  CliRun run =
      bhmoe("calibrate-logits --logits '" + logits_npz + "' --method ecdf --out '" + cal + "'");
  ASSERT_EQ(run.status, 0) << run.err;
  EXPECT_NE(run.out.find("layer 1: 128 logits"), std::string::npos) << run.out;
  const std::string spec = "bh:alpha=0.3,max_k=6";
  run = bhmoe("trace " + model_arg() + " --ids '" + ids + "' --router " + spec +
              " --calibration '" + cal + "' --out '" + (dir / "bh.npz").string() + "'");
  ASSERT_EQ(run.status, 0) << run.err;
  const TraceArrays bh = load_trace(dir / "bh.npz");
  EXPECT_EQ(bh.ids.shape[2], 6);
  EXPECT_TRUE(bh.router_logits.data.empty());
  // Layer 1's router input depends on how layer 0 routed, so `route` is fed the router logits of
  // the BH run itself (`bhmoe logits --router-logits` under the same spec).
  const std::string rl = (dir / "bh_router.npy").string();
  run = bhmoe("logits " + model_arg() + " --ids '" + ids + "' --router " + spec +
              " --calibration '" + cal + "' --out '" + (dir / "bh_logits.npy").string() +
              "' --router-logits '" + rl + "'");
  ASSERT_EQ(run.status, 0) << run.err;
  EXPECT_EQ(read_npy(rl).shape, (std::vector<int64_t>{2, 16, 8}));
  int64_t adaptive = 0;
  for (int32_t c : bh.counts.data) adaptive += c != bh.counts.data[0];
  EXPECT_GT(adaptive, 0) << "BH chose the same count everywhere; the test would not see a mismatch";
  for (int layer = 0; layer < 2; ++layer) {
    const fs::path out = dir / ("bh" + std::to_string(layer) + ".jsonl");
    run = bhmoe("route --logits '" + rl + "' --layer " + std::to_string(layer) + " --router " +
                spec + " --calibration '" + cal + "' --out '" + out.string() + "'");
    ASSERT_EQ(run.status, 0) << run.err;
    expect_route_matches_trace(slurp(out), bh, layer);
  }
}

TEST(EngineCli, LogitsWithRouterLogitsKeepTheVocabularyLogitsAndMatchTheTrace) {
  const fs::path dir = scratch_dir();
  const std::string ids = "1 306 465 278 659";
  ASSERT_EQ(bhmoe("logits " + model_arg() + " --ids '" + ids + "' --out '" +
                  (dir / "a.npy").string() + "'")
                .status,
            0);
  CliRun run =
      bhmoe("logits " + model_arg() + " --ids '" + ids + "' --out '" + (dir / "b.npy").string() +
            "' --router-logits '" + (dir / "r.npy").string() + "'");
  ASSERT_EQ(run.status, 0) << run.err;
  EXPECT_EQ(max_abs_diff(read_npy(dir / "a.npy"), read_npy(dir / "b.npy")), 0.0);
  ASSERT_EQ(bhmoe("trace " + model_arg() + " --ids '" + ids + "' --router-logits --out '" +
                  (dir / "t.npz").string() + "'")
                .status,
            0);
  const NpyArray layered = read_npy(dir / "r.npy");  // [L, T, N]
  const TraceArrays t = load_trace(dir / "t.npz");   // [T, L, N]
  ASSERT_EQ(layered.shape, (std::vector<int64_t>{2, 5, 8}));
  for (int64_t l = 0; l < 2; ++l)
    for (int64_t i = 0; i < 5; ++i)
      for (int64_t e = 0; e < 8; ++e)
        EXPECT_EQ(layered.data[static_cast<size_t>((l * 5 + i) * 8 + e)],
                  t.router_logits.data[static_cast<size_t>((i * 2 + l) * 8 + e)]);
}

TEST(EngineCli, TraceWindowsRestartFromAnEmptyCache) {
  const fs::path dir = scratch_dir();
  // Tokens 4..7 traced in their own window equal the second window of a --window 4 trace.
  ASSERT_EQ(bhmoe("trace " + model_arg() +
                  " --ids '1 306 465 278 659 310 283 338' --window 4 --router-logits --out '" +
                  (dir / "w.npz").string() + "'")
                .status,
            0);
  ASSERT_EQ(bhmoe("trace " + model_arg() + " --ids '659 310 283 338' --router-logits --out '" +
                  (dir / "s.npz").string() + "'")
                .status,
            0);
  const TraceArrays w = load_trace(dir / "w.npz"), s = load_trace(dir / "s.npz");
  const size_t half = s.router_logits.data.size();
  ASSERT_EQ(w.router_logits.data.size(), 2 * half);
  for (size_t i = 0; i < half; ++i)
    EXPECT_EQ(w.router_logits.data[half + i], s.router_logits.data[i]);
}

TEST(EngineCli, TraceAndPlotTraceRefuseBadInput) {
  const fs::path dir = scratch_dir();
  expect_user_error(bhmoe("trace " + model_arg() + " --out '" + (dir / "x.npz").string() + "'"),
                    "--text-file or --ids");
  expect_user_error(
      bhmoe("trace " + model_arg() + " --ids '1 99999' --out '" + (dir / "x.npz").string() + "'"),
      "99999");
  ASSERT_EQ(
      bhmoe("trace " + model_arg() + " --ids '1 2 3' --out '" + (dir / "n.npz").string() + "'")
          .status,
      0);
  expect_user_error(
      bhmoe("route --logits '" + (dir / "n.npz").string() + "' --layer 0 --router topk:k=2"),
      "no router_logits");
  std::ofstream(dir / "junk.npz") << "not a zip archive at all, just text";
  expect_user_error(bhmoe("plot-trace --trace '" + (dir / "junk.npz").string() + "' --out '" +
                          (dir / "p.png").string() + "'"),
                    "junk.npz");
}

TEST(EngineCli, PlotTraceRendersPngAndSvgWithItsScript) {
  const fs::path dir = scratch_dir();
  ASSERT_EQ(
      bhmoe("trace " + model_arg() + " --ids '1 306 465 278 659 310' --router topk:k=2 --out '" +
            (dir / "t.npz").string() + "'")
          .status,
      0);
  CliRun run = bhmoe("plot-trace --trace '" + (dir / "t.npz").string() + "' --model '" +
                     kGolden.string() + "' --out '" + (dir / "counts.png").string() + "'");
  ASSERT_EQ(run.status, 0) << run.err;
  EXPECT_GT(fs::file_size(dir / "counts.png"), 1000u);
  EXPECT_TRUE(fs::exists(dir / "counts.svg"));
  const std::string data = slurp(dir / "counts.dat");
  EXPECT_NE(data.find("5\t1\t2\n"), std::string::npos) << data;  // token 5, layer 1: 2 experts
  EXPECT_NE(slurp(dir / "counts.gp").find("with image"), std::string::npos);
}

TEST(EngineCli, CalibrateRuleReachesTheTargetAndPrintsTheSpecLast) {
  const fs::path dir = scratch_dir();
  std::ofstream(dir / "text.txt")
      << "The quick brown fox jumps over the lazy dog. A stitch in time saves nine. Every cloud "
         "has a silver lining, and the early bird catches the worm while the cat is away.";
  for (const std::string& rule : {std::string("topp:max_k=8"), std::string("bh:max_k=8")}) {
    SCOPED_TRACE(rule);
    CliRun run = bhmoe("calibrate-rule " + model_arg() + " --calibration '" +
                       (kGolden / "calibration.json").string() + "' --text-file '" +
                       (dir / "text.txt").string() + "' --rule " + rule +
                       " --target-mean-experts 3 --tolerance 0.1 --window 32");
    ASSERT_EQ(run.status, 0) << run.err << run.out;
    std::string out = run.out;
    while (!out.empty() && out.back() == '\n') out.pop_back();
    const std::string spec = out.substr(out.rfind('\n') + 1);
    EXPECT_EQ(spec.rfind(rule.substr(0, rule.find(':')) + ":", 0), 0u) << spec;
    const size_t at = run.out.rfind("mean experts ");
    ASSERT_NE(at, std::string::npos);
    const double reported = std::stod(run.out.substr(at + 13));
    EXPECT_NEAR(reported, 3.0, 0.1) << run.out;
    // The printed spec gives that mean when the model is run with it.
    run = bhmoe("score " + model_arg() + " --calibration '" +
                (kGolden / "calibration.json").string() + "' --text-file '" +
                (dir / "text.txt").string() + "' --router '" + spec + "' --max-length 32 --json");
    ASSERT_EQ(run.status, 0) << run.err;
    EXPECT_NEAR(nlohmann::json::parse(run.out)["mean_experts"].get<double>(), reported, 0.15);
  }
  expect_user_error(bhmoe("calibrate-rule " + model_arg() + " --text-file '" +
                          (dir / "text.txt").string() + "' --rule topk --target-mean-experts 3"),
                    "no parameter");
  expect_user_error(
      bhmoe("calibrate-rule " + model_arg() + " --text-file '" + (dir / "text.txt").string() +
            "' --rule topp:p=0.5 --target-mean-experts 3"),
      "sets p itself");
  expect_user_error(bhmoe("calibrate-rule " + model_arg() + " --text-file '" +
                          (dir / "text.txt").string() + "' --rule topp --target-mean-experts 9"),
                    "outside (0, 8]");
}

}  // namespace
}  // namespace bhmoe

namespace bhmoe {
namespace {

TEST(EngineCli, BhmoeSimdCapsTheLevelAndAnUnknownValueIsIgnoredWithAWarning) {
  const std::string bench = "bench model " + model_arg() +
                            " --bandwidth-mib 0 --decode-tokens 1 --k-decode-tokens 1 --repeats 1";
  CliRun run = bhmoe(bench);
  ASSERT_EQ(run.status, 0) << run.err;
  const std::string best = nlohmann::json::parse(run.out)["isa"];
  // The variable is set for the child only (bhmoe() runs it through the shell right away).
  setenv("BHMOE_SIMD", "scalar", 1);
  run = bhmoe(bench);
  unsetenv("BHMOE_SIMD");
  ASSERT_EQ(run.status, 0) << run.err;
  EXPECT_EQ(nlohmann::json::parse(run.out)["isa"], "scalar");
  setenv("BHMOE_SIMD", "sse9", 1);
  run = bhmoe(bench);
  unsetenv("BHMOE_SIMD");
  ASSERT_EQ(run.status, 0) << run.err;
  EXPECT_EQ(nlohmann::json::parse(run.out)["isa"], best);
  EXPECT_NE(run.err.find("BHMOE_SIMD=sse9 is not scalar, avx2, avx512 or avx512bf16; ignored"),
            std::string::npos)
      << run.err;
}

// Streamed text never ends inside a character, and holds back trailing U+FFFD, which a
// SentencePiece byte-fallback tokenizer shows for a character whose bytes have not all arrived.
TEST(EngineCli, StreamedTextHoldsBackIncompleteCharacters) {
  EXPECT_EQ(cli::complete_utf8_prefix("ab\xC3"), 2u);
  EXPECT_EQ(cli::complete_utf8_prefix("ab\xC3\xA9"), 4u);
  EXPECT_EQ(cli::complete_utf8_prefix("ab\xE2\x82"), 2u);
  EXPECT_EQ(cli::complete_utf8_prefix("abc\xEF\xBF\xBD\xEF\xBF\xBD"), 3u);
  EXPECT_EQ(cli::complete_utf8_prefix("a\xEF\xBF\xBD"
                                      "b"),
            5u);
  EXPECT_EQ(cli::complete_utf8_prefix(""), 0u);
}

}  // namespace
}  // namespace bhmoe
