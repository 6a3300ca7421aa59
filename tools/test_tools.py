#!/usr/bin/python3
"""Self-tests of the training tools (development only; needs /usr/bin/python3 with torch + numpy).

  /usr/bin/python3 tools/test_tools.py

Checks: the Python tokenizer reproduces the real OLMoE tokenizer's ids on the shared cases; BPE
training is deterministic and round-trips text; the safetensors writer/reader round-trips bf16;
export.py's BH router reproduces the shared routing cases (SPEC.md section 2) exactly; the ECDF grid
is a valid bh-calibration-grid/1 layer that equals the empirical CDF at the samples; the torch
module's state_dict names are the hub's; make_corpus.py's splitting, per-source cleaning, readers
(R serialization, SWORD zText) and manifest checks, on small inline samples (no packages needed);
moe_reference.py's DeepSeek-V2 RoPE pairing, YaRN frequencies and a one-token forward pass against
values worked out by hand.
"""

import collections
import hashlib
import json
import math
import os
import struct
import sys
import tempfile
import unittest
import zlib

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bhmoe_tok  # noqa: E402
import export  # noqa: E402
import make_corpus  # noqa: E402
import moe_reference  # noqa: E402
import olmoe_torch  # noqa: E402
import train_moe  # noqa: E402
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
        added = bhmoe_tok.OLMOE_ADDED_TOKENS
        m1 = train_tokenizer.train_bpe(train_tokenizer.count_words(texts, added), 40)
        m2 = train_tokenizer.train_bpe(train_tokenizer.count_words(texts, added), 40)
        self.assertEqual(m1, m2)
        vocab, added_ids, eos = train_tokenizer.build_vocab(m1)
        self.assertEqual(len(vocab), train_tokenizer.NUM_FIXED_IDS + 40)
        self.assertEqual(eos, len(vocab) - 1)
        self.assertEqual(added_ids[bhmoe_tok.PAD_TOKEN], 1)
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "tokenizer.json")
            with open(path, "w", encoding="utf-8") as f:
                json.dump(bhmoe_tok.tokenizer_json(vocab, m1, eos, added_ids), f)
            tok = bhmoe_tok.Tokenizer.load(path)
        text = "".join(texts) + "<|endoftext|>caf\u00e9 \u00e9t\u00e9" + "x" + " " * 30 + "y"
        ids = tok.encode(text)
        self.assertIn(eos, ids)
        self.assertIn(vocab[" " * 24], ids)  # a run of spaces is an added token, longest first
        self.assertLess(len(ids), len(text.encode("utf-8")))
        self.assertEqual(tok.decode(ids), text)

    def test_heap_bpe_equals_naive_bpe(self):
        """The incremental heap trainer against recounting every pair before each merge."""
        texts = ["the theme of the thesis: %d then %d\n" % (i, i * 7) for i in range(30)] + ["aaaa bbbb abab"]
        wc = train_tokenizer.count_words(texts)
        words = {w: bhmoe_tok.word_symbols(w) for w in wc}
        naive = []
        for _ in range(60):
            counts = collections.Counter()
            for w, syms in words.items():
                for p in zip(syms, syms[1:]):
                    counts[p] += wc[w]
            if not counts:
                break
            best = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0]
            naive.append(best)
            for w, syms in words.items():
                new, i = [], 0
                while i < len(syms):
                    if i + 1 < len(syms) and (syms[i], syms[i + 1]) == best:
                        new.append(syms[i] + syms[i + 1])
                        i += 2
                    else:
                        new.append(syms[i])
                        i += 1
                words[w] = new
        self.assertEqual(train_tokenizer.train_bpe(wc, 60), naive)


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


