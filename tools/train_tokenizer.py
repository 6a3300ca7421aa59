#!/usr/bin/python3
"""Trains a byte-level BPE tokenizer on the train split and writes a Hugging Face tokenizer.json.

Vocabulary: the 256 byte symbols (ids 0..255 in byte order), then one id per learned merge in merge
order, then `<|endoftext|>` as the last id (the eos token, also listed as an added special token,
as in OLMoE's tokenizer). Training is the classic BPE loop on pre-token counts: repeatedly merge the
most frequent adjacent pair (ties: the lexicographically largest pair, for determinism), with
incremental pair-count updates. Pre-tokenisation and the byte map are those of bhmoe_tok.
"""

import argparse
import collections
import json
import os
import sys
import time
import unicodedata

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bhmoe_tok  # noqa: E402


def count_words(texts):
    counts = collections.Counter()
    for t in texts:
        for is_added, piece in bhmoe_tok.split_added(t, [bhmoe_tok.EOS_TOKEN]):
            if is_added:
                continue
            counts.update(bhmoe_tok.pretokenize(unicodedata.normalize("NFC", piece)))
    return counts


def train_bpe(word_counts, num_merges):
    words = []  # list of symbol lists
    freqs = []
    for w, c in word_counts.items():
        words.append(bhmoe_tok.word_symbols(w))
        freqs.append(c)
    pair_count = collections.Counter()
    pair_words = collections.defaultdict(set)
    for wi, syms in enumerate(words):
        f = freqs[wi]
        for a, b in zip(syms, syms[1:]):
            pair_count[(a, b)] += f
            pair_words[(a, b)].add(wi)
    merges = []
    for _ in range(num_merges):
        if not pair_count:
            break
        best = max(pair_count.items(), key=lambda kv: (kv[1], kv[0]))
        pair, cnt = best
        if cnt <= 0:
            break
        merges.append(pair)
        a, b = pair
        merged_sym = a + b
        for wi in list(pair_words.get(pair, ())):
            syms = words[wi]
            f = freqs[wi]
            for x, y in zip(syms, syms[1:]):
                pair_count[(x, y)] -= f
                if pair_count[(x, y)] <= 0:
                    del pair_count[(x, y)]
                pair_words[(x, y)].discard(wi)
            new = []
            i = 0
            while i < len(syms):
                if i + 1 < len(syms) and syms[i] == a and syms[i + 1] == b:
                    new.append(merged_sym)
                    i += 2
                else:
                    new.append(syms[i])
                    i += 1
            words[wi] = new
            for x, y in zip(new, new[1:]):
                pair_count[(x, y)] += f
                pair_words[(x, y)].add(wi)
        pair_count.pop(pair, None)
        pair_words.pop(pair, None)
    return merges


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--corpus", required=True, help="directory written by make_corpus.py")
    ap.add_argument("--vocab-size", type=int, default=2048, help="total ids including <|endoftext|>")
    ap.add_argument("--max-chars", type=int, default=4_000_000, help="train on this prefix of train")
    ap.add_argument("--out", required=True, help="tokenizer.json to write")
    args = ap.parse_args()
    t0 = time.time()
    texts = []
    total = 0
    with open(os.path.join(args.corpus, "train.jsonl"), encoding="utf-8") as f:
        for line in f:
            t = json.loads(line)["text"]
            texts.append(t)
            total += len(t)
            if total >= args.max_chars:
                break
    wc = count_words(texts)
    num_merges = args.vocab_size - 256 - 1
    merges = train_bpe(wc, num_merges)
    if len(merges) != num_merges:
        sys.exit("train_tokenizer: only %d merges possible, wanted %d" % (len(merges), num_merges))
    vocab = {}
    for b in range(256):
        vocab[bhmoe_tok.BYTE_ENCODER[b]] = b
    for a, b in merges:
        vocab[a + b] = len(vocab)
    eos_id = len(vocab)
    vocab[bhmoe_tok.EOS_TOKEN] = eos_id
    doc = bhmoe_tok.tokenizer_json(vocab, merges, eos_id)
    tmp = args.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)
    os.replace(tmp, args.out)
    tok = bhmoe_tok.Tokenizer.load(args.out)
    sample = "".join(texts[:200])
    ids = tok.encode(sample)
    assert tok.decode(ids) == sample, "round trip failed"
    print("train_tokenizer: %d ids (%d merges, eos %d), %d unique pre-tokens, %.2f chars/token, %.1fs"
          % (len(vocab), len(merges), eos_id, len(wc), len(sample) / len(ids), time.time() - t0))


if __name__ == "__main__":
    main()
