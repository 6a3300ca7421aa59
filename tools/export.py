#!/usr/bin/python3
"""Exports the trained stand-in model in the Hugging Face OLMoE layout and measures it for the model card.

Writes into --out (the committed model folder):
  config.json, model.safetensors or its shards + index (bf16, per-expert tensor names), tokenizer.json,
  calibration.txt (the corpus' calibration split), heldout/<domain>.txt and heldout.txt (the test
  split, never trained on and never used for calibration), DATA.md and corpus-manifest.json (the
  corpus' data card and hashes), calibration.json (from `bhmoe calibrate` via --calibration, else a
  Python ECDF of the same kind), reference/cases.json + reference/*.npy (fp32 logits of test-split
  prefixes), reference/heldout_ids.json (the Python tokenizer's ids per domain), metrics.json and
  README.md (the model card).

Every figure is measured on the bf16-rounded weights, i.e. the model as shipped, on the test split.
"""

import argparse
import collections
import gzip
import json
import math
import os
import shutil
import struct
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bhmoe_tok  # noqa: E402
import olmoe_torch  # noqa: E402

WINDOW = 512  # tokens per evaluation window (the trained context), overridden by the model's own
SEED_PROMPTS = [  # SPEC.md section 3: (category, description, text)
    ("simple", "Simple sentence completion", "The cat sat on the"),
    ("simple", "Story beginning", "Once upon a time, there was a"),
    ("simple", "Factual completion", "The capital of France is"),
    ("medium", "Technical explanation", "In computer science, a linked list is a data structure that"),
    ("medium", "Informative continuation", "Climate change refers to long-term shifts in temperatures and "
     "weather patterns. These shifts"),
    ("medium", "Historical reasoning", "The stock market crashed in 1929 because"),
    ("complex", "Mathematical reasoning", "If you have 3 apples and you give 2 to your friend, then you buy "
     "5 more, how many apples do you have? Let me think step by step:"),
    ("complex", "Comparative analysis", "Compare and contrast the Renaissance and the Enlightenment periods "
     "in terms of their cultural, scientific, and philosophical contributions:"),
    ("complex", "Technical explanation with examples", "Explain the difference between supervised and "
     "unsupervised learning in machine learning, providing examples of each:"),
    ("domain_specific", "Programming concepts", "In Python, a decorator is a function that"),
    ("domain_specific", "Biology knowledge", "The mitochondria is known as the powerhouse of the cell because it"),
    ("domain_specific", "Physics knowledge", "In quantum mechanics, the uncertainty principle states that"),
]


# ------------------------------------------------------------------ files

def write_atomic(path, data, mode="w"):
    tmp = path + ".tmp"
    with open(tmp, mode) as f:
        f.write(data)
    os.replace(tmp, path)


def write_safetensors(path, tensors):
    """tensors: list of (name, torch tensor). Stored as bf16, little-endian, in the given order."""
    header = {"__metadata__": {"format": "pt"}}
    blobs = []
    offset = 0
    for name, t in tensors:
        raw = t.detach().to(torch.bfloat16).contiguous().view(torch.int16).numpy().astype("<i2").tobytes()
        header[name] = {"dtype": "BF16", "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    hj = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hj += b" " * ((8 - len(hj) % 8) % 8)
    write_atomic(path, struct.pack("<Q", len(hj)) + hj + b"".join(blobs), "wb")


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        assert meta["dtype"] == "BF16", name
        b, e = meta["data_offsets"]
        arr = np.frombuffer(data[base + b:base + e], dtype="<i2").copy()
        out[name] = torch.from_numpy(arr).view(torch.bfloat16).float().reshape(meta["shape"])
    return out


SHARD_BYTES = 25 << 20  # weight shards stay well below the repository's 30 MB limit per file


def write_weights(out, tensors):
    """The weights in the hub's layout: model.safetensors when it fits in SHARD_BYTES, else
    model-0000i-of-0000n.safetensors with model.safetensors.index.json (tensors kept whole, in order)."""
    for stale in os.listdir(out):
        if stale.startswith("model") and (stale.endswith(".safetensors") or stale.endswith(".index.json")):
            os.remove(os.path.join(out, stale))
    groups, size = [[]], 0
    for name, t in tensors:
        nbytes = t.numel() * 2
        if groups[-1] and size + nbytes > SHARD_BYTES:
            groups.append([])
            size = 0
        groups[-1].append((name, t))
        size += nbytes
    if len(groups) == 1:
        write_safetensors(os.path.join(out, "model.safetensors"), groups[0])
        return
    weight_map, total = {}, 0
    for i, group in enumerate(groups):
        fname = "model-%05d-of-%05d.safetensors" % (i + 1, len(groups))
        write_safetensors(os.path.join(out, fname), group)
        for name, t in group:
            weight_map[name] = fname
            total += t.numel() * 2
    write_atomic(os.path.join(out, "model.safetensors.index.json"),
                 json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1) + "\n")


def read_weights(folder):
    """Every tensor of a model folder written by write_weights (one file or shards with an index)."""
    index = os.path.join(folder, "model.safetensors.index.json")
    if not os.path.exists(index):
        return read_safetensors(os.path.join(folder, "model.safetensors"))
    with open(index) as f:
        files = sorted(set(json.load(f)["weight_map"].values()))
    out = {}
    for fname in files:
        out.update(read_safetensors(os.path.join(folder, fname)))
    return out


