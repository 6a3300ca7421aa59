"""bhmoe from Python: the C++ routing library and engine (bhmoe._core), and with PyTorch the routing
rules as tensor ops (bhmoe.torch).

    import bhmoe
    router = bhmoe.Router("bh:alpha=0.05,max_k=16", calibration="calibration.json")
    ids, weights, counts = router.route(logits, layer=0)     # NumPy [T, N] or [B, S, N]
    model = bhmoe.Model("models/bhmoe-tiny-moe", weights="native", threads=0)
    model.score(text, router="topk:k=4")
    trace = model.trace(text, router="topk:k=4", router_logits=True)  # NumPy arrays per token x layer
    bhmoe.run(model, "pareto", "out/pareto")                  # an experiment, as `bhmoe run`
    import bhmoe.torch                                        # optional: needs PyTorch
    rows = bhmoe.load_results("out/seed")                     # pandas.DataFrame(rows)

Errors are ValueError with the library's messages (the CLI's, without its flag names).
"""

from ._core import (Calibration, Model, Router, RouterSpec, bh_critical_values, canonical_spec,
                    detected_simd_level, parse_router_spec, resolve_router_spec, router_entropy, run,
                    set_simd_level, simd_level)
from .results import load_results

__all__ = ["Calibration", "Model", "Router", "RouterSpec", "bh_critical_values", "canonical_spec",
           "detected_simd_level", "load_results", "parse_router_spec", "resolve_router_spec",
           "router_entropy", "run", "set_simd_level", "simd_level"]
