// The OLMoE forward pass (SPEC.md §1) with a pluggable router, and the switches of the other
// families (config.h).
//
// Layout of the work, per chunk of at most kMaxChunk tokens (prefill) or one token (decode):
//   attention: the q/k/v projections are one parallel loop over the concatenated output rows (each
//   weight row read once for all tokens), q/k RMSNorm over the whole projection, NeoX RoPE from
//   tables built once per session, causal attention over an fp32 KV cache allocated once for
//   max_tokens, then o_proj with the residual add fused in. DeepSeek-V2's latent attention (MLA)
//   projects q and the latent in one loop, then the latent's kv_b_proj, and caches the decompressed
//   per-head keys (qk_nope + qk_rope) and values (v_head); the attention loop is the same.
//   DeepSeek-V2's leading dense layers run a SwiGLU MLP instead of router and experts.
//   MoE: router logits, the router's decision (route_batch), then only the selected experts.
//   Decode runs all selected experts in two parallel loops (gate/up rows split across threads, then
//   down rows split across threads, each thread adding w_e * down_e into its own slice of x).
//   Prefill groups the chunk's tokens by expert and runs each expert once over its tokens (matmul),
//   so every selected expert's weights are read once per chunk.
// Every buffer is allocated in the Session constructor; prefill/decode allocate nothing.
#include "model/engine.h"

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstring>
#include <optional>

#include <unistd.h>

#include "kernels/ops.h"
#include "model/gguf_checkpoint.h"
#include "model/materialize.h"
#include "util/error.h"
#include "util/gguf.h"
#include "util/memory.h"

namespace bhmoe::model {

namespace {

using kernels::Matrix;

// The weights_kind() of native weights: kernels::dtype_name in lower case ("bf16", "f32", ...).
std::string lower_dtype_name(DType dtype) {
  std::string name = kernels::dtype_name(dtype);
  for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return name;
}

// An uninitialised float array: large ones (the KV cache) stay non-resident until touched.
template <typename T>
std::unique_ptr<T[]> raw_array(int64_t n) {
  return std::unique_ptr<T[]>(new T[static_cast<size_t>(std::max<int64_t>(n, 1))]);
}

class LoadedModel final : public Model {
 public:
  LoadedModel(std::unique_ptr<Checkpoint> checkpoint, std::unique_ptr<Tokenizer> tokenizer,
              const ModelOptions& options)
      : checkpoint_(std::move(checkpoint)), tokenizer_(std::move(tokenizer)) {
    const Weights& stored = checkpoint_->weights();
    if (options.weights == "native") {
      // The last layer always has experts (DeepSeek-V2's leading ones do not).
      kind_ = lower_dtype_name(stored.layers.empty() ? stored.lm_head.dtype
                                                     : stored.layers.back().experts[0].gate.dtype);
    } else if (options.weights == "q8") {
      materialized_ = materialize_weights(stored, DType::Q8);
      kind_ = "q8";
    } else if (options.weights == "bf16") {
      materialized_ = materialize_weights(stored, DType::BF16);
      kind_ = "bf16-copy";
    } else {
      fail("weights \"", options.weights, "\": expected native, bf16 or q8");
    }
  }

  const ModelConfig& config() const override { return checkpoint_->config(); }
  const Weights& weights() const override {
    return materialized_ ? materialized_->weights : checkpoint_->weights();
  }
  const Tokenizer& tokenizer() const override { return *tokenizer_; }
  const std::filesystem::path& dir() const override { return checkpoint_->dir(); }
  std::string weights_kind() const override { return kind_; }
  void require_weight_files_unchanged() const override {
    for (const WeightFileInfo& f : checkpoint_->weight_files())
      require_unchanged(f.path, f.identity);
  }

 private:
  std::unique_ptr<Checkpoint> checkpoint_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::optional<MaterializedWeights> materialized_;  // weights bf16 / q8
  std::string kind_;
};

}  // namespace

std::shared_ptr<const Model> Model::load(const std::filesystem::path& dir,
                                         const ModelOptions& options) {
  if (is_gguf_file(dir)) {
    GgufModel gguf = open_gguf_model(dir);
    return std::make_shared<LoadedModel>(std::move(gguf.checkpoint), std::move(gguf.tokenizer),
                                         options);
  }
  auto checkpoint = Checkpoint::open(dir);
  auto tokenizer_path = dir / "tokenizer.json";
  if (!std::filesystem::exists(tokenizer_path)) {
    fail("model directory ", dir.string(), ": no tokenizer.json");
  }
  auto tokenizer = Tokenizer::load(tokenizer_path);
  return std::make_shared<LoadedModel>(std::move(checkpoint), std::move(tokenizer), options);
}

namespace {

// The model's sizes as the forward pass uses them, checked once.
struct Dims {
  int D, F, Fs, Fd, N, H, Hkv, V, L;  // hidden, expert width, shared expert width (0: none), dense
                                      // MLP width (0: none), experts, heads, kv heads, vocabulary,
                                      // layers
  // Per head: the query/key width, the value width, the rotated part (the last rope_dim of the
  // query/key head) and the unrotated part before it (0 but for MLA).
  int hd, hd_v, rope_dim, nope;
  int Dq, Dk, Dv, Do;  // widths per token: queries H*hd, keys Hkv*hd, values Hkv*hd_v, attention
                       // output H*hd_v
  int latent, kv_b;    // MLA: kv_lora_rank, the kv_b projection H*(nope + hd_v); 0 otherwise
  int first_moe;       // the first layer with experts; routing layer = layer - first_moe
  int R;               // layers with experts
  float eps, attn_scale;

