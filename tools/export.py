#!/usr/bin/python3
"""Exports the trained model in the Hugging Face OLMoE layout and measures it for the model card.

Writes into --out (the committed model folder):
  config.json, model.safetensors (bf16, per-expert tensor names), tokenizer.json,
  calibration.txt, heldout.txt, heldout/<domain>.txt,
  calibration.json (bh-calibration-grid/1: per-layer ECDF of the raw router logits on calibration.txt,
  native routing; see SPEC.md section 2),
  reference/cases.json + reference/*.npy (fp32 logits [T, V] of held-out prefixes, computed in fp32
  on the bf16-rounded weights), reference/heldout_ids.json (the Python tokenizer's ids per domain),
  metrics.json and README.md (the model card).

Every figure is measured on the bf16-rounded weights, i.e. the model as shipped.
"""

import argparse
import collections
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

DOMAINS = ["arithmetic", "facts", "code", "records", "random"]
WINDOW = 256  # tokens per evaluation window (the training context)


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


# ------------------------------------------------------------------ evaluation helpers

def windows(ids, size=WINDOW):
    return [ids[i:i + size] for i in range(0, len(ids), size) if len(ids[i:i + size]) >= 2]


def run_windows(model, ids, collect=None):
    """Runs every window of ids; returns (logits list [T, V], per-layer routing lists)."""
    outs = []
    routes = [[] for _ in model.model.layers]
    # Batch the full-size windows together, the last (shorter) one alone.
    ws = windows(ids)
    full = [w for w in ws if len(w) == WINDOW]
    rest = [w for w in ws if len(w) != WINDOW]
    groups = []
    for i in range(0, len(full), 16):
        groups.append(full[i:i + 16])
    for w in rest:
        groups.append([w])
    with torch.no_grad():
        for g in groups:
            x = torch.tensor(np.stack(g), dtype=torch.long)
            logits, routing = model(x)
            for row in logits:
                outs.append(row)
            for li, (lg, sel) in enumerate(routing):
                routes[li].append((lg, sel))
    ordered_ids = [w for g in groups for w in g]
    return outs, routes, ordered_ids


def nll_of(logits_list, id_windows):
    """Sum of -log p over predicted positions, and their count."""
    total, n = 0.0, 0
    for lg, w in zip(logits_list, id_windows):
        tgt = torch.tensor(w[1:], dtype=torch.long)
        lp = torch.log_softmax(lg[:-1].double(), dim=-1)
        total += -lp.gather(1, tgt[:, None]).sum().item()
        n += len(w) - 1
    return total, n


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


# ------------------------------------------------------------------ main

