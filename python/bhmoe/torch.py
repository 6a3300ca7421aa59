"""The routing rules in PyTorch tensor ops: batched, on the logits' device, selections identical to the
C++ library's.

    ids, weights, counts = bhmoe.torch.route(logits, "bh:alpha=0.05,max_k=16", calibration, layer=3)

logits: [T, N] or [B, S, N] raw router logits (float32; float16/bfloat16 are widened to float32 first,
as the library takes float32). Returns ids [..., max_count] int64 padded with -1 (highest logit first,
ties to the lower expert id), weights [..., max_count] float32 padded with 0 (softmax(r / temperature)
of the selected experts, rescaled to sum 1 when renorm=true), counts [...] int64.

Bit-identity with the library (the tests check it on the shared routing cases and on random logits
with ties): the softmax numerators use the library's exponential (Cephes' expf, same operations in the
same order) and its summation order (eight lanes over blocks of eight experts, then the lanes, then
the tail); BH compares logits against the library's own per-layer logit cutoffs (Calibration.logit_cutoffs, from _core);
top-p accumulates probabilities one expert at a time in float32. skip compares the numerators with
beta (the top one is exp(0) = 1), threshold the probabilities e * (1 / sum) with tau, both in float32.
hc interpolates the calibration grid in float64 with numpy.interp's arithmetic (as the library does),
rounds p to float32 and evaluates HC in float64 with the library's operations in its order. entropy
computes ln S - sum(e x) / S with the library's logf (Cephes, float32, op for op) and the softmax's
summation order, and buckets it with the library's own thresholds (Calibration.entropy_thresholds).
The loops below run over experts or ranks (at most N), never over tokens.
"""

import math

import torch

import numpy as np

from ._core import Calibration, RouterSpec, bh_critical_values, parse_router_spec, resolve_router_spec


def _spec(spec, n):
    return resolve_router_spec(spec if isinstance(spec, RouterSpec) else parse_router_spec(spec), n)


def _calibration(calibration):
    if calibration is None or isinstance(calibration, Calibration):
        return calibration
    return Calibration.load(calibration)


def _exp_nonpositive(x):
    """The library's exp for x <= 0 (Cephes expf; 0 below -87.33654), float32, op for op."""
    f = lambda v: torch.tensor(v, dtype=torch.float32, device=x.device)  # noqa: E731
    lo = f(-87.33654)
    xc = torch.where(x < lo, lo, x)
    t = xc * f(1.44269504088896341)
    nf = (t + f(12582912.0)) - f(12582912.0)
    r = xc - nf * f(0.693359375)
    r = r - nf * f(-2.12194440e-4)
    z = r * r
    a = f(1.9875691500e-4) * r + f(1.3981999507e-3)
    b = f(8.3334519073e-3) * r + f(4.1665795894e-2)
    c = f(1.6666665459e-1) * r + f(5.0000001201e-1)
    y = (a * z + b) * z + c
    y = y * z + r + f(1.0)
    pow2 = ((nf.to(torch.int32) + 127) << 23).view(torch.float32)
    return torch.where(x < lo, torch.zeros_like(x), y * pow2)


def _softmax_numerators(logits, mx, temperature):
    """(e [M, N], sum [M]) as the library's max_and_softmax: e_i = exp((r_i - max) / T)."""
    x = logits - mx[:, None]
    if temperature != 1.0:
        x = x / torch.tensor(temperature, dtype=torch.float32, device=x.device)
    e = _exp_nonpositive(x)
    n = e.shape[1]
    blocks = n // 8
    acc = torch.zeros(e.shape[0], 8, dtype=torch.float32, device=e.device)
    for b in range(blocks):
        acc = acc + e[:, 8 * b:8 * b + 8]
    total = acc[:, 0]
    for lane in range(1, 8):
        total = total + acc[:, lane]
    for i in range(8 * blocks, n):
        total = total + e[:, i]
    return e, total


def _f32(v, device):
    return torch.tensor(v, dtype=torch.float32, device=device)


def _lane_sum(v):
    """Row sums of v [M, N] in the library's order: eight lanes over blocks of eight, lanes, tail."""
    n = v.shape[1]
    blocks = n // 8
    acc = torch.zeros(v.shape[0], 8, dtype=torch.float32, device=v.device)
    for b in range(blocks):
        acc = acc + v[:, 8 * b:8 * b + 8]
    total = acc[:, 0]
    for lane in range(1, 8):
        total = total + acc[:, lane]
    for i in range(8 * blocks, n):
        total = total + v[:, i]
    return total


