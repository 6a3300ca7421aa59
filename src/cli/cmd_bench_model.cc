// bhmoe bench model: prefill and decode speed of a checkpoint, decode time as a function of a
// forced k, the machine's read bandwidth and the decode bound it implies, and peak memory. One JSON
// line.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <random>

#include "cli/command.h"
#include "cli/engine_common.h"
#include "kernels/bandwidth.h"
#include "kernels/ops.h"
#include "model/sampler.h"
#include "util/file.h"
#include "util/time.h"

namespace bhmoe::cli {
namespace {

using Clock = std::chrono::steady_clock;

struct BenchOptions {
  EngineOptions engine;
  int decode_tokens = 32;
  int k_decode_tokens = 16;
  int repeats = 2;
  int64_t bandwidth_mib = 512;
  std::string record;
};

// kB fields of /proc/self/status (VmRSS, VmHWM) or /proc/self/smaps_rollup (AnonHugePages); 0
// where unavailable.
double status_mib(const std::string& key, const char* file = "/proc/self/status") {
  std::ifstream in(file);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key + ":", 0) == 0) return std::stod(line.substr(key.size() + 1)) / 1024.0;
  }
  return 0.0;
}

double matrix_bytes(const kernels::Matrix& m) {
  double bytes = static_cast<double>(m.rows) * kernels::row_bytes(m.dtype, m.cols);
  if (m.dtype == kernels::DType::Q8) bytes += m.numel() / kernels::kQ8Block * 4.0;
  return bytes;
}

// Every tensor of a layer but the routed experts (empty views, which a family or layer lacks, count
// 0 bytes).
std::vector<const kernels::Matrix*> dense_tensors(const model::LayerWeights& l) {
  return {&l.input_norm,       &l.q_proj,         &l.k_proj,           &l.v_proj,      &l.q_bias,
          &l.k_bias,           &l.v_bias,         &l.kv_a_proj,        &l.kv_a_norm,   &l.kv_b_proj,
          &l.o_proj,           &l.q_norm,         &l.k_norm,           &l.post_norm,   &l.router,
          &l.shared_gate_proj, &l.shared_up_proj, &l.shared_down_proj, &l.shared_gate, &l.mlp_gate,
          &l.mlp_up,           &l.mlp_down};
}

// Weight bytes read per decoded token when every layer runs `k` experts: attention, router,
// norms, the embedding row, lm_head, and k experts per layer.
double active_bytes_per_token(const model::Weights& w, double k) {
  double bytes = matrix_bytes(w.lm_head) + matrix_bytes(w.final_norm);
  bytes += static_cast<double>(kernels::row_bytes(w.embed.dtype, w.embed.cols));
  for (const auto& layer : w.layers) {
    for (const auto* m : dense_tensors(layer)) bytes += matrix_bytes(*m);
    if (layer.experts.empty()) continue;  // a dense layer (DeepSeek-V2's leading ones)
    const auto& e = layer.experts[0];
    bytes += k * (matrix_bytes(e.gate) + matrix_bytes(e.up) + matrix_bytes(e.down));
  }
  return bytes;
}

double total_weight_bytes(const model::Weights& w) {
  double bytes = matrix_bytes(w.embed) + matrix_bytes(w.lm_head) + matrix_bytes(w.final_norm);
  if (w.lm_head.data == w.embed.data) bytes -= matrix_bytes(w.lm_head);
  for (const auto& layer : w.layers) {
    for (const auto* m : dense_tensors(layer)) bytes += matrix_bytes(*m);
    for (const auto& e : layer.experts)
      bytes += matrix_bytes(e.gate) + matrix_bytes(e.up) + matrix_bytes(e.down);
  }
  return bytes;
}

std::vector<int32_t> bench_prompt(int64_t n, int32_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (auto& id : ids) id = static_cast<int32_t>(rng() % static_cast<uint64_t>(vocab));
  return ids;
}

// Best-of-`repeats` tokens/s of a fresh prefill of `prompt`.
double prefill_tokens_per_s(model::Session& session, const std::vector<int32_t>& prompt,
                            int repeats) {
  double best = 0;
  for (int r = 0; r < repeats; ++r) {
    session.reset();
    const auto start = Clock::now();
    session.prefill(prompt);
    best = std::max(best, prompt.size() / seconds_since(start));
  }
  return best;
}

