// bhmoe._core: the routing library and the engine for Python (pybind11 + NumPy).
//
// A frontend like the CLI: it converts arrays and arguments, then calls the library's verbs and keeps
// no copy of them. bhmoe::Error becomes ValueError with the library's message; compute runs with the
// GIL released. Arrays are taken without copies where the layout allows (C-contiguous float32);
// float16 and bfloat16 (as uint16) logits are widened once.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "experiments/runner.h"
#include "kernels/thread_pool.h"
#include "model/engine.h"
#include "model/verbs.h"
#include "routing/adaptive.h"
#include "routing/bh.h"
#include "routing/calibration.h"
#include "routing/router_ops.h"
#include "routing/router.h"
#include "routing/spec.h"
#include "util/error.h"
#include "util/simd.h"

namespace py = pybind11;
using namespace bhmoe;

namespace {

// float32 view of a logits array: the array itself when it is C-contiguous float32, else a widened
// copy (float16; uint16 is read as bfloat16, NumPy having no bfloat16 dtype).
py::array_t<float, py::array::c_style> as_float32(const py::array& a, const char* what) {
  const py::dtype dt = a.dtype();
  if (dt.is(py::dtype::of<float>()) || dt.is(py::dtype::of<double>()) || dt.kind() == 'f') {
    if (dt.itemsize() == 2 || dt.itemsize() == 4 || dt.itemsize() == 8) {
      return py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(a);
    }
  }
  if (dt.is(py::dtype::of<uint16_t>())) {
    py::array_t<uint16_t, py::array::c_style> bits =
        py::array_t<uint16_t, py::array::c_style | py::array::forcecast>::ensure(a);
    py::array_t<float> out(std::vector<py::ssize_t>(a.shape(), a.shape() + a.ndim()));
    const uint16_t* src = bits.data();
    float* dst = out.mutable_data();
    for (py::ssize_t i = 0; i < bits.size(); ++i) {
      const uint32_t wide = static_cast<uint32_t>(src[i]) << 16;
      std::memcpy(dst + i, &wide, sizeof wide);
    }
    return out;
  }
  throw py::type_error(std::string(what) + ": expected float32, float64, float16 or bfloat16 bits as uint16, got " +
                       std::string(py::str(py::handle(dt))));
}

std::shared_ptr<const routing::Calibration> to_calibration(const py::object& obj) {
  if (obj.is_none()) return nullptr;
  if (py::isinstance<routing::Calibration>(obj)) {
    return std::make_shared<routing::Calibration>(obj.cast<routing::Calibration>());
  }
  if (py::isinstance<py::str>(obj) || py::hasattr(obj, "__fspath__")) {
    const std::string path = py::str(py::module_::import("os").attr("fspath")(obj));
    return std::make_shared<routing::Calibration>(routing::Calibration::load(path));
  }
  throw py::type_error("calibration: expected None, a path or a bhmoe.Calibration");
}

routing::RouterSpec to_spec(const py::object& obj) {
  if (py::isinstance<routing::RouterSpec>(obj)) return obj.cast<routing::RouterSpec>();
  return routing::parse_router_spec(obj.cast<std::string>());
}

// A router for any N: the library's router is built per number of experts on first use.
class PyRouter {
 public:
  PyRouter(const py::object& spec, const py::object& calibration)
      : spec_(to_spec(spec)), calibration_(to_calibration(calibration)) {
    routing::validate_router_spec(spec_);
    if (spec_.uses_calibration() && !calibration_) {
      throw Error("router spec \"" + routing::canonical_spec(spec_) +
                  (spec_.rule == routing::RuleKind::kEntropy ? "\": needs a calibration with entropy quantiles"
                                                             : "\": pvalues=calibrated needs a calibration"));
    }
  }

