#include "routing/calibration.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include "routing/test_support.h"
#include "util/error.h"

namespace bhmoe::routing {
namespace {

const std::filesystem::path kRealCalibration =
    std::filesystem::path(BHMOE_SHARED_DIR) / "calibration/olmoe-1b-7b-0924.kde.json";

void expect_parse_error(const std::string& json, std::initializer_list<const char*> parts) {
  try {
    Calibration::parse(json, "test.json");
    ADD_FAILURE() << "accepted: " << json;
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("test.json"), std::string::npos) << message;
    for (const char* part : parts) {
      EXPECT_NE(message.find(part), std::string::npos)
          << "\"" << message << "\" lacks \"" << part << "\"";
    }
  }
}

std::string one_layer(const std::string& layer_body) {
  return R"({"format": "bh-calibration-grid/1", "model": "m", "description": "d", "layers": [)" +
         layer_body + "]}";
}

TEST(Calibration, LoadsTheRealOlmoeGrids) {
  if (!std::filesystem::exists(kRealCalibration)) GTEST_SKIP() << "no " << kRealCalibration;
  Calibration c = Calibration::load(kRealCalibration);
  EXPECT_EQ(c.num_layers(), 16);
  EXPECT_EQ(c.model, "allenai/OLMoE-1B-7B-0924");
  for (int layer = 0; layer < 16; ++layer) {
    ASSERT_TRUE(c.has_layer(layer));
    const CalibrationGrid& g = c.grid(layer);
    EXPECT_EQ(g.x.size(), 10000u);
    EXPECT_TRUE(g.uniform) << "layer " << layer << " grid is evenly spaced";
    EXPECT_EQ(c.cdf(layer, g.x.front() - 1.0), 0.0);
    EXPECT_EQ(c.cdf(layer, g.x.back() + 1.0), 1.0);
    double previous = 0.0;
    for (double x = g.x.front(); x <= g.x.back(); x += 0.01) {
      double v = c.cdf(layer, x);
      EXPECT_GE(v, previous);
      previous = v;
    }
  }
  EXPECT_FALSE(c.has_layer(16));
  try {
    c.grid(16);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no layer 16"), std::string::npos) << e.what();
  }
}

TEST(Calibration, InterpolatesLinearlyAndIsZeroBelowOneAbove) {
  Calibration c;
  c.set_layer(3, {0.0, 1.0, 2.0, 4.0}, {0.1, 0.5, 0.5, 0.9});
  EXPECT_FALSE(c.grid(3).uniform);
  EXPECT_EQ(c.cdf(3, -0.001), 0.0);
  EXPECT_EQ(c.cdf(3, 0.0), 0.1);
  EXPECT_DOUBLE_EQ(c.cdf(3, 0.25), 0.2);
  EXPECT_EQ(c.cdf(3, 1.0), 0.5);
  EXPECT_EQ(c.cdf(3, 1.5), 0.5);
  EXPECT_DOUBLE_EQ(c.cdf(3, 3.0), 0.7);
  EXPECT_EQ(c.cdf(3, 4.0), 0.9);
  EXPECT_EQ(c.cdf(3, 4.0001), 1.0);
  // A uniform grid takes the index-arithmetic path; same answers as a binary search.
  Calibration u;
  std::vector<double> x, y;
  for (int i = 0; i <= 100; ++i) {
    x.push_back(-2.0 + 0.04 * i);
    y.push_back(i / 100.0);
  }
  u.set_layer(0, x, y);
  EXPECT_TRUE(u.grid(0).uniform);
  CalibrationGrid searched = u.grid(0);
  searched.uniform = false;
  std::mt19937 rng(1);
  std::uniform_real_distribution<double> d(-2.5, 2.5);
  for (int i = 0; i < 10000; ++i) {
    double v = d(rng);
    EXPECT_EQ(interpolate_cdf(u.grid(0), v), interpolate_cdf(searched, v)) << v;
  }
  for (double v : x) EXPECT_EQ(interpolate_cdf(u.grid(0), v), interpolate_cdf(searched, v));
}

TEST(Calibration, SaveLoadRoundTripIsExact) {
  auto c = testing::normal_calibration(3, 501);
  const auto path = std::filesystem::temp_directory_path() / "bhmoe_calibration_roundtrip.json";
  c->save(path);
  Calibration back = Calibration::load(path);
  std::filesystem::remove(path);
  EXPECT_EQ(back.model, c->model);
  EXPECT_EQ(back.layers(), c->layers());
  for (int layer : c->layers()) {
    EXPECT_EQ(back.grid(layer).x, c->grid(layer).x);
    EXPECT_EQ(back.grid(layer).cdf, c->grid(layer).cdf);
  }
}

TEST(Calibration, LoadValidationNamesWhatIsWrong) {
  expect_parse_error("{", {"malformed JSON"});
  expect_parse_error("[]", {"not a JSON object"});
  expect_parse_error(R"({"layers": []})", {"\"format\""});
  expect_parse_error(R"({"format": "other/1", "layers": []})",
                     {"\"format\"", "bh-calibration-grid/1"});
  expect_parse_error(R"({"format": "bh-calibration-grid/1"})", {"missing key \"layers\""});
  expect_parse_error(R"({"format": "bh-calibration-grid/1", "layers": {}})",
                     {"\"layers\" is not an array"});
  expect_parse_error(one_layer(""), {"empty"});
  expect_parse_error(one_layer(R"({"x": [0, 1], "cdf": [0, 1]})"), {"missing key \"layer\""});
  expect_parse_error(one_layer(R"({"layer": 0.5, "x": [0, 1], "cdf": [0, 1]})"),
                     {"not an integer"});
  expect_parse_error(one_layer(R"({"layer": -1, "x": [0, 1], "cdf": [0, 1]})"), {"negative"});
  expect_parse_error(one_layer(R"({"layer": 2, "cdf": [0, 1]})"), {"layer 2", "missing key \"x\""});
  expect_parse_error(one_layer(R"({"layer": 2, "x": [0, 1]})"), {"layer 2", "missing key \"cdf\""});
  expect_parse_error(one_layer(R"({"layer": 2, "x": [0, 1, 2], "cdf": [0, 1]})"),
                     {"layer 2", "lengths must be equal"});
  expect_parse_error(one_layer(R"({"layer": 2, "x": [0], "cdf": [0]})"), {"at least 2"});
  expect_parse_error(one_layer(R"({"layer": 2, "x": [0, 1e999], "cdf": [0, 1]})"), {"not finite"});
  expect_parse_error(one_layer(R"({"layer": 2, "x": [0, NaN], "cdf": [0, 1]})"),
                     {"NaN", "must be finite"});
  expect_parse_error(one_layer(R"({"layer": 2, "x": [0, 1], "cdf": [0, Infinity]})"),
                     {"Infinity", "must be finite"});
  expect_parse_error(one_layer(R"({"layer": 2, "x": [0, "a"], "cdf": [0, 1]})"),
                     {"x[1]", "not a number"});
  expect_parse_error(one_layer(R"({"layer": 2, "x": [0, 1, 1], "cdf": [0, 0.5, 1]})"),
                     {"layer 2", "not strictly increasing at index 2"});
  expect_parse_error(one_layer(R"({"layer": 2, "x": [0, 2, 1], "cdf": [0, 0.5, 1]})"),
                     {"not strictly increasing"});
  expect_parse_error(one_layer(R"({"layer": 2, "x": [0, 1, 2], "cdf": [0, 0.7, 0.6]})"),
                     {"layer 2", "cdf decreases at index 2"});
  expect_parse_error(one_layer(R"({"layer": 2, "x": [0, 1], "cdf": [0, 1.5]})"),
                     {"cdf[1]", "outside [0, 1]"});
  expect_parse_error(one_layer(R"({"layer": 2, "x": [0, 1], "cdf": [-0.1, 1]})"),
                     {"cdf[0]", "outside [0, 1]"});
  expect_parse_error(
      one_layer(
          R"({"layer": 1, "x": [0, 1], "cdf": [0, 1]}, {"layer": 1, "x": [0, 1], "cdf": [0, 1]})"),
      {"layer 1", "more than once"});
  EXPECT_THROW(Calibration::load("/nonexistent/calibration.json"), Error);
  Calibration c;
  try {
    c.set_layer(4, {0, NAN}, {0, 1});
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("layer 4: x[1] is not finite"), std::string::npos)
        << e.what();
  }
  try {
    c.set_layer(4, {0, 1}, {0, INFINITY});
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cdf[1] is not finite"), std::string::npos) << e.what();
  }
  EXPECT_THROW(c.set_layer(0, {1, 0}, {0, 1}), Error);
  EXPECT_THROW(c.set_layer(-2, {0, 1}, {0, 1}), Error);
}