// Mean seconds per decode step over `steps` greedy steps after a short context; routing totals of
// the decode steps only are left in the session.
double decode_seconds_per_token(model::Session& session, const std::vector<int32_t>& context,
                                int steps, int32_t vocab_limit) {
  session.reset();
  session.prefill(context);
  int32_t token = model::argmax(session.last_logits(), vocab_limit);
  for (int i = 0; i < 2; ++i) {  // warm-up: caches and the pool's workers
    session.decode(token);
    token = model::argmax(session.last_logits(), vocab_limit);
  }
  session.reset_routing_totals();
  const auto start = Clock::now();
  for (int i = 0; i < steps; ++i) {
    session.decode(token);
    token = model::argmax(session.last_logits(), vocab_limit);
  }
  return seconds_since(start) / steps;
}

CommandRegistration reg{
    "bench model",
    "Prefill/decode speed, decode ms per token by k, bandwidth bound (one JSON line)",
    [](CLI::App& app) {
      auto o = std::make_shared<BenchOptions>();
      add_engine_options(app, o->engine);
      app.add_option("--decode-tokens", o->decode_tokens,
                     "Decode steps timed for decode_tokens_per_s")
          ->check(CLI::Range(1, 100000));
      app.add_option("--k-decode-tokens", o->k_decode_tokens, "Decode steps timed per forced k")
          ->check(CLI::Range(1, 100000));
      app.add_option("--repeats", o->repeats, "Prefill runs (best is reported)")
          ->check(CLI::Range(1, 100));
      app.add_option("--bandwidth-mib", o->bandwidth_mib,
                     "Buffer for the read-bandwidth probe (0: skip)")
          ->check(CLI::Range(int64_t{0}, int64_t{1} << 20));
      app.add_option("--record", o->record,
                     "Also append the JSON line to this file (e.g. bench/model.jsonl)");
      return [o]() {
        nlohmann::json out;
        out["bench"] = "model";
        // Bandwidth first, so its buffer is gone before the weights are loaded.
        std::unique_ptr<kernels::ThreadPool> probe_pool =
            std::make_unique<kernels::ThreadPool>(o->engine.threads);
        const size_t probe_bytes = static_cast<size_t>(o->bandwidth_mib) << 20;
        const double bandwidth = o->bandwidth_mib > 0
                                     ? kernels::measure_read_bandwidth_gbs(*probe_pool, probe_bytes,
                                                                           kernels::PageSize::Huge)
                                     : 0.0;
        const double bandwidth_small_pages =
            o->bandwidth_mib > 0 ? kernels::measure_read_bandwidth_gbs(*probe_pool, probe_bytes,
                                                                       kernels::PageSize::Small)
                                 : 0.0;
        probe_pool.reset();

        const auto load_start = Clock::now();
        Engine engine = open_engine(o->engine);
        out["load_seconds"] = seconds_since(load_start);
        const model::Model& m = *engine.model;
        const model::ModelConfig& config = m.config();
        const int32_t vocab_limit =
            std::min<int32_t>(config.vocab_size, m.tokenizer().vocab_size());
        const int64_t max_tokens = 256 + o->decode_tokens + o->k_decode_tokens + 8;
        model::Session session(engine.model, engine.router.get(), engine.pool.get(), max_tokens);

        out["model"] = m.dir().string();
        out["weights"] = m.weights_kind();
        out["threads"] = engine.pool->num_threads();
        out["isa"] = kernels::isa_name(kernels::active_isa());
        out["router"] = engine.router_spec();
        out["layers"] = config.num_layers;
        out["experts"] = config.num_experts;

        const auto prompt64 = bench_prompt(64, vocab_limit, 64);
        const auto prompt256 = bench_prompt(256, vocab_limit, 256);
        prefill_tokens_per_s(session, prompt64, 1);  // warm-up: pages of the mmapped weights
        out["prefill_tokens_per_s_64"] = prefill_tokens_per_s(session, prompt64, o->repeats);
        out["prefill_tokens_per_s_256"] = prefill_tokens_per_s(session, prompt256, o->repeats);

        const auto context = bench_prompt(16, vocab_limit, 16);
        const double decode_s =
            decode_seconds_per_token(session, context, o->decode_tokens, vocab_limit);
        out["decode_tokens_per_s"] = 1.0 / decode_s;
        out["decode_ms_per_token"] = decode_s * 1e3;
        const nlohmann::json routed = routing_summary(session);
        const double mean_k = routed["mean_experts"].get<double>();
        out["decode_mean_experts"] = mean_k;

        nlohmann::json by_k = nlohmann::json::object();
        for (int k : {1, 2, 4, 8, 16}) {
          if (k > config.num_experts) continue;
          auto router = routing::make_router("topk:k=" + std::to_string(k), config.num_experts);
          session.set_router(router.get());
          by_k[std::to_string(k)] =
              decode_seconds_per_token(session, context, o->k_decode_tokens, vocab_limit) * 1e3;
        }
        session.set_router(engine.router.get());
        out["decode_ms_per_token_by_k"] = by_k;

        // Decode cost as fixed + per-expert (least squares over the forced-k runs): how close to
        // linear in k it is, which is what lets an adaptive count turn into saved time.
        {
          double n = 0, sk = 0, st = 0, skk = 0, skt = 0;
          for (const auto& [k, ms] : by_k.items()) {
            const double kk = std::stod(k), t = ms.get<double>();
            n += 1, sk += kk, st += t, skk += kk * kk, skt += kk * t;
          }
          if (n >= 2) {
            const double slope = (n * skt - sk * st) / (n * skk - sk * sk);
            const double intercept = (st - slope * sk) / n;
            double worst = 0;
            for (const auto& [k, ms] : by_k.items()) {
              const double fit = intercept + slope * std::stod(k);
              worst = std::max(worst, std::fabs(ms.get<double>() - fit) / ms.get<double>());
            }
            out["decode_ms_fixed"] = intercept;
            out["decode_ms_per_expert"] = slope;
            out["decode_ms_fit_max_relative_error"] = worst;
          }
        }

        // The router under test against fixed top-k at the same mean count: k-bar is rarely an
        // integer, so top-floor(k-bar) and top-ceil(k-bar) are timed and interpolated. The three
        // are timed in turn, `repeats` rounds, best of each, so drifting machine bandwidth hits
        // all alike.
        const routing::Router& router = session.router();
        if (router.spec().rfind("topk:", 0) != 0) {
          const double clamped = std::clamp(mean_k, 1.0, static_cast<double>(config.num_experts));
          const int k_low = static_cast<int>(std::floor(clamped));
          const int k_high = std::min(k_low + 1, config.num_experts);
          auto low = routing::make_router("topk:k=" + std::to_string(k_low), config.num_experts);
          auto high = routing::make_router("topk:k=" + std::to_string(k_high), config.num_experts);
          double adaptive_s = decode_s, low_s = 1e300, high_s = 1e300;
          for (int round = 0; round < o->repeats; ++round) {
            session.set_router(engine.router.get());
            adaptive_s = std::min(adaptive_s, decode_seconds_per_token(
                                                  session, context, o->decode_tokens, vocab_limit));
            session.set_router(low.get());
            low_s = std::min(
                low_s, decode_seconds_per_token(session, context, o->decode_tokens, vocab_limit));
            session.set_router(high.get());
            high_s = std::min(
                high_s, decode_seconds_per_token(session, context, o->decode_tokens, vocab_limit));
          }
          session.set_router(engine.router.get());
          const double frac = clamped - k_low;
          const double fixed_s = low_s + frac * (high_s - low_s);
          out["adaptive_mean_k"] = mean_k;
          out["adaptive_decode_ms_per_token"] = adaptive_s * 1e3;
          out["fixed_k_low"] = k_low;
          out["fixed_k_high"] = k_high;
          out["fixed_k_low_decode_ms_per_token"] = low_s * 1e3;
          out["fixed_k_high_decode_ms_per_token"] = high_s * 1e3;
          out["fixed_at_mean_k_decode_ms_per_token"] = fixed_s * 1e3;
          out["adaptive_over_fixed_time"] = adaptive_s / fixed_s;
        }

        const double active = active_bytes_per_token(m.weights(), mean_k);
        // The bound uses the huge-page figure (the machine's best); the zero-copy mapping has 4 KiB
        // pages, whose figure is recorded beside it.
        out["read_bandwidth_gbs"] = bandwidth;
        out["read_bandwidth_4k_pages_gbs"] = bandwidth_small_pages;
        out["active_bytes_per_token"] = active;
        out["decode_bound_tokens_per_s"] = bandwidth > 0 ? bandwidth * 1e9 / active : 0.0;
        out["decode_fraction_of_bound"] =
            bandwidth > 0 ? (1.0 / decode_s) / (bandwidth * 1e9 / active) : 0.0;
        out["weight_mib"] = total_weight_bytes(m.weights()) / (1024.0 * 1024.0);
        // Other processes' load makes every figure above noisy: recorded beside them.
        double load1 = 0;
        if (std::ifstream loadavg("/proc/loadavg"); loadavg) loadavg >> load1;
        out["load_average_1m"] = load1;
        out["peak_rss_mib"] = status_mib("VmHWM");
        out["rss_mib"] = status_mib("VmRSS");
        // How much of the weight copy (--weights bf16/q8) really got huge pages.
        out["anon_huge_pages_mib"] = status_mib("AnonHugePages", "/proc/self/smaps_rollup");
        const std::string line = out.dump();
        std::cout << line << "\n";
        if (!o->record.empty()) append_file_durable(o->record, line + "\n");
        return 0;
      };
    }};

}  // namespace
}  // namespace bhmoe::cli
