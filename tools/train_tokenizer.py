#!/usr/bin/python3
"""Trains a byte-level BPE tokenizer on the train split and writes a Hugging Face tokenizer.json.

Layout of the vocabulary, OLMoE's own order (../shared/olmoe/tokenizer.json): id 0 `|||IP_ADDRESS|||`,
id 1 `<|padding|>`, then the 256 byte symbols in byte order, then one id per learned merge in merge
order, then runs of 24 down to 2 spaces, `|||EMAIL_ADDRESS|||`, `|||PHONE_NUMBER|||` and, last,
`<|endoftext|>` (the eos token). All of them are added tokens as in OLMoE (specials: padding and eos).

Training is the classic BPE loop on pre-token counts: repeatedly merge the most frequent adjacent
pair (ties: the lexicographically smallest pair, for determinism), with incremental pair-count
updates and a lazy max-heap, so 16k merges over a few hundred thousand distinct pre-tokens take
minutes. Text is split at the added tokens first, then pre-tokenised and byte-mapped as bhmoe_tok
encodes it, so the training statistics are those the encoder sees.

The training text is a domain-balanced sample of train.jsonl: every domain contributes its documents
in file order up to --max-chars / (number of domains), so a large source (a dictionary) does not
decide the merges alone.
"""

import argparse
import collections
import heapq
import json
import os
import sys
import time
import unicodedata

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bhmoe_tok  # noqa: E402


def count_words(texts, added=(bhmoe_tok.EOS_TOKEN,)):
    counts = collections.Counter()
    for t in texts:
        for is_added, piece in bhmoe_tok.split_added(t, list(added)):
            if is_added:
                continue
            counts.update(bhmoe_tok.pretokenize(unicodedata.normalize("NFC", piece)))
    return counts


def train_bpe(word_counts, num_merges):
    """Returns up to num_merges merges (pairs of symbol strings) in merge order."""
    words = []  # list of symbol lists
    freqs = []
    for w, c in sorted(word_counts.items()):
        words.append(bhmoe_tok.word_symbols(w))
        freqs.append(c)
    pair_count = collections.defaultdict(int)
    pair_words = collections.defaultdict(set)
    for wi, syms in enumerate(words):
        f = freqs[wi]
        for a, b in zip(syms, syms[1:]):
            pair_count[(a, b)] += f
            pair_words[(a, b)].add(wi)
    # Max-heap by count, then smallest pair; entries go stale when a count changes and are skipped.
    heap = [(-c, p) for p, c in pair_count.items()]
    heapq.heapify(heap)
    merges = []
    while len(merges) < num_merges and heap:
        negc, pair = heapq.heappop(heap)
        cnt = pair_count.get(pair, 0)
        if cnt != -negc:
            continue  # stale entry
        if cnt <= 0:
            break
        merges.append(pair)
        a, b = pair
        merged_sym = a + b
        changed = set()
        for wi in sorted(pair_words.get(pair, ())):
            syms = words[wi]
            f = freqs[wi]
            for x, y in zip(syms, syms[1:]):
                pair_count[(x, y)] -= f
                pair_words[(x, y)].discard(wi)
                changed.add((x, y))
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
                changed.add((x, y))
        pair_count.pop(pair, None)
        pair_words.pop(pair, None)
        for p in changed:
            c = pair_count.get(p, 0)
            if c > 0:
                heapq.heappush(heap, (-c, p))
            else:
                pair_count.pop(p, None)
                pair_words.pop(p, None)
    return merges


def build_vocab(merges):
    """(vocab {token: id}, added {token: id}, eos id) in the layout the module docstring states."""
    vocab = {"|||IP_ADDRESS|||": 0, bhmoe_tok.PAD_TOKEN: 1}
    for b in range(256):
        vocab[bhmoe_tok.BYTE_ENCODER[b]] = len(vocab)
    for a, b in merges:
        vocab[a + b] = len(vocab)
    tail = [" " * n for n in range(24, 1, -1)] + ["|||EMAIL_ADDRESS|||", "|||PHONE_NUMBER|||",
                                                  bhmoe_tok.EOS_TOKEN]
    for t in tail:
        assert t not in vocab, "added token %r collides with a learned merge" % t
        vocab[t] = len(vocab)
    added = {t: vocab[t] for t in bhmoe_tok.OLMOE_ADDED_TOKENS}
    return vocab, added, vocab[bhmoe_tok.EOS_TOKEN]


NUM_FIXED_IDS = 2 + 256 + 23 + 3  # specials and placeholders, bytes, space runs


def balanced_sample(train_jsonl, max_chars):
    """Documents of train.jsonl, per domain in file order, up to max_chars / #domains each."""
    by_domain = collections.defaultdict(list)
    with open(train_jsonl, encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            by_domain[d["domain"]].append(d["text"])
    per = max_chars // max(1, len(by_domain))
    texts = []
    for dom in sorted(by_domain):
        n = 0
        for t in by_domain[dom]:
            if n >= per:
                break
            texts.append(t)
            n += len(t)
    return texts


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--corpus", required=True, help="directory written by make_corpus.py")
    ap.add_argument("--vocab-size", type=int, default=8192, help="total ids including added tokens")
    ap.add_argument("--max-chars", type=int, default=24_000_000, help="size of the balanced sample")
    ap.add_argument("--out", required=True, help="tokenizer.json to write")
    args = ap.parse_args()
    t0 = time.time()
    texts = balanced_sample(os.path.join(args.corpus, "train.jsonl"), args.max_chars)
    wc = count_words(texts, bhmoe_tok.OLMOE_ADDED_TOKENS)
    t1 = time.time()
    num_merges = args.vocab_size - NUM_FIXED_IDS
    merges = train_bpe(wc, num_merges)
    if len(merges) != num_merges:
        sys.exit("train_tokenizer: only %d merges possible, wanted %d" % (len(merges), num_merges))
    vocab, added, eos_id = build_vocab(merges)
    assert len(vocab) == args.vocab_size
    doc = bhmoe_tok.tokenizer_json(vocab, merges, eos_id, added)
    tmp = args.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)
    os.replace(tmp, args.out)
    tok = bhmoe_tok.Tokenizer.load(args.out)
    sample = "".join(texts[::max(1, len(texts) // 300)])
    ids = tok.encode(sample)
    assert tok.decode(ids) == unicodedata.normalize("NFC", sample), "round trip failed"
    print("train_tokenizer: %d ids (%d merges, eos %d), %d chars sampled, %d unique pre-tokens "
          "(counted in %.0fs), %.2f chars/token, %.0fs"
          % (len(vocab), len(merges), eos_id, sum(map(len, texts)), len(wc), t1 - t0,
             len(sample) / len(ids), time.time() - t0))


if __name__ == "__main__":
    main()