  py::tuple route(const py::array& logits_in, int layer) {
    py::array_t<float, py::array::c_style> logits = as_float32(logits_in, "route: logits");
    if (logits.ndim() != 2 && logits.ndim() != 3) {
      throw Error("route: logits must be [T, N] or [B, S, N], got " + std::to_string(logits.ndim()) + " dimensions");
    }
    const int n = static_cast<int>(logits.shape(logits.ndim() - 1));
    const routing::Router& router = for_experts(n);
    const int64_t tokens = n > 0 ? logits.size() / n : 0;
    const int k = router.max_count();
    std::vector<py::ssize_t> shape(logits.shape(), logits.shape() + logits.ndim() - 1);
    std::vector<py::ssize_t> wide = shape;
    wide.push_back(k);
    py::array_t<int32_t> ids(wide);
    py::array_t<float> weights(wide);
    py::array_t<int32_t> counts(shape);
    {
      py::gil_scoped_release release;
      router.route_batch(logits.data(), tokens, layer, ids.mutable_data(), weights.mutable_data(),
                         counts.mutable_data());
    }
    return py::make_tuple(ids, weights, counts);
  }

  std::string spec() const { return routing::canonical_spec(spec_); }

 private:
  const routing::Router& for_experts(int n) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = routers_.find(n);
    if (it == routers_.end()) {
      it = routers_.emplace(n, routing::make_router(spec_, n, calibration_)).first;
    }
    return *it->second;
  }

  routing::RouterSpec spec_;
  std::shared_ptr<const routing::Calibration> calibration_;
  std::mutex mutex_;
  std::map<int, std::unique_ptr<routing::Router>> routers_;
};

// Calls a Python function at every routing decision: fn(layer, position, logits, ids, weights) with
// read-only NumPy views that are valid only during the call. The engine runs without the GIL, so
// the observer takes it for each call. An exception raised by fn stops the forward pass and is
// re-raised to the caller by rethrow_if_failed().
class PyObserver final : public model::RouterObserver {
 public:
  explicit PyObserver(py::object fn) : fn_(std::move(fn)) {}

  void on_route(const model::RouterEvent& e) override {
    py::gil_scoped_acquire acquire;
    try {
      fn_(e.layer, e.position, view(e.logits, e.num_experts), view(e.ids, e.count),
          view(e.weights, e.count));
    } catch (py::error_already_set& err) {
      error_ = std::make_unique<py::error_already_set>(std::move(err));
      throw Error("the router observer raised an exception");
    }
  }

  // Call with the GIL held, after the forward pass returned or threw.
  void rethrow_if_failed() {
    if (error_) {
      std::unique_ptr<py::error_already_set> err = std::move(error_);
      throw std::move(*err);
    }
  }

 private:
  template <typename T>
  static py::array view(const T* data, int n) {
    // A base object keeps pybind11 from copying; the view is read-only since the engine reuses
    // the memory for the next token.
    py::array_t<T> a({static_cast<py::ssize_t>(n)}, {static_cast<py::ssize_t>(sizeof(T))}, data, py::none());
    a.attr("flags").attr("writeable") = false;
    return a;
  }

  py::object fn_;
  std::unique_ptr<py::error_already_set> error_;
};

// Runs `forward` with the GIL released and `observer` (None: none) set on `session`.
template <typename F>
void run_observed(model::Session& session, const py::object& observer, F&& forward) {
  std::optional<PyObserver> obs;
  if (!observer.is_none()) {
    if (!PyCallable_Check(observer.ptr())) throw py::type_error("observer: expected a callable or None");
    obs.emplace(observer);
    session.set_observer(&*obs);
  }
  try {
    py::gil_scoped_release release;
    forward();
  } catch (const Error&) {
    session.set_observer(nullptr);
    if (obs) obs->rethrow_if_failed();
    throw;
  }
  session.set_observer(nullptr);
}

// A loaded model with its thread pool; close() releases both (the mapping included).
class PyModel {
 public:
  PyModel(const std::string& path, const std::string& weights, int threads) {
    model::ModelOptions options;
    options.weights = weights;
    {
      py::gil_scoped_release release;
      model_ = model::Model::load(path, options);
      pool_ = std::make_unique<kernels::ThreadPool>(threads);
    }
  }

  void close() {
    pool_.reset();
    model_.reset();
  }

  const model::Model& model() const {
    if (!model_) throw Error("model is closed");
    return *model_;
  }

  std::vector<int32_t> tokenize(const std::string& text) const { return model().tokenizer().encode(text); }

  // Tokens are bytes: a few ids can end inside a multi-byte character, so invalid UTF-8 becomes
  // U+FFFD instead of an exception (as bytes.decode(errors="replace") does).
  py::str detokenize(const std::vector<int32_t>& ids) const {
    const std::string bytes = model().tokenizer().decode(ids);
    PyObject* text = PyUnicode_DecodeUTF8(bytes.data(), static_cast<Py_ssize_t>(bytes.size()), "replace");
    if (!text) throw py::error_already_set();
    return py::reinterpret_steal<py::str>(text);
  }

