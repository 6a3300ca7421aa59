"""Per-layer calibrations of raw router logits (the `bh-calibration-grid/1` JSON of SPEC.md section 2).

One file format with the C++ library: a file saved here loads in `bhmoe` and the other way round.
p-values are those of the library bit for bit: p = float32(1 - F_L(float64(logit))), F_L by linear
interpolation on the layer's grid with numpy.interp's arithmetic (0 below the grid, 1 above).
"""

import json
import os

import numpy as np

FORMAT = "bh-calibration-grid/1"
MAX_LAYER_ID = 1 << 20  # a sane bound: no model has a million layers


def _check_grid(x, cdf, where):
    if x.shape != cdf.shape:
        raise ValueError("%s: x has %d values but cdf has %d (lengths must be equal)" % (where, x.size, cdf.size))
    if x.size < 2:
        raise ValueError("%s: the grid has %d points (at least 2 needed)" % (where, x.size))
    if not np.all(np.isfinite(x)):
        i = int(np.argmin(np.isfinite(x)))
        raise ValueError("%s: x[%d] is not finite (%r)" % (where, i, x[i]))
    if not np.all(np.isfinite(cdf)):
        i = int(np.argmin(np.isfinite(cdf)))
        raise ValueError("%s: cdf[%d] is not finite (%r)" % (where, i, cdf[i]))
    bad = np.nonzero((cdf < 0.0) | (cdf > 1.0))[0]
    if bad.size:
        raise ValueError("%s: cdf[%d] = %r is outside [0, 1]" % (where, bad[0], cdf[bad[0]]))
    bad = np.nonzero(~(x[1:] > x[:-1]))[0]
    if bad.size:
        i = bad[0] + 1
        raise ValueError("%s: x is not strictly increasing at index %d (%r then %r)" % (where, i, x[i - 1], x[i]))
    bad = np.nonzero(cdf[1:] < cdf[:-1])[0]
    if bad.size:
        i = bad[0] + 1
        raise ValueError("%s: cdf decreases at index %d (%r then %r)" % (where, i, cdf[i - 1], cdf[i]))


def interpolate_cdf(x, cdf, v):
    """F(v) for float64 array v, the library's interpolate_cdf: numpy.interp's arithmetic."""
    v = np.asarray(v, dtype=np.float64)
    j = np.clip(np.searchsorted(x, v, side="right") - 1, 0, x.size - 2)
    slope = (cdf[j + 1] - cdf[j]) / (x[j + 1] - x[j])
    out = slope * (v - x[j]) + cdf[j]
    out = np.where(x[j] == v, cdf[j], out)
    out = np.where(v == x[-1], cdf[-1], out)
    out = np.where(v < x[0], 0.0, out)
    out = np.where(v > x[-1], 1.0, out)
    return np.where(np.isnan(v), v, out)


def _order_key(f):
    """float32 values (array) -> int64 keys increasing with the value (finite values only)."""
    bits = np.asarray(f, dtype=np.float32).view(np.int32).astype(np.int64)
    return np.where(bits >= 0, bits, -(bits & 0x7FFFFFFF))


def _from_order_key(k):
    k = np.asarray(k, dtype=np.int64)
    bits = np.where(k >= 0, k, (-k) | 0x80000000).astype(np.uint32)
    return bits.view(np.float32)


def bh_critical_values(alpha, n):
    """crit[k-1] = k * alpha / N in float32, as the library computes them."""
    a = np.float32(alpha)
    return (np.arange(1, n + 1, dtype=np.float32) * a) / np.float32(n)