std::string parse_error_of(const std::string& json) {
  try {
    Calibration::parse(json, "test.json");
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

// 2^32 used to be read with get<int>() and wrap around to layer 0.
TEST(Calibration, HugeLayerIdsAreRejectedNotWrapped) {
  EXPECT_EQ(parse_error_of(one_layer(R"({"layer": 4294967296, "x": [0, 1], "cdf": [0, 1]})")),
            "calibration test.json: layers[0]: \"layer\" 4294967296 is beyond the limit of 4095 "
            "(no model has that many layers)");
  EXPECT_EQ(parse_error_of(one_layer(R"({"layer": 4294967297, "x": [0, 1], "cdf": [0, 1]})")),
            "calibration test.json: layers[0]: \"layer\" 4294967297 is beyond the limit of 4095 "
            "(no model has that many layers)");
  // 10^9 and 2*10^7 are rejected at load, before anything sizes a table by the largest id.
  for (const char* id : {"1000000000", "20000000", "4096", "18446744073709551615"}) {
    EXPECT_NE(parse_error_of(one_layer(std::string(R"({"layer": )") + id +
                                       R"(, "x": [0, 1], "cdf": [0, 1]})"))
                  .find(std::string("\"layer\" ") + id + " is beyond the limit"),
              std::string::npos)
        << id;
  }
  EXPECT_EQ(parse_error_of(one_layer(R"({"layer": 4095, "x": [0, 1], "cdf": [0, 1]})")),
            "(no error)");
  Calibration c;
  try {
    c.set_layer(20000000, {0, 1}, {0, 1});
    ADD_FAILURE() << "accepted layer 2e7";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "calibration layer 20000000: layer index is beyond the limit of 4095");
  }
  EXPECT_EQ(c.num_layers(), 0);
}

TEST(Calibration, OutOfRangeNumberNamesTheKeyPath) {
  EXPECT_EQ(parse_error_of(one_layer(R"({"layer": 0, "x": [0, 1], "cdf": [0, 1e400]})")),
            "calibration test.json: number 1e400 at key path layers[0].cdf[1] is not finite as a "
            "double (beyond +-1.8e308)");
}

TEST(Calibration, CheckCoversModel) {
  auto c = testing::normal_calibration(3, 51);
  EXPECT_NO_THROW(c->check_covers_model(3, "c.json"));
  try {
    c->check_covers_model(2, "c.json");
    ADD_FAILURE() << "a 3-layer calibration accepted for a 2-layer model";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(),
                 "calibration c.json: layer 2 is beyond the model's 2 layers (0..1); it covers "
                 "layers 0,1,2 (a calibration of another model?)");
  }
  try {
    c->check_covers_model(4, "c.json");
    ADD_FAILURE() << "a 3-layer calibration accepted for a 4-layer model";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(),
                 "calibration c.json: has no layer 3 of the model's 4 layers; it covers layers "
                 "0,1,2");
  }
}

