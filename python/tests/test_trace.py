"""Model.trace, the router observer and bhmoe.run: the arrays `bhmoe trace` writes, the decisions a
Router makes on the traced logits, observer views and errors, and an experiment run from Python."""

import os
import subprocess
import tempfile

import numpy as np
import pytest

import bhmoe

from paths import BINARY, BUNDLED, GOLDEN, needs_binary
IDS = [1, 306, 465, 278, 659, 310, 283, 338, 17, 940, 5, 77]


@pytest.fixture(scope="module")
def golden():
    model = bhmoe.Model(GOLDEN, threads=1)
    yield model
    model.close()


@pytest.mark.parametrize("spec", ["topk:k=3", "bh:alpha=0.3,max_k=6", "topp:p=0.6"])
def test_trace_equals_the_router_on_the_traced_logits(golden, spec):
    cal = os.path.join(GOLDEN, "calibration.json")
    t = golden.trace(IDS, router=spec, calibration=cal, router_logits=True)
    T, L, N = len(IDS), 2, 8
    assert t["tokens"].tolist() == IDS
    assert t["router_logits"].shape == (T, L, N) and t["router_logits"].dtype == np.float32
    assert t["counts"].shape == (T, L) and t["counts"].dtype == np.int32
    assert t["router"].startswith(spec.split(",")[0])
    router = bhmoe.Router(spec, cal)
    for layer in range(L):
        ids, weights, counts = router.route(t["router_logits"][:, layer, :], layer=layer)
        k = ids.shape[1]
        assert t["ids"].shape == (T, L, k)
        np.testing.assert_array_equal(counts, t["counts"][:, layer])
        np.testing.assert_array_equal(ids, t["ids"][:, layer])
        np.testing.assert_array_equal(weights, t["weights"][:, layer])
    assert "router_logits" not in golden.trace(IDS, router=spec, calibration=cal)


@needs_binary
def test_trace_equals_the_cli_npz():
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "t.npz")
        subprocess.run([BINARY, "trace", "--model", GOLDEN, "--ids", " ".join(map(str, IDS)), "--router",
                        "topk:k=2", "--router-logits", "--window", "5", "--threads", "1", "--out", path],
                       check=True, capture_output=True)
        cli = np.load(path)
        py = bhmoe.Model(GOLDEN, threads=1).trace(IDS, router="topk:k=2", router_logits=True, window=5)
        for name in ("tokens", "ids", "weights", "counts", "router_logits"):
            assert cli[name].dtype == py[name].dtype, name
            np.testing.assert_array_equal(cli[name], py[name], err_msg=name)
        assert str(cli["router"]) == py["router"]
        # numpy.savez archives (with numpy's ZIP64 fields) are read back by the CLI too.
        resaved = os.path.join(d, "resaved.npz")
        np.savez(resaved, **{k: cli[k] for k in cli.files})
        out = os.path.join(d, "r.jsonl")
        subprocess.run([BINARY, "route", "--logits", resaved, "--layer", "1", "--router", "topk:k=2", "--out", out],
                       check=True, capture_output=True)
        compressed = os.path.join(d, "c.npz")
        np.savez_compressed(compressed, **{k: cli[k] for k in cli.files})
        r = subprocess.run([BINARY, "route", "--logits", compressed, "--layer", "0", "--router", "topk:k=2"],
                           capture_output=True, text=True)
        assert r.returncode == 1 and "savez_compressed" in r.stderr


def test_observer_sees_every_decision_as_read_only_views(golden):
    events = []

    def observe(layer, position, logits, ids, weights):
        assert not logits.flags.writeable and not ids.flags.writeable
        events.append((layer, position, logits.copy(), ids.copy(), weights.copy()))

    logits = golden.logits(IDS, router="topk:k=3", observer=observe)
    assert logits.shape == (len(IDS), 1024)
    assert len(events) == len(IDS) * 2
    t = golden.trace(IDS, router="topk:k=3", router_logits=True)
    for layer, position, lg, ids, weights in events:
        np.testing.assert_array_equal(lg, t["router_logits"][position, layer])
        np.testing.assert_array_equal(ids, t["ids"][position, layer])
        np.testing.assert_array_equal(weights, t["weights"][position, layer])
    # Observing changes nothing.
    np.testing.assert_array_equal(logits, golden.logits(IDS, router="topk:k=3"))
    seen = []
    golden.score("ab cd ef gh", observer=lambda *a: seen.append(a[0]))
    out = golden.generate([1, 306], max_new_tokens=3, observer=lambda *a: seen.append(a[0]))
    assert isinstance(out["text"], str)  # byte tokens that split a character decode to U+FFFD
    assert seen and set(seen) == {0, 1}


def test_observer_errors_reach_the_caller(golden):
    def boom(layer, position, *_):
        if position == 3:
            raise KeyError("stop at 3")

    with pytest.raises(KeyError, match="stop at 3"):
        golden.logits(IDS, observer=boom)
    with pytest.raises(TypeError, match="callable"):
        golden.logits(IDS, observer=42)
    # The model is still usable afterwards.
    assert golden.logits(IDS[:3]).shape == (3, 1024)


def test_trace_errors_are_clear(golden):
    with pytest.raises(ValueError, match="no tokens"):
        golden.trace([])
    with pytest.raises(ValueError, match="window"):
        golden.trace(IDS, window=0)
    with pytest.raises(ValueError, match="calibration"):
        golden.trace(IDS, router="bh:alpha=0.1,max_k=4")


def test_run_from_python_writes_results_pandas_reads():
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "seed")
        model = bhmoe.Model(BUNDLED, threads=1)
        s = bhmoe.run(model, "seed", out, max_new_tokens=2, limit=3, report=False)
        assert s["ran"] == 3 and s["failed"] == 0 and s["remaining"] > 0
        rows = bhmoe.load_results(out)
        assert len(rows) == 3 and all(r["num_output_tokens"] <= 2 for r in rows)
        again = bhmoe.run(BUNDLED, "seed", out, max_new_tokens=2, limit=1, report=False)
        assert again["already"] == 3 and again["ran"] == 1
        with pytest.raises(ValueError, match="shard"):
            bhmoe.run(BUNDLED, "seed", out, shard="3/2")
        pandas = pytest.importorskip("pandas")
        assert len(pandas.DataFrame(bhmoe.load_results(out))) == 4


@needs_binary
def test_deepseek_traces_count_routed_layers_only():
    # DeepSeek-V2's first layer is a dense MLP without a router: traces and per-layer statistics hold
    # the 26 layers with one (routing layers 0..25 = decoder layers 1..26).
    with tempfile.TemporaryDirectory() as d:
        folder = os.path.join(d, "ds")
        subprocess.run([BINARY, "make-model", "--preset", "deepseek-v2-tiny", "--dtype", "f32", "--seed", "7",
                        folder], check=True, capture_output=True)
        model = bhmoe.Model(folder, threads=1)
        c = model.config
        assert (c["model_type"], c["num_hidden_layers"], c["num_routed_layers"]) == ("deepseek_v2", 27, 26)
        t = model.trace(IDS, router="topk:k=3", router_logits=True)
        assert t["counts"].shape == (len(IDS), 26) and (t["counts"] == 3).all()
        assert t["router_logits"].shape == (len(IDS), 26, 8)
        model.close()