  explicit Dims(const ModelConfig& cfg)
      : D(cfg.hidden_size),
        F(cfg.intermediate_size),
        Fs(cfg.shared_expert_intermediate_size),
        Fd(cfg.first_k_dense_replace > 0 ? cfg.dense_intermediate_size : 0),
        N(cfg.num_experts),
        H(cfg.num_heads),
        Hkv(cfg.num_kv_heads > 0 ? cfg.num_kv_heads : cfg.num_heads),
        V(cfg.vocab_size),
        L(cfg.num_layers),
        hd(cfg.head_dim > 0 ? cfg.head_dim : cfg.hidden_size / cfg.num_heads),
        hd_v(cfg.v_head_dim > 0 ? cfg.v_head_dim : hd),
        rope_dim(cfg.qk_rope_head_dim > 0 ? cfg.qk_rope_head_dim : hd),
        nope(hd - rope_dim),
        Dq(H * hd),
        Dk(Hkv * hd),
        Dv(Hkv * hd_v),
        Do(H * hd_v),
        latent(cfg.mla() ? cfg.kv_lora_rank : 0),
        kv_b(cfg.mla() ? H * (nope + hd_v) : 0),
        first_moe(cfg.first_k_dense_replace),
        R(cfg.num_layers - cfg.first_k_dense_replace),
        eps(cfg.rms_norm_eps),
        attn_scale(static_cast<float>(softmax_scale(cfg, hd))) {
    if (rope_dim % 2 != 0 || rope_dim > hd)
      fail("model config: the rotated head width ", rope_dim, " must be even and at most ", hd);
    if (H % Hkv != 0)
      fail("model config: num_attention_heads not a multiple of num_key_value_heads");
    if (cfg.mla() && Hkv != H) fail("model config: latent attention needs num_key_value_heads = H");
    if (N > routing::kMaxExperts)
      fail("model config: num_experts ", N, " exceeds ", routing::kMaxExperts);
    if (R < 1 || first_moe < 0) fail("model config: no layer with experts");
  }

  // 1/sqrt(head width), times YaRN's mscale(factor, mscale_all_dim)^2 (DeepseekV2Attention).
  static double softmax_scale(const ModelConfig& cfg, int hd) {
    double scale = 1.0 / std::sqrt(static_cast<double>(hd));
    if (cfg.yarn && cfg.yarn->mscale_all_dim != 0) {
      const double m = yarn_mscale(cfg.yarn->factor, cfg.yarn->mscale_all_dim);
      scale *= m * m;
    }
    return scale;
  }
};

// The rotary frequency of pair i of `dim` rotated dims: theta^(-2i/dim), or with YaRN the blend of
// that (extrapolation) and it divided by the factor (interpolation) that
// DeepseekV2YarnRotaryEmbedding computes: the interpolated share ramps linearly from 0 at pair
// `low` to 1 at pair `high`, the correction dims of beta_fast and beta_slow full rotations within
// the original context.
double rope_inv_freq(const ModelConfig& cfg, int dim, int i) {
  const double extrapolated = std::pow(cfg.rope_theta, -2.0 * i / dim);
  if (!cfg.yarn) return extrapolated;
  const YarnScaling& y = *cfg.yarn;
  const auto correction_dim = [&](double rotations) {
    return dim * std::log(y.original_max_position_embeddings / (rotations * 2.0 * M_PI)) /
           (2.0 * std::log(cfg.rope_theta));
  };
  const double low = std::max(std::floor(correction_dim(y.beta_fast)), 0.0);
  double high = std::min(std::ceil(correction_dim(y.beta_slow)), dim - 1.0);
  if (low == high) high += 0.001;  // as the reference: no division by zero
  const double ramp = std::clamp((i - low) / (high - low), 0.0, 1.0);
  const double extrapolated_share = 1.0 - ramp;
  return extrapolated / y.factor * (1.0 - extrapolated_share) + extrapolated * extrapolated_share;
}

// Keys and values of every layer at positions < max_tokens, and the RoPE angles of those positions
// (built once: cos/sin of position * rope_inv_freq, times YaRN's cos/sin scale). With MLA the keys
// and values are the decompressed per-head ones (H * (qk_nope + qk_rope) and H * v_head floats per
// token and layer), so attention runs as for MHA: simple, at the cost of memory (DeepSeek-V2-Lite:
// 27 layers * 16 * (192 + 128) floats = 540 KiB per token, 2.2 GB for 4096 tokens, where caching
// the latent and rope key would take 61 KiB).
struct KvCache {
  int64_t max_tokens;
  int Dk, Dv;
  std::unique_ptr<float[]> k;                   // [L, max_tokens, Dk]
  std::unique_ptr<float[]> v;                   // [L, max_tokens, Dv]
  std::unique_ptr<float[]> rope_cos, rope_sin;  // [max_tokens, rope_dim/2]

