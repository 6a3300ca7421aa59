#!/usr/bin/python3
"""Compares bhmoe's tokenizers with the independent references on random texts (a check to run by
hand after changing the tokenizer; the committed cases are what the tests hold to).

  /usr/bin/python3 tools/tokenizer_cases/compare_random.py --llama-cpp LLAMA_CPP_DIR \\
      [--bhmoe build/bhmoe] [--seed 1] [--count 400] [--vocab EXTRA.gguf ...]

For the test vocabularies in src/model/testdata/tokenizers, every random text is tokenized by
  - sentencepiece (spm-bpe.model) and Hugging Face semantics with Oniguruma (Qwen2, as in
    make_cases.py): the references of the tokenizer.json path;
  - llama.cpp on the GGUF files: the reference of the GGUF path;
  - `bhmoe tokenize` on the tokenizer.json and on the GGUF files.
--vocab adds GGUF vocabularies (e.g. llama.cpp's models/ggml-vocab-llama-spm.gguf) compared between
llama.cpp and bhmoe only. Prints the number of disagreements and each disagreeing text.
"""

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import unicodedata

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_cases  # noqa: E402
import onig  # noqa: E402

import sentencepiece as spm  # noqa: E402

ALPHABET = (list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") * 4 +
            list("     \n\n\t\r0123456789.,;:!?'\"()[]{}-_/\\@#$%^&*+=<>|~`") * 2 +
            list("éèçñüößÀÅ日本語中文한국🦙🚀\u180e\u00a0\u2003\u3000\u0301\u200b\u0085ſ") +
            ["'s", "'T", "'ll", "'VE", "'M", "'d", "\r\n", "  ", "the ", " of ", "license"])


def bhmoe_ids(binary, flag, source, texts):
    out = []
    for t in texts:
        r = subprocess.run([binary, "tokenize", flag, source, "--text", t], capture_output=True,
                           text=True, check=True)
        out.append(json.loads(r.stdout))
    return out


def report(name, texts, got, want):
    bad = [(t, g, w) for t, g, w in zip(texts, got, want) if g != w]
    print("%s: %d of %d texts differ" % (name, len(bad), len(texts)))
    for t, g, w in bad[:20]:
        print("   %r: %s vs %s" % (t, g, w))
    return len(bad)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--llama-cpp", required=True)
    parser.add_argument("--bhmoe", default="build/bhmoe")
    parser.add_argument("--data", default="src/model/testdata/tokenizers")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--count", type=int, default=400)
    parser.add_argument("--vocab", nargs="*", default=[])
    args = parser.parse_args()
    rng = random.Random(args.seed)
    texts = ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 40)))
             for _ in range(args.count)]
    data = args.data
    bad = 0
    with tempfile.TemporaryDirectory() as work:
        exe = make_cases.build_llamacpp_tool(os.path.abspath(args.llama_cpp), work)

        sp = spm.SentencePieceProcessor(model_file=os.path.join(data, "spm-bpe.model"))
        reference = [sp.encode(t) for t in texts]
        gguf = os.path.join(data, "spm-bpe.gguf")
        llama = make_cases.llamacpp_ids(exe, gguf, texts, work)
        bad += report("spm llama.cpp vs sentencepiece", texts, llama, reference)
        bad += report("spm bhmoe tokenizer.json vs sentencepiece", texts,
                      bhmoe_ids(args.bhmoe, "--tokenizer",
                                os.path.join(data, "spm-bpe.tokenizer.json"), texts), reference)
        bad += report("spm bhmoe GGUF vs llama.cpp", texts,
                      bhmoe_ids(args.bhmoe, "--model", gguf, texts), llama)

        tokenizer_json = os.path.join(data, "qwen2-bpe.tokenizer.json")
        with open(tokenizer_json, encoding="utf-8") as f:
            tokenizer = json.load(f)
        regex = onig.Regex(make_cases.QWEN2_REGEX)
        reference = [make_cases.hf_bytelevel_encode(tokenizer, t, regex) for t in texts]
        gguf = os.path.join(data, "qwen2-bpe.gguf")
        llama = make_cases.llamacpp_ids(exe, gguf, texts, work)
        in_nfc = [t for t in texts if unicodedata.normalize("NFC", t) == t]
        nfc_llama = [ids for t, ids in zip(texts, llama) if t in in_nfc]
        nfc_reference = [ids for t, ids in zip(texts, reference) if t in in_nfc]
        bad += report("qwen2 llama.cpp vs Hugging Face semantics (texts in NFC)", in_nfc,
                      nfc_llama, nfc_reference)
        bad += report("qwen2 bhmoe tokenizer.json vs Hugging Face semantics", texts,
                      bhmoe_ids(args.bhmoe, "--tokenizer", tokenizer_json, texts), reference)
        bad += report("qwen2 bhmoe GGUF vs llama.cpp", texts,
                      bhmoe_ids(args.bhmoe, "--model", gguf, texts), llama)

        for vocab in args.vocab:
            bad += report("%s: bhmoe vs llama.cpp" % os.path.basename(vocab), texts,
                          bhmoe_ids(args.bhmoe, "--model", vocab, texts),
                          make_cases.llamacpp_ids(exe, vocab, texts, work))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
