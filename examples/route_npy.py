#!/usr/bin/python3
"""Route router logits saved as .npy with three rules and print the experts each token gets.

    PYTHONPATH=build/python examples/route_npy.py LOGITS.npy CALIBRATION.json [--layer L]

LOGITS.npy: float32 [T, N] raw router logits of one layer (e.g. saved from a forward hook).
"""

import argparse

import numpy as np
import torch

import bhmoe
import bhmoe.torch

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("logits")
ap.add_argument("calibration")
ap.add_argument("--layer", type=int, default=0)
args = ap.parse_args()

logits = torch.from_numpy(np.load(args.logits))
calibration = bhmoe.Calibration.load(args.calibration)
for spec in ("topk:k=8", "topp:p=0.5", "bh:alpha=0.05,max_k=16"):
    ids, weights, counts = bhmoe.torch.route(logits, spec, calibration, layer=args.layer)
    print("%-24s mean experts %.2f (min %d, max %d); token 0 -> %s" % (
        spec, counts.double().mean(), counts.min(), counts.max(), ids[0, :counts[0]].tolist()))
