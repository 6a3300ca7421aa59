"""bhmoe.torch.patch_moe_blocks on the project's PyTorch OLMoE (tools/olmoe_torch.py) loaded with the
bundled weights: the same logits as the C++ engine under the same router spec, and calibrations that
travel both ways between Python and the engine."""

import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import bhmoe  # noqa: E402
import bhmoe.torch  # noqa: E402

from paths import BINARY, BUNDLED, ROOT, needs_binary  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "tools"))
import export  # noqa: E402  (tools/: loads a model folder into olmoe_torch)

MODEL = os.environ.get("BHMOE_MODEL", BUNDLED)  # another OLMoE folder to compare on, if set


# Both sides in fp32: on an AVX512-BF16 CPU the engine would round batched activations to bf16
# (kernels/ops.h), which moves router weights by ~5e-4; one level down it keeps them fp32. The
# subprocess (bhmoe logits) takes the same cap from BHMOE_SIMD.
_LEVELS = ["scalar", "avx2", "avx512", "avx512bf16"]
FP32_LEVEL = _LEVELS[min(_LEVELS.index(bhmoe.detected_simd_level()), _LEVELS.index("avx512"))]


@pytest.fixture(scope="module", autouse=True)
def fp32_activations():
    before = bhmoe.simd_level()
    bhmoe.set_simd_level(FP32_LEVEL)
    yield
    bhmoe.set_simd_level(before)


@pytest.fixture(scope="module")
def model_and_ids():
    torch.set_num_threads(1)
    model, tok, cfg = export.load_model_dir(MODEL)
    with open(os.path.join(MODEL, "reference", "cases.json")) as f:
        ids = json.load(f)["cases"][0]["ids"][:32]
    return model, ids, cfg


def engine_logits(ids, router, calibration):
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "logits.npy")
        subprocess.run([BINARY, "logits", "--model", MODEL, "--ids", " ".join(map(str, ids)), "--router", router,
                        "--calibration", calibration, "--threads", "1", "--out", out],
                       check=True, capture_output=True, env=dict(os.environ, BHMOE_SIMD=FP32_LEVEL))
        return np.load(out)


@needs_binary
@pytest.mark.parametrize("router", ["bh:alpha=0.05,max_k=16", "topk:k=2", "topp:p=0.5,renorm=true"])
def test_patched_model_matches_engine(model_and_ids, router):
    model, ids, cfg = model_and_ids
    calibration = os.path.join(MODEL, "calibration.json")
    blocks = bhmoe.torch.patch_moe_blocks(model, router, calibration)
    try:
        assert len(blocks) == cfg.num_layers
        with torch.no_grad():
            ours, _ = model(torch.tensor([ids]))
        counts = torch.stack([b.last[2] for b in blocks])  # [layers, T]
    finally:
        for layer in model.model.layers:
            layer.mlp = layer.mlp.block
    theirs = engine_logits(ids, router, calibration)
    # The same selections, token by token and layer by layer, as the engine's own trace.
    trace = bhmoe.Model(MODEL, threads=1).trace(ids, router=router, calibration=calibration)
    for li, b in enumerate(blocks):
        t_ids, t_weights, t_counts = (x.numpy() for x in b.last)
        np.testing.assert_array_equal(t_counts, trace["counts"][:, li])
        np.testing.assert_array_equal(t_ids, trace["ids"][:, li, :t_ids.shape[1]])
        np.testing.assert_allclose(t_weights, trace["weights"][:, li, :t_ids.shape[1]], atol=1e-5, rtol=0)
    # Both compute in fp32 on the same bf16 weights; only summation orders differ (measured: 6e-6).
    # A different selection anywhere moves logits by far more (renorm=true instead of false: 11).
    np.testing.assert_allclose(ours[0].numpy(), theirs, atol=1e-4, rtol=0)
    if router.startswith("topk"):
        assert (counts == 2).all()
    else:
        assert counts.float().std() > 0  # adaptive: counts vary by token and layer


def test_patch_changes_routing_and_undo_restores_it(model_and_ids):
    model, ids, _ = model_and_ids
    x = torch.tensor([ids])
    with torch.no_grad():
        native, _ = model(x)
        blocks = bhmoe.torch.patch_moe_blocks(model, "topk:k=8")
        same, _ = model(x)
        for layer in model.model.layers:
            layer.mlp = layer.mlp.block
        blocks = bhmoe.torch.patch_moe_blocks(model, "topk:k=1")
        fewer, _ = model(x)
        for layer in model.model.layers:
            layer.mlp = layer.mlp.block
        back, _ = model(x)
    assert torch.allclose(same, native, atol=1e-4)  # topk:k=8 is the native rule
    assert (fewer - native).abs().max() > 1e-2
    assert torch.equal(back, native)
    with pytest.raises(ValueError, match="no MoE block"):
        bhmoe.torch.patch_moe_blocks(torch.nn.Linear(3, 3), "topk:k=1")
    assert blocks[0].last[0].shape[1] == 1


@needs_binary
def test_calibration_from_torch_hook_loads_in_engine_and_back(model_and_ids):
    """Fit a calibration from router logits collected by forward hooks; bhmoe route uses the file and
    agrees with bhmoe.torch.route; the engine's own calibration loads in Python."""
    model, ids, cfg = model_and_ids
    collected = {}
    hooks = [layer.mlp.gate.register_forward_hook(
        lambda mod, inp, out, li=li: collected.setdefault(li, []).append(out.detach().float()))
        for li, layer in enumerate(model.model.layers)]
    try:
        with torch.no_grad():
            model(torch.tensor([ids]))
    finally:
        for h in hooks:
            h.remove()
    cal = bhmoe.Calibration.fit({li: torch.cat(v).numpy() for li, v in collected.items()}, "ecdf")
    cal.model = "hooked"
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "cal.json")
        cal.save(path)
        logits = torch.cat(collected[1]).numpy()
        np.save(os.path.join(d, "l.npy"), logits)
        out = os.path.join(d, "r.jsonl")
        subprocess.run([BINARY, "route", "--logits", os.path.join(d, "l.npy"), "--layer", "1", "--calibration", path,
                        "--router", "bh:alpha=0.2,max_k=16", "--out", out], check=True, capture_output=True)
        rows = [json.loads(line) for line in open(out)]
        _, _, counts = bhmoe.torch.route(torch.from_numpy(logits), "bh:alpha=0.2,max_k=16", path, layer=1)
        assert [r["count"] for r in rows] == counts.tolist()
        engine_cal = bhmoe.Calibration.load(os.path.join(MODEL, "calibration.json"))
        assert sorted(engine_cal.layers) == list(range(cfg.num_layers))
        engine_cal.save(os.path.join(d, "again.json"))
        again = bhmoe.Calibration.load(os.path.join(d, "again.json"))
        for li in engine_cal.layers:
            assert np.array_equal(again.grid(li)[0], engine_cal.grid(li)[0])
