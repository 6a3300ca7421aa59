// Fuzzes Calibration::parse. A calibration that loads must give CDF values in [0, 1], survive
// check_covers_model, and its to_json text must parse back to the same grids.
#include <cmath>

#include "fuzz/fuzz_common.h"
#include "routing/calibration.h"

using namespace bhmoe;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  routing::Calibration c;
  try {
    c = routing::Calibration::parse(text, "calibration.json");
  } catch (const Error& e) {
    fuzz::check_message(e, text);
    return 0;
  }
  for (int layer : c.layers()) {
    if (layer < 0 || layer > routing::kMaxCalibrationLayer) fuzz::crash("layer id", "");
    const routing::CalibrationGrid& g = c.grid(layer);
    for (double x : {g.x.front() - 1, g.x.front(), 0.5 * (g.x.front() + g.x.back()), g.x.back(),
                     g.x.back() + 1, 0.0, -1e300, 1e300}) {
      double p = c.cdf(layer, x);
      if (!(p >= 0.0 && p <= 1.0)) fuzz::crash("cdf outside [0, 1]", "");
    }
  }
  try {
    c.check_covers_model(static_cast<int>(c.layers().back()) + 1, "calibration.json");
  } catch (const Error& e) {
    fuzz::check_message(e, text);
  }
  routing::Calibration back = routing::Calibration::parse(c.to_json(), "round trip");
  if (back.layers() != c.layers()) fuzz::crash("round trip layers", "");
  for (int layer : c.layers()) {
    if (back.grid(layer).x != c.grid(layer).x || back.grid(layer).cdf != c.grid(layer).cdf)
      fuzz::crash("round trip grid", "");
  }
  return 0;
}