  // float32 [T, V] logits of one prefill of ids under a router spec (None: native).
  py::array_t<float> logits(const std::vector<int32_t>& ids, const py::object& router,
                            const py::object& calibration, const py::object& observer) {
    model();
    if (ids.empty()) throw Error("logits: ids is empty");
    auto r = make_router(router, calibration);
    const int64_t V = model_->config().vocab_size;
    py::array_t<float> out({static_cast<py::ssize_t>(ids.size()), static_cast<py::ssize_t>(V)});
    float* dst = out.mutable_data();
    model::Session session(model_, r.get(), pool_.get(), static_cast<int64_t>(ids.size()));
    run_observed(session, observer, [&] { session.prefill(ids, dst); });
    return out;
  }

  // Every routing decision for ids (a list or a text), in windows of `window` tokens from an empty
  // cache: tokens [T], ids/weights [T, L, max_k] (padded with -1 / 0), counts [T, L], and with
  // router_logits=True the raw logits [T, L, N]; the same arrays as `bhmoe trace`.
  py::dict trace(const py::object& input, const py::object& router, const py::object& calibration,
                 bool router_logits, int64_t window) {
    model();
    const std::vector<int32_t> ids = py::isinstance<py::str>(input) ? tokenize(input.cast<std::string>())
                                                                    : input.cast<std::vector<int32_t>>();
    if (ids.empty()) throw Error("trace: no tokens");
    if (window < 1) throw Error("trace: window " + std::to_string(window) + " is below 1");
    window = std::min<int64_t>({window, static_cast<int64_t>(ids.size()),
                                static_cast<int64_t>(model_->config().max_position_embeddings)});
    auto r = make_router(router, calibration);
    model::Trace t;
    std::string spec;
    {
      py::gil_scoped_release release;
      model::Session session(model_, r.get(), pool_.get(), window);
      t = model::trace_routing(session, ids, window, router_logits);
      spec = session.router().spec();
    }
    const py::ssize_t T = t.num_tokens, L = t.num_layers, K = t.max_k, N = t.num_experts;
    py::dict d;
    d["tokens"] = py::array_t<int32_t>({T}, t.tokens.data());
    d["ids"] = py::array_t<int32_t>({T, L, K}, t.ids.data());
    d["weights"] = py::array_t<float>({T, L, K}, t.weights.data());
    d["counts"] = py::array_t<int32_t>({T, L}, t.counts.data());
    if (router_logits) d["router_logits"] = py::array_t<float>({T, L, N}, t.router_logits.data());
    d["router"] = spec;
    return d;
  }

  py::dict generate(const py::object& prompt, int max_new_tokens, float temperature, float top_p, uint64_t seed,
                    const py::object& router, const py::object& calibration, const py::object& observer) {
    model();
    std::vector<int32_t> ids = py::isinstance<py::str>(prompt) ? tokenize(prompt.cast<std::string>())
                                                               : prompt.cast<std::vector<int32_t>>();
    if (ids.empty()) throw Error("generate: the prompt is empty");
    if (max_new_tokens < 0) throw Error("generate: max_new_tokens " + std::to_string(max_new_tokens) + " is negative");
    auto r = make_router(router, calibration);
    model::GenerateOptions options;
    options.max_new_tokens = max_new_tokens;
    options.temperature = temperature;
    options.top_p = top_p;
    options.seed = seed;
    model::GenerateResult result;
    model::Session session(model_, r.get(), pool_.get(),
                           static_cast<int64_t>(ids.size()) + max_new_tokens);
    run_observed(session, observer, [&] { result = model::generate(session, ids, options); });
    py::dict d;
    d["tokens"] = result.tokens;
    d["text"] = detokenize(result.tokens);
    d["stopped_at_eos"] = result.stopped_at_eos;
    d["prefill_seconds"] = result.prefill_seconds;
    d["decode_seconds"] = result.decode_seconds;
    return d;
  }