TEST(Calibration, FifoIsRejected) {
  const auto path = std::filesystem::temp_directory_path() /
                    ("bhmoe_calibration_fifo_" + std::to_string(::getpid()));
  std::filesystem::remove(path);
  ASSERT_EQ(::mkfifo(path.c_str(), 0600), 0);
  try {
    Calibration::load(path);
    ADD_FAILURE() << "a FIFO was read";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), path.string() + " is a FIFO (named pipe), not a regular file");
  }
  std::filesystem::remove(path);
}

TEST(CalibrationFit, EcdfIsExactAtTheSamplePoints) {
  std::vector<float> s = {3.0f, -1.0f, 2.0f, 2.0f, 0.5f, 10.0f, 2.0f, -4.0f};
  CalibrationGrid g = fit_calibration_grid(s, FitMethod::kEcdf, 100);
  EXPECT_EQ(g.x, (std::vector<double>{-4, -1, 0.5, 2, 3, 10}));
  EXPECT_EQ(g.cdf, (std::vector<double>{1.0 / 8, 2.0 / 8, 3.0 / 8, 6.0 / 8, 7.0 / 8, 1.0}));
  // More distinct values than grid points: a rank-spaced subset, still exact, ends kept.
  auto big = testing::normal_logits(5000, 3);
  CalibrationGrid sub = fit_calibration_grid(big, FitMethod::kEcdf, 101);
  ASSERT_EQ(sub.x.size(), 101u);
  std::vector<float> sorted = big;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(sub.x.front(), sorted.front());
  EXPECT_EQ(sub.x.back(), sorted.back());
  EXPECT_EQ(sub.cdf.back(), 1.0);
  for (size_t j = 0; j < sub.x.size(); ++j) {
    size_t at_most = std::upper_bound(sorted.begin(), sorted.end(), static_cast<float>(sub.x[j])) -
                     sorted.begin();
    EXPECT_DOUBLE_EQ(sub.cdf[j], at_most / 5000.0);
  }
}

