// route, calibrate-logits, bench routing and demo through the real executable.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "util/npy.h"

namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

struct RoutingCliResult {
  int status = -1;
  std::string out, err;
};

std::string read_text(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

const fs::path kShared = BHMOE_SHARED_DIR;
const fs::path kCalibration = kShared / "calibration/olmoe-1b-7b-0924.kde.json";

class RoutingCli : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("bhmoe-routing-cli-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  RoutingCliResult run(const std::string& args, const fs::path& cwd = {}) {
    std::string command = std::string("'") + BHMOE_BINARY + "' " + args + " >'" +
                          (dir_ / "stdout").string() + "' 2>'" + (dir_ / "stderr").string() + "'";
    if (!cwd.empty()) command = "cd '" + cwd.string() + "' && " + command;
    int raw = std::system(command.c_str());
    RoutingCliResult r;
    r.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
    r.out = read_text(dir_ / "stdout");
    r.err = read_text(dir_ / "stderr");
    return r;
  }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  // [tokens, n] normal logits (shifted by `shift`) written to name.
  std::string logits_file(const std::string& name, int64_t tokens, int64_t n, uint64_t seed,
                          float shift = 0.0f) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> normal(shift, 1.0f);
    bhmoe::NpyArray a{{tokens, n}, std::vector<float>(static_cast<size_t>(tokens * n))};
    for (float& v : a.data) v = normal(rng);
    bhmoe::write_npy(dir_ / name, a);
    return path(name);
  }

  fs::path dir_;
};

TEST_F(RoutingCli, EveryCommandHasHelp) {
  for (const char* command : {"route", "calibrate-logits", "bench routing", "demo"}) {
    RoutingCliResult r = run(std::string(command) + " --help");
    EXPECT_EQ(r.status, 0) << command;
    EXPECT_THAT(r.out, HasSubstr("--")) << command;
  }
}

TEST_F(RoutingCli, RouteWritesDecisionsAndStatistics) {
  const std::string logits = logits_file("l.npy", 20, 64, 1);
  RoutingCliResult r = run("route --logits " + logits +
                           " --layer 0 --router topk:k=8 --router "
                           "topp:p=0.5 --out " +
                           path("d.jsonl") + " --stats " + path("s.csv"));
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("topk:k=8,renorm=false,temperature=1"));
  auto lines = lines_of(read_text(path("d.jsonl")));
  ASSERT_EQ(lines.size(), 40u);
  auto first = nlohmann::json::parse(lines[0]);
  EXPECT_EQ(first["router"], "topk:k=8,renorm=false,temperature=1");
  EXPECT_EQ(first["token"], 0);
  EXPECT_EQ(first["count"], 8);
  EXPECT_EQ(first["experts"].size(), 8u);
  EXPECT_EQ(first["weights"].size(), 8u);
  auto last = nlohmann::json::parse(lines.back());
  EXPECT_EQ(last["router"], "topp:p=0.5,max_k=16,min_k=1,temperature=1,renorm=false");
  EXPECT_EQ(last["token"], 19);
  auto stats = lines_of(read_text(path("s.csv")));
  ASSERT_EQ(stats.size(), 3u);
  EXPECT_EQ(stats[0].substr(0, 51), "router,tokens,mean_experts,std_experts,min_experts,");
  EXPECT_THAT(stats[1], HasSubstr("\"topk:k=8,renorm=false,temperature=1\",20,8,0,8,8,100,100"));
}

TEST_F(RoutingCli, RouteBhMaxKSweepWritesTheMultiKTable) {
  if (!fs::exists(kCalibration)) GTEST_SKIP();
  const std::string logits = (kShared / "routing-cases/boosted_seed42.logits.npy").string();
  RoutingCliResult r =
      run("route --logits " + logits +
          " --layer 0 --router bh:alpha=0.05,max_k=8 "
          "--calibration " +
          kCalibration.string() + " --max-k-sweep 8,16,32,64 --stats " + path("multi.csv"));
  ASSERT_EQ(r.status, 0) << r.err;
  auto rows = lines_of(read_text(path("multi.csv")));
  ASSERT_EQ(rows.size(), 5u);
  EXPECT_EQ(rows[0],
            "max_k,mean_experts,std_experts,min_experts,max_experts,pct_at_ceiling,pct_at_floor");
  EXPECT_EQ(rows[1].substr(0, 7), "8,7.02,");
  EXPECT_THAT(r.out, HasSubstr("mean_experts"));
}

