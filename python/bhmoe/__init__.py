"""bhmoe from Python: router specs, calibrations and (with PyTorch) the routing rules as tensor ops.

    import bhmoe
    spec = bhmoe.parse_router_spec("bh:alpha=0.05,max_k=16")
    cal = bhmoe.Calibration.load("models/bhmoe-tiny-moe/calibration.json")
    import bhmoe.torch                      # optional: needs PyTorch
    ids, weights, counts = bhmoe.torch.route(logits, spec, cal, layer=0)

The semantics are the C++ library's (SPEC.md section 2); the tests compare selections with it.
"""

from .calibration import Calibration
from .spec import RouterSpec, canonical_spec, parse_router_spec, resolve_router_spec

__all__ = ["Calibration", "RouterSpec", "canonical_spec", "parse_router_spec", "resolve_router_spec"]
