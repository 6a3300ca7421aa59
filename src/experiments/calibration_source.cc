#include "experiments/calibration_source.h"

#include <algorithm>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "model/verbs.h"
#include "util/error.h"
#include "util/file.h"

namespace bhmoe::experiments {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr int kCalibrationWindow = 512;
constexpr int64_t kCalibrationMaxTokens = 4096;

ResolvedCalibration fit_and_cache(const std::shared_ptr<const model::Model>& model,
                                  kernels::ThreadPool* pool, const fs::path& text_path,
                                  const std::string& method_name, const fs::path& out_dir,
                                  const json& model_id, std::string source) {
  std::string text = read_file(text_path);
  std::string key =
      fnv1a_hex(text + "|" + model_id.value("fingerprint", "") + "|" + method_name + "|" +
                std::to_string(kCalibrationWindow) + "|" + std::to_string(kCalibrationMaxTokens));
  fs::path cache = out_dir / ("calibration-" + key + ".json");
  ResolvedCalibration r;
  if (!fs::exists(cache)) {
    routing::FitMethod method = routing::parse_fit_method(method_name);
    std::vector<int32_t> ids = model->tokenizer().encode(text);
    if (ids.size() < 2)
      fail("calibration text ", text_path.string(), " encodes to fewer than 2 tokens");
    if (static_cast<int64_t>(ids.size()) > kCalibrationMaxTokens) ids.resize(kCalibrationMaxTokens);
    model::Session session(model, nullptr, pool, kCalibrationWindow);
    const std::map<int, std::vector<float>> samples =
        model::collect_router_logits(session, ids, kCalibrationWindow);
    routing::Calibration fitted =
        routing::fit_calibration(samples, method, 10000, model->config().num_experts);
    fitted.model = model_id.value("name", "");
    fitted.description =
        cat(routing::fit_method_name(method),
            " fit of raw router logits under native routing over ", ids.size(), " tokens of ",
            text_path.string(), " (windows of ", kCalibrationWindow, " tokens), made by bhmoe run");
    fitted.save(cache);
  }
  auto calibration = std::make_shared<routing::Calibration>(routing::Calibration::load(cache));
  r.calibration = calibration;
  r.path = cache.string();
  // The cache's file name only: shards and resumed runs of one definition share the identity
  // whatever folder they write to.
  r.identity = {{"source", std::move(source)},
                {"path", cache.filename().string() + " (in the output folder)"},
                {"text", fs::absolute(text_path).lexically_normal().string()},
                {"method", method_name},
                {"fingerprint", fnv1a_hex(read_file(cache))},
                {"description", calibration->description}};
  return r;
}

ResolvedCalibration load_calibration_file(const fs::path& path, std::string source) {
  ResolvedCalibration r;
  auto calibration = std::make_shared<routing::Calibration>(routing::Calibration::load(path));
  r.calibration = calibration;
  r.path = path.string();
  r.identity = {{"source", std::move(source)},
                {"path", fs::absolute(path).lexically_normal().string()},
                {"method", "file"},
                {"fingerprint", fnv1a_hex(read_file(path))},
                {"description", calibration->description}};
  return r;
}

}  // namespace

ResolvedCalibration resolve_calibration(const RunOptions& o, const Experiment& e,
                                        const std::shared_ptr<const model::Model>& model,
                                        kernels::ThreadPool* pool, const json& model_id) {
  if (!o.calibration.empty()) return load_calibration_file(o.calibration, "--calibration");
  if (!e.calibration.file.empty())
    return load_calibration_file(e.calibration.file, "experiment file");
  if (!o.calibration_text.empty()) {
    return fit_and_cache(model, pool, o.calibration_text, e.calibration.method, o.out_dir, model_id,
                         "fitted from --calibration-text (cached)");
  }
  if (!e.calibration.text.empty()) {
    return fit_and_cache(model, pool, e.calibration.text, e.calibration.method, o.out_dir, model_id,
                         "fitted from the experiment's calibration text (cached)");
  }
  fs::path dir = model->dir();
  if (fs::is_regular_file(dir)) {
    fail("the experiment has BH configs that need a calibration: pass --calibration FILE or "
         "--calibration-text TEXT (a GGUF file, ", dir.string(), ", carries none)");
  }
  if (fs::is_regular_file(dir / "calibration.json")) {
    return load_calibration_file(dir / "calibration.json", "shipped with the model");
  }
  if (fs::is_regular_file(dir / "calibration.txt")) {
    return fit_and_cache(model, pool, dir / "calibration.txt", e.calibration.method, o.out_dir,
                         model_id, "fitted from the model's calibration.txt (cached)");
  }
  fail(
      "the experiment has BH configs that need a calibration, and none was found: pass "
      "--calibration "
      "FILE or --calibration-text TEXT (model folder ",
      dir.string(), " has no calibration.json or calibration.txt)");
}

}  // namespace bhmoe::experiments