class ModelCardTest(unittest.TestCase):
    def test_token_byte_lengths_sum_to_the_text_bytes(self):
        """Bits per byte divide by these: every id's bytes, added tokens included."""
        tok = bhmoe_tok.Tokenizer.load(os.path.join(SHARED, "olmoe", "tokenizer.json"))
        text = "Caf\u00e9 \u2014 na\u00efve    code:\n        return x  # \U0001F600<|endoftext|>end"
        ids = tok.encode(text)
        lengths = export.token_byte_lengths(tok, max(tok.vocab.values()) + 1)
        self.assertEqual(int(lengths[ids].sum()), len(text.encode("utf-8")))

    def test_grid_quantiles_invert_the_cdf(self):
        x = np.linspace(-2.0, 2.0, 401)
        cdf = (x + 2.0) / 4.0
        q = export.grid_quantiles(x, cdf)
        for p, v in zip(export.QUANTILES, q):
            self.assertAlmostEqual(v, 4.0 * p - 2.0, places=9)

    def test_summarise_bits_per_byte(self):
        s = export.summarise({"a": (10 * np.log(2), 5, 20), "b": (30 * np.log(2), 5, 20)})
        self.assertAlmostEqual(s["a"]["bits_per_byte"], 0.5)
        self.assertAlmostEqual(s["all"]["bits_per_byte"], 1.0)
        self.assertAlmostEqual(s["all"]["nll_nats_per_token"], 4 * np.log(2))


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

    def test_fused_expert_mixture_equals_module_path_with_gradients(self):
        torch.manual_seed(0)
        cfg = olmoe_torch.Config(100, 16, 8, 1, 2, 8, 3)
        moe = olmoe_torch.SparseMoe(cfg).double()
        h = torch.randn(20, 16, dtype=torch.double, requires_grad=True)
        weight = torch.linspace(-1, 1, 20 * 16, dtype=torch.double).view(20, 16)

        def run(fused):
            moe.fused_experts = fused
            moe.zero_grad(set_to_none=True)
            h.grad = None
            out, logits, _ = moe(h)
            ((out * weight).sum() + logits.pow(2).sum() * 1e-3).backward()
            return [out.detach().clone(), h.grad.clone()] + [p.grad.clone() for p in moe.parameters()]

        for a, b in zip(run(False), run(True)):
            self.assertTrue(torch.allclose(a, b, atol=1e-12), (a - b).abs().max())

    def test_head_cross_entropy_equals_torch(self):
        torch.manual_seed(0)
        x = torch.randn(300, 16, dtype=torch.double, requires_grad=True)
        w = torch.randn(50, 16, dtype=torch.double, requires_grad=True)
        y = torch.randint(0, 50, (300,))
        loss = train_moe.HeadCrossEntropy.apply(x, w, y, 64) * 3.0
        loss.backward()
        gx, gw = x.grad.clone(), w.grad.clone()
        x.grad, w.grad = None, None
        ref = torch.nn.functional.cross_entropy(x @ w.t(), y) * 3.0
        ref.backward()
        self.assertAlmostEqual(loss.item(), ref.item(), places=10)
        self.assertTrue(torch.allclose(gx, x.grad, atol=1e-12))
        self.assertTrue(torch.allclose(gw, w.grad, atol=1e-12))


