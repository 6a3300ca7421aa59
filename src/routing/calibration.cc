#include "routing/calibration.h"

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>

#include "routing/adaptive.h"
#include "util/error.h"
#include "util/file.h"
#include "util/json.h"

namespace bhmoe::routing {

FitMethod parse_fit_method(std::string_view name) {
  if (name == "ecdf") return FitMethod::kEcdf;
  if (name == "kde") return FitMethod::kKde;
  fail("calibration method \"", name, "\" is not ecdf or kde");
}

const char* fit_method_name(FitMethod method) {
  return method == FitMethod::kEcdf ? "ecdf" : "kde";
}

namespace {

// Checks one grid; `where` prefixes every message (file and layer).
void validate_grid(const std::vector<double>& x, const std::vector<double>& cdf,
                   const std::string& where) {
  if (x.size() != cdf.size()) {
    fail(where, ": x has ", x.size(), " values but cdf has ", cdf.size(),
         " (lengths must be equal)");
  }
  if (x.size() < 2) fail(where, ": the grid has ", x.size(), " points (at least 2 needed)");
  for (size_t i = 0; i < x.size(); ++i) {
    if (!std::isfinite(x[i])) fail(where, ": x[", i, "] is not finite (", x[i], ")");
    if (!std::isfinite(cdf[i])) fail(where, ": cdf[", i, "] is not finite (", cdf[i], ")");
    if (cdf[i] < 0.0 || cdf[i] > 1.0)
      fail(where, ": cdf[", i, "] = ", cdf[i], " is outside [0, 1]");
    if (i > 0 && !(x[i] > x[i - 1])) {
      fail(where, ": x is not strictly increasing at index ", i, " (", x[i - 1], " then ", x[i],
           ")");
    }
    if (i > 0 && cdf[i] < cdf[i - 1]) {
      fail(where, ": cdf decreases at index ", i, " (", cdf[i - 1], " then ", cdf[i], ")");
    }
  }
}

std::vector<double> number_array(const nlohmann::json& layer, const char* key,
                                 const std::string& where) {
  auto it = layer.find(key);
  if (it == layer.end()) fail(where, ": missing key \"", key, "\"");
  if (!it->is_array()) fail(where, ": \"", key, "\" is not an array");
  std::vector<double> out;
  out.reserve(it->size());
  for (size_t i = 0; i < it->size(); ++i) {
    const auto& v = (*it)[i];
    if (!v.is_number()) fail(where, ": ", key, "[", i, "] is not a number (", v.dump(), ")");
    out.push_back(v.get<double>());
  }
  return out;
}

}  // namespace

void Calibration::set_layer(int layer, std::vector<double> x, std::vector<double> cdf) {
  if (layer < 0) fail("calibration layer ", layer, ": layer index must be >= 0");
  if (layer > kMaxCalibrationLayer) {
    fail("calibration layer ", layer, ": layer index is beyond the limit of ", kMaxCalibrationLayer);
  }
  validate_grid(x, cdf, cat("calibration layer ", layer));
  CalibrationGrid grid;
  grid.x = std::move(x);
  grid.cdf = std::move(cdf);
  const size_t n = grid.x.size();
  const double step = (grid.x[n - 1] - grid.x[0]) / static_cast<double>(n - 1);
  // Near-uniform is enough: interpolate_cdf corrects the guessed cell against the real x values.
  bool uniform = step > 0.0;
  for (size_t i = 0; uniform && i < n; ++i) {
    if (std::fabs(grid.x[i] - (grid.x[0] + static_cast<double>(i) * step)) > 0.25 * step) {
      uniform = false;
    }
  }
  grid.uniform = uniform;
  grid.inv_step = uniform ? 1.0 / step : 0.0;
  grids_[layer] = std::move(grid);
}

void Calibration::set_entropy_quantiles(int layer, std::vector<double> quantiles) {
  const std::string where = cat("calibration layer ", layer, ": entropy_quantiles");
  if (!grids_.count(layer)) fail(where, ": the layer has no grid");
  if (quantiles.size() < 2) fail(where, ": ", quantiles.size(), " values (at least 2 needed)");
  for (size_t i = 0; i < quantiles.size(); ++i) {
    if (!std::isfinite(quantiles[i])) fail(where, "[", i, "] is not finite (", quantiles[i], ")");
    if (quantiles[i] < 0.0) fail(where, "[", i, "] = ", quantiles[i], " is negative");
    if (i > 0 && quantiles[i] < quantiles[i - 1]) {
      fail(where, " decreases at index ", i, " (", quantiles[i - 1], " then ", quantiles[i], ")");
    }
  }
  entropy_[layer] = std::move(quantiles);
}

const std::vector<double>& Calibration::entropy_quantiles(int layer) const {
  auto it = entropy_.find(layer);
  if (it == entropy_.end()) {
    std::string have;
    for (const auto& [id, q] : entropy_) {
      if (!have.empty()) have += ',';
      have += std::to_string(id);
    }
    fail("calibration has no entropy quantiles for layer ", layer, " (",
         have.empty() ? std::string("it has none") : "it has them for layers " + have,
         "; fit one with bhmoe calibrate, calibrate-logits on [T, N] logits or "
         "bhmoe.Calibration.fit)");
  }
  return it->second;
}

const CalibrationGrid& Calibration::grid(int layer) const {
  auto it = grids_.find(layer);
  if (it == grids_.end()) {
    fail("calibration has no layer ", layer, " (it covers layers ", layer_list_text(), ")");
  }
  return it->second;
}

void Calibration::check_covers_model(int num_layers, std::string_view source) const {
  const std::string have = layer_list_text();
  for (const auto& [id, g] : grids_) {
    if (id >= num_layers) {
      fail("calibration ", source, ": layer ", id, " is beyond the model's ", num_layers,
           " layers (0..", num_layers - 1, "); it covers layers ", have,
           " (a calibration of another model?)");
    }
  }
  for (int layer = 0; layer < num_layers; ++layer) {
    if (!grids_.count(layer)) {
      fail("calibration ", source, ": has no layer ", layer, " of the model's ", num_layers,
           " layers; it covers layers ", have);
    }
  }
}

std::string Calibration::layer_list_text() const {
  std::string have;
  for (const auto& [id, g] : grids_) {
    if (!have.empty()) have += ',';
    have += std::to_string(id);
  }
  return have.empty() ? std::string("none") : have;
}

std::vector<int> Calibration::layers() const {
  std::vector<int> out;
  for (const auto& [id, g] : grids_) out.push_back(id);
  return out;
}

double Calibration::cdf(int layer, double x) const {
  return interpolate_cdf(grid(layer), x);
}

double interpolate_cdf(const CalibrationGrid& grid, double v) {
  const std::vector<double>& x = grid.x;
  const std::vector<double>& y = grid.cdf;
  const size_t n = x.size();
  if (std::isnan(v)) return v;
  if (v < x[0]) return 0.0;
  if (v > x[n - 1]) return 1.0;
  if (v == x[n - 1]) return y[n - 1];
  size_t j;
  if (grid.uniform) {
    double guess = (v - x[0]) * grid.inv_step;
    j = guess <= 0.0 ? 0 : std::min(static_cast<size_t>(guess), n - 2);
    while (j > 0 && x[j] > v) --j;
    while (j + 2 < n && x[j + 1] <= v) ++j;
  } else {
    j = static_cast<size_t>(std::upper_bound(x.begin(), x.end(), v) - x.begin()) - 1;
  }
  if (x[j] == v) return y[j];
  // numpy.interp's arithmetic, so p-values match the original's bit for bit.
  const double slope = (y[j + 1] - y[j]) / (x[j + 1] - x[j]);
  double result = slope * (v - x[j]) + y[j];
  if (std::isnan(result)) {
    result = slope * (v - x[j + 1]) + y[j + 1];
    if (std::isnan(result) && y[j] == y[j + 1]) result = y[j];
  }
  return result;
}

Calibration Calibration::parse(std::string_view json_text, std::string_view source) {
  const std::string where = cat("calibration ", source);
  // Syntax errors, NaN / Infinity (which Python writes), numbers beyond the double range and
  // duplicate keys are reported with the key path by parse_json.
  const nlohmann::json doc = parse_json(json_text, where);
  if (!doc.is_object()) fail(where, ": the top level is not a JSON object");
  auto format = doc.find("format");
  if (format == doc.end())
    fail(where, ": missing key \"format\" (expected \"", kCalibrationFormat, "\")");
  if (!format->is_string() || format->get<std::string>() != kCalibrationFormat) {
    fail(where, ": \"format\" is ", format->dump(), ", expected \"", kCalibrationFormat, "\"");
  }
  Calibration out;
  for (const char* key : {"model", "description"}) {
    auto it = doc.find(key);
    if (it == doc.end()) continue;
    if (!it->is_string()) fail(where, ": \"", key, "\" is not a string");
    (std::string(key) == "model" ? out.model : out.description) = it->get<std::string>();
  }
  auto layers = doc.find("layers");
  if (layers == doc.end()) fail(where, ": missing key \"layers\"");
  if (!layers->is_array()) fail(where, ": \"layers\" is not an array");
  if (layers->empty()) fail(where, ": \"layers\" is empty");
  for (size_t i = 0; i < layers->size(); ++i) {
    const auto& entry = (*layers)[i];
    std::string at = cat(where, ": layers[", i, "]");
    if (!entry.is_object()) fail(at, " is not an object");
    auto id = entry.find("layer");
    if (id == entry.end()) fail(at, ": missing key \"layer\"");
    if (!id->is_number_integer()) fail(at, ": \"layer\" is not an integer (", id->dump(), ")");
    // Compared before any narrowing: get<int>() would wrap 2^32 to layer 0.
    if (!id->is_number_unsigned()) fail(at, ": \"layer\" is negative (", id->dump(), ")");
    if (id->get<uint64_t>() > uint64_t{kMaxCalibrationLayer}) {
      fail(at, ": \"layer\" ", id->dump(), " is beyond the limit of ", kMaxCalibrationLayer,
           " (no model has that many layers)");
    }
    const int layer = static_cast<int>(id->get<uint64_t>());
    at = cat(where, ": layer ", layer);
    if (out.has_layer(layer)) fail(at, ": given more than once");
    std::vector<double> x = number_array(entry, "x", at);
    std::vector<double> cdf = number_array(entry, "cdf", at);
    validate_grid(x, cdf, at);
    out.set_layer(layer, std::move(x), std::move(cdf));
    if (entry.contains("entropy_quantiles")) {
      std::vector<double> q = number_array(entry, "entropy_quantiles", at);
      try {
        out.set_entropy_quantiles(layer, std::move(q));
      } catch (const Error& e) {
        fail(where, ": ", e.what());
      }
    }
  }
  return out;
}

Calibration Calibration::load(const std::filesystem::path& path) {
  return parse(read_regular_file(path), path.string());
}

std::string Calibration::to_json() const {
  nlohmann::json doc;
  doc["format"] = kCalibrationFormat;
  doc["model"] = model;
  doc["description"] = description;
  nlohmann::json layers = nlohmann::json::array();
  for (const auto& [id, grid] : grids_) {
    nlohmann::json entry = {{"layer", id}, {"x", grid.x}, {"cdf", grid.cdf}};
    auto q = entropy_.find(id);
    if (q != entropy_.end()) entry["entropy_quantiles"] = q->second;
    layers.push_back(std::move(entry));
  }
  doc["layers"] = std::move(layers);
  return doc.dump() + "\n";
}

void Calibration::save(const std::filesystem::path& path) const {
  write_file_atomic(path, to_json());
}

namespace {

double normal_cdf(double z) {
  return 0.5 * std::erfc(-z * 0.70710678118654752440);
}

// Running maximum and clamp into [0, 1]: rounding must not leave a decreasing step.
void make_monotone(std::vector<double>& cdf) {
  double running = 0.0;
  for (double& v : cdf) {
    v = std::clamp(v, 0.0, 1.0);
    running = std::max(running, v);
    v = running;
  }
}

CalibrationGrid fit_ecdf(std::vector<double> sorted, int grid_points) {
  const size_t n = sorted.size();
  std::vector<double> values;
  std::vector<double> fractions;
  for (size_t i = 0; i < n; ++i) {
    if (i + 1 < n && sorted[i + 1] == sorted[i])
      continue;  // the last of equal values counts them all
    values.push_back(sorted[i]);
    fractions.push_back(static_cast<double>(i + 1) / static_cast<double>(n));
  }
  if (values.size() < 2)
    fail("calibration fit (ecdf): the samples have fewer than 2 distinct values");
  CalibrationGrid grid;
  const size_t d = values.size();
  const size_t g = static_cast<size_t>(grid_points);
  if (d <= g) {
    grid.x = std::move(values);
    grid.cdf = std::move(fractions);
  } else {
    for (size_t j = 0; j < g; ++j) {
      size_t idx = static_cast<size_t>(std::llround(
          static_cast<double>(j) * static_cast<double>(d - 1) / static_cast<double>(g - 1)));
      grid.x.push_back(values[idx]);
      grid.cdf.push_back(fractions[idx]);
    }
  }
  return grid;
}

}  // namespace

CalibrationGrid fit_kde_grid(std::span<const float> samples, int grid_points, bool binned) {
  const size_t n = samples.size();
  if (n < 2) fail("calibration fit (kde): need at least 2 samples, got ", n);
  double mean = 0.0;
  double lo = samples[0];
  double hi = samples[0];
  for (float s : samples) {
    mean += s;
    lo = std::min(lo, static_cast<double>(s));
    hi = std::max(hi, static_cast<double>(s));
  }
  mean /= static_cast<double>(n);
  double ss = 0.0;
  for (float s : samples) ss += (s - mean) * (s - mean);
  const double sd = std::sqrt(ss / static_cast<double>(n - 1));
  if (!(sd > 0.0))
    fail("calibration fit (kde): all ", n, " samples are equal (no spread to smooth)");
  const double h = sd * std::pow(static_cast<double>(n), -0.2);  // Scott's rule, one dimension
  const double x0 = lo - 5.0 * h;
  const double x1 = hi + 5.0 * h;
  const int g = grid_points;
  CalibrationGrid grid;
  grid.x.resize(g);
  grid.cdf.assign(g, 0.0);
  for (int i = 0; i < g; ++i) grid.x[i] = x0 + (x1 - x0) * static_cast<double>(i) / (g - 1);
  grid.x[g - 1] = x1;
  const double inv_h = 1.0 / h;

  if (!binned) {
    for (int i = 0; i < g; ++i) {
      double acc = 0.0;
      for (float s : samples) acc += normal_cdf((grid.x[i] - s) * inv_h);
      grid.cdf[i] = acc / static_cast<double>(n);
    }
  } else {
    // Linear binning onto bins h/32 apart (at most 2^22 bins), then for each grid point the exact
    // kernel CDF of every bin within 8h, plus all the weight further left.
    const double want = h / 32.0;
    const int64_t bins =
        std::min<int64_t>(int64_t{1} << 22, static_cast<int64_t>(std::ceil((x1 - x0) / want)) + 1);
    const double dx = (x1 - x0) / static_cast<double>(bins - 1);
    std::vector<double> weight(static_cast<size_t>(bins), 0.0);
    for (float s : samples) {
      double u = (s - x0) / dx;
      int64_t j = std::clamp<int64_t>(static_cast<int64_t>(u), 0, bins - 2);
      double frac = std::clamp(u - static_cast<double>(j), 0.0, 1.0);
      weight[j] += 1.0 - frac;
      weight[j + 1] += frac;
    }
    std::vector<double> prefix(static_cast<size_t>(bins) + 1, 0.0);  // prefix[b] = sum weight[0..b)
    for (int64_t b = 0; b < bins; ++b) prefix[b + 1] = prefix[b] + weight[b];
    const double reach = 8.0 * h;
    for (int i = 0; i < g; ++i) {
      const double xi = grid.x[i];
      int64_t first =
          std::clamp<int64_t>(static_cast<int64_t>(std::ceil((xi - reach - x0) / dx)), 0, bins);
      int64_t last = std::clamp<int64_t>(static_cast<int64_t>(std::floor((xi + reach - x0) / dx)),
                                         -1, bins - 1);
      double acc = prefix[first];
      for (int64_t b = first; b <= last; ++b) {
        if (weight[b] != 0.0)
          acc += weight[b] * normal_cdf((xi - (x0 + dx * static_cast<double>(b))) * inv_h);
      }
      grid.cdf[i] = acc / static_cast<double>(n);
    }
  }
  make_monotone(grid.cdf);
  return grid;
}

CalibrationGrid fit_calibration_grid(std::span<const float> samples, FitMethod method,
                                     int grid_points) {
  if (grid_points < 2) fail("calibration fit: grid_points ", grid_points, " must be >= 2");
  for (size_t i = 0; i < samples.size(); ++i) {
    if (!std::isfinite(samples[i])) {
      fail("calibration fit: sample ", i, " is not finite (", samples[i], ")");
    }
  }
  if (method == FitMethod::kEcdf) {
    if (samples.size() < 2)
      fail("calibration fit (ecdf): need at least 2 samples, got ", samples.size());
    std::vector<double> sorted(samples.begin(), samples.end());
    std::sort(sorted.begin(), sorted.end());
    return fit_ecdf(std::move(sorted), grid_points);
  }
  // Exact sums are affordable for small pools; large ones are binned (error far below 1e-4).
  const bool binned = static_cast<double>(samples.size()) * grid_points > 2e7;
  return fit_kde_grid(samples, grid_points, binned);
}

Calibration fit_calibration(const std::map<int, std::vector<float>>& samples_by_layer,
                            FitMethod method, int grid_points, int num_experts) {
  Calibration out;
  for (const auto& [layer, samples] : samples_by_layer) {
    CalibrationGrid grid;
    std::vector<double> quantiles;
    try {
      grid = fit_calibration_grid(samples, method, grid_points);
      if (num_experts > 0) quantiles = entropy_quantiles(samples, num_experts);
    } catch (const Error& e) {
      fail("layer ", layer, ": ", e.what());
    }
    out.set_layer(layer, std::move(grid.x), std::move(grid.cdf));
    if (num_experts > 0) out.set_entropy_quantiles(layer, std::move(quantiles));
  }
  out.description =
      cat("Per-layer CDF of raw router logits (all experts pooled), ",
          method == FitMethod::kKde ? "Gaussian KDE with Scott bandwidth" : "empirical CDF",
          ", on up to ", grid_points, " points",
          num_experts > 0
              ? cat("; router softmax entropy quantiles over the tokens (N=", num_experts, ")")
              : std::string(),
          ".");
  return out;
}

}  // namespace bhmoe::routing