  // Token-weighted NLL over consecutive windows of `window` tokens, each from an empty cache.
  py::dict score(const std::string& text, const py::object& router, const py::object& calibration,
                 int64_t window, const py::object& observer) {
    model();
    const std::vector<int32_t> ids = tokenize(text);
    if (ids.size() < 2) throw Error("score: the text has fewer than 2 tokens");
    if (window < 2) throw Error("score: window " + std::to_string(window) + " is below 2");
    auto r = make_router(router, calibration);
    double nll_sum = 0;
    int64_t predicted = 0;
    std::vector<double> per_layer;
    model::Session session(model_, r.get(), pool_.get(), window);
    run_observed(session, observer, [&] {
      const model::ScoreTotals totals = model::total_score(model::score_windows(session, ids, window));
      nll_sum = totals.nll_sum;
      predicted = totals.predicted;
    });
    const double routed = static_cast<double>(session.routed_tokens());
    for (int64_t s : session.selected_experts_per_layer()) per_layer.push_back(routed > 0 ? s / routed : 0.0);
    py::dict d;
    d["tokens"] = predicted;
    d["nll"] = nll_sum / static_cast<double>(predicted);
    d["perplexity"] = std::exp(nll_sum / static_cast<double>(predicted));
    double mean = 0;
    for (double v : per_layer) mean += v;
    d["mean_experts"] = per_layer.empty() ? 0.0 : mean / static_cast<double>(per_layer.size());
    d["per_layer_mean_experts"] = per_layer;
    return d;
  }

  py::dict config() const {
    const model::ModelConfig& c = model().config();
    py::dict d;
    d["model_type"] = c.model_type;
    d["native_router"] = c.native_router_spec();
    d["num_hidden_layers"] = c.num_layers;
    // The layers with a router: what traces, calibrations and per-layer statistics count
    // (DeepSeek-V2 leaves out its leading dense layers; every other family routes in every layer).
    d["num_routed_layers"] = c.num_routed_layers();
    d["num_experts"] = c.num_experts;
    d["num_experts_per_tok"] = c.num_experts_per_tok;
    d["hidden_size"] = c.hidden_size;
    d["vocab_size"] = c.vocab_size;
    d["weights"] = model_->weights_kind();
    return d;
  }

 private:
  std::unique_ptr<routing::Router> make_router(const py::object& router, const py::object& calibration) {
    if (router.is_none()) return nullptr;
    auto loaded = to_calibration(calibration);
    // A calibration given as a path is named by it in messages.
    const std::string source =
        calibration.is_none() || py::isinstance<routing::Calibration>(calibration)
            ? std::string("(a bhmoe.Calibration)")
            : std::string(py::str(py::module_::import("os").attr("fspath")(calibration)));
    return model::make_model_router(model_->config(), to_spec(router), std::move(loaded), source);
  }