def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--work", required=True, help="training work dir (state.pt, train_ids.npy)")
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
    cfgd = state["config"]
    cfg = olmoe_torch.Config(**cfgd)
    tok = bhmoe_tok.Tokenizer.load(args.tokenizer)
    eos_id = tok.added[bhmoe_tok.EOS_TOKEN]

    # --- weights: bf16 safetensors, per-expert names (the model's own state_dict keys)
    sd = state["state_dict"]
    tensors = [(k, v) for k, v in sd.items()]
    st_path = os.path.join(out, "model.safetensors")
    write_safetensors(st_path, tensors)
    back = read_safetensors(st_path)
    assert set(back) == set(sd), "safetensors round trip lost tensors"
    model = olmoe_torch.OlmoeForCausalLM(cfg)
    model.load_state_dict(back)  # the bf16-rounded weights, held in fp32
    model.eval()
    write_atomic(os.path.join(out, "config.json"), json.dumps(cfg.hf_config(eos_id), indent=2) + "\n")
    shutil.copyfile(args.tokenizer, os.path.join(out, "tokenizer.json"))

    # --- texts
    def load_docs(name):
        with open(os.path.join(args.corpus, name), encoding="utf-8") as f:
            return [json.loads(l) for l in f]

    held = load_docs("heldout.jsonl")
    calib = load_docs("calibration.jsonl")
    dom_text = {d: "\n".join(x["text"] for x in held if x["domain"] == d) for d in DOMAINS}
    for d in DOMAINS:
        write_atomic(os.path.join(out, "heldout", d + ".txt"), dom_text[d])
    write_atomic(os.path.join(out, "heldout.txt"), "\n".join(dom_text[d] for d in DOMAINS))
    calib_text = "\n".join(x["text"] for x in calib)
    write_atomic(os.path.join(out, "calibration.txt"), calib_text)
    dom_ids = {d: tok.encode(dom_text[d]) for d in DOMAINS}
    if args.quick:
        dom_ids = {d: v[:600] for d, v in dom_ids.items()}
    write_atomic(os.path.join(out, "reference", "heldout_ids.json"),
                 json.dumps({"format": "bhmoe-token-ids/1",
                             "description": "Python tokenizer ids of heldout/<domain>.txt (no special tokens)",
                             "files": {d: "heldout/%s.txt" % d for d in DOMAINS},
                             "ids": dom_ids}, separators=(",", ":")) + "\n")

    if args.weights_only:
        print("export: wrote weights, config, tokenizer and texts to %s" % out)
        return

    # --- calibration: ECDF of raw router logits per layer on calibration.txt, native routing
    calib_ids = tok.encode(calib_text)
    if args.quick:
        calib_ids = calib_ids[:3000]
    if args.calibration:
        with open(args.calibration) as f:
            calib_doc = json.load(f)
        assert calib_doc["format"] == "bh-calibration-grid/1", args.calibration
        by_layer = {l["layer"]: l for l in calib_doc["layers"]}
        grids = [(np.array(by_layer[li]["x"], dtype=np.float64), np.array(by_layer[li]["cdf"], dtype=np.float64))
                 for li in range(cfg.num_layers)]
        calibration_source = "`%s` (%s)" % (os.path.basename(args.calibration), calib_doc.get("description", ""))
        if os.path.abspath(args.calibration) != os.path.abspath(os.path.join(out, "calibration.json")):
            shutil.copyfile(args.calibration, os.path.join(out, "calibration.json"))
        routes = []
    else:
        _, routes, _ = run_windows(model, calib_ids)
    layers_json = []
    if not args.calibration:
        grids = []
    for li, rl in enumerate(routes):
        vals = torch.cat([lg for lg, _ in rl]).numpy().reshape(-1)
        xs, cdf = ecdf_grid(vals)
        grids.append((xs, cdf))
        layers_json.append({"layer": li, "x": [float(v) for v in xs], "cdf": [float(c) for c in cdf]})
    if not args.calibration:
        calib_doc = {"format": "bh-calibration-grid/1", "model": os.path.basename(os.path.normpath(out)),
                 "description": "Empirical CDF of raw router logits per layer, pooled over all %d experts "
                                "and %d tokens of calibration.txt under native top-%d routing (tools/export.py)."
                                % (cfg.num_experts, len(calib_ids), cfg.top_k),
                     "layers": layers_json}
        write_atomic(os.path.join(out, "calibration.json"), json.dumps(calib_doc) + "\n")
        calibration_source = "the Python ECDF of tools/export.py (%s)" % calib_doc["description"]

    metrics = {"domains": {}, "routing": {}, "bh": {}, "topk": {}, "calibration_source": calibration_source}

    # --- unigram baseline from the train stream (add-one smoothing)
    train_ids = np.load(os.path.join(args.work, "train_ids.npy"))
    uni = np.bincount(train_ids, minlength=cfg.vocab_size).astype(np.float64) + 1.0
    uni_logp = np.log(uni / uni.sum())

    # --- native routing: perplexity, router entropy, utilisation, arithmetic
    set_router(model, None)
    native = {}
    util = np.zeros((cfg.num_layers, cfg.num_experts), dtype=np.int64)
    ent_sum = np.zeros(cfg.num_layers)
    ent_dom = {}
    mass_sum = np.zeros(cfg.num_layers)
    ntok_all = 0
    for d in DOMAINS:
        logits, routes, wins = run_windows(model, dom_ids[d])
        native[d] = (logits, wins)
        tot, n = nll_of(logits, wins)
        utot = sum(-uni_logp[w[1:]].sum() for w in wins)
        metrics["domains"][d] = {"tokens": len(dom_ids[d]), "predicted": n, "ppl": math.exp(tot / n),
                                 "unigram_ppl": math.exp(utot / n)}
        ent_dom[d] = []
        for li, rl in enumerate(routes):
            lg = torch.cat([x for x, _ in rl])
            sel = torch.cat([s for _, s in rl])
            p = torch.softmax(lg, dim=-1).double()
            ent = -(p * torch.log(p.clamp_min(1e-300))).sum(-1)
            ent_sum[li] += ent.sum().item()
            ent_dom[d].append(ent.mean().item())
            mass_sum[li] += p.topk(cfg.top_k, dim=-1).values.sum(-1).sum().item()
            util[li] += np.bincount(sel.reshape(-1).numpy(), minlength=cfg.num_experts)
        ntok_all += sum(len(w) for w in wins)
    all_n = sum(m["predicted"] for m in metrics["domains"].values())
    all_nll = sum(math.log(m["ppl"]) * m["predicted"] for m in metrics["domains"].values())
    all_unll = sum(math.log(m["unigram_ppl"]) * m["predicted"] for m in metrics["domains"].values())
    metrics["overall"] = {"predicted": all_n, "ppl": math.exp(all_nll / all_n),
                          "unigram_ppl": math.exp(all_unll / all_n)}
    metrics["routing"] = {
        "router_entropy_nats_per_layer": (ent_sum / ntok_all).tolist(),
        "router_entropy_max_nats": math.log(cfg.num_experts),
        "router_entropy_per_domain": ent_dom,
        "top8_prob_mass_per_layer": (mass_sum / ntok_all).tolist(),
        "utilisation_per_layer": [],
    }
    for li in range(cfg.num_layers):
        u = util[li].astype(np.float64)
        used = u[u > 0]
        metrics["routing"]["utilisation_per_layer"].append({
            "layer": li, "experts_used": int((u > 0).sum()),
            "cv": float(used.std() / used.mean()), "max_over_min": float(used.max() / used.min()),
            "max_share": float(u.max() / u.sum()), "counts": util[li].tolist()})

    # --- arithmetic exact-answer accuracy under greedy decoding (teacher-forced equivalent: the
    # greedy continuation of "a op b =" is the gold answer iff every answer token is the argmax and
    # the argmax after it starts with a newline).
    reserved = set(tuple(p) for p in json.load(open(os.path.join(args.corpus, "arithmetic_reserved.json"))))
    arith_ids = dom_ids["arithmetic"]
    eq_id = tok.encode(" =")
    assert len(eq_id) == 1, "' =' must be one token"
    eq_id = eq_id[0]
    nl_tokens = set(i for t, i in tok.vocab.items() if bhmoe_tok.BYTE_DECODER.get(t[0]) == 10)
    # Map window positions to predictions.
    logits, wins = native["arithmetic"]
    pred = np.concatenate([lg.argmax(-1).numpy() for lg in logits])
    flat = np.concatenate([np.array(w) for w in wins])
    starts = np.cumsum([0] + [len(w) for w in wins])
    results = {"seen": [0, 0], "reserved": [0, 0]}
    per_op = collections.defaultdict(lambda: [0, 0])
    text_lines = dom_text["arithmetic"].split("\n")
    line_iter = iter([l for l in text_lines if l.strip()])
    for i in range(len(flat)):
        if flat[i] != eq_id:
            continue
        line = next(line_iter)
        a_s, op, b_s, _, c_s = line.split()
        j = i + 1
        ans = []
        while j < len(flat) and flat[j] not in nl_tokens:
            ans.append(j)
            j += 1
        # predictions for position q come from logits at q-1, within the same window
        win_of = lambda q: np.searchsorted(starts, q, side="right") - 1
        if j >= len(flat) or any(win_of(q) != win_of(i) for q in ans + [j]):
            continue  # problem straddles a window boundary: not scored
        ok = all(pred[q - 1] == flat[q] for q in ans) and pred[j - 1] in nl_tokens
        kind = "reserved" if (int(a_s), op, int(b_s)) in reserved else "seen"
        results[kind][0] += int(ok)
        results[kind][1] += 1
        per_op[op][0] += int(ok)
        per_op[op][1] += 1
    answers = {"+": {a + b for a in range(20) for b in range(20)},
               "-": {a - b for a in range(20) for b in range(20) if a >= b},
               "*": {a * b for a in range(10) for b in range(10)}}
    tot_ops = sum(v[1] for v in per_op.values())
    chance = sum(per_op[o][1] / len(answers[o]) for o in per_op) / max(1, tot_ops)
    metrics["arithmetic"] = {
        "seen_correct": results["seen"][0], "seen_total": results["seen"][1],
        "reserved_correct": results["reserved"][0], "reserved_total": results["reserved"][1],
        "accuracy": (results["seen"][0] + results["reserved"][0]) / max(1, results["seen"][1] + results["reserved"][1]),
        "per_op": {o: {"correct": v[0], "total": v[1]} for o, v in per_op.items()},
        "chance_uniform_over_possible_answers": chance}

    # --- routing rules with real forward passes (the rule's choice feeds later layers)
    def eval_rule(make):
        res = {}
        for d in DOMAINS:
            routers = []

            def mk(li):
                r = make(li)
                routers.append(r)
                return r
            set_router(model, mk)
            logits, _, wins = run_windows(model, dom_ids[d])
            tot, n = nll_of(logits, wins)
            counts = [np.concatenate(r.counts) if hasattr(r, "counts") else None for r in routers]
            res[d] = (tot, n, counts)
        set_router(model, None)
        return res

    metrics["topk"][str(cfg.top_k)] = {"ppl": metrics["overall"]["ppl"],
                                       "ppl_per_domain": {d: metrics["domains"][d]["ppl"] for d in DOMAINS}}
    for k in (1,):
        r = eval_rule(lambda li: TopKRouter(k))
        tot = sum(v[0] for v in r.values())
        n = sum(v[1] for v in r.values())
        metrics["topk"][str(k)] = {"ppl": math.exp(tot / n),
                                   "ppl_per_domain": {d: math.exp(v[0] / v[1]) for d, v in r.items()}}
    for alpha in (0.01, 0.05, 0.10):
        r = eval_rule(lambda li: BHRouter(grids[li][0], grids[li][1], alpha, max_k=16, min_k=1))
        per_dom = {}
        allc = []
        per_layer = [[] for _ in range(cfg.num_layers)]
        for d, (tot, n, counts) in r.items():
            c = np.concatenate(counts)
            allc.append(c)
            for li in range(cfg.num_layers):
                per_layer[li].append(counts[li])
            per_dom[d] = {"mean_experts": float(c.mean()), "ppl": math.exp(tot / n)}
        allc = np.concatenate(allc)
        tot = sum(v[0] for v in r.values())
        n = sum(v[1] for v in r.values())
        metrics["bh"]["%.2f" % alpha] = {
            "mean_experts": float(allc.mean()), "std_experts": float(allc.std(ddof=1)),
            "pct_at_floor": float((allc == 1).mean() * 100), "pct_at_ceiling": float((allc == 16).mean() * 100),
            "mean_experts_per_layer": [float(np.concatenate(x).mean()) for x in per_layer],
            "ppl": math.exp(tot / n), "per_domain": per_dom}

    # --- reference logits: a prefix of the first held-out document of every domain
    cases = []
    for d in DOMAINS:
        ids = dom_ids[d][:args.reference_tokens]
        with torch.no_grad():
            lg, _ = model(torch.tensor([ids], dtype=torch.long))
        fname = "reference/%s.npy" % d
        np.save(os.path.join(out, fname), lg[0].numpy().astype(np.float32))
        cases.append({"name": d, "ids": ids, "text": tok.decode(ids), "logits": fname,
                      "shape": [len(ids), cfg.vocab_size]})
    write_atomic(os.path.join(out, "reference", "cases.json"), json.dumps({
        "format": "bhmoe-reference-logits/1",
        "description": "fp32 logits [T, V] (numpy .npy, little-endian float32) of one prefill of `ids` "
                       "from position 0, native routing, computed by tools/olmoe_torch.py in fp32 on the "
                       "bf16 weights of model.safetensors",
        "cases": cases}, indent=1) + "\n")

    metrics["export_seconds"] = time.time() - t_start
    metrics["train"] = {k: v for k, v in info.items() if k != "log"}
    metrics["loss_curve"] = info["log"]
    write_atomic(os.path.join(out, "metrics.json"), json.dumps(metrics, indent=1) + "\n")
    write_atomic(os.path.join(out, "README.md"), model_card(cfg, info, metrics, eos_id, out))
    print(json.dumps({k: metrics[k] for k in ("overall", "arithmetic", "bh")}, indent=1))
    print("export: wrote %s in %.0fs" % (out, time.time() - t_start))