class TrainingTest(unittest.TestCase):
    def test_stopped_and_resumed_run_is_bit_identical(self):
        """4 steps in one go against 2 steps, a stop, and a resume (a new process each time)."""
        import subprocess
        texts = ["The quick brown fox jumps over the lazy dog number %d.\n" % i for i in range(200)]
        with tempfile.TemporaryDirectory() as d:
            corpus = os.path.join(d, "corpus")
            os.makedirs(corpus)
            with open(os.path.join(corpus, "train.jsonl"), "w") as f:
                for i, t in enumerate(texts):
                    f.write(json.dumps({"doc": "d%d" % i, "domain": "ab"[i % 2], "text": t * 3}) + "\n")
            merges = train_tokenizer.train_bpe(train_tokenizer.count_words(texts), 30)
            vocab, added, eos = train_tokenizer.build_vocab(merges)
            tokp = os.path.join(d, "tokenizer.json")
            with open(tokp, "w") as f:
                json.dump(bhmoe_tok.tokenizer_json(vocab, merges, eos, added), f)
            common = [sys.executable, os.path.join(HERE, "train_moe.py"), "--corpus", corpus,
                      "--tokenizer", tokp, "--hidden", "16", "--ffn", "8", "--layers", "2", "--heads", "2",
                      "--experts", "4", "--top-k", "2", "--seq-len", "16", "--batch", "2", "--steps", "4",
                      "--warmup", "1", "--log-every", "1", "--checkpoint-minutes", "0"]
            whole = os.path.join(d, "whole")
            subprocess.run(common + ["--work", whole], check=True, capture_output=True)
            parts = os.path.join(d, "parts")
            os.makedirs(parts)
            subprocess.run(common + ["--work", parts, "--max-minutes", "1e-9"], check=True, capture_output=True)
            self.assertEqual(torch.load(os.path.join(parts, "ckpt.pt"))["step"], 1)
            for _ in range(3):
                subprocess.run(common + ["--work", parts, "--max-minutes", "1e-9"], check=True,
                               capture_output=True)
            a = torch.load(os.path.join(whole, "state.pt"))
            b = torch.load(os.path.join(parts, "state.pt"))
            self.assertEqual(a["info"]["steps_done"], 4)
            self.assertEqual(b["info"]["steps_done"], 4)
            for k in a["state_dict"]:
                self.assertTrue(torch.equal(a["state_dict"][k], b["state_dict"][k]), k)
            self.assertEqual([e["ce"] for e in a["info"]["log"]], [e["ce"] for e in b["info"]["log"]])
            # Without the checkpoint, --init-from the 4-step snapshot continues at step 4: the rate warms up
            # again over --warmup steps from there, then decays by cosine to --steps; the first run's plan and
            # arguments are recorded for the model card.
            warm = os.path.join(d, "warm")
            r = subprocess.run(common[:-8] + ["--steps", "8", "--warmup", "2", "--lr", "1e-3", "--log-every", "1",
                                                "--checkpoint-minutes", "0", "--work", warm,
                                                "--init-from", os.path.join(whole, "snapshot")],
                               check=True, capture_output=True, text=True)
            self.assertIn("at step 4 (fresh optimiser state)", r.stdout)
            w = torch.load(os.path.join(warm, "state.pt"))
            self.assertEqual(w["info"]["steps_done"], 8)
            self.assertEqual(len(w["info"]["log"]), 8)
            self.assertEqual([e["lr"] for e in w["info"]["log"][4:]], [5e-4, 1e-3, 1e-3, 1e-3 * 0.55])
            self.assertEqual(w["info"]["continued_from"]["step"], 4)
            self.assertEqual(w["info"]["continued_from"]["plan"], [[1, 0.0, 4]])
            self.assertEqual(w["info"]["continued_from"]["args"]["steps"], 4)
            r = subprocess.run(common[:-8] + ["--steps", "5", "--warmup", "2", "--work", os.path.join(d, "short"),
                                              "--init-from", os.path.join(whole, "snapshot")],
                               capture_output=True, text=True)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("must be after the snapshot's step 4 and the warm-up", r.stderr)
            # A run stopped at step 1 of 4 and resumed for 6 steps: refused without --replan-steps; with it the
            # learning rate at the stop is the planned one (continuous) and the decay ends at step 6.
            longer = os.path.join(d, "longer")
            r = subprocess.run(common + ["--work", longer, "--stop-at-step", "1"], check=True, capture_output=True,
                               text=True)
            self.assertIn("stopping at step 1: --stop-at-step reached", r.stdout)
            six = common[:-8] + ["--steps", "6", "--warmup", "1", "--log-every", "1", "--checkpoint-minutes", "0",
                                 "--work", longer]
            r = subprocess.run(six, capture_output=True, text=True)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("pass --replan-steps", r.stderr)
            r = subprocess.run(six + ["--replan-steps"], check=True, capture_output=True, text=True)
            self.assertIn("replanned at step 1: from 4 to 6 steps", r.stdout)
            info = torch.load(os.path.join(longer, "state.pt"))["info"]
            self.assertEqual(info["steps_done"], 6)
            self.assertEqual(info["schedule_segments"], [[1, 0.0, 4], [1, 0.0, 6]])
            self.assertAlmostEqual(info["log"][1]["lr"], a["info"]["log"][1]["lr"], places=12)
            self.assertAlmostEqual(info["log"][-1]["lr"], 2e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 4 / 5))),
                                   places=12)


