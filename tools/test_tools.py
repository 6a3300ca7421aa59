#!/usr/bin/python3
"""Self-tests of the training tools (development only; needs /usr/bin/python3 with torch + numpy).

  /usr/bin/python3 tools/test_tools.py

Checks: the Python tokenizer reproduces the real OLMoE tokenizer's ids on the shared cases; BPE
training is deterministic and round-trips text; the safetensors writer/reader round-trips bf16;
export.py's BH router reproduces the shared routing cases (SPEC.md section 2) exactly; the ECDF grid
is a valid bh-calibration-grid/1 layer that equals the empirical CDF at the samples; the torch
module's state_dict names are the hub's.
"""

import collections
import json
import os
import sys
import tempfile
import unittest

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bhmoe_tok  # noqa: E402
import export  # noqa: E402
import olmoe_torch  # noqa: E402
import train_tokenizer  # noqa: E402

SHARED = os.environ.get("BHMOE_SHARED_DIR", os.path.join(HERE, "..", "..", "shared"))


class TokenizerTest(unittest.TestCase):
    def test_matches_olmoe_tokenizer_cases(self):
        tok = bhmoe_tok.Tokenizer.load(os.path.join(SHARED, "olmoe", "tokenizer.json"))
        with open(os.path.join(SHARED, "olmoe", "tokenizer-cases.json"), encoding="utf-8") as f:
            cases = json.load(f)["cases"]
        self.assertGreater(len(cases), 50)
        for c in cases:
            self.assertEqual(tok.encode(c["text"]), c["ids"], repr(c["text"]))

    def test_pretokenize_regex_semantics(self):
        p = bhmoe_tok.pretokenize
        self.assertEqual(p("a  b"), ["a", " ", " b"])
        self.assertEqual(p("x   "), ["x", "   "])
        self.assertEqual(p("don't 12ab"), ["don", "'t", " 12", "ab"])
        self.assertEqual(p("if (a>=b) {\n    c;\n}"), ["if", " (", "a", ">=", "b", ")", " {", "\n   ", " c", ";", "\n", "}"])

    def test_bpe_training_is_deterministic_and_round_trips(self):
        texts = ["12 + 35 = 47\n", "Alice Brandt lives in Dornholm.\n", "def f(x):\n    return x\n"] * 20
        m1 = train_tokenizer.train_bpe(train_tokenizer.count_words(texts), 40)
        m2 = train_tokenizer.train_bpe(train_tokenizer.count_words(texts), 40)
        self.assertEqual(m1, m2)
        vocab = {bhmoe_tok.BYTE_ENCODER[b]: b for b in range(256)}
        for a, b in m1:
            vocab[a + b] = len(vocab)
        vocab[bhmoe_tok.EOS_TOKEN] = len(vocab)
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "tokenizer.json")
            with open(path, "w", encoding="utf-8") as f:
                json.dump(bhmoe_tok.tokenizer_json(vocab, m1, len(vocab) - 1), f)
            tok = bhmoe_tok.Tokenizer.load(path)
        text = "".join(texts) + "<|endoftext|>caf\u00e9 \u00e9t\u00e9"
        ids = tok.encode(text)
        self.assertIn(len(vocab) - 1, ids)
        self.assertLess(len(ids), len(text.encode("utf-8")))
        self.assertEqual(tok.decode(ids), text)


class ExportTest(unittest.TestCase):
    def test_safetensors_round_trip(self):
        ts = [("a.weight", torch.randn(3, 5)), ("b", torch.tensor([1.0, -2.5, 3e-3]))]
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "m.safetensors")
            export.write_safetensors(path, ts)
            with open(path, "rb") as f:
                n = int.from_bytes(f.read(8), "little")
            self.assertEqual(n % 8, 0)
            back = export.read_safetensors(path)
        for name, t in ts:
            self.assertTrue(torch.equal(back[name], t.to(torch.bfloat16).float()), name)

    def test_bh_reproduces_shared_routing_cases(self):
        with open(os.path.join(SHARED, "routing-cases", "cases.json")) as f:
            doc = json.load(f)
        with open(os.path.join(SHARED, doc["calibration"])) as f:
            cal = {l["layer"]: l for l in json.load(f)["layers"]}
        checked = 0
        for c in doc["cases"]:
            if c.get("temperature", 1.0) != 1.0:
                continue
            logits = np.load(os.path.join(SHARED, "routing-cases", c["logits"])).astype(np.float32)
            g = cal[c["layer"]]
            r = export.BHRouter(g["x"], g["cdf"], c["alpha"], max_k=c["max_k"], min_k=c["min_k"])
            mask = r(torch.from_numpy(logits)).numpy()
            self.assertEqual(r.counts[0].tolist(), c["counts"], json.dumps({k: c[k] for k in ("logits", "layer", "alpha", "max_k")}))
            for t, experts in enumerate(c["experts"]):
                self.assertEqual(sorted(np.nonzero(mask[t])[0].tolist()), sorted(experts))
            checked += 1
        self.assertGreater(checked, 10)

    def test_ecdf_grid(self):
        rng = np.random.default_rng(0)
        v = np.round(rng.normal(size=20000), 3)  # with ties
        x, cdf = export.ecdf_grid(v)
        self.assertTrue(np.all(np.diff(x) > 0))
        self.assertTrue(np.all(np.diff(cdf) >= 0))
        self.assertEqual(cdf[-1], 1.0)
        self.assertEqual(x[-1], v.max())
        for xi, ci in zip(x[::97], cdf[::97]):
            self.assertAlmostEqual(ci, np.mean(v <= xi), places=12)


class ModuleTest(unittest.TestCase):
    def test_hub_parameter_names_and_shapes(self):
        cfg = olmoe_torch.Config(100, 16, 8, 2, 2, 4, 2)
        m = olmoe_torch.OlmoeForCausalLM(cfg)
        sd = m.state_dict()
        self.assertEqual(sd["model.embed_tokens.weight"].shape, (100, 16))
        self.assertEqual(sd["model.layers.1.mlp.gate.weight"].shape, (4, 16))
        self.assertEqual(sd["model.layers.0.mlp.experts.3.gate_proj.weight"].shape, (8, 16))
        self.assertEqual(sd["model.layers.0.mlp.experts.3.down_proj.weight"].shape, (16, 8))
        self.assertEqual(sd["model.layers.0.self_attn.q_norm.weight"].shape, (16,))
        self.assertIn("lm_head.weight", sd)
        self.assertIn("model.norm.weight", sd)
        self.assertEqual(len(sd), 2 + 1 + 2 * (4 + 2 + 2 + 1 + 4 * 3))

    def test_sparse_dispatch_equals_dense_reference(self):
        torch.manual_seed(0)
        cfg = olmoe_torch.Config(50, 16, 8, 1, 2, 6, 3)
        m = olmoe_torch.OlmoeForCausalLM(cfg)
        m.init_weights(torch.Generator().manual_seed(1))
        moe = m.model.layers[0].mlp
        h = torch.randn(10, 16)
        out, logits, _ = moe(h)
        probs = torch.softmax(logits, -1)
        w, ids = probs.topk(3, -1)
        ref = torch.zeros_like(h)
        for t in range(10):
            for j in range(3):
                ref[t] += w[t, j] * moe.experts[int(ids[t, j])](h[t:t + 1])[0]
        self.assertTrue(torch.allclose(out, ref, atol=1e-6))
        moe.router = export.TopKRouter(3)
        out2, _, _ = moe(h)
        self.assertTrue(torch.allclose(out2, ref, atol=1e-6))


if __name__ == "__main__":
    unittest.main()