  KvCache(const Dims& d, int64_t max_tok, const ModelConfig& cfg)
      : max_tokens(max_tok), Dk(d.Dk), Dv(d.Dv) {
    const int half = d.rope_dim / 2;
    // YaRN scales cos and sin by mscale(factor, mscale) / mscale(factor, mscale_all_dim): 1 for
    // DeepSeek-V2-Lite, whose two are equal.
    const double scale = cfg.yarn ? yarn_mscale(cfg.yarn->factor, cfg.yarn->mscale) /
                                        yarn_mscale(cfg.yarn->factor, cfg.yarn->mscale_all_dim)
                                  : 1.0;
    rope_cos = raw_array<float>(max_tokens * half);
    rope_sin = raw_array<float>(max_tokens * half);
    for (int i = 0; i < half; ++i) {
      const double inv_freq = rope_inv_freq(cfg, d.rope_dim, i);
      for (int64_t p = 0; p < max_tokens; ++p) {
        const double angle = static_cast<double>(p) * inv_freq;
        rope_cos[p * half + i] = static_cast<float>(std::cos(angle) * scale);
        rope_sin[p * half + i] = static_cast<float>(std::sin(angle) * scale);
      }
    }
    k = raw_array<float>(int64_t{d.L} * max_tokens * Dk);
    v = raw_array<float>(int64_t{d.L} * max_tokens * Dv);
  }
  float* keys(int layer, int64_t position) const {
    return k.get() + (int64_t{layer} * max_tokens + position) * Dk;
  }
  float* values(int layer, int64_t position) const {
    return v.get() + (int64_t{layer} * max_tokens + position) * Dv;
  }
};

// The residual stream and attention buffers of one chunk of tokens.
struct Activations {
  std::unique_ptr<float[]> x;     // [chunk, D] residual stream
  std::unique_ptr<float[]> h;     // [chunk, D] normed input of the current block
  std::unique_ptr<float[]> q;     // [chunk, Dq]
  std::unique_ptr<float[]> attn;  // [chunk, Do] attention output before o_proj
  std::unique_ptr<float[]> tmp;   // [chunk, D] o_proj output
  std::unique_ptr<float[]> bias;  // [Dq + Dk + Dv] the layer's q | k | v biases in fp32
  // MLA: kv_a_proj's output (the latent, normed in place, then the shared rope key), and
  // kv_b_proj's (each head's no-rope key and value).
  std::unique_ptr<float[]> latent;  // [chunk, kv_lora_rank + rope_dim]
  std::unique_ptr<float[]> kv_b;    // [chunk, H * (nope + hd_v)]
  std::unique_ptr<float[]> scores;  // [threads, max_tokens] attention scores, one row per thread
  std::unique_ptr<float[]> logits;  // [V] the last position's

  Activations(const Dims& d, int64_t chunk, int64_t max_tokens, int threads) {
    for (auto* buf : {&x, &h, &tmp}) *buf = raw_array<float>(chunk * d.D);
    q = raw_array<float>(chunk * d.Dq);
    attn = raw_array<float>(chunk * d.Do);
    bias = raw_array<float>(int64_t{d.Dq} + d.Dk + d.Dv);
    latent = raw_array<float>(d.latent > 0 ? chunk * (d.latent + d.rope_dim) : 0);
    kv_b = raw_array<float>(chunk * d.kv_b);
    scores = raw_array<float>(int64_t{threads} * max_tokens);
    logits = raw_array<float>(d.V);
    std::fill_n(logits.get(), d.V, 0.0f);
  }
};

// The router's decisions for a chunk and the selected experts' working space.
struct MoeScratch {
  std::unique_ptr<float[]> router_logits;   // [chunk, N]
  std::unique_ptr<int32_t[]> route_ids;     // [chunk, N] with row stride router->max_count()
  std::unique_ptr<float[]> route_weights;   // [chunk, N] same
  std::unique_ptr<int32_t[]> route_counts;  // [chunk]
  // Prefill grouping: the tokens of expert e at group_tokens[e * chunk + i], i < group_size[e].
  std::unique_ptr<int32_t[]> group_tokens;      // [N, chunk]
  std::unique_ptr<float[]> group_weights;       // [N, chunk]
  std::unique_ptr<int32_t[]> group_size;        // [N]
  std::unique_ptr<float[]> expert_x, expert_y;  // [chunk, D] an expert's inputs and outputs
  // [max(chunk, N), F] routed experts; the shared expert's [chunk, Fs] and a dense layer's MLP
  // [chunk, Fd] use the same space.
  std::unique_ptr<float[]> expert_gate, expert_up;
  std::unique_ptr<float[]> shared_scale;  // [chunk] sigmoid(shared_expert_gate . h) when gated
  std::unique_ptr<float[]> thread_out;    // [threads, D] decode: one down row slice each