TEST_F(RoutingCli, RouteErrors) {
  const std::string logits = logits_file("l.npy", 4, 16, 2);
  RoutingCliResult bad_spec =
      run("route --logits " + logits + " --layer 0 --router bh:alpha=1.5,max_k=4");
  EXPECT_EQ(bad_spec.status, 1);
  EXPECT_THAT(bad_spec.err, HasSubstr("\"alpha\""));
  EXPECT_THAT(bad_spec.err, HasSubstr("outside (0, 1)"));
  RoutingCliResult too_many = run("route --logits " + logits + " --layer 0 --router topk:k=20");
  EXPECT_EQ(too_many.status, 1);
  EXPECT_THAT(too_many.err, HasSubstr("exceeds N=16"));
  RoutingCliResult no_calibration =
      run("route --logits " + logits + " --layer 0 --router bh:alpha=0.1,max_k=4");
  EXPECT_EQ(no_calibration.status, 1);
  EXPECT_THAT(no_calibration.err, HasSubstr("--calibration"));
  RoutingCliResult missing =
      run("route --logits " + path("none.npy") + " --layer 0 --router topk:k=2");
  EXPECT_NE(missing.status, 0);
  EXPECT_THAT(missing.err, HasSubstr("none.npy"));
  // A 3-D array is [layers, T, N] (bhmoe logits --router-logits): --layer picks the slice.
  bhmoe::write_npy(dir_ / "cube.npy", bhmoe::NpyArray{{2, 2, 2}, std::vector<float>(8, 0.0f)});
  EXPECT_EQ(run("route --logits " + path("cube.npy") + " --layer 1 --router topk:k=1").status, 0);
  RoutingCliResult beyond = run("route --logits " + path("cube.npy") + " --layer 2 --router topk:k=1");
  EXPECT_EQ(beyond.status, 1);
  EXPECT_THAT(beyond.err, HasSubstr("holds 2 layers; --layer 2"));
  bhmoe::write_npy(dir_ / "tesseract.npy", bhmoe::NpyArray{{1, 2, 2, 2}, std::vector<float>(8, 0.0f)});
  RoutingCliResult tesseract =
      run("route --logits " + path("tesseract.npy") + " --layer 0 --router topk:k=1");
  EXPECT_EQ(tesseract.status, 1);
  EXPECT_THAT(tesseract.err, HasSubstr("[T, N] or [layers, T, N]"));
  bhmoe::write_npy(dir_ / "nan.npy", bhmoe::NpyArray{{2, 4}, {0, 1, 2, 3, 0, 1, NAN, 3}});
  RoutingCliResult nan = run("route --logits " + path("nan.npy") + " --layer 0 --router topk:k=1");
  EXPECT_EQ(nan.status, 1);
  EXPECT_THAT(nan.err, HasSubstr("token 1"));
  EXPECT_THAT(nan.err, HasSubstr("expert 2"));
  RoutingCliResult sweep_topk =
      run("route --logits " + logits + " --layer 0 --router topk:k=2 --max-k-sweep 2,4");
  EXPECT_EQ(sweep_topk.status, 1);
  RoutingCliResult bad_sweep = run("route --logits " + logits +
                                   " --layer 0 --router "
                                   "bh:alpha=0.1,max_k=4,pvalues=one-minus-prob --max-k-sweep 2,x");
  EXPECT_EQ(bad_sweep.status, 1);
  EXPECT_THAT(bad_sweep.err, HasSubstr("--max-k-sweep"));
  RoutingCliResult no_router = run("route --logits " + logits + " --layer 0");
  EXPECT_NE(no_router.status, 0);
}

