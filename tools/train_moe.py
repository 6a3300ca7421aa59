#!/usr/bin/python3
"""Trains the stand-in OLMoE-architecture model on the corpus (CPU; resumable bit for bit).

Loss = next-token cross-entropy + aux_coef * mean over layers of the Switch/OLMoE load-balancing loss
+ z_coef * mean over layers of the router z-loss (OLMoE's 0.01 and 0.001). AdamW, linear warm-up then
cosine decay to 10% over --steps, gradient clipping at 1.0.

Batches: each row is a window of --seq-len + 1 tokens from one domain's train stream (its documents
joined by <|endoftext|>). The domain is drawn with probability proportional to (its train tokens) **
--domain-temperature (0.5: large sources such as a dictionary are down-weighted, small ones up), the
start uniformly. The draws of step s come from numpy's generator seeded by (seed, s), so a run that
is stopped and resumed sees exactly the batches an uninterrupted run sees.

Work folder (--work; keep it outside the repository: it holds optimiser state):
  train_ids.npz   the tokenised train streams per domain (reused while corpus and tokenizer match)
  ckpt.pt         model + optimiser + log at the last checkpoint (every --checkpoint-minutes)
  state.pt        fp32 weights, config and training log only: what export.py reads
  snapshot/       bf16 weights and the step reached (write_snapshot): what to commit mid-run
  train_log.json  the log (loss curve, throughput, settings)
With one thread (the default) a resumed run is bit-identical to an uninterrupted one.
"""

import argparse
import hashlib
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