# ------------------------------------------------------------------ evaluation helpers

def windows(ids, size):
    return [ids[i:i + size] for i in range(0, len(ids), size) if len(ids[i:i + size]) >= 2]


def run_windows(model, ids, size, batch=8):
    """Runs every non-overlapping window of ids (each from position 0); returns (logits list [T, V],
    per-layer lists of (router logits, selection), the windows in the order of the logits)."""
    outs = []
    routes = [[] for _ in model.model.layers]
    ws = windows(ids, size)
    full = [w for w in ws if len(w) == size]
    groups = [full[i:i + batch] for i in range(0, len(full), batch)] + [[w] for w in ws if len(w) != size]
    with torch.no_grad():
        for g in groups:
            logits, routing = model(torch.tensor(np.stack(g), dtype=torch.long))
            outs.extend(logits)
            for li, (lg, sel) in enumerate(routing):
                routes[li].append((lg, sel))
    return outs, routes, [w for g in groups for w in g]


def nll_of(logits_list, id_windows, token_bytes):
    """(sum of -log p in nats over predicted positions, their count, their UTF-8 bytes)."""
    total, n, nbytes = 0.0, 0, 0
    for lg, w in zip(logits_list, id_windows):
        tgt = torch.tensor(w[1:], dtype=torch.long)
        lp = torch.log_softmax(lg[:-1].double(), dim=-1)
        total += -lp.gather(1, tgt[:, None]).sum().item()
        n += len(w) - 1
        nbytes += int(token_bytes[tgt.numpy()].sum())
    return total, n, nbytes


def token_byte_lengths(tok, vocab_size):
    """UTF-8 bytes each id stands for (added tokens: their content)."""
    out = np.zeros(vocab_size, dtype=np.int64)
    for t, i in tok.vocab.items():
        out[i] = len(t.encode("utf-8")) if t in tok.added else len(t)  # byte-level: one char per byte
    return out


