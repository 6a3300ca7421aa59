"""bhmoe.torch.route against the C++ library: the shared routing cases (the original implementation's
selections) and `bhmoe route` on random logits with ties, bit for bit."""

import json
import os
import subprocess
import tempfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import bhmoe  # noqa: E402
import bhmoe.torch  # noqa: E402

from paths import BINARY, OLMOE_CALIBRATION, SHARED


@pytest.fixture(scope="module")
def olmoe_calibration():
    return bhmoe.Calibration.load(OLMOE_CALIBRATION)


def test_shared_routing_cases(olmoe_calibration):
    with open(os.path.join(SHARED, "routing-cases", "cases.json")) as f:
        cases = json.load(f)["cases"]
    assert len(cases) >= 72
    for c in cases:
        logits = torch.from_numpy(np.load(os.path.join(SHARED, "routing-cases", c["logits"])))
        spec = "bh:alpha=%r,max_k=%d,min_k=%d,temperature=%r" % (c["alpha"], c["max_k"], c["min_k"], c["temperature"])
        ids, weights, counts = bhmoe.torch.route(logits, spec, olmoe_calibration, layer=c["layer"])
        assert counts.tolist() == c["counts"], (c["logits"], c["layer"], c["alpha"], c["max_k"])
        for t, experts in enumerate(c["experts"]):
            assert sorted(ids[t, :counts[t]].tolist()) == sorted(experts)
        assert abs(counts.double().mean().item() - c["mean_count"]) < 0.01


def test_batched_shape_equals_flat(olmoe_calibration):
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 5, 64, generator=g)
    a = bhmoe.torch.route(logits, "bh:alpha=0.1,max_k=16", olmoe_calibration, layer=2)
    b = bhmoe.torch.route(logits.reshape(10, 64), "bh:alpha=0.1,max_k=16", olmoe_calibration, layer=2)
    assert a[0].shape == (2, 5, 16) and a[2].shape == (2, 5)
    for x, y in zip(a, b):
        assert torch.equal(x.reshape(y.shape), y)


def _random_logits(tokens, n, seed):
    """Normal logits with ties: a third of the rows rounded to quarters, some rows constant."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((tokens, n)).astype(np.float32) * 1.5
    x[::3] = np.round(x[::3] * 4) / 4
    x[5::97] = 0.25
    x[7::11, :8] += 2.0  # a few clearly preferred experts
    return x


SPECS = [
    "topk:k=8", "topk:k=1", "topk:k=8,renorm=true,temperature=0.7", "topk:k=64",
    "topp:p=0.5", "topp:p=0.9,max_k=24,min_k=2", "topp:p=0.3,temperature=2,renorm=true", "topp:p=1",
    "bh:alpha=0.05,max_k=16", "bh:alpha=0.2,max_k=64,min_k=1", "bh:alpha=0.01,max_k=8,min_k=2,renorm=true",
    "bh:alpha=0.5,max_k=16,temperature=0.5", "bh:alpha=0.05,max_k=16,pvalues=one-minus-prob",
    "skip:beta=0.3", "skip:beta=0.1,max_k=16,min_k=2,renorm=true", "skip:beta=0.5,temperature=2", "skip:beta=1",
    "threshold:tau=0.05", "threshold:tau=0.02,max_k=64,temperature=0.7,renorm=true", "threshold:tau=0.2,min_k=2",
    "threshold:tau=1",
    "hc:max_k=16", "hc:max_k=64,alpha0=1", "hc:max_k=8,min_k=2,alpha0=0.1,renorm=true,temperature=0.5",
    "entropy:ks=1/2/4/8", "entropy:ks=2/2/6,temperature=0.5,renorm=true", "entropy:ks=3",
]

LAYERS = [0, 7, 15]


@pytest.fixture(scope="module")
def calibration_path(tmp_path_factory):
    """The real OLMoE calibration plus entropy quantiles for LAYERS, fitted by the library on other
    random logits of the test's kind (the shared file predates entropy quantiles)."""
    with open(OLMOE_CALIBRATION) as f:
        doc = json.load(f)
    fitted = bhmoe.Calibration.fit({layer: _random_logits(5000, 64, seed=100 + layer) for layer in LAYERS}, "ecdf", 100)
    for entry in doc["layers"]:
        if entry["layer"] in LAYERS:
            entry["entropy_quantiles"] = fitted.entropy_quantiles(entry["layer"]).tolist()
    path = str(tmp_path_factory.mktemp("calibration") / "olmoe-with-entropy.json")
    with open(path, "w") as f:
        json.dump(doc, f)
    return path