class CorpusTest(unittest.TestCase):
    """make_corpus.py on inline samples: cheap, needs none of the source packages."""

    def docs(self, n=120):
        out = []
        for i in range(n):
            dom = ("fiction", "code")[i % 2]
            out.append(make_corpus.Doc("src/%03d" % i, dom, "pkg", "x" * (2000 + 997 * i % 30000)))
        return out

    def test_split_is_deterministic_and_by_document(self):
        docs = self.docs()
        a = make_corpus.assign_splits(docs, 1)
        self.assertEqual(a, make_corpus.assign_splits(list(reversed(docs)), 1))  # input order is irrelevant
        self.assertEqual(set(a), {d.id for d in docs})  # every document in exactly one split
        self.assertNotEqual(a, make_corpus.assign_splits(docs, 2))
        for dom in ("fiction", "code"):
            size = collections.Counter()
            for d in docs:
                if d.domain == dom:
                    size[a[d.id]] += len(d.text)
            self.assertGreaterEqual(size["test"], make_corpus.TEST_TARGET)
            self.assertLessEqual(size["test"], make_corpus.TEST_MAX)
            self.assertGreaterEqual(size["calibration"], make_corpus.CALIB_MIN)
            self.assertGreater(size["train"], size["calibration"])
        for d in docs:
            if a[d.id] == "test":
                self.assertLessEqual(len(d.text), make_corpus.TEST_DOC_MAX)
        # A document's rank depends only on the seed and its id.
        self.assertEqual(make_corpus.rank_key(1, "brown/ca01"),
                         hashlib.sha256(b"1:brown/ca01").hexdigest())

    def test_finish_normal_form(self):
        t = make_corpus.finish("\n\ncafe\u0301 \u00a0x\r\ny\x07\t \r\n\n\n\n\n\nz")
        self.assertEqual(t, "caf\u00e9  x\ny\n\n\nz\n")

    def test_brown_detokenisation(self):
        raw = ("\n\n\tThe/at jury/nn said/vbd ``/`` no/at ''/'' ,/, Mr./np ./. ;/. ;/.\n"
               "it/pps was/bedz 48''/nns ''/'' wide/jj (/( about/rb )/) --/-- more/ap '/' pro/jj '/' "
               "letters/nns ?/. ?/.\n\n\nMerger/nn-hl proposed/vbn-hl\nHe/pps left/vbd ./.\n")
        self.assertEqual(make_corpus.brown_text(raw),
                         'The jury said "no," Mr.; it was 48" wide (about) -- more \'pro\' letters?'
                         "\n\nMerger proposed\n\nHe left.")

    def test_osis_markup_is_stripped(self):
        osis = ('<title type="section">The Creation</title> <div sID="g1" type="x-p"/>'
                '<w lemma="strong:H1">In</w> the <w lemma="x">beginning</w>, God<note placement="foot">'
                '<reference>1:1</reference>note text</note>created &amp; made.<div eID="g1" type="x-p"/>'
                '<lg sID="a"/><l level="1" sID="b"/>Line one,<l eID="b"/><l sID="c"/>line two.<l eID="c"/><lg eID="a"/>')
        self.assertEqual(make_corpus.osis_to_text(osis),
                         "The Creation\n\nIn the beginning, God created & made.\n\nLine one,\nline two.")

    def test_gcide_article_cleaning(self):
        article = ('Coaita \\Co*ai"ta\\ (k[-o]*[aum][i^]"t[.a]), n. (Zool.)\n'
                   '   The native name of certain {South American} monkeys; -- Co*ai"tish, a. See\n'
                   '   {Ateles}. Cf. AS. be[ae]ftan. [Obs.]\n   [1913 Webster]\n\n'
                   '   Syn: monkey.\n        [WordNet 1.5 +PJC] Coak\n')
        self.assertEqual(make_corpus.gcide_headwords('Anaemia \\A*n[ae]"mi*a\\, Anemia\n\\A*ne"mi*a\\, a.\n  x'),
                         {"Anaemia", "Anemia"})
        self.assertEqual(make_corpus.gcide_clean(article, {"Coak"}),
                         "Coaita, n. (Zool.) The native name of certain South American monkeys; -- "
                         "Coaitish, a. See Ateles. Cf. AS. be\u00e6ftan. [Obs.]\n\nSyn: monkey.")
        self.assertEqual(make_corpus.dictd_number("Kj"), 10 * 64 + 35)
        self.assertEqual(b"fa\xe7ade \x92".decode("utf-8", errors="gcide-stray-bytes"), "fa\u00e7ade \u2019")

    def test_wordnet_factbook_fortunes(self):
        line = ("00002137 03 n 02 abstraction 0 abstract_entity 0 001 @ 00001740 n 0000 | a general concept "
                "formed by extracting common features from specific examples  ")
        self.assertEqual(make_corpus.wordnet_synset(line),
                         "abstraction, abstract entity: a general concept formed by extracting common features "
                         "from specific examples")
        self.assertIsNone(make_corpus.wordnet_synset("  1 This software and database is being provided"))
        name, text = make_corpus.factbook_country({
            "Introduction": {"Background": {"text": "First part. ++  ++ Second  part."}},
            "Geography": {"Area": {"total": {"text": "10 sq km"}, "land": {"text": "9 sq km"}},
                          "Map": {"text": None}, "Bad": {"text": "Forces Arm\ufffdes"}},
            "Government": {"Country name": {"conventional short form": {"text": "Utopia"}}}})
        self.assertEqual(name, "Utopia")
        self.assertEqual(text, "Introduction\n\nBackground: First part.\n\nSecond part.\n\n"
                               "Geography\n\nArea: total: 10 sq km; land: 9 sq km.\n\n"
                               "Government\n\nCountry name: conventional short form: Utopia.")
        self.assertEqual(make_corpus.fix_mojibake("don\u00e2\u0080\u0099t, Here\u00c3\u00a2\u00c2\u0080\u00c2\u0099s"),
                         "don\u2019t, Here\u2019s")
        self.assertEqual(make_corpus.fortune_items("one\n%\ntwo\nlines\n%\n"), ["one", "two\nlines"])
        lines = ["EMMA", "", "VOLUME I", "", "CHAPTER I", "", "Emma was _very_ clever,", "and rich.", "",
                 "Next.", "", "[End volume one]", "", "Chapter 2", "", "More."]
        self.assertEqual(make_corpus.austen_chapters(lines),
                         [("CHAPTER I", ["Emma was very clever, and rich.", "Next."]), ("Chapter 2", ["More."])])

    def test_r_unserializer(self):
        def i(v):
            return struct.pack(">i", v)

        def chars(s):
            b = s.encode("utf-8")
            return i(9 | (8 << 12)) + i(len(b)) + b
        names = i(16) + i(2) + chars("a") + chars("b")
        obj = (i(16 | (1 << 9)) + i(2) + chars("x y") + i(9) + i(-1)  # a character vector with NA,
               + i(2 | (1 << 10)) + i(1) + chars("names") + names + i(254))  # names attribute pairlist
        data = b"X\n" + i(3) + i(0x40100) + i(0x30500) + i(5) + b"UTF-8" + obj
        self.assertEqual(make_corpus.RUnserializer(data).read(), {"a": "x y", "b": None})

    def test_sword_ztext_reader(self):
        block = "<w>In</w> the beginning.God said.".encode("utf-8")
        z = zlib.compress(block)
        bzs = struct.pack("<III", 0, len(z), len(block))
        bzv = (struct.pack("<IIH", 0, 0, 0) + struct.pack("<IIH", 0, 0, 24) + struct.pack("<IIH", 0, 0, 24)
               + struct.pack("<IIH", 0, 24, 9))
        self.assertEqual(list(make_corpus.sword_ztext_entries(bzs, bzv, z)),
                         ["<w>In</w> the beginning.", "God said."])

    def test_manifest_checks_detect_changes(self):
        with tempfile.TemporaryDirectory() as d:
            os.makedirs(os.path.join(d, "usr", "share"))
            path = os.path.join(d, "usr", "share", "f.txt")
            with open(path, "w") as f:
                f.write("original")
            entry = {"package": "p", "path": "usr/share/f.txt",
                     "sha256": hashlib.sha256(b"original").hexdigest()}
            self.assertEqual(make_corpus.check_source_hashes([entry], lambda p: d), [])
            with open(path, "w") as f:
                f.write("changed")
            self.assertEqual(make_corpus.check_source_hashes([entry], lambda p: d), ["source p:usr/share/f.txt changed"])
            os.remove(path)
            self.assertEqual(make_corpus.check_source_hashes([entry], lambda p: d), ["source p:usr/share/f.txt missing"])
        docs = self.docs(40)
        assigned = make_corpus.assign_splits(docs, 1)
        splits = {s: [x for x in docs if assigned[x.id] == s] for s in make_corpus.SPLITS}
        versions = {p: "1" for p in make_corpus.PACKAGES}
        old, blobs = make_corpus.manifest_for(1, versions, {("p", "a"): "00"}, splits)
        self.assertEqual(old["splits"]["test"]["sha256"], hashlib.sha256(blobs["test"]).hexdigest())
        self.assertEqual(make_corpus.compare_manifests(old, old), [])
        splits["train"][0].text += "!"
        new, _ = make_corpus.manifest_for(1, dict(versions, **{"dict-gcide": "2"}), {("p", "a"): "01"}, splits)
        self.assertEqual(make_corpus.compare_manifests(old, new),
                         ["package dict-gcide: manifest 1, installed 2", "source p:a changed",
                          "train.jsonl: rebuilt output differs from the manifest"])


