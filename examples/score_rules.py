#!/usr/bin/python3
"""Score a text under several routing rules and plot quality against mean experts per token.

    PYTHONPATH=build/python examples/score_rules.py [--model DIR] [--text FILE] [--plot OUT.png]

Each rule runs as the model's router in every layer (bhmoe.Model.score: token-weighted NLL over
windows). The plot needs matplotlib (Debian python3-matplotlib); without it the table is printed only.
"""

import argparse
import os

import bhmoe

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--model", default=os.path.join(root, "models", "bhmoe-tiny-moe"))
ap.add_argument("--text", default=None, help="UTF-8 text (default: the model's heldout.txt)")
ap.add_argument("--chars", type=int, default=20000, help="score this many characters of it")
ap.add_argument("--plot", default=None, help="write the plot here (PNG)")
args = ap.parse_args()

model = bhmoe.Model(args.model, threads=0)
with open(args.text or os.path.join(args.model, "heldout.txt"), encoding="utf-8") as f:
    text = f.read()[:args.chars]
calibration = os.path.join(args.model, "calibration.json")
rules = ["topk:k=1", "topk:k=2", "topk:k=4", "topk:k=8", "topp:p=0.5", "bh:alpha=0.05,max_k=16",
         "bh:alpha=0.5,max_k=16"]
rows = []
for rule in rules:
    s = model.score(text, router=rule, calibration=calibration)
    rows.append((rule, s["mean_experts"], s["nll"]))
    print("%-26s %6.2f experts/token  NLL %.4f nats/token" % (rule, s["mean_experts"], s["nll"]))

if args.plot:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("score_rules: matplotlib is not installed (apt-get install python3-matplotlib); no plot")
    else:
        fig, ax = plt.subplots(figsize=(6, 4))
        for family, marker in (("topk", "o-"), ("topp", "s"), ("bh", "^")):
            pts = [(e, n) for r, e, n in rows if r.startswith(family)]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker, label=family)
        ax.set_xlabel("mean experts per token and layer")
        ax.set_ylabel("NLL (nats per token)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print("score_rules: wrote %s" % args.plot)