@pytest.mark.skipif(not os.access(BINARY, os.X_OK), reason="needs the built bhmoe binary")
@pytest.mark.parametrize("layer", LAYERS)
def test_equals_cpp_library_on_random_logits_with_ties(calibration_path, layer):
    calibration = bhmoe.Calibration.load(calibration_path)
    logits = _random_logits(34000, 64, seed=layer)  # 3 layers: 102,000 tokens per spec
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "logits.npy")
        np.save(path, logits)
        out = os.path.join(d, "routes.jsonl")
        cmd = [BINARY, "route", "--logits", path, "--layer", str(layer), "--calibration", calibration_path,
               "--out", out]
        for s in SPECS:
            cmd += ["--router", s]
        subprocess.run(cmd, check=True, capture_output=True)
        rows = [json.loads(line) for line in open(out)]
    by_router = {}
    for row in rows:
        by_router.setdefault(row["router"], []).append(row)
    assert len(by_router) == len(SPECS)
    t_logits = torch.from_numpy(logits)
    for s in SPECS:
        canonical = bhmoe.canonical_spec(bhmoe.resolve_router_spec(bhmoe.parse_router_spec(s), 64))
        expected = sorted(by_router[canonical], key=lambda r: r["token"])
        ids, weights, counts = bhmoe.torch.route(t_logits, s, calibration, layer=layer)
        assert len(expected) == len(logits)
        want_ids = np.full(tuple(ids.shape), -1, dtype=np.int64)
        want_weights = np.zeros(tuple(weights.shape), dtype=np.float32)
        for t, row in enumerate(expected):
            want_ids[t, :row["count"]] = row["experts"]
            want_weights[t, :row["count"]] = row["weights"]
        np.testing.assert_array_equal(counts.numpy(), [row["count"] for row in expected], err_msg=s)
        np.testing.assert_array_equal(ids.numpy(), want_ids, err_msg=s)
        np.testing.assert_array_equal(weights.numpy(), want_weights, err_msg=s)
        # An adaptive rule must adapt on these logits (a count that never varies would hide a rule
        # reduced to top-k); entropy:ks=3 and the saturating threshold/skip specs are constant.
        if s.split(":")[0] in ("skip", "threshold", "hc", "entropy") and s not in (
                "entropy:ks=3", "threshold:tau=1"):
            assert counts.min() < counts.max(), s


def test_entropy_equals_the_library_bit_for_bit():
    logits = torch.from_numpy(_random_logits(20000, 64, seed=5))
    logits[3::50] *= 200.0  # exp underflow for most experts
    logits[4::50, 0] = 3e38
    logits[4::50, 1:] = -3e38  # r - max overflows to -inf
    r = logits.float()
    mx = r.max(dim=1).values
    e, total = bhmoe.torch._softmax_numerators(r, mx, 1.0)
    h = bhmoe.torch._router_entropy(r, mx, e, total)
    np.testing.assert_array_equal(h.numpy(), bhmoe.router_entropy(logits.numpy()))
    odd = torch.from_numpy(_random_logits(500, 13, seed=6))  # N not a multiple of 8: the tail
    mx = odd.max(dim=1).values
    e, total = bhmoe.torch._softmax_numerators(odd, mx, 1.0)
    np.testing.assert_array_equal(bhmoe.torch._router_entropy(odd, mx, e, total).numpy(),
                                  bhmoe.router_entropy(odd.numpy()))


def test_adaptive_rule_names_and_counts(calibration_path):
    for text, rule, width in [("skip:beta=0.3", "skip", 8), ("threshold:tau=0.05", "threshold", 16),
                              ("hc:max_k=12", "hc", 12), ("entropy:ks=1/2/4/8", "entropy", 8)]:
        spec = bhmoe.resolve_router_spec(bhmoe.parse_router_spec(text), 64)
        assert spec.rule == rule and spec.max_count() == width
    assert bhmoe.parse_router_spec("entropy:ks=1/3/5").ks == [1, 3, 5]
    assert bhmoe.parse_router_spec("skip:beta=0.25").beta == 0.25
    assert bhmoe.parse_router_spec("threshold:tau=0.125").tau == 0.125
    assert bhmoe.parse_router_spec("hc:max_k=4,alpha0=0.75").alpha0 == 0.75
    assert bhmoe.parse_router_spec("hc:max_k=4").uses_calibration
    # The numpy Router gives what torch gives.
    calibration = bhmoe.Calibration.load(calibration_path)
    x = _random_logits(300, 64, seed=9)
    for text in ("skip:beta=0.3", "hc:max_k=16", "entropy:ks=1/2/4/8"):
        ids, weights, counts = bhmoe.Router(text, calibration).route(x, layer=7)
        t_ids, t_weights, t_counts = bhmoe.torch.route(torch.from_numpy(x), text, calibration, layer=7)
        np.testing.assert_array_equal(counts, t_counts.numpy())
        np.testing.assert_array_equal(ids, t_ids.numpy())
        np.testing.assert_array_equal(weights, t_weights.numpy())


