#!/usr/bin/python3
"""Swap the router rule of a PyTorch OLMoE for Benjamini-Hochberg and compare it with native top-8.

    PYTHONPATH=build/python examples/patch_torch.py [MODEL_DIR]

The model is the project's PyTorch OLMoE (tools/olmoe_torch.py, the Hugging Face module layout)
loaded with a bhmoe model folder's weights (default: the bundled model). The same call patches a
transformers OlmoeForCausalLM: its MoE blocks have the same `gate` + `experts` shape.
"""

import os
import sys

import torch

import bhmoe.torch

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(root, "tools"))
import export  # noqa: E402  (loads a model folder into tools/olmoe_torch.py)

model_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, "models", "bhmoe-tiny-moe")
model, tok, cfg = export.load_model_dir(model_dir)
with open(os.path.join(model_dir, "heldout.txt"), encoding="utf-8") as f:
    ids = torch.tensor([tok.encode(f.read()[:2000])[:256]])


def nll(logits):
    return torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:]).item()


with torch.no_grad():
    native, _ = model(ids)
    blocks = bhmoe.torch.patch_moe_blocks(model, "bh:alpha=0.05,max_k=16",
                                          os.path.join(model_dir, "calibration.json"))
    routed, _ = model(ids)
mean = torch.stack([b.last[2] for b in blocks]).double().mean().item()
print("native top-%d: NLL %.3f nats/token" % (cfg.top_k, nll(native)))
print("BH alpha 0.05: NLL %.3f nats/token with %.2f experts per token and layer" % (nll(routed), mean))
