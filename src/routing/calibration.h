// Per-layer null distribution of raw router logits, as a CDF grid (SPEC.md §2), and its fitting.
//
// File format `bh-calibration-grid/1` (JSON):
//   {"format": "bh-calibration-grid/1", "model": "...", "description": "...",
//    "layers": [{"layer": 0, "x": [...strictly increasing...], "cdf": [...non-decreasing in
//    [0,1]...], "entropy_quantiles": [...optional...]}]}
// "entropy_quantiles" (optional; files without it load as before) holds the entropy-bucketed rule's
// data: quantiles of the layer's router softmax entropy (nats, temperature 1) over the calibration
// tokens at the evenly spaced levels j / (size - 1), j = 0..size-1 (at least 2 values, finite,
// >= 0, non-decreasing; see routing/adaptive.h). The fitter writes kEntropyQuantileLevels + 1.
// Loading validates everything (finite numbers, x strictly increasing, cdf non-decreasing within
// [0, 1], equal lengths, at least two points, no duplicate layer, layer ids in
// [0, kMaxCalibrationLayer], no duplicate JSON keys) and names what is wrong and where.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace bhmoe::routing {

inline constexpr const char* kCalibrationFormat = "bh-calibration-grid/1";

// The largest layer id a calibration may hold. A file alone cannot know its model's layer count,
// but no model has thousands of layers; the bound keeps ids of 2^32 or 10^9 from reaching code that
// sizes per-layer tables by the largest id (and matches the num_hidden_layers limit of config.json).
inline constexpr int kMaxCalibrationLayer = 4095;

struct CalibrationGrid {
  std::vector<double> x;    // strictly increasing
  std::vector<double> cdf;  // non-decreasing, in [0, 1], same length as x
  // Set by Calibration when the grid is uniform (every x within 1e-9 of x0 + i*step, relative to
  // the step): cdf() then finds the cell by index arithmetic instead of a binary search.
  bool uniform = false;
  double inv_step = 0.0;
};

enum class FitMethod { kEcdf, kKde };

// "ecdf" / "kde"; anything else is an error naming the value.
FitMethod parse_fit_method(std::string_view name);
const char* fit_method_name(FitMethod method);

class Calibration {
 public:
  Calibration() = default;

  // Reads and validates a bh-calibration-grid/1 file; errors name the path, the layer and the key.
  static Calibration load(const std::filesystem::path& path);
  // Same from JSON text; `source` names it in messages.
  static Calibration parse(std::string_view json_text, std::string_view source);

  // JSON text of the file format (numbers printed to round-trip exactly).
  std::string to_json() const;
  // Written atomically.
  void save(const std::filesystem::path& path) const;

  // Adds (or replaces) one layer's grid after validating it; errors name `layer`, which must be in
  // [0, kMaxCalibrationLayer].
  void set_layer(int layer, std::vector<double> x, std::vector<double> cdf);

  // Adds (or replaces) the entropy quantiles of a layer that has a grid, after validating them
  // (at least 2, finite, >= 0, non-decreasing); errors name the layer.
  void set_entropy_quantiles(int layer, std::vector<double> quantiles);
  bool has_entropy_quantiles(int layer) const { return entropy_.count(layer) != 0; }
  // Throws bhmoe::Error "calibration has no entropy quantiles for layer L (...)" when missing,
  // saying which layers have them and how to get a calibration that has them.
  const std::vector<double>& entropy_quantiles(int layer) const;

  bool has_layer(int layer) const { return grids_.count(layer) != 0; }
  // Throws bhmoe::Error "calibration has no layer L (it covers ...)" when missing.
  const CalibrationGrid& grid(int layer) const;
  std::vector<int> layers() const;

  // Checks that this calibration fits a model of `num_layers` layers: every layer 0..num_layers-1
  // present, and no layer id >= num_layers (such an id means a calibration of another model, whose
  // grids would be applied to the wrong layers). `source` names the calibration in messages.
  void check_covers_model(int num_layers, std::string_view source) const;
  int num_layers() const { return static_cast<int>(grids_.size()); }

  // F_layer(x) by linear interpolation on the grid (float64, as numpy.interp): 0 below the grid,
  // 1 above it (the grid's own end values are used at the end points).
  double cdf(int layer, double x) const;

  std::string model;
  std::string description;

 private:
  std::string layer_list_text() const;  // "0,1,2" or "none"

  std::map<int, CalibrationGrid> grids_;
  std::map<int, std::vector<double>> entropy_;  // by layer; a subset of the grids' layers
};

// Linear interpolation on one grid, with numpy.interp's arithmetic inside the grid.
double interpolate_cdf(const CalibrationGrid& grid, double x);

// Fits one layer's CDF from pooled logit samples (non-finite samples are an error).
//  kEcdf: the empirical CDF F(x) = #{s <= x} / n, on the distinct sample values (when there are
//  more
//         than `grid_points` of them, on `grid_points` of them evenly spaced in rank, always
//         keeping the smallest and largest), so F is exact at those points.
//  kKde:  a Gaussian kernel density estimate with Scott's bandwidth h = std(sample) * n^(-1/5)
//         (as scipy.stats.gaussian_kde), its CDF evaluated on `grid_points` evenly spaced points
//         from min - 5h to max + 5h. Samples are linearly binned onto a fine grid first, so large
//         pools (the original used 320,000 per layer) fit in well under a second.
// Requires at least 2 samples (KDE: not all equal).
CalibrationGrid fit_calibration_grid(std::span<const float> samples, FitMethod method,
                                     int grid_points = 10000);

// The KDE fit itself: `binned` false sums every sample's kernel at every grid point (exact,
// O(n * grid_points)); true bins first (what fit_calibration_grid uses for large pools).
CalibrationGrid fit_kde_grid(std::span<const float> samples, int grid_points, bool binned);

// Fits every layer of `samples_by_layer` (layer -> pooled logits) into one Calibration. With
// num_experts > 0 each pool is read as [T, N] rows of N = num_experts logits (its size must be a
// multiple of N) and the layer also gets its entropy quantiles (routing/adaptive.h); with 0 (the
// rows unknown, e.g. a 1-D dump) it gets none and the entropy rule cannot use it.
Calibration fit_calibration(const std::map<int, std::vector<float>>& samples_by_layer,
                            FitMethod method, int grid_points = 10000, int num_experts = 0);

}  // namespace bhmoe::routing