def _log_cephes(x):
    """The library's entropy_log (Cephes logf) of positive normal float32 x, op for op."""
    f = lambda v: _f32(v, x.device)  # noqa: E731
    m, exponent = torch.frexp(x)
    low = m < f(0.707106781186547524)
    exponent = torch.where(low, exponent - 1, exponent)
    m = torch.where(low, (m + m) - f(1.0), m - f(1.0))
    z = m * m
    y = f(7.0376836292e-2) * m - f(1.1514610310e-1)
    y = y * m + f(1.1676998740e-1)
    y = y * m - f(1.2420140846e-1)
    y = y * m + f(1.4249322787e-1)
    y = y * m - f(1.6668057665e-1)
    y = y * m + f(2.0000714765e-1)
    y = y * m - f(2.4999993993e-1)
    y = y * m + f(3.3333331174e-1)
    y = y * m * z
    fe = exponent.to(torch.float32)
    y = y + f(-2.12194440e-4) * fe
    y = y + f(-0.5) * z
    result = m + y
    return result + f(0.693359375) * fe


def _router_entropy(r, mx, e1, total1):
    """The library's router_entropy per row: ln S - sum(e x) / S, x = max(r - max, -87.33654), at T = 1."""
    x = torch.clamp_min(r - mx[:, None], _f32(-87.33654, r.device))
    weighted = _lane_sum(e1 * x)
    return _log_cephes(total1) - weighted / total1


def _calibrated_pvalues(v, calibration, layer):
    """fl32(1 - F(v)) with F the layer's grid interpolated as the library's interpolate_cdf (float64)."""
    gx, gy = calibration.grid(layer)
    x = torch.from_numpy(np.asarray(gx, dtype=np.float64)).to(v.device)
    y = torch.from_numpy(np.asarray(gy, dtype=np.float64)).to(v.device)
    v = v.to(torch.float64)
    last = x.shape[0] - 1
    j = (torch.searchsorted(x, v, right=True) - 1).clamp(0, last - 1)
    xj, xj1, yj, yj1 = x[j], x[j + 1], y[j], y[j + 1]
    slope = (yj1 - yj) / (xj1 - xj)
    res = slope * (v - xj) + yj
    again = slope * (v - xj1) + yj1
    again = torch.where(torch.isnan(again) & (yj == yj1), yj, again)
    res = torch.where(torch.isnan(res), again, res)
    res = torch.where(xj == v, yj, res)
    res = torch.where(v == x[last], y[last].expand_as(res), res)
    res = torch.where(v > x[last], torch.ones_like(res), res)
    res = torch.where(v < x[0], torch.zeros_like(res), res)
    return (1.0 - res).to(torch.float32)


def _weights(e, total, ids, counts, renorm):
    """e[id] / sum for the first counts[t] ids of each row, optionally rescaled to sum 1; 0 elsewhere."""
    k = ids.shape[1]
    valid = torch.arange(k, device=ids.device)[None, :] < counts[:, None]
    inv = torch.tensor(1.0, dtype=torch.float32, device=e.device) / total
    w = e.gather(1, ids.clamp_min(0)) * inv[:, None]
    w = torch.where(valid, w, torch.zeros_like(w))
    if renorm:
        selected = torch.zeros_like(total)
        for j in range(k):  # in rank order, as the library adds them
            selected = selected + w[:, j]
        scale = torch.where(selected > 0, torch.tensor(1.0, dtype=torch.float32, device=e.device) / selected,
                            torch.ones_like(selected))
        w = w * scale[:, None]
    return w


def _check_finite(logits, layer):
    bad = ~torch.isfinite(logits)
    if bool(bad.any()):
        t, i = (int(v) for v in bad.nonzero()[0])
        raise ValueError("token %d: layer %d: router logit of expert %d is %s (logits must be finite)"
                         % (t, layer, i, float(logits[t, i])))