  MoeScratch(const Dims& d, int64_t chunk, int threads) {
    router_logits = raw_array<float>(chunk * d.N);
    route_ids = raw_array<int32_t>(chunk * d.N);
    route_weights = raw_array<float>(chunk * d.N);
    route_counts = raw_array<int32_t>(chunk);
    group_tokens = raw_array<int32_t>(int64_t{d.N} * chunk);
    group_weights = raw_array<float>(int64_t{d.N} * chunk);
    group_size = raw_array<int32_t>(d.N);
    expert_x = raw_array<float>(chunk * d.D);
    expert_y = raw_array<float>(chunk * d.D);
    const int64_t ffn = std::max({std::max<int64_t>(chunk, d.N) * d.F, chunk * d.Fs, chunk * d.Fd});
    expert_gate = raw_array<float>(ffn);
    expert_up = raw_array<float>(ffn);
    shared_scale = raw_array<float>(chunk);
    thread_out = raw_array<float>(int64_t{threads} * d.D);
  }
};

// The buffers sized by max_tokens (KV cache, RoPE tables, attention scores) must fit this machine's
// memory: a max_tokens from a user's flag (a giant --max-new-tokens, a 10^6-token window) is
// refused here with the sizes, before anything is allocated, instead of ending in std::bad_alloc or
// the OOM killer.
int64_t checked_max_tokens(const Dims& d, int64_t max_tokens, int threads) {
  if (max_tokens < 1) fail("session: max_tokens ", max_tokens, " must be at least 1");
  const double per_token = sizeof(float) * (static_cast<double>(d.L) * (d.Dk + d.Dv) +
                                            2.0 * (d.rope_dim / 2) + static_cast<double>(threads));
  const double need = per_token * static_cast<double>(max_tokens);
  const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGESIZE);
  const double have = pages > 0 && page > 0 ? static_cast<double>(pages) * page : 0.0;
  if (have > 0 && need > have) {
    fail("session: a KV cache of ", max_tokens, " tokens needs ", need / 1e9,
         " GB, more than this machine's ", have / 1e9, " GB of memory");
  }
  return max_tokens;
}

// Y[t, r] = W[r, :] . X[t, :] over rows [begin, end); one token uses matvec.
void project(const Matrix& m, const float* x, int64_t x_stride, int64_t tokens, float* y,
             int64_t y_stride, int64_t begin, int64_t end) {
  if (tokens == 1) {
    kernels::matvec(m, x, y + begin, begin, end);
  } else {
    kernels::matmul(m, x, x_stride, tokens, y + begin, y_stride, begin, end);
  }
}

// The first `dim` values of every head of v (heads at a stride of `stride`) rotated by the angles
// in cos/sin: NeoX-style pairs (i, i + dim/2), or with `interleaved` the pairs (2i, 2i + 1) of
// llama.cpp's permuted llama rows and of DeepSeek-V2.
void rope(float* v, int heads, int stride, int dim, const float* cos, const float* sin,
          bool interleaved) {
  const int half = dim / 2;
  const int step = interleaved ? 2 : 1, partner = interleaved ? 1 : half;
  for (int head = 0; head < heads; ++head) {
    float* base = v + head * stride;
    for (int i = 0; i < half; ++i) {
      float* a = base + i * step;
      float* b = a + partner;
      const float x1 = *a, x2 = *b;
      *a = x1 * cos[i] - x2 * sin[i];
      *b = x2 * cos[i] + x1 * sin[i];
    }
  }
}

// y[t, :] += bias for t < tokens rows of `width` values at row stride `stride`.
void add_bias(const float* bias, float* y, int64_t tokens, int64_t width, int64_t stride) {
  for (int64_t t = 0; t < tokens; ++t) {
    float* row = y + t * stride;
    for (int64_t i = 0; i < width; ++i) row[i] += bias[i];
  }
}

}  // namespace

struct Session::Impl {
  std::shared_ptr<const Model> model;
  const ModelConfig& cfg;
  const Weights& w;
  const Dims dim;
  kernels::ThreadPool* pool;
  const int num_threads;
  const int64_t max_tokens;
  const int64_t chunk;  // largest number of tokens run through the layers at once

  std::unique_ptr<routing::Router> native_router;
  const routing::Router* router = nullptr;
  RouterObserver* observer = nullptr;

  const float routed_scale;  // routed_scaling_factor
  KvCache kv;
  Activations act;
  MoeScratch moe;
  int64_t pos = 0;  // tokens in the KV cache
  std::vector<int64_t> selected_per_layer;
  int64_t routed = 0;

  Impl(std::shared_ptr<const Model> m, kernels::ThreadPool* p, int64_t max_tok)
      : model(std::move(m)),
        cfg(model->config()),
        w(model->weights()),
        dim(cfg),
        pool(p),
        num_threads(pool ? pool->num_threads() : 1),
        max_tokens(checked_max_tokens(dim, max_tok, num_threads)),
        chunk(std::min(max_tokens, kMaxChunk)),
        native_router(routing::make_router(cfg.native_router_spec(), dim.N)),
        router(native_router.get()),
        routed_scale(static_cast<float>(cfg.routed_scaling_factor)),
        kv(dim, max_tokens, cfg),
        act(dim, chunk, max_tokens, num_threads),
        moe(dim, chunk, num_threads),
        selected_per_layer(dim.R, 0) {}

  // Runs fn(thread, begin, end) over a static split of [0, n). The pool takes a non-owning
  // reference to fn, so lambdas capture [&] and nothing is allocated per call.
  template <typename Fn>
  void parallel(int64_t n, const Fn& fn) {
    if (n <= 0) return;
    if (pool && num_threads > 1) {
      pool->parallel_for(n, fn);
    } else {
      fn(0, 0, n);
    }
  }

