"""bhmoe._core through `import bhmoe`: routing cases and golden logits as the CLI reproduces them, NumPy
layouts, and bad input raising clear Python exceptions."""

import json
import subprocess
import os
import tempfile

import numpy as np
import pytest

import bhmoe

from paths import BINARY, BUNDLED, OLMOE_CALIBRATION, SHARED, needs_binary


def test_router_reproduces_shared_routing_cases():
    with open(os.path.join(SHARED, "routing-cases", "cases.json")) as f:
        cases = json.load(f)["cases"]
    cal = bhmoe.Calibration.load(OLMOE_CALIBRATION)
    for c in cases:
        logits = np.load(os.path.join(SHARED, "routing-cases", c["logits"]))
        router = bhmoe.Router("bh:alpha=%r,max_k=%d,min_k=%d" % (c["alpha"], c["max_k"], c["min_k"]), cal)
        ids, weights, counts = router.route(logits, layer=c["layer"])
        assert counts.tolist() == c["counts"]
        for t, experts in enumerate(c["experts"]):
            assert sorted(ids[t, :counts[t]].tolist()) == sorted(experts)
            assert (ids[t, counts[t]:] == -1).all() and (weights[t, counts[t]:] == 0).all()


def test_router_layouts_and_dtypes():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 6, 64)).astype(np.float32)
    router = bhmoe.Router("topp:p=0.6,renorm=true")
    ids, weights, counts = router.route(x, layer=0)
    assert ids.shape == (2, 6, 16) and weights.shape == (2, 6, 16) and counts.shape == (2, 6)
    flat = router.route(x.reshape(12, 64))
    assert np.array_equal(flat[0], ids.reshape(12, 16)) and np.array_equal(flat[1], weights.reshape(12, 16))
    # float16 and bfloat16 (as uint16 bits) are widened to float32 exactly.
    h = x.astype(np.float16)
    assert np.array_equal(router.route(h)[0], router.route(h.astype(np.float32))[0])
    bf16_bits = (x.view(np.uint32) >> 16).astype(np.uint16)
    widened = (bf16_bits.astype(np.uint32) << 16).view(np.float32)
    assert np.array_equal(router.route(bf16_bits)[1], router.route(widened)[1])
    # A non-contiguous view is copied, not misread.
    assert np.array_equal(router.route(x[:, ::2])[0], router.route(np.ascontiguousarray(x[:, ::2]))[0])
    assert np.allclose(weights.sum(-1), 1.0, atol=1e-6)


def test_router_errors_are_clear():
    cal = bhmoe.Calibration.load(OLMOE_CALIBRATION)
    with pytest.raises(TypeError, match="expected float32"):
        bhmoe.Router("topk:k=2").route(np.zeros((2, 8), dtype=np.int32))
    with pytest.raises(ValueError, match=r"\[T, N\] or \[B, S, N\]"):
        bhmoe.Router("topk:k=2").route(np.zeros(8, dtype=np.float32))
    x = np.zeros((3, 64), dtype=np.float32)
    x[2, 7] = np.nan
    with pytest.raises(ValueError, match="token 2: layer 4: router logit of expert 7 is nan"):
        bhmoe.Router("topk:k=2").route(x, layer=4)
    with pytest.raises(ValueError, match='key "k": 65 exceeds N=64'):
        bhmoe.Router("topk:k=65").route(np.zeros((1, 64), dtype=np.float32))
    with pytest.raises(ValueError, match="needs a calibration"):
        bhmoe.Router("bh:alpha=0.05,max_k=8")
    with pytest.raises(ValueError, match="calibration has no layer 16"):
        bhmoe.Router("bh:alpha=0.05,max_k=8", cal).route(np.zeros((1, 64), dtype=np.float32), layer=16)
    with pytest.raises(ValueError, match='unknown rule "top"'):
        bhmoe.parse_router_spec("top:k=3")
    with pytest.raises(ValueError, match="no-such-file"):
        bhmoe.Calibration.load("no-such-file.json")