  std::shared_ptr<const model::Model> model_;
  std::unique_ptr<kernels::ThreadPool> pool_;
};

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "bhmoe's C++ routing library and engine (see the bhmoe package)";
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const Error& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    }
  });

  py::class_<routing::RouterSpec>(m, "RouterSpec")
      .def_property_readonly("rule", [](const routing::RouterSpec& s) { return routing::rule_name(s.rule); },
                             "topk, bh, topp, skip, threshold, hc or entropy")
      .def_readonly("k", &routing::RouterSpec::k)
      .def_readonly("alpha", &routing::RouterSpec::alpha)
      .def_readonly("p", &routing::RouterSpec::p)
      .def_readonly("beta", &routing::RouterSpec::beta)
      .def_readonly("tau", &routing::RouterSpec::tau)
      .def_readonly("alpha0", &routing::RouterSpec::alpha0)
      .def_readonly("ks", &routing::RouterSpec::ks)
      .def_readonly("min_k", &routing::RouterSpec::min_k)
      .def_readonly("max_k", &routing::RouterSpec::max_k)
      .def_readonly("temperature", &routing::RouterSpec::temperature)
      .def_readonly("renorm", &routing::RouterSpec::renorm)
      .def_property_readonly("pvalues", [](const routing::RouterSpec& s) {
        return s.pvalues == routing::PValueKind::kCalibrated ? "calibrated" : "one-minus-prob";
      })
      .def_property_readonly("uses_calibration", &routing::RouterSpec::uses_calibration)
      .def("max_count", [](const routing::RouterSpec& s) { return routing::max_count(s); },
           "Columns of the ids/weights arrays a router of this spec fills.")
      .def("__str__", [](const routing::RouterSpec& s) { return routing::canonical_spec(s); })
      .def("__repr__", [](const routing::RouterSpec& s) { return "RouterSpec('" + routing::canonical_spec(s) + "')"; });
  m.def("simd_level", [] { return std::string(simd_level_name(simd_level())); },
        "The SIMD level the kernels and routers run at now: scalar, avx2, avx512 or avx512bf16.");
  m.def("detected_simd_level", [] { return std::string(simd_level_name(detected_simd_level())); },
        "The best level this CPU supports (capped by the BHMOE_SIMD environment variable).");
  m.def("set_simd_level", [](const std::string& name) {
        for (SimdLevel level : {SimdLevel::Scalar, SimdLevel::Avx2, SimdLevel::Avx512,
                                SimdLevel::Avx512Bf16}) {
          if (name == simd_level_name(level)) return set_simd_level(level);
        }
        fail("SIMD level \"", name, "\": expected scalar, avx2, avx512 or avx512bf16");
      }, py::arg("level"),
        "Lowers (or restores) the SIMD level for this process, e.g. 'avx512' to keep activations "
        "fp32 on an AVX512-BF16 CPU; above detected_simd_level() is a ValueError.");
  m.def("parse_router_spec", &routing::parse_router_spec, py::arg("text"),
        "Parses and checks a router spec string (errors name the key and why).");
  m.def("resolve_router_spec", &routing::resolve_router_spec, py::arg("spec"), py::arg("num_experts"));
  m.def("canonical_spec", &routing::canonical_spec, py::arg("spec"));
  m.def("bh_critical_values", [](double alpha, int num_experts) {
    if (num_experts < 1 || num_experts > routing::kMaxExperts) {
      throw Error("bh_critical_values: num_experts " + std::to_string(num_experts) + " is outside [1, " +
                  std::to_string(routing::kMaxExperts) + "]");
    }
    std::vector<float> crit(static_cast<size_t>(num_experts));
    routing::bh_critical_values(alpha, num_experts, crit.data());
    return py::array_t<float>(crit.size(), crit.data());
  }, py::arg("alpha"), py::arg("num_experts"), "k * alpha / N for k = 1..N, in float32 as the router uses them.");

  py::class_<routing::Calibration>(m, "Calibration")
      .def_static("load", [](const py::object& path) {
        return routing::Calibration::load(py::str(py::module_::import("os").attr("fspath")(path)).cast<std::string>());
      }, py::arg("path"))
      .def("save", [](const routing::Calibration& c, const py::object& path) {
        c.save(py::str(py::module_::import("os").attr("fspath")(path)).cast<std::string>());
      }, py::arg("path"))
      .def_static("fit", [](const py::dict& logits_by_layer, const std::string& method, int grid_points,
                            std::optional<int> num_experts) {
        // N for the entropy quantiles: given, else the last axis of arrays of 2 or more dimensions
        // ([T, N], [B, S, N]); flat arrays without num_experts get no entropy quantiles.
        std::map<int, std::vector<float>> samples;
        int n = num_experts.value_or(0);
        bool rows = true;
        for (auto item : logits_by_layer) {
          const int layer = item.first.cast<int>();
          py::array_t<float, py::array::c_style> a = as_float32(item.second.cast<py::array>(), "fit: logits");
          if (!num_experts) {
            const int width = a.ndim() >= 2 ? static_cast<int>(a.shape(a.ndim() - 1)) : 0;
            if (width == 0 || (n != 0 && width != n)) rows = false;
            n = width;
          }
          samples[layer].assign(a.data(), a.data() + a.size());
        }
        if (!rows) n = 0;
        const routing::FitMethod fm = routing::parse_fit_method(method);
        py::gil_scoped_release release;
        return routing::fit_calibration(samples, fm, grid_points, n);
      }, py::arg("logits_by_layer"), py::arg("method") = "ecdf", py::arg("grid_points") = 10000,
         py::arg("num_experts") = py::none(),
         "Fits every layer's CDF grid and, when N is known (num_experts, or [..., N] arrays of one N), the "
         "layer's router entropy quantiles for the entropy rule.")
      .def("has_entropy_quantiles", &routing::Calibration::has_entropy_quantiles, py::arg("layer"))
      .def("entropy_quantiles", [](const routing::Calibration& c, int layer) {
        const std::vector<double>& q = c.entropy_quantiles(layer);
        return py::array_t<double>(q.size(), q.data());
      }, py::arg("layer"))
      .def("entropy_thresholds", [](const routing::Calibration& c, int layer, int buckets) {
        if (buckets < 1) throw Error("entropy_thresholds: buckets " + std::to_string(buckets) + " must be >= 1");
        std::vector<float> t = routing::entropy_thresholds(c.entropy_quantiles(layer), buckets);
        return py::array_t<float>(t.size(), t.data());
      }, py::arg("layer"), py::arg("buckets"),
         "float32 boundaries of `buckets` equal-mass entropy buckets: a token goes to bucket #{b : H > t[b]}.")
      .def_property_readonly("layers", &routing::Calibration::layers)
      .def_readwrite("model", &routing::Calibration::model)
      .def_readwrite("description", &routing::Calibration::description)
      .def("has_layer", &routing::Calibration::has_layer)
      .def("grid", [](const routing::Calibration& c, int layer) {
        const routing::CalibrationGrid& g = c.grid(layer);
        return py::make_tuple(py::array_t<double>(g.x.size(), g.x.data()), py::array_t<double>(g.cdf.size(), g.cdf.data()));
      }, py::arg("layer"))
      .def("pvalues", [](const routing::Calibration& c, const py::array& logits, int layer) {
        py::array_t<float, py::array::c_style> a = as_float32(logits, "pvalues: logits");
        const routing::CalibrationGrid& g = c.grid(layer);
        py::array_t<float> out(std::vector<py::ssize_t>(a.shape(), a.shape() + a.ndim()));
        const float* src = a.data();
        float* dst = out.mutable_data();
        py::gil_scoped_release release;
        for (py::ssize_t i = 0; i < a.size(); ++i) dst[i] = routing::calibrated_pvalue(g, src[i]);
        return out;
      }, py::arg("logits"), py::arg("layer"))
      .def("logit_cutoffs", [](const routing::Calibration& c, int layer, double alpha, int num_experts) {
        if (num_experts < 1 || num_experts > routing::kMaxExperts) {
          throw Error("logit_cutoffs: num_experts " + std::to_string(num_experts) + " is outside [1, " +
                      std::to_string(routing::kMaxExperts) + "]");
        }
        if (!(alpha > 0.0 && alpha < 1.0)) throw Error("logit_cutoffs: alpha is outside (0, 1)");
        std::vector<float> crit(static_cast<size_t>(num_experts));
        routing::bh_critical_values(alpha, num_experts, crit.data());
        std::vector<float> cut = routing::bh_logit_cutoffs(c.grid(layer), crit.data(), num_experts);
        return py::array_t<float>(cut.size(), cut.data());
      }, py::arg("layer"), py::arg("alpha"), py::arg("num_experts"),
         "cut[k-1]: expert i passes BH's k-th critical value exactly when logit_i >= cut[k-1].");

  m.def("router_entropy", [](const py::array& logits) {
    py::array_t<float, py::array::c_style> a = as_float32(logits, "router_entropy: logits");
    if (a.ndim() != 2) throw Error("router_entropy: logits must be [T, N]");
    const int n = static_cast<int>(a.shape(1));
    if (n < 1 || n > routing::kMaxExperts) throw Error("router_entropy: N=" + std::to_string(n) + " is outside [1, " + std::to_string(routing::kMaxExperts) + "]");
    py::array_t<float> out(a.shape(0));
    for (py::ssize_t t = 0; t < a.shape(0); ++t) {
      const float* row = a.data() + t * n;
      const int bad = routing::detail::first_non_finite(row, n);
      if (bad >= 0) throw Error("router_entropy: token " + std::to_string(t) + ": logit of expert " + std::to_string(bad) + " is not finite");
      out.mutable_data()[t] = routing::router_entropy(row, n);
    }
    return out;
  }, py::arg("logits"), "Per-token entropy (nats) of softmax(logits), the entropy rule's arithmetic, float32 [T].");

  py::class_<PyRouter>(m, "Router")
      .def(py::init<const py::object&, const py::object&>(), py::arg("spec"), py::arg("calibration") = py::none())
      .def("route", &PyRouter::route, py::arg("logits"), py::arg("layer") = 0,
           "(ids [..., max_count] int32 padded with -1, weights float32 padded with 0, counts int32)")
      .def_property_readonly("spec", &PyRouter::spec);

  m.def("run", [](const py::object& model, const std::string& experiment, const py::object& out,
                  const py::object& calibration, const py::object& calibration_text,
                  std::optional<int> max_new_tokens, const std::string& shard, int threads,
                  const std::string& weights, int64_t limit, bool report, bool quiet) {
    experiments::RunOptions o;
    auto fspath = [](const py::object& p) {
      return py::str(py::module_::import("os").attr("fspath")(p)).cast<std::string>();
    };
    o.model_dir = py::isinstance<PyModel>(model) ? model.cast<const PyModel&>().model().dir().string()
                                                 : fspath(model);
    o.out_dir = fspath(out);
    o.experiment = experiment;
    if (!calibration.is_none()) o.calibration = fspath(calibration);
    if (!calibration_text.is_none()) o.calibration_text = fspath(calibration_text);
    if (max_new_tokens) {
      if (*max_new_tokens < 1) throw Error("run: max_new_tokens must be >= 1");
      o.max_new_tokens = *max_new_tokens;
    }
    experiments::parse_shard(shard, o.shard_index, o.shard_count);
    if (threads < 0) throw Error("run: threads must be >= 0");
    o.threads = threads;
    o.weights = weights;
    o.limit = limit;
    o.report = report;
    o.progress = 0;
    o.quiet = quiet;
    experiments::RunSummary r;
    {
      py::gil_scoped_release release;
      r = experiments::run_experiments(o);
    }
    py::dict d;
    d["grid"] = r.grid;
    d["in_shard"] = r.in_shard;
    d["already"] = r.already;
    d["ran"] = r.ran;
    d["failed"] = r.failed;
    d["remaining"] = r.remaining;
    d["seconds"] = r.seconds;
    d["clamped"] = r.clamped;
    d["out"] = o.out_dir.string();
    return d;
  }, py::arg("model"), py::arg("experiment") = "seed", py::arg("out") = "out/seed",
     py::arg("calibration") = py::none(), py::arg("calibration_text") = py::none(),
     py::arg("max_new_tokens") = py::none(), py::arg("shard") = "0/1", py::arg("threads") = 0,
     py::arg("weights") = "native", py::arg("limit") = -1, py::arg("report") = true, py::arg("quiet") = true,
     "Runs an experiment as `bhmoe run` does (results.jsonl, CSVs, plots, REPORT.md under out; a re-run "
     "resumes) and returns its summary; read the rows with bhmoe.load_results(out).");

  py::class_<PyModel>(m, "Model")
      .def(py::init<const std::string&, const std::string&, int>(), py::arg("path"), py::arg("weights") = "native",
           py::arg("threads") = 0)
      .def("close", &PyModel::close)
      .def("tokenize", &PyModel::tokenize, py::arg("text"))
      .def("detokenize", &PyModel::detokenize, py::arg("ids"))
      .def("logits", &PyModel::logits, py::arg("ids"), py::arg("router") = py::none(),
           py::arg("calibration") = py::none(), py::arg("observer") = py::none(),
           "float32 [T, V] logits of one prefill; observer(layer, position, logits, ids, weights) "
           "sees every routing decision (read-only NumPy views, valid during the call)")
      .def("trace", &PyModel::trace, py::arg("ids"), py::arg("router") = py::none(),
           py::arg("calibration") = py::none(), py::arg("router_logits") = false, py::arg("window") = 512,
           "Routing decisions per token and layer: dict of tokens [T], ids and weights [T, L, max_k], "
           "counts [T, L], router_logits [T, L, N] (when asked for) and the router spec")
      .def("generate", &PyModel::generate, py::arg("prompt"), py::arg("max_new_tokens") = 50,
           py::arg("temperature") = 0.0f, py::arg("top_p") = 1.0f, py::arg("seed") = 0,
           py::arg("router") = py::none(), py::arg("calibration") = py::none(),
           py::arg("observer") = py::none())
      .def("score", &PyModel::score, py::arg("text"), py::arg("router") = py::none(),
           py::arg("calibration") = py::none(), py::arg("window") = 512, py::arg("observer") = py::none())
      .def_property_readonly("path", [](const PyModel& m) { return m.model().dir().string(); })
      .def_property_readonly("config", &PyModel::config);
}