  void check_tokens(std::span<const int32_t> tokens) const {
    if (tokens.empty()) fail("empty token sequence: at least one token id is needed");
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (tokens[i] < 0 || tokens[i] >= dim.V) {
        fail("token id ", tokens[i], " at position ", i, " is outside the vocabulary [0, ", dim.V,
             ")");
      }
    }
    if (pos + static_cast<int64_t>(tokens.size()) > max_tokens) {
      fail("sequence too long: ", pos, " cached + ", tokens.size(),
           " new tokens exceed the session's ", max_tokens, "-token KV cache");
    }
  }

  // x += o_proj(attention(rmsnorm(x))) for T tokens at positions pos..pos+T-1; their keys and
  // values are written to the cache.
  void attention_block(int layer, int64_t T) {
    const LayerWeights& lw = w.layers[layer];
    const int D = dim.D, Do = dim.Do;
    float* x = act.x.get();
    float* h = act.h.get();
    for (int64_t t = 0; t < T; ++t)
      kernels::rmsnorm(x + t * D, lw.input_norm, D, dim.eps, h + t * D);
    if (cfg.mla()) {
      latent_projections(layer, T);
    } else {
      qkv_projections(layer, T);
    }
    attend(layer, T);
    // o_proj; each thread adds its output columns into the residual.
    float* tmp = act.tmp.get();
    parallel(D, [&](int, int64_t begin, int64_t end) {
      project(lw.o_proj, act.attn.get(), Do, T, tmp, D, begin, end);
      for (int64_t t = 0; t < T; ++t) {
        float* xt = x + t * D;
        const float* yt = tmp + t * D;
        for (int64_t i = begin; i < end; ++i) xt[i] += yt[i];
      }
    });
  }

  // q (act.q) and the cached k and v of h's T tokens from the q/k/v projections: biases, q/k norms,
  // clip and RoPE as the family says.
  void qkv_projections(int layer, int64_t T) {
    const LayerWeights& lw = w.layers[layer];
    const int D = dim.D, Dq = dim.Dq, Dkv = dim.Dk, H = dim.H, Hkv = dim.Hkv, hd = dim.hd;
    const float* h = act.h.get();
    float* q = act.q.get();
    float* kc = kv.keys(layer, pos);
    float* vc = kv.values(layer, pos);
    // q | k | v as one row space so both threads share the three projections evenly.
    parallel(Dq + 2 * Dkv, [&](int, int64_t begin, int64_t end) {
      const int64_t segments[3] = {Dq, Dkv, Dkv};
      const Matrix* mats[3] = {&lw.q_proj, &lw.k_proj, &lw.v_proj};
      float* outs[3] = {q, kc, vc};
      int64_t base = 0;
      for (int i = 0; i < 3; ++i) {
        const int64_t lo = std::max(begin, base), hi = std::min(end, base + segments[i]);
        if (lo < hi) project(*mats[i], h, D, T, outs[i], segments[i], lo - base, hi - base);
        base += segments[i];
      }
    });
    if (cfg.qkv_bias) {
      float* bias = act.bias.get();
      kernels::embedding_row(lw.q_bias, 0, bias);
      kernels::embedding_row(lw.k_bias, 0, bias + Dq);
      kernels::embedding_row(lw.v_bias, 0, bias + Dq + Dkv);
      add_bias(bias, q, T, Dq, Dq);
      add_bias(bias + Dq, kc, T, Dkv, Dkv);
      add_bias(bias + Dq + Dkv, vc, T, Dkv, Dkv);
    }
    // q/k norms (over the whole projection, or per head), optional clip, then RoPE per head.
    const int half = hd / 2;
    for (int64_t t = 0; t < T; ++t) {
      float* qt = q + t * Dq;
      float* kt = kc + t * Dkv;
      float* vt = vc + t * Dkv;
      if (cfg.qk_norm == QkNorm::Full) {
        kernels::rmsnorm(qt, lw.q_norm, Dq, dim.eps, qt);
        kernels::rmsnorm(kt, lw.k_norm, Dkv, dim.eps, kt);
      } else if (cfg.qk_norm == QkNorm::PerHead) {
        for (int head = 0; head < H; ++head)
          kernels::rmsnorm(qt + head * hd, lw.q_norm, hd, dim.eps, qt + head * hd);
        for (int head = 0; head < Hkv; ++head)
          kernels::rmsnorm(kt + head * hd, lw.k_norm, hd, dim.eps, kt + head * hd);
      }
      if (cfg.clip_qkv) {
        const float c = *cfg.clip_qkv;
        for (int i = 0; i < Dq; ++i) qt[i] = std::clamp(qt[i], -c, c);
        for (int i = 0; i < Dkv; ++i) {
          kt[i] = std::clamp(kt[i], -c, c);
          vt[i] = std::clamp(vt[i], -c, c);
        }
      }
      const float* cos = kv.rope_cos.get() + (pos + t) * half;
      const float* sin = kv.rope_sin.get() + (pos + t) * half;
      rope(qt, H, hd, hd, cos, sin, cfg.rope_interleaved);
      rope(kt, Hkv, hd, hd, cos, sin, cfg.rope_interleaved);
    }
  }

  // DeepSeek-V2's multi-head latent attention (DeepseekV2Attention, q_lora_rank null): q =
  // q_proj(h); [latent | k_pe] = kv_a_proj_with_mqa(h); [k_nope | v] per head =
  // kv_b_proj(rmsnorm(latent, kv_a_layernorm)); each head's key is [k_nope | rope(k_pe)], the rope
  // key shared by all heads; RoPE rotates the last rope_dim values of each query head too.
  void latent_projections(int layer, int64_t T) {
    const LayerWeights& lw = w.layers[layer];
    const int D = dim.D, Dq = dim.Dq, H = dim.H, hd = dim.hd, hd_v = dim.hd_v;
    const int nope = dim.nope, rope_dim = dim.rope_dim, lat = dim.latent, kv_b = dim.kv_b;
    const int A = lat + rope_dim;  // kv_a_proj's rows
    const float* h = act.h.get();
    float* q = act.q.get();
    float* latent = act.latent.get();
    float* kvb = act.kv_b.get();
    // q | latent as one row space, as the q/k/v projections.
    parallel(Dq + A, [&](int, int64_t begin, int64_t end) {
      if (begin < Dq) project(lw.q_proj, h, D, T, q, Dq, begin, std::min<int64_t>(end, Dq));
      if (end > Dq)
        project(lw.kv_a_proj, h, D, T, latent, A, std::max<int64_t>(begin, Dq) - Dq, end - Dq);
    });
    for (int64_t t = 0; t < T; ++t)
      kernels::rmsnorm(latent + t * A, lw.kv_a_norm, lat, dim.eps, latent + t * A);
    parallel(kv_b, [&](int, int64_t begin, int64_t end) {
      project(lw.kv_b_proj, latent, A, T, kvb, kv_b, begin, end);
    });
    const int half = rope_dim / 2;
    for (int64_t t = 0; t < T; ++t) {
      const float* cos = kv.rope_cos.get() + (pos + t) * half;
      const float* sin = kv.rope_sin.get() + (pos + t) * half;
      float* k_pe = latent + t * A + lat;
      rope(k_pe, 1, rope_dim, rope_dim, cos, sin, cfg.rope_interleaved);
      rope(q + t * Dq + nope, H, hd, rope_dim, cos, sin, cfg.rope_interleaved);
      float* kt = kv.keys(layer, pos + t);
      float* vt = kv.values(layer, pos + t);
      const float* row = kvb + t * kv_b;
      for (int head = 0; head < H; ++head) {
        const float* src = row + head * (nope + hd_v);
        std::memcpy(kt + head * hd, src, sizeof(float) * nope);
        std::memcpy(kt + head * hd + nope, k_pe, sizeof(float) * rope_dim);
        std::memcpy(vt + head * hd_v, src + nope, sizeof(float) * hd_v);
      }
    }
  }

  // Causal attention of act.q over the cached keys and values of positions <= pos + t, one (token,
  // head) pair per work item; query heads share their group's key/value head (GQA).
  void attend(int layer, int64_t T) {
    const int Dq = dim.Dq, Dk = dim.Dk, Dv = dim.Dv, Do = dim.Do, H = dim.H, hd = dim.hd;
    const int hd_v = dim.hd_v;
    const float* q = act.q.get();
    const float* keys = kv.keys(layer, 0);
    const float* values = kv.values(layer, 0);
    float* attn = act.attn.get();
    parallel(T * H, [&](int thread, int64_t begin, int64_t end) {
      float* sc = act.scores.get() + int64_t{thread} * max_tokens;
      const int group = H / dim.Hkv;
      for (int64_t item = begin; item < end; ++item) {
        const int64_t t = item / H;
        const int head = static_cast<int>(item % H);
        const int k_off = (head / group) * hd, v_off = (head / group) * hd_v;
        const float* qh = q + t * Dq + head * hd;
        const int64_t n = pos + t + 1;
        for (int64_t j = 0; j < n; ++j) {
          sc[j] = kernels::dot_f32(qh, keys + j * Dk + k_off, hd) * dim.attn_scale;
        }
        kernels::softmax(sc, n);
        float* out = attn + t * Do + head * hd_v;
        std::fill_n(out, hd_v, 0.0f);
        for (int64_t j = 0; j < n; ++j) kernels::axpy(sc[j], values + j * Dv + v_off, out, hd_v);
      }
    });
  }

  // h = rmsnorm(x) with the post-attention norm: the input of the layer's MLP or MoE.
  void ffn_norm(int layer, int64_t T) {
    const int D = dim.D;
    for (int64_t t = 0; t < T; ++t) {
      kernels::rmsnorm(act.x.get() + t * D, w.layers[layer].post_norm, D, dim.eps,
                       act.h.get() + t * D);
    }
  }

  // The router logits of h and the router's decision for each of the T tokens (moe.route_*),
  // reported to the observer. Routers, observers and the totals see routing layer ids: the
  // decoder layer minus the leading dense layers.
  void route_block(int layer, int64_t T) {
    const LayerWeights& lw = w.layers[layer];
    const int D = dim.D, N = dim.N;
    const int routing_layer = layer - dim.first_moe;
    float* logits = moe.router_logits.get();
    parallel(N, [&](int, int64_t begin, int64_t end) {
      project(lw.router, act.h.get(), D, T, logits, N, begin, end);
    });
    int32_t* ids = moe.route_ids.get();
    float* weights = moe.route_weights.get();
    int32_t* counts = moe.route_counts.get();
    try {
      if (T == 1) {
        counts[0] = router->route(logits, routing_layer, ids, weights);
      } else {
        router->route_batch(logits, T, routing_layer, ids, weights, counts);
      }
    } catch (const Error& e) {
      // The router names the layer (and a non-finite logit, and for a batch the token in it); the
      // positions are known only here.
      if (T == 1) fail("position ", pos, ": ", e.what());
      fail("positions ", pos, "..", pos + T - 1, " (token i of the batch is position ", pos,
           " + i): ", e.what());
    }
    int64_t selected = 0;
    for (int64_t t = 0; t < T; ++t) selected += counts[t];
    selected_per_layer[routing_layer] += selected;
    if (observer) {
      const int stride = router->max_count();
      for (int64_t t = 0; t < T; ++t) {
        RouterEvent event;
        event.layer = routing_layer;
        event.position = pos + t;
        event.logits = logits + t * N;
        event.num_experts = N;
        event.ids = ids + t * stride;
        event.weights = weights + t * stride;
        event.count = counts[t];
        observer->on_route(event);
      }
    }
  }

  // One token: x += sum over the selected experts of weight * expert(h) (times DeepSeek-V2's
  // routed_scaling_factor, 1 elsewhere), in two parallel loops.
  void moe_decode(int layer) {
    const auto& experts = w.layers[layer].experts;
    const int D = dim.D, F = dim.F;
    const int count = moe.route_counts[0];
    const int32_t* ids = moe.route_ids.get();
    const float* h = act.h.get();
    parallel(F, [&](int, int64_t begin, int64_t end) {
      for (int j = 0; j < count; ++j) {
        const ExpertWeights& e = experts[ids[j]];
        float* g = moe.expert_gate.get() + int64_t{j} * F;
        float* u = moe.expert_up.get() + int64_t{j} * F;
        kernels::matvec(e.gate, h, g + begin, begin, end);
        kernels::matvec(e.up, h, u + begin, begin, end);
        kernels::swiglu(g + begin, u + begin, g + begin, end - begin);
      }
    });
    parallel(D, [&](int thread, int64_t begin, int64_t end) {
      float* out = moe.thread_out.get() + int64_t{thread} * D;
      for (int j = 0; j < count; ++j) {
        const ExpertWeights& e = experts[ids[j]];
        kernels::matvec(e.down, moe.expert_gate.get() + int64_t{j} * F, out, begin, end);
        kernels::axpy(moe.route_weights[j] * routed_scale, out, act.x.get() + begin, end - begin);
      }
    });
  }

  // T tokens: grouped by expert, each expert's weights read once for all of its tokens.
  void moe_prefill(int layer, int64_t T) {
    const int D = dim.D, F = dim.F, N = dim.N;
    const int stride = router->max_count();
    int32_t* group_size = moe.group_size.get();
    std::fill_n(group_size, N, 0);
    for (int64_t t = 0; t < T; ++t) {
      for (int j = 0; j < moe.route_counts[t]; ++j) {
        const int e = moe.route_ids[t * stride + j];
        const int slot = group_size[e]++;
        moe.group_tokens[int64_t{e} * chunk + slot] = static_cast<int32_t>(t);
        moe.group_weights[int64_t{e} * chunk + slot] = moe.route_weights[t * stride + j];
      }
    }
    float* expert_x = moe.expert_x.get();
    float* gate = moe.expert_gate.get();
    float* up = moe.expert_up.get();
    float* expert_y = moe.expert_y.get();
    for (int e = 0; e < N; ++e) {
      const int n = group_size[e];
      if (n == 0) continue;
      const ExpertWeights& expert = w.layers[layer].experts[e];
      const int32_t* tokens = moe.group_tokens.get() + int64_t{e} * chunk;
      const float* weights = moe.group_weights.get() + int64_t{e} * chunk;
      for (int i = 0; i < n; ++i) {
        std::memcpy(expert_x + int64_t{i} * D, act.h.get() + int64_t{tokens[i]} * D,
                    sizeof(float) * D);
      }
      parallel(F, [&](int, int64_t begin, int64_t end) {
        project(expert.gate, expert_x, D, n, gate, F, begin, end);
        project(expert.up, expert_x, D, n, up, F, begin, end);
        for (int i = 0; i < n; ++i) {
          float* g = gate + int64_t{i} * F + begin;
          kernels::swiglu(g, up + int64_t{i} * F + begin, g, end - begin);
        }
      });
      parallel(D, [&](int, int64_t begin, int64_t end) {
        project(expert.down, gate, F, n, expert_y, D, begin, end);
        for (int i = 0; i < n; ++i) {
          kernels::axpy(weights[i] * routed_scale, expert_y + int64_t{i} * D + begin,
                        act.x.get() + int64_t{tokens[i]} * D + begin, end - begin);
        }
      });
    }
  }

  // A dense SwiGLU FFN for all T tokens, x += scale * down(silu(gate(h)) * up(h)): the shared
  // expert (Qwen2-MoE's scaled by sigmoid(shared_expert_gate . h), DeepSeek-V2's by 1) or a leading
  // dense layer's MLP. `scale` is [T] or nullptr (1).
  void ffn_block(const Matrix& gate_proj, const Matrix& up_proj, const Matrix& down_proj, int width,
                 int64_t T, const float* scale) {
    const int D = dim.D;
    const float* h = act.h.get();
    float* gate = moe.expert_gate.get();
    float* up = moe.expert_up.get();
    float* y = moe.expert_y.get();
    parallel(width, [&](int, int64_t begin, int64_t end) {
      project(gate_proj, h, D, T, gate, width, begin, end);
      project(up_proj, h, D, T, up, width, begin, end);
      for (int64_t t = 0; t < T; ++t) {
        float* g = gate + t * width + begin;
        kernels::swiglu(g, up + t * width + begin, g, end - begin);
      }
    });
    parallel(D, [&](int, int64_t begin, int64_t end) {
      project(down_proj, gate, width, T, y, D, begin, end);
      for (int64_t t = 0; t < T; ++t) {
        kernels::axpy(scale ? scale[t] : 1.0f, y + t * D + begin, act.x.get() + t * D + begin,
                      end - begin);
      }
    });
  }

  // The shared expert of an MoE layer, for all T tokens.
  void shared_expert_block(int layer, int64_t T) {
    const LayerWeights& lw = w.layers[layer];
    float* scale = nullptr;
    if (cfg.shared_expert_gated) {
      scale = moe.shared_scale.get();
      project(lw.shared_gate, act.h.get(), dim.D, T, scale, 1, 0, 1);
      for (int64_t t = 0; t < T; ++t) scale[t] = 1.0f / (1.0f + std::exp(-scale[t]));
    }
    ffn_block(lw.shared_gate_proj, lw.shared_up_proj, lw.shared_down_proj, dim.Fs, T, scale);
  }

  // NaN or infinity in the logits means non-finite weights or an overflow upstream; whatever is
  // sampled or scored from them would be garbage, so it is an error naming the position. Only the
  // logits rows are checked (V values per row, nothing beside the lm_head matmul), not every
  // activation: a non-finite activation reaches them (or fails routing, which checks its logits).
  void check_logits(const float* rows, int64_t n, int64_t first_position) const {
    for (int64_t t = 0; t < n; ++t) {
      const float* row = rows + t * dim.V;
      for (int i = 0; i < dim.V; ++i) {
        if (!std::isfinite(row[i])) {
          fail("the forward pass gave a non-finite logit (", row[i], " for token id ", i,
               ") at position ", first_position + t,
               ": the weights hold NaN or infinity or the activations overflowed (bhmoe inspect "
               "--check-weights scans the weights)");
        }
      }
    }
  }

  // Runs T <= chunk tokens at positions pos.. through the model; fills `out_logits` ([T, V]) when
  // given, else only the last position's logits (none when !need_logits).
  void forward(const int32_t* ids, int64_t T, float* out_logits, bool need_logits) {
    const int D = dim.D, V = dim.V;
    float* x = act.x.get();
    float* h = act.h.get();
    for (int64_t t = 0; t < T; ++t) kernels::embedding_row(w.embed, ids[t], x + t * D);
    for (int layer = 0; layer < dim.L; ++layer) {
      attention_block(layer, T);
      ffn_norm(layer, T);
      if (layer < dim.first_moe) {  // DeepSeek-V2's leading dense layers: no router
        const LayerWeights& lw = w.layers[layer];
        ffn_block(lw.mlp_gate, lw.mlp_up, lw.mlp_down, dim.Fd, T, nullptr);
        continue;
      }
      route_block(layer, T);
      if (T == 1) {
        moe_decode(layer);
      } else {
        moe_prefill(layer, T);
      }
      if (dim.Fs > 0) shared_expert_block(layer, T);
    }
    routed += T;
    if (!need_logits) {
      pos += T;
      return;
    }
    const int64_t first = out_logits ? 0 : T - 1;
    for (int64_t t = first; t < T; ++t) {
      kernels::rmsnorm(x + t * D, w.final_norm, D, dim.eps, h + t * D);
    }
    float* out = out_logits ? out_logits : act.logits.get();
    parallel(V, [&](int, int64_t begin, int64_t end) {
      project(w.lm_head, h + first * D, D, T - first, out, V, begin, end);
    });
    check_logits(out, T - first, pos + first);
    if (out_logits) std::memcpy(act.logits.get(), out_logits + (T - 1) * V, sizeof(float) * V);
    pos += T;
  }
};