def model_card(cfg, info, m, eos_id, out):
    a = info["args"]
    L = []
    L.append("# bhmoe-tiny-moe: a small trained OLMoE-architecture model\n")
    L.append("The default model bundled with bhmoe: exactly OLMoE's architecture and routing regime "
             "(%d experts, top-%d, fp32 softmax router over all experts without renormalisation, "
             "q/k RMSNorm over the full projection, NeoX RoPE, SwiGLU experts, untied lm_head), "
             "trained from scratch on a synthetic multi-domain corpus so that its router carries real "
             "signal. Produced by `tools/build_bundled_model.sh --seed %d`; every figure below was "
             "measured by `tools/export.py` on the bf16 weights as shipped.\n"
             % (cfg.num_experts, cfg.top_k, a["seed"]))
    L.append("## Shape\n")
    L.append("| key | value |\n|---|---|")
    for k, v in [("hidden_size (D)", cfg.hidden_size), ("intermediate_size (F, per expert)", cfg.intermediate_size),
                 ("num_hidden_layers", cfg.num_layers), ("num_attention_heads", "%d (head_dim %d)" % (
                     cfg.num_heads, cfg.hidden_size // cfg.num_heads)),
                 ("num_experts / num_experts_per_tok", "%d / %d" % (cfg.num_experts, cfg.top_k)),
                 ("vocab_size", "%d (byte-level BPE, `<|endoftext|>` = %d = eos)" % (cfg.vocab_size, eos_id)),
                 ("parameters", "%d (%.1f MB as bf16)" % (info["parameters"], info["parameters"] * 2 / 1e6)),
                 ("trained context", "%d tokens (max_position_embeddings)" % cfg.max_position_embeddings)]:
        L.append("| %s | %s |" % (k, v))
    L.append("")
    L.append("## Corpus (tools/make_corpus.py, seed %d)\n" % a["seed"])
    L.append("Synthetic and ASCII-only (no public-domain prose: the Debian image has no literature "
             "packages). Five domains of differing predictability: `arithmetic` (\"12 + 7 = 19\" lines, "
             "operands 0-19 for + and -, 0-9 for *; 10%% of the problems are reserved for held-out text "
             "only), `facts` (a fixed world of 48 people, 20 cities, 8 countries in templated English), "
             "`code` (Python-like and C-like functions), `records` (key: value blocks and CSV about the "
             "same people), `random` (hex ids and random letter/digit strings). Training mixture "
             "0.30/0.25/0.20/0.15/0.10. The held-out split (`heldout.txt`, `heldout/<domain>.txt`) and "
             "the calibration split (`calibration.txt`) come from separate random streams and were never "
             "trained on. Train stream: %d tokens.\n" % info["train_tokens_in_stream"])
    L.append("## Training (tools/train_moe.py)\n")
    L.append("AdamW (betas 0.9/0.95, weight decay %.2g on matrices), lr %.1e with %d warm-up steps and "
             "cosine decay to 10%%, batch %d x %d tokens, gradient clip 1.0, loss = cross-entropy + %.3g x "
             "load-balancing loss (Switch/OLMoE, N * sum f_e P_e) + %.3g x router z-loss. "
             "%d of %d scheduled steps (%d tokens) in %.0f s on one CPU thread (torch %s, shared 2-core machine)%s.\n"
             % (a["weight_decay"], a["lr"], a["warmup"], a["batch"], a["seq_len"], a["aux_coef"], a["z_coef"],
                info["steps_done"], a["steps"], info["tokens_seen"], info["wall_seconds"], info["torch"],
                "" if info["steps_done"] == a["steps"] else
                "; stopped early by --max-minutes %.0f, so the cosine schedule did not finish" % a["max_minutes"]))
    L.append("Loss curve (means over each logging interval):\n")
    L.append("| step | tokens | cross-entropy | load-balancing | z-loss | lr | seconds |\n|---|---|---|---|---|---|---|")
    log = info["log"]
    pick = log if len(log) <= 20 else [log[i] for i in np.unique(np.round(np.linspace(0, len(log) - 1, 20)).astype(int))]
    for e in pick:
        L.append("| %d | %d | %.3f | %.3f | %.2f | %.1e | %.0f |" % (
            e["step"], e["tokens"], e["ce"], e["aux"], e["z"], e["lr"], e["seconds"]))
    L.append("")
    L.append("## Held-out perplexity (native top-%d, windows of %d tokens)\n" % (cfg.top_k, WINDOW))
    L.append("| domain | tokens | perplexity | unigram perplexity |\n|---|---|---|---|")
    for d in DOMAINS:
        x = m["domains"][d]
        L.append("| %s | %d | %.2f | %.1f |" % (d, x["tokens"], x["ppl"], x["unigram_ppl"]))
    L.append("| all | %d | %.2f | %.1f |" % (m["overall"]["predicted"], m["overall"]["ppl"], m["overall"]["unigram_ppl"]))
    L.append("\nThe unigram model is the train stream's token frequencies with add-one smoothing.\n")
    ar = m["arithmetic"]
    L.append("## Arithmetic skill\n")
    L.append("Exact-answer accuracy of greedy decoding after \"a op b =\" on held-out arithmetic text: "
             "**%d / %d** on problems that occur in training, **%d / %d** on the reserved problems that "
             "never do; chance (uniform over the operator's possible answers) %.3f. Per operator: %s.\n"
             % (ar["seen_correct"], ar["seen_total"], ar["reserved_correct"], ar["reserved_total"],
                ar["chance_uniform_over_possible_answers"],
                ", ".join("%s %d/%d" % (o, v["correct"], v["total"]) for o, v in sorted(ar["per_op"].items()))))
    r = m["routing"]
    L.append("## Routing on held-out text\n")
    L.append("Router entropy (nats, max ln %d = %.2f) per layer: %s; mean top-%d probability mass per layer: %s.\n" % (
        cfg.num_experts, r["router_entropy_max_nats"], ", ".join("%.2f" % x for x in r["router_entropy_nats_per_layer"]),
        cfg.top_k, ", ".join("%.2f" % x for x in r["top8_prob_mass_per_layer"])))
    L.append("| domain | " + " | ".join("entropy L%d" % i for i in range(cfg.num_layers)) + " |")
    L.append("|---|" + "---|" * cfg.num_layers)
    for d in DOMAINS:
        L.append("| %s | %s |" % (d, " | ".join("%.2f" % x for x in r["router_entropy_per_domain"][d])))
    L.append("\nExpert utilisation under native routing (selections per expert):\n")
    L.append("| layer | experts used | CV | max/min | largest share |\n|---|---|---|---|---|")
    for u in r["utilisation_per_layer"]:
        L.append("| %d | %d | %.2f | %.1f | %.3f |" % (u["layer"], u["experts_used"], u["cv"], u["max_over_min"], u["max_share"]))
    L.append("\nTop-k perplexity (all held-out text): " + ", ".join(
        "k=%s: %.2f" % (k, v["ppl"]) for k, v in m["topk"].items()) + ".\n")
    L.append("Benjamini-Hochberg routing (SPEC.md section 2: p = 1 - F_L(logit) with the per-layer CDF "
             "grid of `calibration.json`, max_k 16, min_k 1, no renormalisation), run as the model's "
             "router in every layer. Calibration: %s.\n" % m["calibration_source"])
    L.append("| alpha | mean experts | std | % at min_k | % at max_k | per layer | perplexity | " +
             " | ".join(DOMAINS) + " |")
    L.append("|---|---|---|---|---|---|---|" + "---|" * len(DOMAINS))
    for al, b in m["bh"].items():
        L.append("| %s | %.2f | %.2f | %.1f | %.1f | %s | %.2f | %s |" % (
            al, b["mean_experts"], b["std_experts"], b["pct_at_floor"], b["pct_at_ceiling"],
            " / ".join("%.2f" % x for x in b["mean_experts_per_layer"]), b["ppl"],
            " | ".join("%.2f" % b["per_domain"][d]["mean_experts"] for d in DOMAINS)))
    L.append("")
    L.append("## Files\n")
    L.append("- `config.json`, `model.safetensors` (bf16, per-expert tensor names as in the OLMoE hub "
             "checkpoints), `tokenizer.json` (Hugging Face layout of OLMoE's tokenizer).")
    L.append("- `calibration.txt`, `calibration.json` (bh-calibration-grid/1, see its `description`).")
    L.append("- `heldout.txt` = `heldout/{%s}.txt` joined by a newline." % ",".join(DOMAINS))
    L.append("- `reference/cases.json` + `reference/<domain>.npy`: fp32 logits of held-out prefixes; "
             "`reference/heldout_ids.json`: the training tokenizer's ids of each `heldout/<domain>.txt`.")
    L.append("- `metrics.json`: every figure above, machine-readable.\n")
    L.append("Licence: generated data and weights, no third-party content.\n")
    return "\n".join(L)


if __name__ == "__main__":
    main()
