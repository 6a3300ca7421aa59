#!/usr/bin/python3
"""An independent float64 NumPy forward pass of the MoE families bhmoe runs, written from the
Hugging Face modelling code's formulas (OlmoeForCausalLM, Qwen2MoeForCausalLM, Qwen3MoeForCausalLM,
MixtralForCausalLM), with bhmoe's routing rules as SPEC.md §2 states them. It shares no code with the
engine: it is the reference the family goldens (src/model/testdata/families) are recorded from where
llama.cpp has no implementation (Qwen3-MoE in the llama.cpp snapshot used here) or no such router
(Benjamini-Hochberg), and a second reference where it has.

  moe_reference.py logits MODEL_DIR OUT.npy --ids "1 2 3" [--router SPEC] [--calibration FILE]
                  [--mean-experts]
  moe_reference.py calibrate MODEL_DIR OUT.json --ids "..." [--shrink S]
      # ECDF grid of its router logits, x scaled by S

MODEL_DIR is a Hugging Face folder (config.json, model.safetensors in F32 or BF16, per-expert
tensors). SPEC: native, topk:k=K[,renorm=true], bh:alpha=A,max_k=M[,min_k=m][,renorm=true]. Logits
[T, V] float32 at every position of one pass from position 0.

Per family (what differs from OLMoE):
  olmoe      q/k RMSNorm over the whole projection, optional clip_qkv, top-k without renormalising;
  qwen2_moe  q/k/v biases, no q/k norm, a shared expert added as sigmoid(shared_expert_gate(h)) *
             shared_expert(h), top-k renormalised when norm_topk_prob;
  qwen3_moe  q/k RMSNorm per head (weights [head_dim]), head_dim declared (H * head_dim may differ
             from hidden_size), GQA, norm_topk_prob;
  mixtral    block_sparse_moe.{gate, experts.<e>.w1/w3/w2}, GQA, top-k always renormalised;
  deepseek_v2 (DeepseekV2ForCausalLM, modeling_deepseek.py; q_lora_rank null only) multi-head latent
             attention: q = q_proj(h) split per head into q_nope | q_pe; kv_a_proj_with_mqa(h) =
             latent | k_pe; kv_b_proj(rmsnorm(latent, kv_a_layernorm)) = k_nope | v per head; k_pe
             shared by the heads; RoPE on q_pe and k_pe only, with the rope dims first de-interleaved
             (view(d/2, 2).transpose) before rotate_half, and YaRN frequencies
             (DeepseekV2YarnRotaryEmbedding) when rope_scaling is yarn; softmax scale
             1/sqrt(qk_nope + qk_rope) times yarn_get_mscale(factor, mscale_all_dim)^2; the first
             first_k_dense_replace layers a dense SwiGLU MLP (mlp.{gate,up,down}_proj) without a
             router; later layers routed experts whose weights are multiplied by
             routed_scaling_factor (greedy top-k, renormalised when norm_topk_prob) plus
             mlp.shared_experts, an ungated SwiGLU. Routing layer ids (for the calibration) count
             the MoE layers only, from 0.
Every family: RMSNorm x / sqrt(mean(x^2) + eps) * w, NeoX RoPE (rotate_half), causal softmax
attention with scale 1/sqrt(head_dim), router probabilities softmax(logits) over all experts, SwiGLU
experts down(silu(gate(h)) * up(h)).
"""

import argparse
import json
import math
import os
import struct
import sys

import numpy as np


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        b, e = meta["data_offsets"]
        raw = data[8 + n + b:8 + n + e]
        if meta["dtype"] == "F32":
            a = np.frombuffer(raw, dtype="<f4").astype(np.float64)
        elif meta["dtype"] == "BF16":
            a = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32).astype(np.float64)
        else:
            sys.exit("moe_reference: %s: dtype %s not handled" % (name, meta["dtype"]))
        out[name] = a.reshape(meta["shape"])
    return out