Session::Session(std::shared_ptr<const Model> model, const routing::Router* router,
                 kernels::ThreadPool* pool, int64_t max_tokens)
    : impl_(std::make_unique<Impl>(std::move(model), pool, max_tokens)) {
  set_router(router);
}

Session::~Session() = default;

void Session::set_router(const routing::Router* router) {
  if (router == nullptr) {
    impl_->router = impl_->native_router.get();
    return;
  }
  if (router->num_experts() != impl_->dim.N) {
    fail("router ", router->spec(), " was built for ", router->num_experts(),
         " experts but the model has ", impl_->dim.N);
  }
  if (router->max_count() < 1 || router->max_count() > impl_->dim.N) {
    fail("router ", router->spec(), ": max_count ", router->max_count(), " outside [1, ",
         impl_->dim.N, "]");
  }
  impl_->router = router;
}

void Session::set_observer(RouterObserver* observer) {
  impl_->observer = observer;
}

void Session::reset() {
  impl_->pos = 0;
}

void Session::truncate(int64_t position) {
  if (position < 0 || position > impl_->pos)
    fail("session: cannot truncate to position ", position, " (", impl_->pos, " tokens cached)");
  impl_->pos = position;
}

int64_t Session::position() const {
  return impl_->pos;
}

const Model& Session::model() const {
  return *impl_->model;
}