def route(logits, spec, calibration=None, layer=0):
    """(ids, weights, counts) of a routing rule on router logits; see the module docstring."""
    if not isinstance(logits, torch.Tensor):
        raise TypeError("route: logits must be a torch.Tensor, got %s" % type(logits).__name__)
    if logits.dim() not in (2, 3):
        raise ValueError("route: logits must be [T, N] or [B, S, N], got shape %s" % list(logits.shape))
    if not logits.is_floating_point():
        raise TypeError("route: logits must be floating point, got %s" % logits.dtype)
    lead = logits.shape[:-1]
    n = logits.shape[-1]
    spec = _spec(spec, n)
    calibration = _calibration(calibration)
    if spec.uses_calibration and calibration is None:
        if spec.rule == "entropy":
            raise ValueError('router spec "%s": needs a calibration with entropy quantiles' % spec)
        raise ValueError('router spec "%s": pvalues=calibrated needs a calibration' % spec)
    r = logits.detach().reshape(-1, n).to(torch.float32)
    _check_finite(r, layer)
    m = r.shape[0]
    k = spec.max_count()
    if m == 0:
        return (torch.empty(*lead, k, dtype=torch.int64, device=logits.device),
                torch.empty(*lead, k, dtype=torch.float32, device=logits.device),
                torch.empty(*lead, dtype=torch.int64, device=logits.device))
    # Experts by logit, highest first, ties to the lower id (a stable sort keeps id order).
    sorted_logits, order = torch.sort(r, dim=1, descending=True, stable=True)
    mx = sorted_logits[:, 0]
    e, total = _softmax_numerators(r, mx, spec.temperature)
    ranks = torch.arange(1, n + 1, device=r.device)

    if spec.rule == "topk":
        counts = torch.full((m,), spec.k, dtype=torch.int64, device=r.device)
    elif spec.rule == "topp":
        mass = torch.tensor(spec.p, dtype=torch.float32, device=r.device)
        inv = torch.tensor(1.0, dtype=torch.float32, device=r.device) / total
        probs = e.gather(1, order[:, :spec.max_k]) * inv[:, None]
        cumulative = torch.zeros_like(total)
        reached = torch.full((m,), spec.max_k + 1, dtype=torch.int64, device=r.device)
        for j in range(spec.max_k):
            cumulative = cumulative + probs[:, j]
            reached = torch.where((reached > spec.max_k) & (cumulative >= mass), torch.full_like(reached, j + 1),
                                  reached)
        counts = reached.clamp(spec.min_k, spec.max_k)
    elif spec.rule == "skip":
        # e_i >= beta * e_top, e_top = exp(0) = 1: prob_i >= beta * top prob, without the division.
        passing = (e >= _f32(spec.beta, r.device)).sum(dim=1)
        counts = passing.clamp(spec.min_k, spec.max_k)
    elif spec.rule == "threshold":
        inv = _f32(1.0, r.device) / total
        passing = (e * inv[:, None] >= _f32(spec.tau, r.device)).sum(dim=1)
        counts = passing.clamp(spec.min_k, spec.max_k)
    elif spec.rule == "hc":
        # p ascending is the logit order (one pooled CDF per layer); HC over the first `length` ranks.
        length = max(1, min(n, int(math.floor(spec.alpha0 * float(n)))))
        p = _calibrated_pvalues(sorted_logits[:, :length], calibration, layer).to(torch.float64)
        # Guards as the library's higher_criticism: p >= 1 gives -inf, p below 2^-23 is raised to it.
        null = p >= 1.0
        floor = 2.0 ** -23
        p = torch.where(null, torch.full_like(p, 0.5), p.clamp_min(floor))
        i_over_n = torch.arange(1, length + 1, dtype=torch.float64, device=r.device) / float(n)
        hc = math.sqrt(float(n)) * (i_over_n[None, :] - p) / torch.sqrt(p * (1.0 - p))
        hc = torch.where(null, torch.full_like(hc, -math.inf), hc)
        best = hc.max(dim=1).values
        first = torch.where(hc == best[:, None], ranks[None, :length], torch.full_like(ranks[None, :length], n + 1))
        counts = first.min(dim=1).values.clamp(spec.min_k, spec.max_k)
    elif spec.rule == "entropy":
        e1, total1 = (e, total) if spec.temperature == 1.0 else _softmax_numerators(r, mx, 1.0)
        h = _router_entropy(r, mx, e1, total1)
        t = torch.from_numpy(np.asarray(calibration.entropy_thresholds(layer, len(spec.ks)))).to(r.device)
        bucket = (h[:, None] > t[None, :]).sum(dim=1)
        counts = torch.tensor(spec.ks, dtype=torch.int64, device=r.device)[bucket]
    elif spec.pvalues == "calibrated":
        cut = torch.from_numpy(np.asarray(calibration.logit_cutoffs(layer, spec.alpha, n))).to(r.device)
        # k passes when at least k logits reach cut[k-1], i.e. when the k-th largest does.
        passing = sorted_logits >= cut[None, :]
        kstar = torch.where(passing, ranks[None, :], torch.zeros_like(ranks)[None, :]).max(dim=1).values
        counts = kstar.clamp(spec.min_k, spec.max_k)
    else:  # bh with p = 1 - softmax(r)_i (temperature 1): degenerate, kept to reproduce the original
        e1, total1 = (e, total) if spec.temperature == 1.0 else _softmax_numerators(r, mx, 1.0)
        p = torch.tensor(1.0, dtype=torch.float32, device=r.device) - e1 / total1[:, None]
        crit = torch.from_numpy(np.asarray(bh_critical_values(spec.alpha, n))).to(r.device)
        p_sorted = torch.sort(p, dim=1).values
        passing = p_sorted <= crit[None, :]
        kstar = torch.where(passing, ranks[None, :], torch.zeros_like(ranks)[None, :]).max(dim=1).values
        counts = kstar.clamp(spec.min_k, spec.max_k)

    ids = order[:, :k].clone()
    valid = torch.arange(k, device=r.device)[None, :] < counts[:, None]
    ids = torch.where(valid, ids, torch.full_like(ids, -1))
    weights = _weights(e, total, ids, counts, spec.renorm)
    return ids.reshape(*lead, k), weights.reshape(*lead, k), counts.reshape(lead)