TEST(CalibrationFit, KdeOfNormalSamplesIsCloseToTheNormalCdf) {
  auto samples = testing::normal_logits(20000, 4);
  CalibrationGrid g = fit_calibration_grid(samples, FitMethod::kKde, 2001);  // binned (4e7 > 2e7)
  Calibration c;
  c.set_layer(0, g.x, g.cdf);
  for (double x : {-2.5, -1.0, 0.0, 0.5, 1.7, 3.0}) {
    EXPECT_NEAR(c.cdf(0, x), 0.5 * std::erfc(-x / std::sqrt(2.0)), 0.01) << x;
  }
  EXPECT_GE(g.cdf.front(), 0.0);
  EXPECT_LT(g.cdf.front(), 1e-5);
  EXPECT_GT(g.cdf.back(), 1.0 - 1e-5);
  for (size_t i = 1; i < g.cdf.size(); ++i) EXPECT_GE(g.cdf[i], g.cdf[i - 1]);
}

TEST(CalibrationFit, BinnedKdeAgreesWithTheExactSum) {
  auto samples = testing::normal_logits(3000, 5, -1.0f, 2.0f);
  samples[0] = 9.0f;  // an outlier widens the range
  CalibrationGrid exact = fit_kde_grid(samples, 801, false);
  CalibrationGrid binned = fit_kde_grid(samples, 801, true);
  ASSERT_EQ(exact.x, binned.x);
  double worst = 0;
  for (size_t i = 0; i < exact.cdf.size(); ++i)
    worst = std::max(worst, std::fabs(exact.cdf[i] - binned.cdf[i]));
  EXPECT_LT(worst, 2e-5);
  // Scott's bandwidth: the grid spans min - 5h .. max + 5h with h = sd * n^(-1/5).
  double mean = 0, ss = 0;
  for (float s : samples) mean += s;
  mean /= samples.size();
  for (float s : samples) ss += (s - mean) * (s - mean);
  const double h = std::sqrt(ss / (samples.size() - 1)) * std::pow(3000.0, -0.2);
  EXPECT_NEAR(exact.x.back(), 9.0 + 5 * h, 1e-9);
}

TEST(CalibrationFit, RejectsUnusableSamples) {
  std::vector<float> equal(10, 1.0f);
  EXPECT_THROW(fit_calibration_grid(equal, FitMethod::kKde), Error);
  EXPECT_THROW(fit_calibration_grid(equal, FitMethod::kEcdf), Error);
  std::vector<float> one = {1.0f};
  EXPECT_THROW(fit_calibration_grid(one, FitMethod::kKde), Error);
  std::vector<float> bad = {1.0f, NAN, 2.0f};
  try {
    fit_calibration_grid(bad, FitMethod::kEcdf);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("sample 1"), std::string::npos) << e.what();
  }
  EXPECT_THROW(fit_calibration_grid(testing::normal_logits(10, 1), FitMethod::kKde, 1), Error);
  EXPECT_EQ(parse_fit_method("kde"), FitMethod::kKde);
  EXPECT_EQ(parse_fit_method("ecdf"), FitMethod::kEcdf);
  EXPECT_THROW(parse_fit_method("gmm"), Error);
}

TEST(CalibrationFit, FitsEveryLayer) {
  std::map<int, std::vector<float>> pools;
  pools[0] = testing::normal_logits(2000, 6);
  pools[5] = testing::normal_logits(2000, 7, 2.0f, 0.5f);
  Calibration c = fit_calibration(pools, FitMethod::kKde, 500);
  EXPECT_EQ(c.layers(), (std::vector<int>{0, 5}));
  EXPECT_NEAR(c.cdf(0, 0.0), 0.5, 0.03);
  EXPECT_NEAR(c.cdf(5, 2.0), 0.5, 0.03);
  EXPECT_LT(c.cdf(5, 0.5), 0.01);
  pools[3] = {1.0f, 1.0f};
  try {
    fit_calibration(pools, FitMethod::kKde);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("layer 3"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace bhmoe::routing