TEST_F(RoutingCli, CalibrateLogitsFitsEachLayerAndRoutesWithIt) {
  const std::string a = logits_file("a.npy", 200, 16, 3);
  const std::string b = logits_file("b.npy", 200, 16, 4, 1.0f);
  for (const char* method : {"ecdf", "kde"}) {
    const std::string out = path(std::string(method) + ".json");
    RoutingCliResult r =
        run("calibrate-logits --logits " + a + " --layer 0 --logits " + b + " --layer 3 --method " +
            method + " --grid-points 500 --model test --out " + out);
    ASSERT_EQ(r.status, 0) << r.err;
    auto doc = nlohmann::json::parse(read_text(out));
    EXPECT_EQ(doc["format"], "bh-calibration-grid/1");
    EXPECT_EQ(doc["model"], "test");
    ASSERT_EQ(doc["layers"].size(), 2u);
    EXPECT_EQ(doc["layers"][0]["layer"], 0);
    EXPECT_EQ(doc["layers"][1]["layer"], 3);
    EXPECT_EQ(doc["layers"][0]["x"].size(), 500u);
    RoutingCliResult routed = run("route --logits " + b +
                                  " --layer 3 --router bh:alpha=0.05,max_k=8 "
                                  "--calibration " +
                                  out + " --stats " + path("s.csv"));
    EXPECT_EQ(routed.status, 0) << routed.err;
    RoutingCliResult missing_layer = run("route --logits " + b +
                                         " --layer 1 --router "
                                         "bh:alpha=0.05,max_k=8 --calibration " +
                                         out);
    EXPECT_EQ(missing_layer.status, 1);
    EXPECT_THAT(missing_layer.err, HasSubstr("no layer 1"));
  }
  // One [layers, T, N] file.
  bhmoe::NpyArray cube{{3, 50, 8}, std::vector<float>(1200)};
  std::mt19937 rng(5);
  std::normal_distribution<float> normal;
  for (float& v : cube.data) v = normal(rng);
  bhmoe::write_npy(dir_ / "cube.npy", cube);
  RoutingCliResult r = run("calibrate-logits --logits " + path("cube.npy") +
                           " --method kde --out " + path("c.json"));
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(read_text(path("c.json")))["layers"].size(), 3u);
}

TEST_F(RoutingCli, AdaptiveRulesRouteWithEntropyQuantilesFromCalibrateLogits) {
  const std::string a = logits_file("a.npy", 400, 16, 7);
  const std::string out = path("c.json");
  RoutingCliResult fit = run("calibrate-logits --logits " + a + " --layer 2 --method ecdf " +
                             "--grid-points 300 --out " + out);
  ASSERT_EQ(fit.status, 0) << fit.err;
  EXPECT_THAT(fit.out, HasSubstr("entropy median"));
  auto doc = nlohmann::json::parse(read_text(out));
  EXPECT_EQ(doc["layers"][0]["entropy_quantiles"].size(), 1001u);
  const std::string routes = path("r.jsonl");
  RoutingCliResult r = run("route --logits " + a + " --layer 2 --calibration " + out +
                           " --router skip:beta=0.3 --router threshold:tau=0.1 --router "
                           "hc:max_k=8 --router entropy:ks=1/2/4/8 --out " +
                           routes);
  ASSERT_EQ(r.status, 0) << r.err;
  std::map<std::string, std::set<int>> counts;
  for (const std::string& line : lines_of(read_text(routes))) {
    auto row = nlohmann::json::parse(line);
    counts[row["router"]].insert(row["count"].get<int>());
  }
  ASSERT_EQ(counts.size(), 4u);
  EXPECT_EQ(counts["entropy:ks=1/2/4/8,temperature=1,renorm=false"], (std::set<int>{1, 2, 4, 8}));
  for (const auto& [router, seen] : counts) EXPECT_GT(seen.size(), 1u) << router;
  // The real OLMoE calibration has no entropy quantiles: the error names the file.
  if (fs::exists(kCalibration)) {
    RoutingCliResult old = run("route --logits " + a + " --layer 2 --calibration " +
                               kCalibration.string() + " --router entropy:ks=1/8");
    EXPECT_EQ(old.status, 1);
    EXPECT_THAT(old.err, HasSubstr(kCalibration.string()));
    EXPECT_THAT(old.err, HasSubstr("no entropy quantiles for any layer"));
  }
  RoutingCliResult other_layer =
      run("route --logits " + a + " --layer 0 --calibration " + out + " --router entropy:ks=1/8");
  EXPECT_EQ(other_layer.status, 1);
  EXPECT_THAT(other_layer.err, HasSubstr("no entropy quantiles for layer 0"));
  RoutingCliResult none = run("route --logits " + a + " --layer 2 --router hc:max_k=8");
  EXPECT_EQ(none.status, 1);
  EXPECT_THAT(none.err, HasSubstr("--calibration"));
  for (const char* spec :
       {"skip:beta=0.3", "threshold:tau=0.05", "hc:max_k=16", "entropy:ks=1/2/4/8"}) {
    RoutingCliResult bench =
        run(std::string("bench routing --router ") + spec + " --seconds 0.01 --tokens 128",
            fs::path(BHMOE_SOURCE_DIR));
    ASSERT_EQ(bench.status, 0) << spec << bench.err;
    EXPECT_GT(nlohmann::json::parse(bench.out)["mean_count"].get<double>(), 1.0) << spec;
  }
}