class DeepseekReferenceTest(unittest.TestCase):
    """moe_reference.py's deepseek_v2 pieces on cases that can be worked out by hand."""

    def test_rope_is_pairwise_rotation_of_interleaved_dims(self):
        # HF de-interleaves the rope dims and applies rotate_half: the scores equal those of rotating
        # pairs (2i, 2i + 1) by position * theta^(-2i/d), which llama.cpp's "normal" RoPE does.
        d, T = 8, 6
        cos, sin = moe_reference.deepseek_rope_tables({"qk_rope_head_dim": d, "rope_theta": 1e4}, T)

        def hf(x):
            x = x.reshape(T, d // 2, 2).transpose(0, 2, 1).reshape(T, d)
            return x * cos + np.concatenate([-x[:, d // 2:], x[:, :d // 2]], -1) * sin

        def pairwise(x):
            out = x.copy()
            for t in range(T):
                for i in range(d // 2):
                    a = t * 1e4 ** (-2 * i / d)
                    out[t, 2 * i] = x[t, 2 * i] * math.cos(a) - x[t, 2 * i + 1] * math.sin(a)
                    out[t, 2 * i + 1] = x[t, 2 * i + 1] * math.cos(a) + x[t, 2 * i] * math.sin(a)
            return out

        rng = np.random.default_rng(0)
        q, k = rng.normal(size=(T, d)), rng.normal(size=(T, d))
        np.testing.assert_allclose(hf(q) @ hf(k).T, pairwise(q) @ pairwise(k).T, atol=1e-12)

    def test_yarn_frequencies_by_hand(self):
        # d 8, theta 1e4, 4096 original positions: the correction dims of 32 and 1 rotations are
        # 8 ln(4096 / 64 pi) / (2 ln 1e4) = 1.31 -> 1 and 8 ln(4096 / 2 pi) / (2 ln 1e4) = 2.81 -> 3,
        # so pairs 0 and 1 keep theta^(-2i/d), pair 3 divides it by the factor, pair 2 is halfway.
        yarn = {"type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096, "beta_fast": 32,
                "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707}
        self.assertEqual(moe_reference.yarn_find_correction_range(32, 1, 8, 1e4, 4096), (1, 3))
        cos, sin = moe_reference.deepseek_rope_tables(
            {"qk_rope_head_dim": 8, "rope_theta": 1e4, "rope_scaling": yarn}, 2)
        base = 1e4 ** (-np.arange(0, 8, 2) / 8)
        want = [base[0], base[1], 0.5 * base[2] + 0.5 * base[2] / 40, base[3] / 40]
        np.testing.assert_allclose(np.arctan2(sin[1, :4], cos[1, :4]), want, rtol=1e-12)
        np.testing.assert_allclose(cos ** 2 + sin ** 2, 1.0)  # mscale == mscale_all_dim: unscaled
        self.assertAlmostEqual(moe_reference.yarn_get_mscale(40, 0.707), 1 + 0.0707 * math.log(40))

    def test_one_token_forward_by_hand(self):
        # One token at position 0: RoPE is the identity and attention returns the head's value, so
        # the logits follow from v = kv_b(rmsnorm(latent))'s value rows alone; the MoE layer with
        # top-k = N adds routed_scaling_factor * sum softmax_e * expert_e(h) plus the shared experts.
        rng = np.random.default_rng(1)
        D, H, nope, rope, vd, lora, F, N, V = 16, 2, 4, 4, 6, 8, 5, 3, 11
        cfg = {"model_type": "deepseek_v2", "hidden_size": D, "num_attention_heads": H, "num_hidden_layers": 2,
               "qk_nope_head_dim": nope, "qk_rope_head_dim": rope, "v_head_dim": vd, "kv_lora_rank": lora,
               "q_lora_rank": None, "first_k_dense_replace": 1, "n_routed_experts": N, "num_experts_per_tok": N,
               "n_shared_experts": 1, "routed_scaling_factor": 2.5, "norm_topk_prob": False,
               "rms_norm_eps": 1e-6, "rope_theta": 1e4, "rope_scaling": None}
        shapes = {"model.embed_tokens.weight": (V, D), "lm_head.weight": (V, D), "model.norm.weight": (D,)}
        for layer in range(2):
            p = "model.layers.%d." % layer
            shapes.update({p + "input_layernorm.weight": (D,), p + "post_attention_layernorm.weight": (D,),
                           p + "self_attn.q_proj.weight": (H * (nope + rope), D),
                           p + "self_attn.kv_a_proj_with_mqa.weight": (lora + rope, D),
                           p + "self_attn.kv_a_layernorm.weight": (lora,),
                           p + "self_attn.kv_b_proj.weight": (H * (nope + vd), lora),
                           p + "self_attn.o_proj.weight": (D, H * vd)})
            mlps = ["mlp."] if layer == 0 else ["mlp.shared_experts."] + ["mlp.experts.%d." % e for e in range(N)]
            for m in mlps:
                shapes.update({p + m + "gate_proj.weight": (F, D), p + m + "up_proj.weight": (F, D),
                               p + m + "down_proj.weight": (D, F)})
            if layer == 1:
                shapes[p + "mlp.gate.weight"] = (N, D)
        w = {name: rng.normal(size=shape) for name, shape in shapes.items()}

        def rms(x, g):
            return x / np.sqrt(np.mean(x * x) + 1e-6) * g

        def mlp(prefix, h):
            g, u = w[prefix + "gate_proj.weight"] @ h, w[prefix + "up_proj.weight"] @ h
            return w[prefix + "down_proj.weight"] @ (g / (1 + np.exp(-g)) * u)

        x = w["model.embed_tokens.weight"][3]
        for layer in range(2):
            p = "model.layers.%d." % layer
            h = rms(x, w[p + "input_layernorm.weight"])
            latent = (w[p + "self_attn.kv_a_proj_with_mqa.weight"] @ h)[:lora]
            kv = (w[p + "self_attn.kv_b_proj.weight"] @ rms(latent, w[p + "self_attn.kv_a_layernorm.weight"]))
            v = np.concatenate([kv[head * (nope + vd) + nope:(head + 1) * (nope + vd)] for head in range(H)])
            x = x + w[p + "self_attn.o_proj.weight"] @ v
            h = rms(x, w[p + "post_attention_layernorm.weight"])
            if layer == 0:
                x = x + mlp(p + "mlp.", h)
                continue
            probs = np.exp(w[p + "mlp.gate.weight"] @ h)
            probs /= probs.sum()
            x = x + 2.5 * sum(probs[e] * mlp(p + "mlp.experts.%d." % e, h) for e in range(N)) + \
                mlp(p + "mlp.shared_experts.", h)
        want = w["lm_head.weight"] @ rms(x, w["model.norm.weight"])
        router = moe_reference.parse_router("native", N, False)
        got, mean_experts = moe_reference.forward(cfg, w, [3], router)
        np.testing.assert_allclose(got[0], want, rtol=1e-10, atol=1e-10)
        self.assertEqual(mean_experts, N)


if __name__ == "__main__":
    unittest.main()