class Calibration:
    """{layer id: (x [G] float64 increasing, cdf [G] float64 non-decreasing in [0, 1])}."""

    def __init__(self, layers, model="", description=""):
        self.layers = {}
        for layer, (x, cdf) in sorted(layers.items()):
            layer = int(layer)
            if layer < 0 or layer > MAX_LAYER_ID:
                raise ValueError("calibration layer %d is outside [0, %d]" % (layer, MAX_LAYER_ID))
            x = np.ascontiguousarray(x, dtype=np.float64)
            cdf = np.ascontiguousarray(cdf, dtype=np.float64)
            _check_grid(x, cdf, "calibration layer %d" % layer)
            self.layers[layer] = (x, cdf)
        self.model = model
        self.description = description
        self._cutoffs = {}

    @staticmethod
    def load(path):
        path = os.fspath(path)
        try:
            with open(path, encoding="utf-8") as f:
                doc = json.load(f, parse_constant=lambda c: _bad_constant(path, c))
        except json.JSONDecodeError as e:
            raise ValueError("calibration %s: not valid JSON (%s)" % (path, e)) from None
        if not isinstance(doc, dict):
            raise ValueError("calibration %s: the top level is not a JSON object" % path)
        if doc.get("format") != FORMAT:
            raise ValueError('calibration %s: "format" is %s, expected "%s"'
                             % (path, json.dumps(doc.get("format")), FORMAT))
        layers = doc.get("layers")
        if not isinstance(layers, list) or not layers:
            raise ValueError('calibration %s: "layers" is missing, not an array or empty' % path)
        grids = {}
        for i, entry in enumerate(layers):
            at = "calibration %s: layers[%d]" % (path, i)
            if not isinstance(entry, dict):
                raise ValueError(at + " is not an object")
            layer = entry.get("layer")
            if not isinstance(layer, int) or isinstance(layer, bool):
                raise ValueError(at + ': "layer" is not an integer (%s)' % json.dumps(layer))
            if layer < 0 or layer > MAX_LAYER_ID:
                raise ValueError(at + ': "layer" %d is outside [0, %d]' % (layer, MAX_LAYER_ID))
            if layer in grids:
                raise ValueError(at + ": given more than once")
            for key in ("x", "cdf"):
                if not isinstance(entry.get(key), list):
                    raise ValueError(at + ': "%s" is missing or not an array' % key)
            x = np.asarray(entry["x"], dtype=np.float64)
            cdf = np.asarray(entry["cdf"], dtype=np.float64)
            _check_grid(x, cdf, at)
            grids[layer] = (x, cdf)
        return Calibration(grids, doc.get("model", ""), doc.get("description", ""))

    def save(self, path):
        """Writes the JSON atomically (a temporary file renamed over the target)."""
        doc = {"format": FORMAT, "model": self.model, "description": self.description,
               "layers": [{"layer": l, "x": x.tolist(), "cdf": c.tolist()} for l, (x, c) in self.layers.items()]}
        tmp = os.fspath(path) + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(doc, f)
            f.write("\n")
        os.replace(tmp, path)

    @staticmethod
    def fit(logits_by_layer, method="ecdf", grid_points=4096, model="", description=""):
        """Fits each layer's CDF to its raw router logits (any shape; pooled over experts and tokens).

        ecdf: the empirical CDF at the distinct sample values (F = #{v <= x} / n), thinned to
        grid_points evenly spaced in rank, as the library's `calibrate --method ecdf`."""
        if method != "ecdf":
            raise ValueError('calibration fit: method "%s" is not supported here (ecdf); use `bhmoe calibrate '
                             '--method kde` for a kernel density fit' % method)
        grids = {}
        for layer, logits in logits_by_layer.items():
            v = np.sort(np.asarray(logits, dtype=np.float64).reshape(-1))
            if not np.all(np.isfinite(v)):
                raise ValueError("calibration fit (ecdf): layer %d has non-finite logits" % layer)
            last = np.nonzero(np.append(v[1:] != v[:-1], True))[0]  # last index of each distinct value
            values = v[last]
            fractions = (last + 1) / v.size
            if values.size < 2:
                raise ValueError("calibration fit (ecdf): layer %d: the samples have fewer than 2 distinct "
                                 "values" % layer)
            if values.size > grid_points:
                # std::llround: halves away from zero (np.round would round them to even).
                idx = np.floor(np.arange(grid_points) * (values.size - 1) / (grid_points - 1) + 0.5).astype(np.int64)
                values, fractions = values[idx], fractions[idx]
            grids[int(layer)] = (values, fractions)
        return Calibration(grids, model, description or "ECDF of raw router logits (bhmoe Python)")

    def has_layer(self, layer):
        return layer in self.layers

    def grid(self, layer):
        if layer not in self.layers:
            raise ValueError("calibration has no layer %d (it has %s)" % (layer, _layer_list(self.layers)))
        return self.layers[layer]

    def pvalues(self, logits, layer):
        """p = float32(1 - F_layer(logit)) for an array of logits, as the library computes them."""
        x, cdf = self.grid(layer)
        v = np.asarray(logits, dtype=np.float32).astype(np.float64)
        return (1.0 - interpolate_cdf(x, cdf, v)).astype(np.float32)

    def logit_cutoffs(self, layer, alpha, n):
        """cut[k-1]: the smallest float32 logit whose p-value passes BH's k-th critical value
        (+inf when none does, -inf when all do), non-increasing in k; the library's bh_logit_cutoffs.
        Expert i passes at k exactly when logit_i >= cut[k-1]."""
        key = (layer, float(alpha), int(n))
        if key in self._cutoffs:
            return self._cutoffs[key]
        x, cdf = self.grid(layer)
        crit = bh_critical_values(alpha, n)

        def p_at(f32):
            return (1.0 - interpolate_cdf(x, cdf, np.asarray(f32, dtype=np.float32).astype(np.float64))).astype(np.float32)

        fmax = np.float32(np.finfo(np.float32).max)
        lo = np.full(n, _order_key(-fmax), dtype=np.int64)
        hi = np.full(n, _order_key(fmax), dtype=np.int64)
        none_pass = ~(p_at(np.full(n, fmax)) <= crit)
        all_pass = p_at(np.full(n, -fmax)) <= crit
        # Invariant: fails at lo, passes at hi; bisect on the float32 order of the logit.
        while True:
            active = (hi - lo > 1) & ~none_pass & ~all_pass
            if not active.any():
                break
            mid = lo + (hi - lo) // 2
            passes = p_at(_from_order_key(mid)) <= crit
            hi = np.where(active & passes, mid, hi)
            lo = np.where(active & ~passes, mid, lo)
        cut = _from_order_key(hi).astype(np.float32)
        cut = np.where(none_pass, np.float32(np.inf), cut)
        cut = np.where(all_pass, np.float32(-np.inf), cut).astype(np.float32)
        cut = np.minimum.accumulate(cut)
        self._cutoffs[key] = cut
        return cut


def _layer_list(layers):
    ids = sorted(layers)
    return ", ".join(map(str, ids)) if len(ids) <= 16 else "%d layers, %d..%d" % (len(ids), ids[0], ids[-1])


def _bad_constant(path, c):
    raise ValueError("calibration %s: non-finite number (%s); grids must be finite" % (path, c))


__all__ = ["Calibration", "FORMAT", "bh_critical_values", "interpolate_cdf"]