TEST_F(RoutingCli, CalibrateLogitsErrors) {
  const std::string a = logits_file("a.npy", 20, 8, 6);
  RoutingCliResult method =
      run("calibrate-logits --logits " + a + " --layer 0 --method gmm --out " + path("x.json"));
  EXPECT_EQ(method.status, 1);
  EXPECT_THAT(method.err, HasSubstr("gmm"));
  RoutingCliResult layers = run("calibrate-logits --logits " + a + " --logits " + a +
                                " --layer 0 --out " + path("x.json"));
  EXPECT_EQ(layers.status, 1);
  EXPECT_THAT(layers.err, HasSubstr("--layer"));
  bhmoe::write_npy(dir_ / "flat.npy", bhmoe::NpyArray{{2, 2}, {1, 1, 1, 1}});
  RoutingCliResult flat =
      run("calibrate-logits --logits " + path("flat.npy") + " --layer 2 --out " + path("x.json"));
  EXPECT_EQ(flat.status, 1);
  EXPECT_THAT(flat.err, HasSubstr("layer 2"));
  EXPECT_FALSE(fs::exists(path("x.json")));
}

TEST_F(RoutingCli, BenchRoutingPrintsOneJsonLine) {
  for (const std::string& args : {std::string("--router topk:k=8"),
                                  std::string("--router bh:alpha=0.05,max_k=16 --experts 32")}) {
    RoutingCliResult r = run("bench routing " + args + " --seconds 0.01 --tokens 256");
    ASSERT_EQ(r.status, 0) << r.err;
    auto lines = lines_of(r.out);
    ASSERT_EQ(lines.size(), 1u) << r.out;
    auto j = nlohmann::json::parse(lines[0]);
    EXPECT_GT(j["ns_per_token_batch"].get<double>(), 0.0);
    EXPECT_GT(j["ns_per_call_single"].get<double>(), 0.0);
    EXPECT_TRUE(j.contains("router"));
    EXPECT_TRUE(j.contains("experts"));
  }
  // The default router uses the real calibration relative to the working directory when present.
  RoutingCliResult d = run("bench routing --seconds 0.01 --tokens 128", fs::path(BHMOE_SOURCE_DIR));
  ASSERT_EQ(d.status, 0) << d.err;
  auto j = nlohmann::json::parse(d.out);
  EXPECT_EQ(j["router"],
            "bh:alpha=0.05,max_k=16,min_k=1,temperature=1,renorm=false,pvalues=calibrated");
  EXPECT_EQ(j["experts"], 64);
  if (fs::exists(fs::path(BHMOE_SOURCE_DIR) / "../shared/calibration/olmoe-1b-7b-0924.kde.json")) {
    EXPECT_THAT(j["calibration"].get<std::string>(), HasSubstr("olmoe-1b-7b-0924.kde.json"));
  }
  RoutingCliResult bad = run("bench routing --router topk:k=99 --seconds 0.01");
  EXPECT_EQ(bad.status, 1);
  EXPECT_THAT(bad.err, HasSubstr("\"k\""));
}

TEST_F(RoutingCli, DemoReproducesTheRoutingCases) {
  if (!fs::exists(kShared / "routing-cases/cases.json")) GTEST_SKIP();
  RoutingCliResult r = run("demo --cases " + (kShared / "routing-cases").string());
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("72/72 routing cases match"));
  EXPECT_THAT(
      r.out,
      HasSubstr(
          "max_k,mean_experts,std_experts,min_experts,max_experts,pct_at_ceiling,pct_at_floor"));
  EXPECT_THAT(r.out, HasSubstr("8,7.02,"));
  // The default folder is ../shared/routing-cases relative to the working directory.
  RoutingCliResult from_source = run("demo", fs::path(BHMOE_SOURCE_DIR));
  EXPECT_EQ(from_source.status, 0) << from_source.err;
  EXPECT_THAT(from_source.out, HasSubstr("72/72"));
}

TEST_F(RoutingCli, DemoGeneratesLogitsWithoutCases) {
  RoutingCliResult r = run("demo --cases " + path("missing"));
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("generated"));
  EXPECT_THAT(r.out, HasSubstr("reproduction check skipped"));
  RoutingCliResult bad = run("demo --cases " + path("missing") + " --max-k 8,zero");
  EXPECT_EQ(bad.status, 1);
  EXPECT_THAT(bad.err, HasSubstr("--max-k"));
  RoutingCliResult zero = run("demo --cases " + path("missing") + " --max-k 8,0");
  EXPECT_EQ(zero.status, 1);
  EXPECT_THAT(zero.err, HasSubstr("0 must be >= 1"));
}