class HeadCrossEntropy(torch.autograd.Function):
    """Mean over rows of cross_entropy(x @ w.T, y), computed in row chunks without keeping the [M, V]
    logits. The gradient (softmax - onehot) is formed chunk by chunk in the forward pass, so backward
    only scales it; equal to F.cross_entropy(F.linear(x, w), y) up to fp32 rounding."""

    @staticmethod
    def forward(ctx, x, w, y, chunk):
        m = x.shape[0]
        loss = x.new_zeros(())
        gx = torch.empty_like(x)
        gw = torch.zeros_like(w)
        for s in range(0, m, chunk):
            xc, yc = x[s:s + chunk], y[s:s + chunk]
            logits = xc @ w.t()  # [c, V]
            lse = torch.logsumexp(logits, dim=-1)
            loss += (lse - logits.gather(1, yc[:, None]).squeeze(1)).sum()
            p = logits.sub_(lse[:, None]).exp_()  # softmax, in place
            p[torch.arange(len(yc)), yc] -= 1.0
            p.mul_(1.0 / m)
            gx[s:s + chunk] = p @ w
            gw.addmm_(p.t(), xc)
        ctx.save_for_backward(gx, gw)
        return loss / m

    @staticmethod
    def backward(ctx, g):
        gx, gw = ctx.saved_tensors
        return gx * g, gw * g, None, None


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tokenize_domains(tok, jsonl_path):
    """{domain: int32 array of its documents, each followed by <|endoftext|>}, in file order."""
    eos = tok.added[bhmoe_tok.EOS_TOKEN]
    ids = {}
    with open(jsonl_path, encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            out = ids.setdefault(d["domain"], [])
            out.extend(tok.encode(d["text"]))
            out.append(eos)
    return {d: np.asarray(v, dtype=np.int32) for d, v in ids.items()}


def load_streams(args, work):
    """Tokenised train streams per domain, cached in work/train_ids.npz keyed by the input hashes."""
    key = file_sha256(os.path.join(args.corpus, "train.jsonl")) + file_sha256(args.tokenizer)
    path = os.path.join(work, "train_ids.npz")
    if os.path.exists(path):
        z = np.load(path)
        if str(z["key"]) == key:
            return {k[len("ids_"):]: z[k] for k in z.files if k.startswith("ids_")}
    t0 = time.time()
    streams = tokenize_domains(bhmoe_tok.Tokenizer.load(args.tokenizer), os.path.join(args.corpus, "train.jsonl"))
    tmp = path + ".tmp.npz"
    np.savez(tmp, key=np.array(key), **{"ids_" + d: v for d, v in streams.items()})
    os.replace(tmp, path)
    print("train_moe: tokenised train split in %.0fs: %s" % (
        time.time() - t0, ", ".join("%s %d" % (d, len(v)) for d, v in sorted(streams.items()))), flush=True)
    return streams


def batch_at(step, seed, streams, domains, probs, batch, seq_len):
    """The (x, y) token batch of a step: a pure function of (seed, step)."""
    rng = np.random.default_rng([seed, step])
    rows = []
    for di in rng.choice(len(domains), size=batch, p=probs):
        s = streams[domains[di]]
        start = int(rng.integers(0, len(s) - seq_len - 1))
        rows.append(s[start:start + seq_len + 1])
    b = torch.from_numpy(np.stack(rows).astype(np.int64))
    return b[:, :-1], b[:, 1:]


def write_snapshot(folder, model, cfg, step, log, seconds, schedule, plan, args):
    """Weights only (bf16 safetensors) and where training stood: what may be committed while a run is
    unfinished, and what --init-from starts from when the optimiser state is lost (its plan and
    arguments describe the first run in the model card of a continued one)."""
    import export  # noqa: E402 (bf16 safetensors writer)
    os.makedirs(folder, exist_ok=True)
    export.write_safetensors(os.path.join(folder, "model.safetensors"), list(model.state_dict().items()))
    tmp = os.path.join(folder, "snapshot.json.tmp")
    with open(tmp, "w") as f:
        json.dump({"step": step, "config": cfg.__dict__, "schedule": schedule, "seconds": seconds, "log": log,
                   "plan": plan, "args": args}, f, indent=1)
    os.replace(tmp, os.path.join(folder, "snapshot.json"))


def atomic_save(obj, path):
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--ffn", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--experts", type=int, default=64)
    ap.add_argument("--top-k", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--aux-coef", type=float, default=0.01)
    ap.add_argument("--z-coef", type=float, default=0.001)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--domain-temperature", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--checkpoint-minutes", type=float, default=5.0)
    ap.add_argument("--init-from", default=None,
                    help="when --work has no checkpoint: start from this snapshot folder's model.safetensors "
                         "at its recorded step with a fresh optimiser state: the rate warms up again over "
                         "--warmup steps from that step to --lr, then decays by cosine to 10%% at --steps "
                         "(a continued pre-training, not bit-identical to an unbroken run)")
    ap.add_argument("--replan-steps", action="store_true",
                    help="resume a checkpoint planned for another --steps: the cosine continues from the learning "
                         "rate reached and ends at the new --steps (the change is recorded in the log)")
    ap.add_argument("--stop-at-step", type=int, default=0,
                    help="if > 0, checkpoint and stop on reaching this step (e.g. to replan there)")
    ap.add_argument("--max-minutes", type=float, default=0,
                    help="if > 0, checkpoint and stop after this much wall time in this process")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # denormal floats make CPU matmuls orders of magnitude slower
    os.makedirs(args.work, exist_ok=True)
    tok = bhmoe_tok.Tokenizer.load(args.tokenizer)
    vocab_size = max(tok.vocab.values()) + 1
    streams = load_streams(args, args.work)
    domains = sorted(streams)
    sizes = np.array([len(streams[d]) for d in domains], dtype=np.float64)
    probs = sizes ** args.domain_temperature
    probs /= probs.sum()

    cfg = olmoe_torch.Config(vocab_size, args.hidden, args.ffn, args.layers, args.heads, args.experts,
                             args.top_k, max_position_embeddings=args.seq_len)
    torch.manual_seed(args.seed)
    model = olmoe_torch.OlmoeForCausalLM(cfg)
    model.init_weights(torch.Generator().manual_seed(args.seed))
    for layer in model.model.layers:
        layer.mlp.fused_experts = True  # same function, hand-written backward (olmoe_torch.ExpertMixture)
    n_params = sum(p.numel() for p in model.parameters())
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.dim() == 1 else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8)

    ckpt_path = os.path.join(args.work, "ckpt.pt")
    step0, log, trained_seconds = 0, [], 0.0
    continued_from = None  # --init-from: the snapshot's step, and the plan and arguments of its run
    # The cosine's segments: (first step, fraction of the decay done there, last step). One segment unless a
    # resumed run was replanned; each replan starts a segment at the fraction reached, so the rate is continuous.
    # The warm-up is the --warmup steps before the first segment (from step 0, or from the --init-from step).
    plan = [[args.warmup, 0.0, args.steps]]

    def decay_fraction(step):
        first, frac0, last = [seg for seg in plan if seg[0] <= step][-1] if step >= plan[0][0] else plan[0]
        return frac0 + (1.0 - frac0) * (step - first) / max(1, last - first)

    if os.path.exists(ckpt_path):
        ck = torch.load(ckpt_path)
        schedule = [args.steps, args.lr, args.warmup, args.seed, args.batch]
        plan = ck.get("plan", [[args.warmup, 0.0, ck["schedule"][0]]])
        if ck["config"] != cfg.__dict__ or ck["schedule"][1:] != schedule[1:]:
            sys.exit("train_moe: %s was made with another config or schedule; move it away to start over"
                     % ckpt_path)
        if ck["schedule"][0] != args.steps:
            if not args.replan_steps:
                sys.exit("train_moe: %s was planned for --steps %d, not %d; pass --replan-steps to change the plan"
                         % (ckpt_path, ck["schedule"][0], args.steps))
            if args.steps <= max(ck["step"], args.warmup):
                sys.exit("train_moe: --steps %d must be after the step reached (%d) and the warm-up (%d)"
                         % (args.steps, ck["step"], args.warmup))
            plan.append([ck["step"], decay_fraction(ck["step"]), args.steps])
            print("train_moe: replanned at step %d: from %d to %d steps" % (ck["step"], ck["schedule"][0], args.steps),
                  flush=True)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        step0, log, trained_seconds = ck["step"], ck["log"], ck["seconds"]
        continued_from = ck.get("continued_from")
        print("train_moe: resumed at step %d of %d" % (step0, args.steps), flush=True)
    elif args.init_from:
        import export  # noqa: E402 (bf16 safetensors reader)
        with open(os.path.join(args.init_from, "snapshot.json")) as f:
            snap = json.load(f)
        if snap["config"] != cfg.__dict__:
            sys.exit("train_moe: %s holds another model config" % args.init_from)
        model.load_state_dict(export.read_safetensors(os.path.join(args.init_from, "model.safetensors")))
        step0, log, trained_seconds = snap["step"], snap["log"], snap["seconds"]
        continued_from = {"step": step0, "plan": snap.get("plan"), "args": snap.get("args")}
        if args.steps <= step0 + args.warmup:
            sys.exit("train_moe: --steps %d must be after the snapshot's step %d and the warm-up (%d steps)"
                     % (args.steps, step0, args.warmup))
        plan = [[step0 + args.warmup, 0.0, args.steps]]
        print("train_moe: starting from the snapshot in %s at step %d (fresh optimiser state)"
              % (args.init_from, step0), flush=True)
    print("train_moe: %d parameters (%.1f MB as bf16); domains %s" % (
        n_params, n_params * 2 / 1e6, ", ".join("%s %.3f" % (d, p) for d, p in zip(domains, probs))), flush=True)

    def lr_at(step):
        if step < plan[0][0]:
            return args.lr * (step - (plan[0][0] - args.warmup) + 1) / args.warmup
        frac = decay_fraction(step)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    def info(step):
        return {"steps_done": step, "steps_planned": args.steps, "args": vars(args), "parameters": n_params,
                "schedule_segments": plan,
                "train_tokens_in_stream": {d: int(len(streams[d])) for d in domains},
                "domain_probabilities": {d: float(p) for d, p in zip(domains, probs)},
                "wall_seconds": trained_seconds, "tokens_seen": step * args.batch * args.seq_len,
                "log": log, "torch": torch.__version__, "continued_from": continued_from}

    def checkpoint(step):
        write_snapshot(os.path.join(args.work, "snapshot"), model, cfg, step, log, trained_seconds,
                       [args.steps, args.lr, args.warmup, args.seed, args.batch], plan, vars(args))
        atomic_save({"config": cfg.__dict__, "model": model.state_dict(), "opt": opt.state_dict(),
                     "schedule": [args.steps, args.lr, args.warmup, args.seed, args.batch], "plan": plan,
                     "step": step, "log": log, "seconds": trained_seconds, "continued_from": continued_from},
                    ckpt_path)
        atomic_save({"config": cfg.__dict__, "state_dict": model.state_dict(), "info": info(step)},
                    os.path.join(args.work, "state.pt"))
        with open(os.path.join(args.work, "train_log.json.tmp"), "w") as f:
            json.dump(info(step), f, indent=1)
        os.replace(os.path.join(args.work, "train_log.json.tmp"), os.path.join(args.work, "train_log.json"))

    start = time.time()
    last_ckpt = time.time()
    seg_start = time.time()
    acc = {"ce": 0.0, "aux": 0.0, "z": 0.0, "n": 0}
    step = step0
    while step < args.steps:
        x, y = batch_at(step, args.seed, streams, domains, probs, args.batch, args.seq_len)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        h, routing = model.hidden_states(x)
        ce = HeadCrossEntropy.apply(h.reshape(-1, args.hidden), model.lm_head.weight, y.reshape(-1), 1024)
        aux = sum(olmoe_torch.load_balancing_loss(l, t, args.experts) for l, t in routing) / len(routing)
        z = sum(olmoe_torch.router_z_loss(l) for l, _ in routing) / len(routing)
        loss = ce + args.aux_coef * aux + args.z_coef * z
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        acc["ce"] += ce.item()
        acc["aux"] += aux.item()
        acc["z"] += z.item()
        acc["n"] += 1
        at_stop_step = step == args.stop_at_step
        if step % args.log_every == 0 or step == args.steps or at_stop_step:
            now = time.time()
            trained_seconds += now - seg_start
            n = acc["n"]
            entry = {"step": step, "tokens": step * args.batch * args.seq_len,
                     "ce": acc["ce"] / n, "aux": acc["aux"] / n, "z": acc["z"] / n, "lr": lr_at(step - 1),
                     "seconds": trained_seconds, "tokens_per_second": n * args.batch * args.seq_len / (now - seg_start)}
            seg_start = now
            log.append(entry)
            print("train_moe: step %5d ce %.4f aux %.4f z %.3f lr %.2e %.0f tok/s %.0fs" % (
                step, entry["ce"], entry["aux"], entry["z"], entry["lr"], entry["tokens_per_second"],
                trained_seconds), flush=True)
            acc = {"ce": 0.0, "aux": 0.0, "z": 0.0, "n": 0}
            stop = (args.max_minutes > 0 and now - start > args.max_minutes * 60) or at_stop_step
            if step == args.steps or stop or now - last_ckpt > args.checkpoint_minutes * 60:
                checkpoint(step)
                last_ckpt = time.time()
                seg_start += last_ckpt - now  # checkpoint time is not training time
            if stop:
                print("train_moe: stopping at step %d: %s reached (resume by running again)"
                      % (step, "--stop-at-step" if at_stop_step else "--max-minutes"), flush=True)
                return
    print("train_moe: done, %d steps, %.0f s of training" % (step, trained_seconds), flush=True)


if __name__ == "__main__":
    main()