int64_t Session::max_tokens() const {
  return impl_->max_tokens;
}

const routing::Router& Session::router() const {
  return *impl_->router;
}

void Session::prefill(std::span<const int32_t> tokens, float* all_logits) {
  impl_->check_tokens(tokens);
  const int64_t total = static_cast<int64_t>(tokens.size());
  for (int64_t done = 0; done < total;) {
    const int64_t n = std::min(impl_->chunk, total - done);
    impl_->forward(tokens.data() + done, n,
                   all_logits ? all_logits + done * int64_t{impl_->dim.V} : nullptr,
                   all_logits != nullptr || done + n == total);
    done += n;
  }
}

void Session::decode(int32_t token) {
  impl_->check_tokens(std::span<const int32_t>(&token, 1));
  impl_->forward(&token, 1, nullptr, true);
}

const float* Session::last_logits() const {
  return impl_->act.logits.get();
}

const std::vector<int64_t>& Session::selected_experts_per_layer() const {
  return impl_->selected_per_layer;
}

int64_t Session::routed_tokens() const {
  return impl_->routed;
}

void Session::reset_routing_totals() {
  std::fill(impl_->selected_per_layer.begin(), impl_->selected_per_layer.end(), 0);
  impl_->routed = 0;
}

}  // namespace bhmoe::model