def test_entropy_errors_name_the_layer(olmoe_calibration, calibration_path):
    with pytest.raises(ValueError, match="no entropy quantiles for layer 0"):
        bhmoe.torch.route(torch.zeros(2, 64), "entropy:ks=1/8", olmoe_calibration, layer=0)
    with pytest.raises(ValueError, match="needs a calibration with entropy quantiles"):
        bhmoe.torch.route(torch.zeros(2, 64), "entropy:ks=1/8")
    calibration = bhmoe.Calibration.load(calibration_path)
    with pytest.raises(ValueError, match=r"no entropy quantiles for layer 3 \(it has them for layers 0,7,15"):
        bhmoe.torch.route(torch.zeros(2, 64), "entropy:ks=1/8", calibration, layer=3)
    with pytest.raises(ValueError, match='key "ks": 1/80'):
        bhmoe.torch.route(torch.zeros(2, 64), "entropy:ks=1/80/2", calibration)


def test_errors_name_what_is_wrong(olmoe_calibration):
    x = torch.zeros(3, 64)
    x[1, 5] = float("nan")
    with pytest.raises(ValueError, match="token 1: layer 2: router logit of expert 5 is nan"):
        bhmoe.torch.route(x, "topk:k=8", layer=2)
    with pytest.raises(ValueError, match='key "alpha": 1.5 is outside'):
        bhmoe.torch.route(torch.zeros(1, 64), "bh:alpha=1.5,max_k=8", olmoe_calibration)
    with pytest.raises(ValueError, match="needs a calibration"):
        bhmoe.torch.route(torch.zeros(1, 64), "bh:alpha=0.1,max_k=8")
    with pytest.raises(ValueError, match="calibration has no layer 99"):
        bhmoe.torch.route(torch.zeros(1, 64), "bh:alpha=0.1,max_k=8", olmoe_calibration, layer=99)
    with pytest.raises(ValueError, match='key "k": 65 exceeds N=64'):
        bhmoe.torch.route(torch.zeros(1, 64), "topk:k=65")
    with pytest.raises(ValueError, match=r"\[T, N\] or \[B, S, N\]"):
        bhmoe.torch.route(torch.zeros(64), "topk:k=8")
    with pytest.raises(TypeError, match="floating point"):
        bhmoe.torch.route(torch.zeros(2, 64, dtype=torch.int32), "topk:k=8")


def test_half_precision_is_widened(olmoe_calibration):
    x = torch.randn(50, 64, generator=torch.Generator().manual_seed(1))
    a = bhmoe.torch.route(x.to(torch.bfloat16), "bh:alpha=0.1,max_k=16", olmoe_calibration, layer=1)
    b = bhmoe.torch.route(x.to(torch.bfloat16).float(), "bh:alpha=0.1,max_k=16", olmoe_calibration, layer=1)
    for u, v in zip(a, b):
        assert torch.equal(u, v)


def test_values_exactly_at_the_bar_are_decided_as_the_library_decides(tmp_path):
    """Rows whose probability equals tau, or whose entropy equals a bucket boundary, exactly: the
    comparisons' direction (>= tau, > boundary) must be the library's."""
    rng = np.random.default_rng(11)
    rows = rng.standard_normal((5, 64)).astype(np.float32) * np.float32([0.2, 0.7, 1.2, 2.0, 3.5])[:, None]
    # Five tokens: the entropy quantiles at levels 1/4, 1/2, 3/4 are exactly tokens 1, 2 and 3's.
    calibration = bhmoe.Calibration.fit({0: rows}, "ecdf", 100)
    h = bhmoe.router_entropy(rows)
    order = np.argsort(h)
    t = calibration.entropy_thresholds(0, 4)
    np.testing.assert_array_equal(t, h[order[1:4]])
    path = str(tmp_path / "c.json")
    calibration.save(path)
    calibration = bhmoe.Calibration.load(path)
    # Two experts with e = 1 and the rest underflowing to 0: both have probability 0.5 exactly.
    half = np.full((1, 64), -200.0, dtype=np.float32)
    half[0, [5, 9]] = 0.0
    cases = [(rows, "entropy:ks=1/2/4/8"), (half, "threshold:tau=0.5"), (half, "threshold:tau=0.5,max_k=4,min_k=1"),
             (half, "skip:beta=1")]
    for x, spec in cases:
        ids, weights, counts = bhmoe.Router(spec, calibration).route(x, layer=0)
        t_ids, t_weights, t_counts = bhmoe.torch.route(torch.from_numpy(x), spec, calibration, layer=0)
        np.testing.assert_array_equal(counts, t_counts.numpy(), err_msg=spec)
        np.testing.assert_array_equal(ids, t_ids.numpy(), err_msg=spec)
        np.testing.assert_array_equal(weights, t_weights.numpy(), err_msg=spec)
    # The library's choices: at a boundary the lower bucket; a probability equal to tau passes.
    counts = bhmoe.Router("entropy:ks=1/2/4/8", calibration).route(rows[order], layer=0)[2]
    assert counts.tolist() == [1, 1, 2, 4, 8]
    assert bhmoe.Router("threshold:tau=0.5", calibration).route(half)[0][0, :2].tolist() == [5, 9]
