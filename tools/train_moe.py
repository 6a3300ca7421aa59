#!/usr/bin/python3
"""Trains the bundled OLMoE-architecture model on the corpus (CPU, deterministic for a given seed).

Loss = next-token cross-entropy + aux_coef * mean over layers of the Switch/OLMoE load-balancing loss
+ z_coef * mean over layers of the router z-loss. AdamW, linear warm-up then cosine decay to 10%,
gradient clipping at 1.0. Batches are random windows of the train token stream (documents joined by
<|endoftext|>), drawn from a numpy generator seeded by --seed.

Writes into --work: train_ids.npy (the tokenised train stream), state.pt (fp32 weights, config,
training log) and train_log.json (loss curve, steps, wall time, settings).
"""

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bhmoe_tok  # noqa: E402
import olmoe_torch  # noqa: E402


def tokenize_split(tok, path):
    """All documents of a jsonl split, each followed by <|endoftext|>, as one int32 array."""
    eos = tok.added[bhmoe_tok.EOS_TOKEN]
    ids = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            ids.extend(tok.encode(json.loads(line)["text"]))
            ids.append(eos)
    return np.asarray(ids, dtype=np.int32)


def save(model, cfg, info, work):
    tmp = os.path.join(work, "state.pt.tmp")
    torch.save({"config": cfg.__dict__, "state_dict": model.state_dict(), "info": info}, tmp)
    os.replace(tmp, os.path.join(work, "state.pt"))


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--ffn", type=int, default=64)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--experts", type=int, default=64)
    ap.add_argument("--top-k", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=450)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--aux-coef", type=float, default=0.01)
    ap.add_argument("--z-coef", type=float, default=0.001)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--checkpoint-every", type=int, default=50)
    ap.add_argument("--max-minutes", type=float, default=0,
                    help="if > 0, stop early after this much wall time (recorded in the log)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # denormal floats make CPU matmuls orders of magnitude slower
    torch.manual_seed(args.seed)
    os.makedirs(args.work, exist_ok=True)
    tok = bhmoe_tok.Tokenizer.load(args.tokenizer)
    vocab_size = len(tok.vocab)

    ids_path = os.path.join(args.work, "train_ids.npy")
    t0 = time.time()
    stream = tokenize_split(tok, os.path.join(args.corpus, "train.jsonl"))
    np.save(ids_path, stream)
    print("train_moe: %d train tokens (tokenised in %.1fs)" % (len(stream), time.time() - t0), flush=True)

    cfg = olmoe_torch.Config(vocab_size, args.hidden, args.ffn, args.layers, args.heads, args.experts,
                             args.top_k, max_position_embeddings=args.seq_len)
    model = olmoe_torch.OlmoeForCausalLM(cfg)
    gen = torch.Generator().manual_seed(args.seed)
    model.init_weights(gen)
    n_params = sum(p.numel() for p in model.parameters())
    print("train_moe: %d parameters (%.1f MB in bf16)" % (n_params, n_params * 2 / 1e6), flush=True)

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.dim() == 1 else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8)

    def lr_at(step):
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        frac = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    rng = np.random.default_rng(args.seed)
    log = []
    start = time.time()
    acc = {"ce": 0.0, "aux": 0.0, "z": 0.0, "n": 0}
    for step in range(args.steps):
        starts = rng.integers(0, len(stream) - args.seq_len - 1, size=args.batch)
        batch = np.stack([stream[s:s + args.seq_len + 1] for s in starts]).astype(np.int64)
        x = torch.from_numpy(batch[:, :-1])
        y = torch.from_numpy(batch[:, 1:])
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        logits, routing = model(x)
        ce = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab_size), y.reshape(-1))
        aux = sum(olmoe_torch.load_balancing_loss(l, t, args.experts) for l, t in routing) / len(routing)
        z = sum(olmoe_torch.router_z_loss(l) for l, _ in routing) / len(routing)
        loss = ce + args.aux_coef * aux + args.z_coef * z
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        acc["ce"] += ce.item()
        acc["aux"] += aux.item()
        acc["z"] += z.item()
        acc["n"] += 1
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            n = acc["n"]
            entry = {"step": step + 1, "tokens": (step + 1) * args.batch * args.seq_len,
                     "ce": acc["ce"] / n, "aux": acc["aux"] / n, "z": acc["z"] / n,
                     "lr": lr_at(step), "seconds": time.time() - start}
            log.append(entry)
            print("train_moe: step %5d ce %.4f aux %.4f z %.3f lr %.2e %.0fs" % (
                entry["step"], entry["ce"], entry["aux"], entry["z"], entry["lr"], entry["seconds"]),
                flush=True)
            acc = {"ce": 0.0, "aux": 0.0, "z": 0.0, "n": 0}
        if (step + 1) % args.checkpoint_every == 0:
            save(model, cfg, {"steps_done": step + 1, "log": log}, args.work)
        if args.max_minutes > 0 and time.time() - start > args.max_minutes * 60:
            print("train_moe: stopping early at step %d: --max-minutes %.0f reached" % (
                step + 1, args.max_minutes), flush=True)
            break
    steps_done = step + 1
    wall = time.time() - start
    info = {"steps_done": steps_done, "args": vars(args), "train_tokens_in_stream": int(len(stream)), "parameters": n_params,
            "wall_seconds": wall, "tokens_seen": steps_done * args.batch * args.seq_len, "log": log,
            "torch": torch.__version__}
    save(model, cfg, info, args.work)
    with open(os.path.join(args.work, "train_log.json"), "w") as f:
        json.dump(info, f, indent=1)
    print("train_moe: done, %d steps in %.0fs" % (steps_done, wall), flush=True)


if __name__ == "__main__":
    main()