def test_calibration_fit_save_load_pvalues():
    rng = np.random.default_rng(1)
    samples = {0: rng.standard_normal(5000).astype(np.float32), 3: rng.standard_normal((100, 64)).astype(np.float32)}
    cal = bhmoe.Calibration.fit(samples, "ecdf")
    assert cal.layers == [0, 3]
    kde = bhmoe.Calibration.fit(samples, "kde", 512)
    assert len(kde.grid(0)[0]) == 512
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "c.json")
        cal.save(path)
        back = bhmoe.Calibration.load(path)
    for layer in (0, 3):
        assert np.array_equal(back.grid(layer)[0], cal.grid(layer)[0])
    p = cal.pvalues(np.array([-10.0, 0.0, 10.0], dtype=np.float32), 0)
    assert p[0] == 1.0 and p[2] == 0.0 and 0.4 < p[1] < 0.6
    with pytest.raises(ValueError, match='"gauss"'):
        bhmoe.Calibration.fit(samples, "gauss")


@pytest.mark.parametrize("folder", ["tiny-f32", "tiny-bf16"])
def test_model_logits_match_the_golden_files(folder):
    d = os.path.join(SHARED, "golden", folder)
    model = bhmoe.Model(d, threads=1)
    with open(os.path.join(d, "cases.json")) as f:
        cases = json.load(f)
    tol = 1e-4 if folder == "tiny-f32" else 6e-2
    for case in cases:
        for spec, fname in case["logits"].items():
            if spec == "native_llamacpp":
                continue
            router = None if spec == "native" else spec
            got = model.logits(case["ids"], router=router, calibration=os.path.join(d, "calibration.json"))
            want = np.load(os.path.join(d, fname))
            assert got.shape == want.shape
            if folder == "tiny-f32" or not spec.startswith("bh"):  # bf16 BH may flip a boundary decision
                assert np.abs(got - want).max() < tol, (folder, spec)


def test_model_verbs_on_the_bundled_model():
    model = bhmoe.Model(BUNDLED, threads=1)
    assert model.config["num_experts"] == 64
    text = open(os.path.join(BUNDLED, "heldout.txt"), encoding="utf-8").read()[:3000]
    ids = model.tokenize(text)
    assert model.detokenize(ids) == text
    native = model.score(text, window=256)
    two = model.score(text, router="topk:k=2", window=256)
    assert two["mean_experts"] == pytest.approx(2.0) and native["mean_experts"] == pytest.approx(8.0)
    assert native["nll"] < two["nll"]
    out = model.generate("The", max_new_tokens=5)
    assert len(out["tokens"]) <= 5 and isinstance(out["text"], str)
    logits = model.logits(ids[:20])
    assert logits.shape == (20, model.config["vocab_size"]) and np.isfinite(logits).all()
    model.close()
    with pytest.raises(ValueError, match="model is closed"):
        model.logits(ids[:20])


def test_model_errors_are_clear():
    with pytest.raises(ValueError, match="no-such-model"):
        bhmoe.Model("no-such-model")
    model = bhmoe.Model(BUNDLED, threads=1)
    with pytest.raises(ValueError, match="needs a calibration|calibration"):
        model.logits([1, 2, 3], router="bh:alpha=0.05,max_k=8")
    with pytest.raises(ValueError):
        model.logits([1, 2, 10 ** 9])
    with pytest.raises(ValueError, match="max_new_tokens -1"):
        model.generate("The", max_new_tokens=-1)


def test_load_results_flattens_rows_for_pandas():
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "results.jsonl"), "w") as f:
            f.write(json.dumps({"key": "a", "config": {"type": "topk", "k": 8}, "model": {"name": "m"},
                                "count_histogram": [0, 2]}) + "\n")
            f.write(json.dumps({"key": "b", "config": {"type": "bh", "alpha": 0.05}, "model": {"name": "m"}}) + "\n")
            f.write('{"key": "c", "conf')  # torn by a kill mid-write
        rows = bhmoe.load_results(d)
        assert [r["key"] for r in rows] == ["a", "b"]
        assert rows[0]["config.k"] == 8 and rows[1]["config.alpha"] == 0.05 and rows[0]["model.name"] == "m"
        assert rows[0]["count_histogram"] == [0, 2]
        with open(os.path.join(d, "bad.jsonl"), "w") as f:
            f.write('{"key": 1}\nnot json\n{"key": 2}\n')
        with pytest.raises(ValueError, match="bad.jsonl:2"):
            bhmoe.load_results(os.path.join(d, "bad.jsonl"))
    pandas = pytest.importorskip("pandas")
    assert list(pandas.DataFrame(rows)["config.type"]) == ["topk", "bh"]