def ecdf_grid(values):
    """Per-layer calibration grid: points of the empirical CDF F(x) = #{v <= x} / n, dense in the
    tails (where BH's small p-values live), x strictly increasing."""
    v = np.sort(values.astype(np.float64))
    n = len(v)
    idx = set(np.round(np.linspace(0, n - 1, 2049)).astype(int).tolist())
    tail = np.unique(np.round(np.geomspace(1, max(2, n // 20), 600)).astype(int))
    idx.update((n - 1 - tail[tail <= n - 1]).tolist())
    idx.update(tail[tail <= n - 1].tolist())
    idx.update(range(max(0, n - 256), n))
    idx.update(range(0, min(n, 64)))
    idx = np.array(sorted(idx))
    xs = v[idx]
    # ECDF at a sample value counts every sample equal to it: take the last index of each value.
    last = np.searchsorted(v, xs, side="right")
    cdf = last / n
    xs_u, first = np.unique(xs, return_index=True)
    cdf_u = np.maximum.reduceat(cdf, first)
    return xs_u, cdf_u


class BHRouter:
    """SPEC.md section 2 Benjamini-Hochberg rule with a per-layer grid calibration."""

    def __init__(self, x, cdf, alpha, max_k=16, min_k=1):
        self.x = np.asarray(x, dtype=np.float64)
        self.cdf = np.asarray(cdf, dtype=np.float64)
        self.alpha = alpha
        self.max_k = max_k
        self.min_k = min_k
        self.counts = []

    def __call__(self, logits):
        m, n = logits.shape
        r = logits.double().numpy()
        p = 1.0 - np.interp(r, self.x, self.cdf, left=0.0, right=1.0)
        ps = np.sort(p, axis=1)
        thresh = np.arange(1, n + 1) * self.alpha / n
        passed = ps <= thresh[None, :]
        kstar = np.where(passed.any(axis=1), n - np.argmax(passed[:, ::-1], axis=1), 0)
        count = np.clip(kstar, self.min_k, self.max_k)
        self.counts.append(count)
        # BH keeps the `count` smallest p-values = the `count` largest logits (p is decreasing in r);
        # ties go to the lower expert id.
        order = np.lexsort((np.arange(n)[None, :].repeat(m, 0), -r), axis=1)
        mask = np.zeros((m, n), dtype=bool)
        ranks = np.empty_like(order)
        np.put_along_axis(ranks, order, np.arange(n)[None, :].repeat(m, 0), axis=1)
        mask = ranks < count[:, None]
        return torch.from_numpy(mask)


class TopKRouter:
    def __init__(self, k):
        self.k = k

    def __call__(self, logits):
        probs = torch.softmax(logits, dim=-1)
        _, ids = probs.topk(self.k, dim=-1)
        mask = torch.zeros_like(probs, dtype=torch.bool)
        mask.scatter_(1, ids, True)
        return mask


def set_router(model, make):
    for li, layer in enumerate(model.model.layers):
        layer.mlp.router = make(li) if make else None



def portable_path(arg):
    """A command-line argument as the model card shows it: paths inside the repository relative to
    its root, ../shared/... as such, any other path as $WORK/<name> (the build's work folder)."""
    if not os.path.exists(arg):
        return arg
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    full = os.path.abspath(arg)
    if full.startswith(root + os.sep):
        return os.path.relpath(full, root)
    shared = os.path.join(os.path.dirname(root), "shared")
    if full.startswith(shared + os.sep):
        return "../shared/" + os.path.relpath(full, shared)
    return "$WORK/" + os.path.basename(full)


def load_model_dir(path):
    """(model in fp32 holding the bf16 weights, tokenizer, config) of a model folder."""
    with open(os.path.join(path, "config.json")) as f:
        cfg = olmoe_torch.Config.from_hf(json.load(f))
    model = olmoe_torch.OlmoeForCausalLM(cfg)
    model.load_state_dict(read_weights(path))
    model.eval()
    return model, bhmoe_tok.Tokenizer.load(os.path.join(path, "tokenizer.json")), cfg


def eval_domains(model, dom_ids, size, token_bytes):
    """{domain: (nll nats, predicted tokens, predicted bytes)} and per-layer routing of each domain."""
    res, routes = {}, {}
    for d, ids in dom_ids.items():
        logits, r, wins = run_windows(model, ids, size)
        res[d] = nll_of(logits, wins, token_bytes)
        routes[d] = r
    return res, routes


def summarise(res):
    """Per-domain and overall perplexity and bits per byte of an eval_domains result."""
    out = {d: {"nll_nats_per_token": t / n, "ppl": math.exp(t / n), "bits_per_byte": t / math.log(2) / b,
               "predicted_tokens": n, "predicted_bytes": b} for d, (t, n, b) in res.items()}
    t = sum(v[0] for v in res.values())
    n = sum(v[1] for v in res.values())
    b = sum(v[2] for v in res.values())
    out["all"] = {"nll_nats_per_token": t / n, "ppl": math.exp(t / n), "bits_per_byte": t / math.log(2) / b,
                  "predicted_tokens": n, "predicted_bytes": b}
    return out


def seed_prompts(model, tok, eos_id, new_tokens=16):
    """Prompt NLL (mean -log p of prompt tokens 2..n, nats) and greedy continuation of each seed prompt."""
    rows = []
    with torch.no_grad():
        for cat, desc, text in SEED_PROMPTS:
            ids = tok.encode(text)
            logits, _ = model(torch.tensor([ids], dtype=torch.long))
            lp = torch.log_softmax(logits[0, :-1].double(), -1)
            nll = -lp.gather(1, torch.tensor(ids[1:])[:, None]).mean().item()
            out = list(ids)
            for _ in range(new_tokens):
                lg, _ = model(torch.tensor([out], dtype=torch.long))
                nxt = int(lg[0, -1].argmax())
                if nxt == eos_id:
                    break
                out.append(nxt)
            rows.append({"category": cat, "description": desc, "prompt": text, "prompt_tokens": len(ids),
                         "prompt_nll": nll, "greedy": tok.decode(out[len(ids):])})
    return rows


def routing_stats(cfg, routes, seed=1):
    """Router entropy, top-k mass, load CV and domain specialisation under native routing."""
    layers = []
    spec = {}
    rng = np.random.default_rng(seed)
    for li in range(cfg.num_layers):
        lg = torch.cat([x for d in routes for x, _ in routes[d][li]])
        p = torch.softmax(lg.double(), -1)
        ent = -(p * torch.log(p.clamp_min(1e-300))).sum(-1)
        mass = p.topk(cfg.top_k, -1).values.sum(-1)
        sel = torch.cat([s for d in routes for _, s in routes[d][li]])
        load = np.bincount(sel.reshape(-1).numpy(), minlength=cfg.num_experts).astype(np.float64)
        layers.append({"layer": li, "entropy_nats": ent.mean().item(), "top_k_mass": mass.mean().item(),
                       "load_cv": float(load.std() / load.mean()), "experts_used": int((load > 0).sum()),
                       "max_share": float(load.max() / load.sum())})
    # Domain specialisation: the share of a domain's selections that go to its own k most-used experts
    # in a layer, against the same share for the same number of tokens routed uniformly at random
    # (k distinct experts per token), averaged over layers.
    for d in routes:
        own, uni = [], []
        for li in range(cfg.num_layers):
            sel = torch.cat([s for _, s in routes[d][li]]).numpy()
            c = np.sort(np.bincount(sel.reshape(-1), minlength=cfg.num_experts))[::-1]
            own.append(c[:cfg.top_k].sum() / c.sum())
            u = np.argsort(rng.random((sel.shape[0], cfg.num_experts)), axis=1)[:, :cfg.top_k]
            cu = np.sort(np.bincount(u.reshape(-1), minlength=cfg.num_experts))[::-1]
            uni.append(cu[:cfg.top_k].sum() / cu.sum())
        spec[d] = {"top_k_share": float(np.mean(own)), "uniform_router_share": float(np.mean(uni)),
                   "tokens": int(sel.shape[0])}
    return layers, spec


QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 0.999)


def grid_quantiles(x, cdf):
    """Quantiles of a calibration grid (x increasing, cdf non-decreasing) by linear interpolation."""
    x = np.asarray(x, dtype=np.float64)
    cdf = np.asarray(cdf, dtype=np.float64)
    keep = np.concatenate([[True], np.diff(cdf) > 0])
    return [float(np.interp(q, cdf[keep], x[keep])) for q in QUANTILES]


def logit_distribution(grids, olmoe_path):
    """Per-layer quantiles of raw router logits: ours (from our grids) and OLMoE-1B-7B's."""
    ours = [grid_quantiles(x, c) for x, c in grids]
    theirs = []
    if olmoe_path and os.path.exists(olmoe_path):
        with open(olmoe_path) as f:
            j = json.load(f)
        theirs = [grid_quantiles(l["x"], l["cdf"]) for l in sorted(j["layers"], key=lambda l: l["layer"])]
    return {"quantiles": list(QUANTILES), "ours": ours, "olmoe": theirs,
            "olmoe_source": os.path.basename(olmoe_path) if theirs else None}


def continued_from(info):
    """For a run continued from a snapshot (train_moe.py --init-from): the snapshot's step and its run's
    plan and arguments ({"step", "plan", "args"}), else None. Runs recorded before train_moe.py kept
    this in its log are read from the snapshot folder named by --init-from."""
    if info.get("continued_from"):
        return info["continued_from"]
    folder = info["args"].get("init_from")
    if not folder:
        return None
    with open(os.path.join(folder, "snapshot.json")) as f:
        snap = json.load(f)
    if "plan" not in snap or "args" not in snap:
        sys.exit("export: %s/snapshot.json lacks the first run's plan and args" % folder)
    return {"step": snap["step"], "plan": snap["plan"], "args": snap["args"]}


def schedule_text(info, a):
    """The cosine's plan in words: '1600 steps', or with the replans (train_moe.py --replan-steps) of a run."""
    segments = info.get("schedule_segments") or [[a["warmup"], 0.0, a["steps"]]]
    text = "%d steps" % segments[0][2]
    for first, frac, last in segments[1:]:
        text += (" replanned at step %d (%.0f%% of the decay done) to end at step %d, the cosine continuing from "
                 "the rate reached" % (first, 100 * frac, last))
    return text


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, help="training work dir (state.pt, train_ids.npz)")
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reference-tokens", type=int, default=40)
    ap.add_argument("--weights-only", action="store_true",
                    help="write config, weights, tokenizer and texts only (for `bhmoe calibrate`), then stop")
    ap.add_argument("--calibration", default=None,
                    help="use this bh-calibration-grid/1 file (e.g. from `bhmoe calibrate`) for the BH "
                         "figures and ship it, instead of fitting the Python ECDF")
    ap.add_argument("--baseline-model", default=None,
                    help="a previous model folder to measure on the same test text (bits per byte, seed prompts)")
    ap.add_argument("--olmoe-calibration", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                                "..", "..", "shared", "calibration",
                                                                "olmoe-1b-7b-0924.kde.json"),
                    help="the real OLMoE router-logit CDFs, shown beside ours")
    ap.add_argument("--quick", action="store_true",
                    help="development check only: evaluate on a few hundred tokens per domain")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    t_start = time.time()
    out = args.out
    os.makedirs(os.path.join(out, "heldout"), exist_ok=True)
    os.makedirs(os.path.join(out, "reference"), exist_ok=True)

    state = torch.load(os.path.join(args.work, "state.pt"))
    info = state["info"]
    cfg = olmoe_torch.Config(**state["config"])
    window = cfg.max_position_embeddings
    tok = bhmoe_tok.Tokenizer.load(args.tokenizer)
    eos_id = tok.added[bhmoe_tok.EOS_TOKEN]

    # --- weights: bf16 safetensors, per-expert names (the model's own state_dict keys)
    sd = state["state_dict"]
    write_weights(out, list(sd.items()))
    back = read_weights(out)
    assert set(back) == set(sd), "safetensors round trip lost tensors"
    model = olmoe_torch.OlmoeForCausalLM(cfg)
    model.load_state_dict(back)  # the bf16-rounded weights, held in fp32
    model.eval()
    hf = cfg.hf_config(eos_id)
    hf["pad_token_id"] = tok.added.get(bhmoe_tok.PAD_TOKEN)
    write_atomic(os.path.join(out, "config.json"), json.dumps(hf, indent=2) + "\n")
    shutil.copyfile(args.tokenizer, os.path.join(out, "tokenizer.json"))
    for name, dest in (("DATA.md", "DATA.md"), ("manifest.json", "corpus-manifest.json")):
        if os.path.exists(os.path.join(args.corpus, name)):
            shutil.copyfile(os.path.join(args.corpus, name), os.path.join(out, dest))

    # --- texts: the test split per domain (documents joined by a blank line), the calibration split
    def load_docs(name):
        with open(os.path.join(args.corpus, name), encoding="utf-8") as f:
            return [json.loads(l) for l in f]

    test = load_docs("test.jsonl")
    domains = sorted({x["domain"] for x in test})
    dom_text = {d: "\n\n".join(x["text"] for x in test if x["domain"] == d) for d in domains}
    for stale in os.listdir(os.path.join(out, "heldout")):
        if stale.endswith(".txt") and stale[:-4] not in dom_text:
            os.remove(os.path.join(out, "heldout", stale))
    for d in domains:
        write_atomic(os.path.join(out, "heldout", d + ".txt"), dom_text[d])
    write_atomic(os.path.join(out, "heldout.txt"), "\n\n".join(dom_text[d] for d in domains))
    calib_text = "\n\n".join(x["text"] for x in load_docs("calibration.jsonl"))
    write_atomic(os.path.join(out, "calibration.txt"), calib_text)
    dom_ids = {d: tok.encode(dom_text[d]) for d in domains}
    if args.quick:
        dom_ids = {d: v[:3 * window // 2] for d, v in dom_ids.items()}
    write_atomic(os.path.join(out, "reference", "heldout_ids.json"),
                 json.dumps({"format": "bhmoe-token-ids/1",
                             "description": "Python tokenizer ids of heldout/<domain>.txt (no special tokens)",
                             "files": {d: "heldout/%s.txt" % d for d in domains},
                             "ids": dom_ids}, separators=(",", ":")) + "\n")
    if args.weights_only:
        print("export: wrote weights, config, tokenizer and texts to %s" % out)
        return

    # --- calibration grids: `bhmoe calibrate`'s, or a Python ECDF of raw router logits per layer on
    # the calibration split under native routing
    if args.calibration:
        with open(args.calibration) as f:
            calib_doc = json.load(f)
        assert calib_doc["format"] == "bh-calibration-grid/1", args.calibration
        by_layer = {l["layer"]: l for l in calib_doc["layers"]}
        grids = [(np.array(by_layer[li]["x"]), np.array(by_layer[li]["cdf"])) for li in range(cfg.num_layers)]
        calibration_source = "`bhmoe calibrate` on calibration.txt (%s)" % calib_doc.get("description", "")
        if os.path.abspath(args.calibration) != os.path.abspath(os.path.join(out, "calibration.json")):
            shutil.copyfile(args.calibration, os.path.join(out, "calibration.json"))
    else:
        calib_ids = tok.encode(calib_text)[:3000 if args.quick else None]
        _, routes, _ = run_windows(model, calib_ids, window)
        grids, layers_json = [], []
        for li, rl in enumerate(routes):
            xs, cdf = ecdf_grid(torch.cat([lg for lg, _ in rl]).numpy().reshape(-1))
            grids.append((xs, cdf))
            layers_json.append({"layer": li, "x": xs.tolist(), "cdf": cdf.tolist()})
        calib_doc = {"format": "bh-calibration-grid/1", "model": os.path.basename(os.path.normpath(out)),
                     "description": "Empirical CDF of raw router logits per layer, pooled over all %d experts "
                                    "and %d tokens of calibration.txt under native top-%d routing "
                                    "(tools/export.py)" % (cfg.num_experts, len(calib_ids), cfg.top_k),
                     "layers": layers_json}
        write_atomic(os.path.join(out, "calibration.json"), json.dumps(calib_doc) + "\n")
        calibration_source = "the Python ECDF of tools/export.py (%s)" % calib_doc["description"]

    metrics = {"command": "tools/export.py " + " ".join(map(portable_path, sys.argv[1:])), "window_tokens": window,
               "domains": domains, "calibration_source": calibration_source}
    with open(os.path.join(args.corpus, "manifest.json")) as f:
        metrics["corpus_train_chars"] = json.load(f)["splits"]["train"]["chars"]
    token_bytes = token_byte_lengths(tok, cfg.vocab_size)

    # --- native top-k: perplexity and bits per byte per domain, against unigram and gzip
    set_router(model, None)
    res, routes = eval_domains(model, dom_ids, window, token_bytes)
    metrics["native"] = summarise(res)
    z = np.load(os.path.join(args.work, "train_ids.npz"))
    counts = sum(np.bincount(z[k], minlength=cfg.vocab_size) for k in z.files if k.startswith("ids_"))
    uni_logp = np.log((counts + 1.0) / (counts.sum() + cfg.vocab_size))
    uni = {}
    for d in domains:
        ws = windows(dom_ids[d], window)
        t = float(sum(-uni_logp[w[1:]].sum() for w in ws))
        uni[d] = (t, sum(len(w) - 1 for w in ws), int(sum(token_bytes[w[1:]].sum() for w in ws)))
    metrics["unigram"] = summarise(uni)
    metrics["gzip"] = {}
    for d in domains + ["all"]:
        raw = (dom_text[d] if d != "all" else "\n\n".join(dom_text[x] for x in domains)).encode("utf-8")
        metrics["gzip"][d] = {"bits_per_byte": len(gzip.compress(raw, 9)) * 8 / len(raw), "bytes": len(raw)}

    # --- the router beside OLMoE's
    layers, spec = routing_stats(cfg, routes)
    metrics["router"] = {"per_layer": layers, "specialisation": spec, "entropy_max_nats": math.log(cfg.num_experts),
                         "flat_router_top_k_mass": cfg.top_k / cfg.num_experts,
                         "logits": logit_distribution(grids, args.olmoe_calibration)}

    # --- fixed top-k sweep and BH, each as the model's router in every layer
    def eval_rule(make):
        set_router(model, make)
        r, _ = eval_domains(model, dom_ids, window, token_bytes)
        set_router(model, None)
        return r

    metrics["topk"] = {}
    for k in (1, 2, 4, 8, 12, 16):
        metrics["topk"][str(k)] = summarise(eval_rule(lambda li: TopKRouter(k)))
    metrics["bh"] = {}
    for alpha in (0.01, 0.05, 0.10):
        routers = []

        def make(li):
            routers.append(BHRouter(grids[li][0], grids[li][1], alpha, max_k=16, min_k=1))
            return routers[-1]
        s = summarise(eval_rule(make))
        allc = np.concatenate([np.concatenate(r.counts) for r in routers])
        s["mean_experts"] = float(allc.mean())
        s["pct_at_min_k"] = float((allc == 1).mean() * 100)
        s["pct_at_max_k"] = float((allc == 16).mean() * 100)
        metrics["bh"]["%.2f" % alpha] = s

    # --- the 12 seed prompts
    metrics["seed_prompts"] = seed_prompts(model, tok, eos_id)
    metrics["seed_prompt_mean_nll"] = float(np.mean([r["prompt_nll"] for r in metrics["seed_prompts"]]))
    metrics["uniform_nll"] = math.log(cfg.vocab_size)

    # --- the previous model on the same text
    if args.baseline_model:
        bm, btok, bcfg = load_model_dir(args.baseline_model)
        b_ids = {d: btok.encode(dom_text[d])[:3 * bcfg.max_position_embeddings // 2 if args.quick else None]
                 for d in domains}
        bres, _ = eval_domains(bm, b_ids, bcfg.max_position_embeddings,
                               token_byte_lengths(btok, bcfg.vocab_size))
        bseed = seed_prompts(bm, btok, btok.added[bhmoe_tok.EOS_TOKEN])
        metrics["baseline"] = {"model": os.path.basename(os.path.normpath(args.baseline_model)),
                               "vocab_size": bcfg.vocab_size, "native": summarise(bres),
                               "seed_prompt_mean_nll": float(np.mean([r["prompt_nll"] for r in bseed])),
                               "uniform_nll": math.log(bcfg.vocab_size)}

    # --- reference logits: a prefix of every domain's test text
    cases = []
    for d in domains:
        ids = dom_ids[d][:args.reference_tokens]
        with torch.no_grad():
            lg, _ = model(torch.tensor([ids], dtype=torch.long))
        fname = "reference/%s.npy" % d
        np.save(os.path.join(out, fname), lg[0].numpy().astype(np.float32))
        cases.append({"name": d, "ids": ids, "text": tok.decode(ids), "logits": fname,
                      "shape": [len(ids), cfg.vocab_size]})
    for stale in os.listdir(os.path.join(out, "reference")):
        if stale.endswith(".npy") and stale[:-4] not in domains:
            os.remove(os.path.join(out, "reference", stale))
    write_atomic(os.path.join(out, "reference", "cases.json"), json.dumps({
        "format": "bhmoe-reference-logits/1",
        "description": "fp32 logits [T, V] (numpy .npy, little-endian float32) of one prefill of `ids` "
                       "from position 0, native routing, computed by tools/olmoe_torch.py in fp32 on the "
                       "bf16 weights of the model's safetensors",
        "cases": cases}, indent=1) + "\n")

    metrics["export_seconds"] = time.time() - t_start
    metrics["train"] = {k: v for k, v in info.items() if k != "log"}
    # The training's paths as the model card shows paths ($WORK/..., not this machine's folders).
    metrics["train"]["args"] = {k: portable_path(v) if isinstance(v, str) else v
                                for k, v in info["args"].items()}
    metrics["train"]["continued_from"] = continued_from(info)
    metrics["loss_curve"] = info["log"]
    write_atomic(os.path.join(out, "metrics.json"), json.dumps(metrics, indent=1) + "\n")
    write_atomic(os.path.join(out, "README.md"), model_card(cfg, info, metrics, eos_id))
    print("export: seed-prompt NLL %.2f (uniform %.2f), native bits/byte %.3f, wrote %s in %.0fs" % (
        metrics["seed_prompt_mean_nll"], metrics["uniform_nll"], metrics["native"]["all"]["bits_per_byte"],
        out, time.time() - t_start))


def model_card(cfg, info, m, eos_id):
    a = info["args"]
    doms = m["domains"]
    L = []
    L.append("# bhmoe-tiny-moe: a small OLMoE-architecture model trained on real English\n")
    L.append("The default model bundled with bhmoe, a stand-in for OLMoE-1B-7B (which cannot be downloaded "
             "where bhmoe is developed and tested): exactly OLMoE's architecture and routing regime (%d "
             "experts, top-%d, fp32 softmax router over all experts without renormalisation, q/k RMSNorm over "
             "the full projection, NeoX RoPE, SwiGLU experts, untied lm_head), trained from scratch with "
             "OLMoE's router losses on %.0f M characters of English prose, reference text and code that Debian and npm "
             "packages ship (see `DATA.md`). Rebuilt by `tools/build_bundled_model.sh`. Every figure below "
             "was measured on the bf16 weights as shipped, on the test split (`heldout/`), never trained on, by\n"
             % (cfg.num_experts, cfg.top_k, m["corpus_train_chars"] / 1e6))
    L.append("```\n%s\n```\n" % m["command"])
    if info["steps_done"] < a["steps"]:
        L.append("**Training in progress**: these weights are the checkpoint after %d of %d scheduled steps "
                 "(%.1f M of %.1f M tokens); the learning rate has not finished its cosine decay.\n" % (
                     info["steps_done"], a["steps"], info["tokens_seen"] / 1e6,
                     a["steps"] * a["batch"] * a["seq_len"] / 1e6))
    L.append("## Shape\n")
    L.append("| key | value |\n|---|---|")
    for k, v in [("hidden_size (D)", cfg.hidden_size), ("intermediate_size (F, per expert)", cfg.intermediate_size),
                 ("num_hidden_layers", cfg.num_layers), ("num_attention_heads", "%d (head_dim %d)" % (
                     cfg.num_heads, cfg.hidden_size // cfg.num_heads)),
                 ("num_experts / num_experts_per_tok", "%d / %d" % (cfg.num_experts, cfg.top_k)),
                 ("vocab_size", "%d (byte-level BPE with OLMoE's pre-tokeniser and added tokens; "
                                "`<|endoftext|>` = %d = eos, `<|padding|>` = 1)" % (cfg.vocab_size, eos_id)),
                 ("parameters", "%d (%.1f MB as bf16)" % (info["parameters"], info["parameters"] * 2 / 1e6)),
                 ("trained context", "%d tokens (max_position_embeddings)" % cfg.max_position_embeddings)]:
        L.append("| %s | %s |" % (k, v))
    L.append("")
    L.append("## Training (tools/train_moe.py)\n")
    first = continued_from(info)
    if first:
        fa = first["args"]
        rate = ("in two runs: steps 1 to %d with lr %.1e, %d warm-up steps and cosine decay to 10%% over %s; "
                "then, from those weights with a fresh optimiser state (the first run's was not kept), the "
                "rate warmed up again over %d steps to %.1e and decayed by cosine to 10%% at step %d (a "
                "continued pre-training, tools/train_moe.py --init-from)" % (
                    first["step"], fa["lr"], fa["warmup"],
                    schedule_text({"schedule_segments": first["plan"]}, fa), a["warmup"], a["lr"], a["steps"]))
    else:
        rate = "lr %.1e with %d warm-up steps and cosine decay to 10%% over %s" % (
            a["lr"], a["warmup"], schedule_text(info, a))
    L.append("AdamW (betas 0.9/0.95, weight decay %.2g on matrices), batch %d x %d tokens, gradient clip 1.0, "
             "%s; loss = cross-entropy "
             "+ %.3g x load-balancing loss (Switch/OLMoE, N * sum f_e P_e) + %.3g x router z-loss. Each batch "
             "row is a window of one domain, drawn with probability proportional to the domain's train tokens "
             "to the power %.2g: %s. %d steps (%.1f M tokens) in %.1f h on one CPU thread (torch %s).\n"
             % (a["weight_decay"], a["batch"], a["seq_len"], rate, a["aux_coef"],
                a["z_coef"], a["domain_temperature"],
                ", ".join("%s %.3f" % (d, p) for d, p in info["domain_probabilities"].items()),
                info["steps_done"], info["tokens_seen"] / 1e6, info["wall_seconds"] / 3600, info["torch"]))
    L.append("| step | tokens (M) | cross-entropy | load-balancing | z-loss | lr | tokens/s |\n|---|---|---|---|---|---|---|")
    log = m["loss_curve"]
    pick = log if len(log) <= 16 else [log[i] for i in np.unique(np.round(np.linspace(0, len(log) - 1, 16)).astype(int))]
    for e in pick:
        L.append("| %d | %.2f | %.3f | %.3f | %.2f | %.1e | %.0f |" % (
            e["step"], e["tokens"] / 1e6, e["ce"], e["aux"], e["z"], e["lr"], e.get("tokens_per_second", 0)))
    L.append("")
    L.append("## Test-split quality (native top-%d, windows of %d tokens)\n" % (cfg.top_k, m["window_tokens"]))
    L.append("Bits per byte compare across tokenizers: the model's cross-entropy over the UTF-8 bytes of the "
             "tokens it predicts. Unigram: the train split's token frequencies (add-one). gzip: `gzip -9` of "
             "the domain's text.%s\n" % (
                 " Previous model: the bundled model this one replaced (%s, vocabulary %d, trained on a "
                 "synthetic corpus), on the same text with its own tokenizer." % (
                     m["baseline"]["model"], m["baseline"]["vocab_size"]) if "baseline" in m else ""))
    head = "| domain | tokens | perplexity | bits/byte | unigram bits/byte | gzip bits/byte |"
    if "baseline" in m:
        head += " previous model bits/byte |"
    L.append(head)
    L.append("|---" * (head.count("|") - 1) + "|")
    for d in doms + ["all"]:
        x = m["native"][d]
        row = "| %s | %d | %.2f | %.3f | %.3f | %.3f |" % (
            d, x["predicted_tokens"], x["ppl"], x["bits_per_byte"], m["unigram"][d]["bits_per_byte"],
            m["gzip"][d]["bits_per_byte"])
        if "baseline" in m:
            row += " %.3f |" % m["baseline"]["native"][d]["bits_per_byte"]
        L.append(row)
    L.append("")
    L.append("## The 12 seed prompts (SPEC.md section 3)\n")
    L.append("Mean prompt NLL **%.2f nats/token** against %.2f for a uniform guess over the vocabulary "
             "(target: at most 0.6 x ln V = %.2f)%s. Prompt NLL: mean -log p of prompt tokens 2..n under "
             "native routing. Greedy continuations of 16 tokens:\n" % (
                 m["seed_prompt_mean_nll"], m["uniform_nll"], 0.6 * m["uniform_nll"],
                 "; the previous model: %.2f against %.2f" % (m["baseline"]["seed_prompt_mean_nll"],
                                                             m["baseline"]["uniform_nll"]) if "baseline" in m else ""))
    L.append("| prompt | NLL | greedy continuation |\n|---|---|---|")
    for r in m["seed_prompts"]:
        L.append("| %s | %.2f | %s |" % (r["prompt"].replace("|", "\\|"), r["prompt_nll"],
                                         json.dumps(r["greedy"])[1:-1].replace("|", "\\|")))
    L.append("")
    L.append("## Fixed top-k sweep (the experts matter)\n")
    L.append("Every layer routes to the k most probable experts, weighted by their softmax probabilities "
             "(no renormalisation, as OLMoE). Test perplexity:\n")
    L.append("| k | all | " + " | ".join(doms) + " |")
    L.append("|---|---|" + "---|" * len(doms))
    for k, s in m["topk"].items():
        L.append("| %s | %.2f | %s |" % (k, s["all"]["ppl"], " | ".join("%.2f" % s[d]["ppl"] for d in doms)))
    L.append("")
    r = m["router"]
    L.append("## The router beside OLMoE's\n")
    L.append("Under native routing on the test split. A flat router has entropy ln %d = %.2f nats and top-%d "
             "mass %.3f.\n" % (cfg.num_experts, r["entropy_max_nats"], cfg.top_k, r["flat_router_top_k_mass"]))
    L.append("| layer | softmax entropy (nats) | mean top-%d mass | expert load CV | experts used | largest load share |"
             % cfg.top_k)
    L.append("|---|---|---|---|---|---|")
    for x in r["per_layer"]:
        L.append("| %d | %.2f | %.3f | %.2f | %d | %.3f |" % (x["layer"], x["entropy_nats"], x["top_k_mass"],
                                                           x["load_cv"], x["experts_used"], x["max_share"]))
    L.append("\nDomain specialisation: the share of a domain's expert selections that go to its own %d most-used "
             "experts of a layer (mean over layers), against the same share when the same tokens are routed "
             "uniformly at random:\n" % cfg.top_k)
    L.append("| domain | tokens | top-%d share | uniform router |\n|---|---|---|---|" % cfg.top_k)
    for d in doms:
        s = r["specialisation"][d]
        L.append("| %s | %d | %.3f | %.3f |" % (d, s["tokens"], s["top_k_share"], s["uniform_router_share"]))
    lq = r["logits"]
    L.append("\nRaw router logits per layer (quantiles of the calibration CDF, `calibration.json`)%s:\n" % (
        ", beside the real OLMoE-1B-7B's (`../shared/calibration/%s`, median over its %d layers)" % (
            lq["olmoe_source"], len(lq["olmoe"])) if lq["olmoe"] else ""))
    L.append("| layer | " + " | ".join("q%g" % (q * 100) for q in lq["quantiles"]) + " | q99.9 - q50 |")
    L.append("|---|" + "---|" * (len(lq["quantiles"]) + 1))
    for li, q in enumerate(lq["ours"]):
        L.append("| %d | %s | %.2f |" % (li, " | ".join("%.2f" % v for v in q), q[-1] - q[3]))
    if lq["olmoe"]:
        med = np.median(np.array(lq["olmoe"]), axis=0)
        L.append("| OLMoE | %s | %.2f |" % (" | ".join("%.2f" % v for v in med), med[-1] - med[3]))
    L.append("")
    L.append("## Benjamini-Hochberg routing\n")
    L.append("SPEC.md section 2: p = 1 - F_L(logit) with the per-layer CDF of `calibration.json` (%s), max_k 16, "
             "min_k 1, no renormalisation, as the router of every layer.\n" % m["calibration_source"])
    L.append("| alpha | mean experts | % at min_k | % at max_k | perplexity | bits/byte |\n|---|---|---|---|---|---|")
    for al, b in m["bh"].items():
        L.append("| %s | %.2f | %.1f | %.1f | %.2f | %.3f |" % (al, b["mean_experts"], b["pct_at_min_k"],
                                                            b["pct_at_max_k"], b["all"]["ppl"], b["all"]["bits_per_byte"]))
    L.append("")
    L.append("## Files\n")
    L.append("- `config.json`, " + ("`model-*.safetensors` + `model.safetensors.index.json`"
                                     if info["parameters"] * 2 > SHARD_BYTES else "`model.safetensors`") + " (bf16, per-expert tensor names as in the OLMoE hub "
             "checkpoints), `tokenizer.json` (Hugging Face layout of OLMoE's tokenizer).")
    L.append("- `heldout/<domain>.txt`: the corpus' test split per domain (documents joined by a blank line); "
             "`heldout.txt`: all of them. `calibration.txt`: the calibration split.")
    L.append("- `calibration.json` (bh-calibration-grid/1, see its `description`), fitted on calibration.txt only.")
    L.append("- `reference/cases.json` + `reference/<domain>.npy`: fp32 logits of test-split prefixes from "
             "`tools/olmoe_torch.py`; `reference/heldout_ids.json`: the training tokenizer's ids of each file.")
    L.append("- `DATA.md` (sources, versions, licences) and `corpus-manifest.json` (SHA-256 of every source "
             "file and split): the corpus.")
    L.append("- `metrics.json`: every figure above, machine-readable.\n")
    L.append("Licence: the weights are ours; the shipped texts keep their sources' licences (`DATA.md`).\n")
    return "\n".join(L)


if __name__ == "__main__":
    main()