class RoutedMoe(torch.nn.Module):
    """A Hugging Face-shaped MoE block (a `gate` linear to N experts and an `experts` list of SwiGLU
    modules) whose router rule is replaced by a bhmoe spec.

    forward(hidden [..., D]) -> (out [..., D], router logits [M, N] float32), the convention of
    transformers' OlmoeSparseMoeBlock: out = sum over the selected experts of weight * expert(hidden),
    with route()'s ids and weights; the gate's raw logits (float32) feed the rule. Only the selected
    experts run, on the tokens that chose them. The last call's selection is kept in `.last`
    (ids [M, max_count], weights, counts), for analysis."""

    def __init__(self, block, spec, calibration=None, layer=0):
        super().__init__()
        if not isinstance(getattr(block, "gate", None), torch.nn.Linear) or not hasattr(block, "experts"):
            raise TypeError("RoutedMoe: %s has no `gate` linear and `experts` list (Hugging Face MoE shape)"
                            % type(block).__name__)
        n = block.gate.out_features
        if len(block.experts) != n:
            raise ValueError("RoutedMoe: the gate scores %d experts but the block has %d" % (n, len(block.experts)))
        self.block = block
        self.spec = _spec(spec, n)
        calibration = _calibration(calibration)
        if self.spec.uses_calibration:
            if calibration is None:
                raise ValueError('router spec "%s": needs a calibration' % self.spec)
            # Fails now, naming the layers it has, rather than at the first token.
            if self.spec.rule == "entropy":
                calibration.entropy_quantiles(layer)
            else:
                calibration.grid(layer)
        self.calibration = calibration
        self.layer = layer
        self.last = None

    def forward(self, hidden):
        shape = hidden.shape
        h = hidden.reshape(-1, shape[-1])
        logits = self.block.gate(h).float()
        ids, weights, counts = route(logits, self.spec, self.calibration, self.layer)
        self.last = (ids, weights, counts)
        out = torch.zeros_like(h)
        for e in torch.unique(ids[ids >= 0]).tolist():
            tok, slot = (ids == e).nonzero(as_tuple=True)
            y = self.block.experts[e](h.index_select(0, tok))
            out.index_add_(0, tok, y * weights[tok, slot, None].to(y.dtype))
        return out.reshape(shape), logits


def patch_moe_blocks(model, spec, calibration=None):
    """Replaces every Hugging Face-shaped MoE block of `model` (a module with a `gate` linear to N
    experts and an `experts` list of N modules) by a RoutedMoe with `spec`, numbering layers in
    module order. Returns the RoutedMoe modules. Undo by setting each parent's attribute back to
    `.block`."""
    found = []
    for name, module in list(model.named_modules()):
        if isinstance(module, RoutedMoe):
            raise ValueError("patch_moe_blocks: %s is already patched" % name)
        gate = getattr(module, "gate", None)
        experts = getattr(module, "experts", None)
        if isinstance(gate, torch.nn.Linear) and experts is not None and len(experts) == gate.out_features:
            found.append((name, module))
    if not found:
        raise ValueError("patch_moe_blocks: no MoE block (a `gate` linear and an `experts` list) in %s"
                         % type(model).__name__)
    patched = []
    for layer, (name, module) in enumerate(found):
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        routed = RoutedMoe(module, spec, calibration, layer)
        setattr(parent, attr, routed)
        patched.append(routed)
    return patched