def load(model_dir):
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    w = {}
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            for shard in sorted(set(json.load(f)["weight_map"].values())):
                w.update(read_safetensors(os.path.join(model_dir, shard)))
    else:
        w.update(read_safetensors(os.path.join(model_dir, "model.safetensors")))
    return cfg, w


def rmsnorm(x, weight, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def softmax(x):
    e = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return e / np.sum(e, axis=-1, keepdims=True)


def silu(x):
    return x / (1.0 + np.exp(-x))


def parse_router(spec, native_k, native_renorm):
    if spec == "native":
        return {"kind": "topk", "k": native_k, "renorm": native_renorm}
    kind, _, rest = spec.partition(":")
    args = dict(kv.split("=") for kv in rest.split(",") if kv)
    r = {"kind": kind, "renorm": args.get("renorm", "false") == "true"}
    if kind == "topk":
        r["k"] = int(args["k"])
    elif kind == "bh":
        r.update(alpha=float(args["alpha"]), max_k=int(args["max_k"]), min_k=int(args.get("min_k", 1)))
    else:
        sys.exit("moe_reference: router %s not handled" % spec)
    return r


def route(logits, layer, router, calibration):
    """Selected expert ids (best first) and their weights for one token's raw router logits."""
    n = len(logits)
    probs = softmax(logits)
    order = sorted(range(n), key=lambda i: (-logits[i], i))  # ties: the lower id first
    if router["kind"] == "topk":
        chosen = order[:router["k"]]
    else:
        grid = calibration[layer]
        p = 1.0 - np.interp(logits, grid[0], grid[1], left=0.0, right=1.0)
        ranked = sorted(range(n), key=lambda i: (p[i], -logits[i], i))
        passed = 0
        for k in range(1, n + 1):
            if p[ranked[k - 1]] <= k * router["alpha"] / n:
                passed = k
        count = min(max(passed, router["min_k"]), router["max_k"])
        chosen = ranked[:count]
    weights = probs[chosen]
    if router["renorm"]:
        weights = weights / weights.sum()
    return chosen, weights


def yarn_get_mscale(scale, mscale):
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def yarn_find_correction_dim(num_rotations, dim, base, max_position_embeddings):
    return (dim * math.log(max_position_embeddings / (num_rotations * 2 * math.pi))) / (2 * math.log(base))


def yarn_find_correction_range(low_rot, high_rot, dim, base, max_position_embeddings):
    low = math.floor(yarn_find_correction_dim(low_rot, dim, base, max_position_embeddings))
    high = math.ceil(yarn_find_correction_dim(high_rot, dim, base, max_position_embeddings))
    return max(low, 0), min(high, dim - 1)


def yarn_linear_ramp_mask(lo, hi, dim):
    if lo == hi:
        hi += 0.001
    return np.clip((np.arange(dim, dtype=np.float64) - lo) / (hi - lo), 0.0, 1.0)


def deepseek_rope_tables(cfg, T):
    """cos, sin [T, d] of DeepseekV2RotaryEmbedding / DeepseekV2YarnRotaryEmbedding (d = qk_rope)."""
    d = cfg["qk_rope_head_dim"]
    base = cfg.get("rope_theta", 10000.0)
    scaling = cfg.get("rope_scaling")
    t = np.arange(T, dtype=np.float64)
    freq_extra = 1.0 / (base ** (np.arange(0, d, 2, dtype=np.float64) / d))
    mscale = 1.0
    if scaling is None:
        inv_freq = freq_extra
    else:
        assert scaling.get("type", scaling.get("rope_type")) == "yarn", scaling
        factor = scaling["factor"]
        freq_inter = 1.0 / (factor * base ** (np.arange(0, d, 2, dtype=np.float64) / d))
        low, high = yarn_find_correction_range(scaling.get("beta_fast", 32), scaling.get("beta_slow", 1), d, base,
                                               scaling["original_max_position_embeddings"])
        inv_freq_mask = 1.0 - yarn_linear_ramp_mask(low, high, d // 2)
        inv_freq = freq_inter * (1 - inv_freq_mask) + freq_extra * inv_freq_mask
        mscale = (yarn_get_mscale(factor, scaling.get("mscale", 1)) /
                  yarn_get_mscale(factor, scaling.get("mscale_all_dim", 0)))
    freqs = np.outer(t, inv_freq)
    emb = np.concatenate([freqs, freqs], axis=-1)
    return np.cos(emb) * mscale, np.sin(emb) * mscale


def deepseek_attention(cfg, w, p, h, eps, mask, cos, sin):
    """DeepseekV2Attention (q_lora_rank null) of the normed input h [T, D]; returns o_proj's output."""
    T = h.shape[0]
    H = cfg["num_attention_heads"]
    nope, rope, vd = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"]
    lora = cfg["kv_lora_rank"]
    if cfg.get("q_lora_rank") is not None:
        sys.exit("moe_reference: deepseek_v2 with q_lora_rank is not handled")
    q = (h @ w[p + "self_attn.q_proj.weight"].T).reshape(T, H, nope + rope)
    q_nope, q_pe = q[..., :nope], q[..., nope:]
    compressed = h @ w[p + "self_attn.kv_a_proj_with_mqa.weight"].T
    latent, k_pe = compressed[:, :lora], compressed[:, lora:].reshape(T, 1, rope)
    kv = (rmsnorm(latent, w[p + "self_attn.kv_a_layernorm.weight"], eps)
          @ w[p + "self_attn.kv_b_proj.weight"].T).reshape(T, H, nope + vd)
    k_nope, v = kv[..., :nope], kv[..., nope:]

    def apply_rope(x):  # x [T, heads, rope]: de-interleave, then q * cos + rotate_half(q) * sin
        x = x.reshape(T, x.shape[1], rope // 2, 2).transpose(0, 1, 3, 2).reshape(T, x.shape[1], rope)
        rot = np.concatenate([-x[..., rope // 2:], x[..., :rope // 2]], axis=-1)
        return x * cos[:, None, :] + rot * sin[:, None, :]

    q_pe, k_pe = apply_rope(q_pe), apply_rope(k_pe)
    q = np.concatenate([q_nope, q_pe], axis=-1)
    k = np.concatenate([k_nope, np.repeat(k_pe, H, axis=1)], axis=-1)
    scale = (nope + rope) ** -0.5
    scaling = cfg.get("rope_scaling")
    if scaling is not None and scaling.get("mscale_all_dim", 0):
        m = yarn_get_mscale(scaling["factor"], scaling["mscale_all_dim"])
        scale = scale * m * m
    scores = np.einsum("thd,shd->hts", q, k) * scale + mask
    attn = np.einsum("hts,shd->thd", softmax(scores), v).reshape(T, H * vd)
    return attn @ w[p + "self_attn.o_proj.weight"].T


def swiglu_mlp(w, prefix, h):
    g = h @ w[prefix + "gate_proj.weight"].T
    u = h @ w[prefix + "up_proj.weight"].T
    return (silu(g) * u) @ w[prefix + "down_proj.weight"].T


def forward_deepseek_v2(cfg, w, ids, router, calibration=None, record=None):
    if cfg.get("topk_method", "greedy") != "greedy" or cfg.get("scoring_func", "softmax") != "softmax":
        sys.exit("moe_reference: deepseek_v2 routing other than greedy softmax is not handled")
    eps = cfg.get("rms_norm_eps", 1e-6)
    T = len(ids)
    x = w["model.embed_tokens.weight"][ids]
    cos, sin = deepseek_rope_tables(cfg, T)
    mask = np.triu(np.full((T, T), -np.inf), 1)
    first_moe = cfg.get("first_k_dense_replace", 0)
    scale = cfg.get("routed_scaling_factor", 1.0)
    renorm_native = bool(cfg.get("norm_topk_prob", False))
    counts = []
    for layer in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % layer
        h = rmsnorm(x, w[p + "input_layernorm.weight"], eps)
        x = x + deepseek_attention(cfg, w, p, h, eps, mask, cos, sin)
        h = rmsnorm(x, w[p + "post_attention_layernorm.weight"], eps)
        if layer < first_moe:
            x = x + swiglu_mlp(w, p + "mlp.", h)
            continue
        routing_layer = layer - first_moe
        router_logits = h @ w[p + "mlp.gate.weight"].T
        y = np.zeros_like(x)
        for t in range(T):
            chosen, weights = route(router_logits[t], routing_layer, router, calibration)
            counts.append(len(chosen))
            # MoEGate: routed_scaling_factor multiplies the weights unless they were renormalised
            # (bhmoe refuses norm_topk_prob with a factor other than 1, so here it always applies).
            assert not (renorm_native and scale != 1.0)
            for e, we in zip(chosen, weights):
                y[t] += we * scale * swiglu_mlp(w, p + "mlp.experts.%d." % e, h[t:t + 1])[0]
        if cfg.get("n_shared_experts"):
            y = y + swiglu_mlp(w, p + "mlp.shared_experts.", h)
        if record is not None:
            record.append(router_logits)
        x = x + y
    x = rmsnorm(x, w["model.norm.weight"], eps)
    head = w["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings") else w["lm_head.weight"]
    return x @ head.T, float(np.mean(counts))


def forward(cfg, w, ids, router, calibration=None, record=None):
    family = cfg["model_type"]
    if family == "deepseek_v2":
        return forward_deepseek_v2(cfg, w, ids, router, calibration, record)
    D = cfg["hidden_size"]
    H = cfg["num_attention_heads"]
    Hkv = cfg.get("num_key_value_heads") or H
    hd = cfg.get("head_dim") or D // H
    if family in ("olmoe", "qwen2_moe"):
        hd = D // H
    eps = cfg.get("rms_norm_eps", 1e-5)
    theta = cfg.get("rope_theta", 10000.0)
    T = len(ids)
    x = w["model.embed_tokens.weight"][ids]
    pos = np.arange(T, dtype=np.float64)
    inv = theta ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
    ang = np.outer(pos, inv)
    cos = np.concatenate([np.cos(ang)] * 2, axis=-1)[:, None, :]
    sin = np.concatenate([np.sin(ang)] * 2, axis=-1)[:, None, :]

    def rope(v):  # v [T, heads, hd]
        rot = np.concatenate([-v[..., hd // 2:], v[..., :hd // 2]], axis=-1)
        return v * cos + rot * sin

    mask = np.triu(np.full((T, T), -np.inf), 1)
    counts = []
    for layer in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % layer
        h = rmsnorm(x, w[p + "input_layernorm.weight"], eps)
        q = h @ w[p + "self_attn.q_proj.weight"].T
        k = h @ w[p + "self_attn.k_proj.weight"].T
        v = h @ w[p + "self_attn.v_proj.weight"].T
        if p + "self_attn.q_proj.bias" in w:
            q = q + w[p + "self_attn.q_proj.bias"]
            k = k + w[p + "self_attn.k_proj.bias"]
            v = v + w[p + "self_attn.v_proj.bias"]
        if family == "olmoe":
            q = rmsnorm(q, w[p + "self_attn.q_norm.weight"], eps)
            k = rmsnorm(k, w[p + "self_attn.k_norm.weight"], eps)
            if cfg.get("clip_qkv"):
                c = cfg["clip_qkv"]
                q, k, v = np.clip(q, -c, c), np.clip(k, -c, c), np.clip(v, -c, c)
        q = q.reshape(T, H, hd)
        k = k.reshape(T, Hkv, hd)
        v = v.reshape(T, Hkv, hd)
        if family == "qwen3_moe":
            q = rmsnorm(q, w[p + "self_attn.q_norm.weight"], eps)
            k = rmsnorm(k, w[p + "self_attn.k_norm.weight"], eps)
        q, k = rope(q), rope(k)
        group = H // Hkv
        k = np.repeat(k, group, axis=1)
        v = np.repeat(v, group, axis=1)
        scores = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd) + mask
        attn = np.einsum("hts,shd->thd", softmax(scores), v).reshape(T, H * hd)
        x = x + attn @ w[p + "self_attn.o_proj.weight"].T

        h = rmsnorm(x, w[p + "post_attention_layernorm.weight"], eps)
        moe = p + ("block_sparse_moe." if family == "mixtral" else "mlp.")
        router_logits = h @ w[moe + "gate.weight"].T
        names = ("w1", "w3", "w2") if family == "mixtral" else ("gate_proj", "up_proj", "down_proj")
        y = np.zeros_like(x)
        for t in range(T):
            chosen, weights = route(router_logits[t], layer, router, calibration)
            counts.append(len(chosen))
            for e, we in zip(chosen, weights):
                ep = moe + "experts.%d." % e
                g = w[ep + names[0] + ".weight"] @ h[t]
                u = w[ep + names[1] + ".weight"] @ h[t]
                y[t] += we * (w[ep + names[2] + ".weight"] @ (silu(g) * u))
        if p + "mlp.shared_expert_gate.weight" in w:
            sp = p + "mlp.shared_expert."
            g = h @ w[sp + "gate_proj.weight"].T
            u = h @ w[sp + "up_proj.weight"].T
            shared = (silu(g) * u) @ w[sp + "down_proj.weight"].T
            gate = 1.0 / (1.0 + np.exp(-(h @ w[p + "mlp.shared_expert_gate.weight"].T)))
            y = y + gate * shared
        if record is not None:
            record.append(router_logits)
        x = x + y
    x = rmsnorm(x, w["model.norm.weight"], eps)
    head = w["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings") else w["lm_head.weight"]
    return x @ head.T, float(np.mean(counts))


def native_routing(cfg):
    k = cfg["num_experts_per_tok"]
    renorm = True if cfg["model_type"] == "mixtral" else bool(cfg.get("norm_topk_prob", False))
    return k, renorm


def read_calibration(path):
    with open(path) as f:
        c = json.load(f)
    if c.get("format") != "bh-calibration-grid/1":
        sys.exit("moe_reference: %s is not bh-calibration-grid/1" % path)
    return {e["layer"]: (np.asarray(e["x"], dtype=np.float64), np.asarray(e["cdf"], dtype=np.float64))
            for e in c["layers"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["logits", "calibrate"])
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--ids", required=True)
    ap.add_argument("--router", default="native")
    ap.add_argument("--calibration", default=None)
    ap.add_argument("--shrink", type=float, default=1.0,
                    help="calibrate: multiply the grid's x by this; below 1 the null is lighter-tailed, so BH "
                         "selects a varying number of experts instead of min_k nearly always")
    args = ap.parse_args()
    cfg, w = load(args.model)
    ids = [int(t) for t in args.ids.split()]
    k, renorm = native_routing(cfg)
    if args.command == "calibrate":
        # The empirical CDF of every layer's raw router logits over these ids (native routing):
        # grid x = the sorted logits (times --shrink), cdf = (i + 0.5) / n.
        record = []
        forward(cfg, w, ids, parse_router("native", k, renorm), record=record)
        layers = []
        for layer, logits in enumerate(record):
            x = np.sort(logits.reshape(-1)) * args.shrink
            layers.append({"layer": layer, "x": [float(v) for v in x],
                           "cdf": [float((i + 0.5) / len(x)) for i in range(len(x))]})
        with open(args.out, "w") as f:
            json.dump({"format": "bh-calibration-grid/1",
                       "description": "empirical CDF of pooled raw router logits (tools/moe_reference.py)",
                       "layers": layers}, f)
        return
    router = parse_router(args.router, k, renorm)
    calibration = read_calibration(args.calibration) if args.calibration else None
    if router["kind"] == "bh" and calibration is None:
        sys.exit("moe_reference: bh needs --calibration")
    logits, mean_experts = forward(cfg, w, ids, router, calibration)
    np.save(args.out, logits.astype(np.float32))
    print(json.dumps({"out": args.out, "router": args.router, "mean_experts": mean_experts}))


if __name__ == "__main__":
    main()