def test_simd_level_can_be_lowered_and_restored_but_not_raised():
    levels = ["scalar", "avx2", "avx512", "avx512bf16"]
    best = bhmoe.detected_simd_level()
    assert best in levels
    assert bhmoe.simd_level() == best
    try:
        bhmoe.set_simd_level("scalar")
        assert bhmoe.simd_level() == "scalar"
        # The scalar routers decide exactly as the vectorised ones.
        r = bhmoe.Router("topk:k=8")
        logits = np.random.default_rng(3).standard_normal((5, 64)).astype(np.float32)
        ids_scalar = r.route(logits)[0]
        bhmoe.set_simd_level(best)
        np.testing.assert_array_equal(r.route(logits)[0], ids_scalar)
        with pytest.raises(ValueError, match="expected scalar, avx2, avx512 or avx512bf16"):
            bhmoe.set_simd_level("sse9")
        if best != "avx512bf16":
            with pytest.raises(ValueError, match="not supported by this CPU"):
                bhmoe.set_simd_level(levels[levels.index(best) + 1])
    finally:
        bhmoe.set_simd_level(best)


@needs_binary
def test_a_gguf_file_loads_as_its_checkpoint_folder_does():
    # bhmoe convert writes the bundled model as GGUF (bf16 matrices copied as stored, routers F32):
    # the same tokenizer ids and, on the same ids, logits within the router's bf16-vs-f32 rounding.
    with tempfile.TemporaryDirectory() as d:
        gguf = os.path.join(d, "tiny.gguf")
        subprocess.run([BINARY, "convert", "--model", BUNDLED, "--out", gguf], check=True,
                       capture_output=True)
        folder = bhmoe.Model(BUNDLED, threads=1)
        single = bhmoe.Model(gguf, threads=1)
        text = "The children of Israel went up out of the land of Egypt."
        ids = single.tokenize(text)
        assert ids == folder.tokenize(text)
        a, b = single.logits(ids), folder.logits(ids)
        assert a.shape == b.shape
        assert (a.argmax(-1) == b.argmax(-1)).mean() >= 0.9
        np.testing.assert_allclose(a, b, atol=0.5)


@needs_binary
@pytest.mark.parametrize("preset,model_type", [("qwen2-moe-tiny", "qwen2_moe"),
                                               ("qwen3-moe-tiny", "qwen3_moe"),
                                               ("mixtral-tiny", "mixtral")])
def test_every_family_loads_and_routes_from_python(preset, model_type):
    # The family goldens' seed-7 f32 models: the module reproduces their reference logits, and the
    # observer and trace see the family's own router (Qwen2-MoE's shared expert never counted).
    data = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                        "src", "model", "testdata", "families")
    with tempfile.TemporaryDirectory() as d:
        folder = os.path.join(d, preset)
        subprocess.run([BINARY, "make-model", "--preset", preset, "--dtype", "f32", "--seed", "7", folder],
                       check=True, capture_output=True)
        model = bhmoe.Model(folder, threads=1)
        assert model.config["model_type"] == model_type
        ids = [5, 77, 300, 12, 999, 4, 256, 31, 8, 640, 2, 100]
        seen = []
        logits = model.logits(ids, observer=lambda layer, pos, lg, e, w: seen.append(len(e)))
        want = np.load(os.path.join(data, preset + "-hf-native.npy"))
        np.testing.assert_allclose(logits, want, atol=1e-4, rtol=0)
        k = model.config["num_experts_per_tok"]
        assert seen == [k] * (len(ids) * model.config["num_hidden_layers"])
        calibration = os.path.join(data, preset + "-calibration.json")
        trace = model.trace(ids, router="bh:alpha=0.2,max_k=6", calibration=calibration)
        counts = np.asarray(trace["counts"])
        assert counts.shape == (len(ids), model.config["num_hidden_layers"])
        assert counts.min() >= 1 and counts.max() <= 6
