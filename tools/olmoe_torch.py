"""OLMoE architecture in PyTorch (SPEC.md section 1), with the hub checkpoints' parameter names.

state_dict() keys are exactly those of allenai/OLMoE-1B-7B-0924: model.embed_tokens.weight,
model.layers.L.{input_layernorm,post_attention_layernorm}.weight,
model.layers.L.self_attn.{q,k,v,o}_proj.weight, model.layers.L.self_attn.{q,k}_norm.weight,
model.layers.L.mlp.gate.weight, model.layers.L.mlp.experts.E.{gate,up,down}_proj.weight,
model.norm.weight, lm_head.weight.

Forward semantics: pre-norm; q/k RMSNorm over the whole D-wide projection before the head split;
NeoX (rotate-half) RoPE; causal softmax attention with scale 1/sqrt(head_dim); router softmax in fp32
over all experts, top-k by probability, weights NOT renormalised (norm_topk_prob false); SwiGLU
experts; untied lm_head. Only the selected experts are computed (tokens are grouped per expert).
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class Config:
    def __init__(self, vocab_size, hidden_size, intermediate_size, num_layers, num_heads, num_experts,
                 top_k, rope_theta=10000.0, rms_norm_eps=1e-5, max_position_embeddings=4096):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.num_experts = num_experts
        self.top_k = top_k
        self.rope_theta = rope_theta
        self.rms_norm_eps = rms_norm_eps
        self.max_position_embeddings = max_position_embeddings

    def hf_config(self, eos_token_id):
        """config.json with OLMoE's keys (see ../shared/olmoe/config.json)."""
        return {
            "architectures": ["OlmoeForCausalLM"],
            "model_type": "olmoe",
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_heads,
            "num_experts": self.num_experts,
            "num_experts_per_tok": self.top_k,
            "norm_topk_prob": False,
            "vocab_size": self.vocab_size,
            "rope_theta": self.rope_theta,
            "rope_scaling": None,
            "rms_norm_eps": self.rms_norm_eps,
            "clip_qkv": None,
            "tie_word_embeddings": False,
            "max_position_embeddings": self.max_position_embeddings,
            "hidden_act": "silu",
            "attention_bias": False,
            "attention_dropout": 0.0,
            "pad_token_id": None,
            "bos_token_id": None,
            "eos_token_id": eos_token_id,
            "router_aux_loss_coef": 0.01,
            "output_router_logits": False,
            "initializer_range": 0.02,
            "torch_dtype": "bfloat16",
        }

    @staticmethod
    def from_hf(j):
        return Config(j["vocab_size"], j["hidden_size"], j["intermediate_size"], j["num_hidden_layers"],
                      j["num_attention_heads"], j["num_experts"], j["num_experts_per_tok"],
                      j["rope_theta"], j["rms_norm_eps"], j["max_position_embeddings"])


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        xf = x.float()
        return xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_tables(seq_len, head_dim, theta, device=None):
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    pos = torch.arange(seq_len, dtype=torch.float64)
    ang = torch.outer(pos, inv_freq)  # [T, hd/2]
    ang = torch.cat([ang, ang], dim=-1)  # NeoX: element i pairs with i + hd/2
    return ang.cos().float(), ang.sin().float()


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d = cfg.hidden_size
        self.num_heads = cfg.num_heads
        self.head_dim = d // cfg.num_heads
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)
        self.q_norm = RMSNorm(d, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(d, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, mask_bias):
        b, t, d = x.shape
        q = self.q_norm(self.q_proj(x))
        k = self.k_norm(self.k_proj(x))
        v = self.v_proj(x)
        q = q.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        k = k.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        v = v.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        # One fused op for scale and causal mask (mask_bias: 0 on and below the diagonal, -inf above).
        h = self.num_heads
        scores = torch.baddbmm(mask_bias.expand(b * h, t, t), q.reshape(b * h, t, self.head_dim),
                               k.reshape(b * h, t, self.head_dim).transpose(1, 2),
                               alpha=1.0 / math.sqrt(self.head_dim))
        att = torch.softmax(scores, dim=-1)
        out = torch.bmm(att, v.reshape(b * h, t, self.head_dim)).view(b, h, t, self.head_dim)
        out = out.transpose(1, 2).reshape(b, t, d)
        return self.o_proj(out)


class Expert(nn.Module):
    def __init__(self, d, f):
        super().__init__()
        self.gate_proj = nn.Linear(d, f, bias=False)
        self.up_proj = nn.Linear(d, f, bias=False)
        self.down_proj = nn.Linear(f, d, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class ExpertMixture(torch.autograd.Function):
    """out[t] = sum over k of topw[t, k] * expert_{topi[t, k]}(h[t]) (SwiGLU experts), computed expert by
    expert on the tokens routed to it, with a hand-written backward.

    Same value as SparseMoe's module path; for training. Autograd of the module path materialises the
    [M*k, D] gathered copies (and their gradients) that dominate a CPU training step; here each
    expert's tokens are gathered into a small cache-resident block and its input gradient is added
    straight into one [M, D] buffer. Inputs: h [M, D], topi [M, k] int64, topw [M, k], then per expert
    its gate [F, D], up [F, D] and down [D, F] weights."""

    @staticmethod
    def forward(ctx, h, topi, topw, *ws):
        num_experts = len(ws) // 3
        k = topi.shape[1]
        flat = topi.reshape(-1)
        order = torch.argsort(flat, stable=True)
        counts = torch.bincount(flat, minlength=num_experts).tolist()
        tok = order // k  # token of each (token, slot) pair, grouped by expert
        slot = order  # index into topw.reshape(-1)
        w = topw.reshape(-1)[order]
        out = torch.zeros_like(h)
        saved = []
        start = 0
        for e in range(num_experts):
            c = counts[e]
            if c:
                idx = tok[start:start + c]
                x = h.index_select(0, idx)
                a = x @ ws[3 * e].t()
                b = x @ ws[3 * e + 1].t()
                y = (F.silu(a) * b) @ ws[3 * e + 2].t()
                out.index_add_(0, idx, y * w[start:start + c, None])
                saved.append((a, b, y))
            else:
                saved.append(None)
            start += c
        ctx.counts, ctx.saved_blocks = counts, saved
        ctx.save_for_backward(h, tok, slot, w, topw, *ws)
        return out

    @staticmethod
    def backward(ctx, dout):
        h, tok, slot, w, topw, *ws = ctx.saved_tensors
        counts, saved = ctx.counts, ctx.saved_blocks
        dh = torch.zeros_like(h)
        dw_flat = topw.new_zeros(topw.numel())
        dws = [None] * len(ws)
        start = 0
        for e, c in enumerate(counts):
            wg, wu, wd = ws[3 * e], ws[3 * e + 1], ws[3 * e + 2]
            if not c:
                dws[3 * e], dws[3 * e + 1], dws[3 * e + 2] = (torch.zeros_like(wg), torch.zeros_like(wu),
                                                              torch.zeros_like(wd))
                continue
            idx = tok[start:start + c]
            a, b, y = saved[e]
            x = h.index_select(0, idx)
            do = dout.index_select(0, idx)
            dw_flat[slot[start:start + c]] = (do * y).sum(-1).to(dw_flat.dtype)
            dy = do * w[start:start + c, None]
            sa = torch.sigmoid(a)
            s = a * sa  # silu(a)
            g = s * b
            dws[3 * e + 2] = dy.t() @ g
            dg = dy @ wd
            db = dg * s
            da = dg * b * (sa * (1 + a * (1 - sa)))  # d silu(a) / da
            dws[3 * e] = da.t() @ x
            dws[3 * e + 1] = db.t() @ x
            dh.index_add_(0, idx, da @ wg + db @ wu)
            start += c
        ctx.saved_blocks = None
        return (dh, None, dw_flat.view_as(topw), *dws)


class SparseMoe(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.num_experts = cfg.num_experts
        self.top_k = cfg.top_k
        self.gate = nn.Linear(cfg.hidden_size, cfg.num_experts, bias=False)
        self.experts = nn.ModuleList(Expert(cfg.hidden_size, cfg.intermediate_size)
                                     for _ in range(cfg.num_experts))
        # Evaluation hook: None routes natively; otherwise a callable (logits [M, N] fp32) ->
        # selection mask [M, N] bool, whose experts are weighted by their softmax probability
        # (never renormalised). Returns the mask instead of top-k ids.
        self.router = None
        # Training speed: ExpertMixture computes the same sum with a hand-written backward.
        self.fused_experts = False

    def forward(self, h):
        """h [M, D] -> (out [M, D], router logits [M, N] fp32, top-k ids [M, k] or mask [M, N])."""
        logits = self.gate(h).float()
        if self.router is not None:
            return self._forward_masked(h, logits)
        probs = torch.softmax(logits, dim=-1)
        topw, topi = probs.topk(self.top_k, dim=-1)  # no renormalisation
        if self.fused_experts:
            ws = [w for e in self.experts for w in (e.gate_proj.weight, e.up_proj.weight, e.down_proj.weight)]
            return ExpertMixture.apply(h, topi, topw, *ws), logits, topi
        flat = topi.reshape(-1)
        order = torch.argsort(flat, stable=True)
        counts = torch.bincount(flat, minlength=self.num_experts).tolist()
        tok = order // self.top_k
        w = topw.reshape(-1)[order]
        xs = h.index_select(0, tok)  # [M*k, D], grouped by expert
        # split, not one slice per expert: each slice's backward would add a zero-filled [M*k, D]
        # gradient, 64 times per layer (that dominated training time); split's backward is one cat.
        ys = [self.experts[e](chunk) for e, chunk in enumerate(xs.split(counts)) if counts[e]]
        y = torch.cat(ys, dim=0) * w[:, None]
        out = torch.zeros_like(h).index_add(0, tok, y)
        return out, logits, topi


    def _forward_masked(self, h, logits):
        probs = torch.softmax(logits, dim=-1)
        mask = self.router(logits)
        out = torch.zeros_like(h)
        for e in range(self.num_experts):
            idx = mask[:, e].nonzero().squeeze(1)
            if idx.numel():
                y = self.experts[e](h.index_select(0, idx)) * probs[idx, e, None]
                out.index_add_(0, idx, y)
        return out, logits, mask


class DecoderLayer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = SparseMoe(cfg)

    def forward(self, x, cos, sin, mask_bias):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask_bias)
        b, t, d = x.shape
        # (out, router logits[, selection]): a replacement block with the Hugging Face convention
        # (bhmoe.torch.RoutedMoe) returns no selection.
        res = self.mlp(self.post_attention_layernorm(x).reshape(b * t, d))
        out, logits, topi = res[0], res[1], (res[2] if len(res) > 2 else None)
        return x + out.view(b, t, d), logits, topi


class Backbone(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class OlmoeForCausalLM(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.model = Backbone(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self._rope = {}

    def init_weights(self, generator):
        std = 0.02
        out_std = std / math.sqrt(2 * self.cfg.num_layers)
        for name, p in self.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                nn.init.ones_(p)
            elif name.endswith("o_proj.weight") or name.endswith("down_proj.weight"):
                with torch.no_grad():
                    p.normal_(0.0, out_std, generator=generator)
            else:
                with torch.no_grad():
                    p.normal_(0.0, std, generator=generator)

    def rope(self, t):
        if t not in self._rope:
            hd = self.cfg.hidden_size // self.cfg.num_heads
            self._rope[t] = rope_tables(t, hd, self.cfg.rope_theta)
        return self._rope[t]

    def hidden_states(self, ids):
        """ids [B, T] -> (final-normed hidden [B, T, D], list of per-layer (router logits [B*T, N],
        top ids)). The lm_head is left to the caller (training fuses it with the loss)."""
        b, t = ids.shape
        cos, sin = self.rope(t)
        mask_bias = torch.full((t, t), float("-inf")).triu(diagonal=1)  # [T, T], -inf above diagonal
        x = self.model.embed_tokens(ids)
        routing = []
        for layer in self.model.layers:
            x, logits, topi = layer(x, cos, sin, mask_bias)
            routing.append((logits, topi))
        return self.model.norm(x), routing

    def forward(self, ids):
        """ids [B, T] -> (logits [B, T, V] fp32, list of per-layer (router logits [B*T, N], top ids))."""
        x, routing = self.hidden_states(ids)
        return self.lm_head(x).float(), routing


def load_balancing_loss(logits, topi, num_experts):
    """Switch/OLMoE auxiliary loss N * sum_e f_e * P_e (1.0 at perfect balance)."""
    probs = torch.softmax(logits, dim=-1)
    counts = torch.bincount(topi.reshape(-1), minlength=num_experts).float()
    f = counts / counts.sum()
    p = probs.mean(0)
    return num_experts * torch.sum(f * p)


def router_z_loss(logits):
    return torch.logsumexp(logits, dim=-1).pow(2).mean()