// A cases folder whose cases.json is malformed: an error naming the file and the key at fault,
// before any table is printed; a file where the folder should be is named too.
TEST_F(RoutingCli, DemoRejectsMalformedCasesByFileAndKey) {
  if (!fs::exists(kCalibration)) GTEST_SKIP();
  const fs::path cases = dir_ / "cases";
  fs::create_directories(cases);
  fs::create_directories(dir_ / "calibration");
  fs::copy_file(kCalibration, dir_ / "calibration" / "c.json");
  logits_file("cases/l.npy", 3, 64, 1);
  const nlohmann::json good = {{"logits", "l.npy"},   {"layer", 0},
                               {"alpha", 0.05},       {"max_k", 8},
                               {"min_k", 1},          {"temperature", 1.0},
                               {"counts", {1, 1, 1}}, {"experts", {{0}, {0}, {0}}}};
  auto with = [&](const char* key, const nlohmann::json& value) {
    nlohmann::json c = good;
    if (value.is_discarded()) {
      c.erase(key);
    } else {
      c[key] = value;
    }
    return nlohmann::json{{"calibration", "calibration/c.json"}, {"cases", {good, c}}}.dump();
  };
  struct Case {
    std::string text;
    std::string expect;
  };
  const std::string file = (cases / "cases.json").string();
  const std::vector<Case> bad = {
      {"{\"cases\": [", "malformed JSON"},
      {R"({"cases": []})", "missing key \"calibration\""},
      {with("max_k", "eight"), "cases[1].max_k: \"eight\" is not an integer"},
      {with("layer", nlohmann::json::value_t::discarded), "cases[1]: missing key \"layer\""},
      {with("alpha", 1.5), "cases[1]: router"},
      {with("counts", {1, 1}), "cases[1]: counts and experts must have one entry per token"},
      {with("experts", {{0}, {"x"}, {0}}), "cases[1].experts[1][0]: \"x\" is not an expert id"},
      {with("layer", 99), "cases[1].layer: 99 is not a layer of the calibration"},
      {with("logits", "nothere.npy"), "nothere.npy"},
  };
  for (const Case& c : bad) {
    std::ofstream(cases / "cases.json") << c.text;
    RoutingCliResult r = run("demo --cases " + cases.string());
    EXPECT_EQ(r.status, 1) << c.text << "\n" << r.err;
    EXPECT_THAT(r.err, HasSubstr("bhmoe: error: " + file)) << c.text;
    EXPECT_THAT(r.err, HasSubstr(c.expect)) << c.text;
  }
  // The same folder with a well-formed file runs to the comparison (these made-up selections are
  // not BH's, so they do not match).
  std::ofstream(cases / "cases.json") << with("max_k", 8);
  RoutingCliResult ran = run("demo --cases " + cases.string());
  EXPECT_THAT(ran.out, HasSubstr("/2 routing cases match"));
  EXPECT_THAT(ran.err, HasSubstr("routing cases do not match"));

  std::ofstream(dir_ / "a-file") << "x";
  RoutingCliResult not_dir = run("demo --cases " + path("a-file"));
  EXPECT_EQ(not_dir.status, 1);
  EXPECT_THAT(not_dir.err,
              HasSubstr(path("a-file") + " is not a directory (it is a regular file)"));
}

// Numeric options out of range name the flag and exit 1 like every other error.
TEST_F(RoutingCli, BenchRoutingBoundsItsNumbers) {
  for (const char* args : {"--seconds nan", "--seconds inf", "--seconds -1", "--seconds 1e9"}) {
    RoutingCliResult r = run(std::string("bench routing ") + args);
    EXPECT_EQ(r.status, 1) << args;
    EXPECT_THAT(r.err, HasSubstr("bhmoe: error: --seconds")) << args << ": " << r.err;
  }
  RoutingCliResult tokens = run("bench routing --tokens 100000000000");
  EXPECT_EQ(tokens.status, 1);
  EXPECT_THAT(tokens.err, HasSubstr("--tokens"));
  RoutingCliResult seed = run("bench routing --seed -1");
  EXPECT_EQ(seed.status, 1);
  EXPECT_THAT(seed.err, HasSubstr("--seed"));
}
}  // namespace
