#!/usr/bin/python3
"""Checks that `bhmoe convert` writes each test vocabulary's tokenizer.json so that llama.cpp
tokenizes the GGUF file exactly as the reference cases say (a tools-side check, not CI).

  /usr/bin/python3 tools/tokenizer_cases/check_converted.py --llama-cpp LLAMA_CPP_DIR \
      [--bhmoe build/bhmoe] [--data src/model/testdata/tokenizers]

For each of spm (mixtral-tiny), qwen2 (qwen2-moe-tiny) and deepseek (deepseek-v2-tiny): makes a
small random model with `bhmoe make-model`, puts the vocabulary's tokenizer.json in it and
widens the embedding and output matrices to the vocabulary (the tiny presets have 1024 ids), runs
`bhmoe convert`, then tokenizes every case text with llama.cpp (llamacpp_tokenize.cpp) on the
converted file and compares with the case's llama.cpp ids (its ids where llama.cpp agreed).
Exits 1 on any difference.
"""

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_cases  # noqa: E402

# (vocabulary, preset, layers): llama.cpp reads a deepseek2 file without q_lora_rank only with 27
# layers (DeepSeek-V2-Lite's), so bhmoe convert writes none with fewer.
FAMILIES = [("spm", "mixtral-tiny", 1), ("qwen2", "qwen2-moe-tiny", 1),
            ("deepseek", "deepseek-v2-tiny", 27)]
RESIZED = ("model.embed_tokens.weight", "lm_head.weight")


def widen_vocab(folder, vocab_size):
    """Sets config.json's vocab_size and gives the F32 embedding and lm_head that many rows (the
    added rows zero), rewriting model.safetensors."""
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    config["vocab_size"] = vocab_size
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    path = os.path.join(folder, "model.safetensors")
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    meta = header.pop("__metadata__", None)
    blobs = {}
    for name, info in header.items():
        b, e = info["data_offsets"]
        blob = data[b:e]
        if name in RESIZED:
            assert info["dtype"] == "F32", (name, info["dtype"])
            rows, cols = info["shape"]
            blob += bytes(4 * cols * (vocab_size - rows))
            info["shape"] = [vocab_size, cols]
        blobs[name] = blob
    out_header, offset = {}, 0
    if meta is not None:
        out_header["__metadata__"] = meta
    for name, info in header.items():
        out_header[name] = dict(info, data_offsets=[offset, offset + len(blobs[name])])
        offset += len(blobs[name])
    raw = json.dumps(out_header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for name in header:
            f.write(blobs[name])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--llama-cpp", required=True)
    parser.add_argument("--bhmoe", default="build/bhmoe")
    parser.add_argument("--data", default="src/model/testdata/tokenizers")
    args = parser.parse_args()
    failures = 0
    with tempfile.TemporaryDirectory() as work:
        exe = make_cases.build_llamacpp_tool(os.path.abspath(args.llama_cpp), work)
        for family, preset, layers in FAMILIES:
            folder = os.path.join(work, family)
            subprocess.run([args.bhmoe, "make-model", "--preset", preset, "--layers", str(layers),
                            "--dtype", "f32", folder], check=True, stdout=subprocess.DEVNULL)
            tokenizer_json = os.path.join(args.data, family + "-bpe.tokenizer.json")
            with open(tokenizer_json, encoding="utf-8") as f:
                tok = json.load(f)
            with open(os.path.join(folder, "tokenizer.json"), "w", encoding="utf-8") as f:
                json.dump(tok, f, ensure_ascii=False)
            ids = list(tok["model"]["vocab"].values()) + [a["id"] for a in tok["added_tokens"]]
            widen_vocab(folder, max(ids) + 1)
            gguf_path = os.path.join(work, family + ".gguf")
            subprocess.run([args.bhmoe, "convert", "--model", folder, "--out", gguf_path,
                            "--type", "f32"], check=True, stdout=subprocess.DEVNULL)
            with open(os.path.join(args.data, family + "-cases.json"), encoding="utf-8") as f:
                cases = json.load(f)
            pairs = [(c["text"], c.get("llamacpp_ids", c["ids"])) for c in cases["cases"]]
            pairs += [(c["text"], c["llamacpp_ids"]) for c in cases.get("special_cases", [])]
            got = make_cases.llamacpp_ids(exe, gguf_path, [t for t, _ in pairs], work)
            bad = [(t, want, g) for (t, want), g in zip(pairs, got) if want != g]
            print("%s: llama.cpp on the converted file: %d of %d cases as the reference" %
                  (family, len(pairs) - len(bad), len(pairs)))
            for t, want, g in bad[:5]:
                print("  %r: want %s got %s" % (t[:50], want[:12], g[:12]))
            failures += len(bad)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
