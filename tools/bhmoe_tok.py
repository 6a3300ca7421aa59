"""Byte-level BPE with Hugging Face tokenizer.json semantics, as OLMoE's tokenizer uses them.

Encoding contract (the same the C++ engine implements, SPEC.md section 1):
  1. added tokens (here only `<|endoftext|>`) are split out of the raw text first, longest first;
  2. each remaining piece is NFC-normalised;
  3. pre-tokenised with the GPT-2 regex
     's|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+
     (implemented by hand below: Python's `re` has no \\p{L}; letters/numbers are the Unicode
     general categories L* / N*, whitespace is the Unicode White_Space property);
  4. each pre-token's UTF-8 bytes are mapped to printable characters (GPT-2 bytes_to_unicode);
  5. BPE: repeatedly merge the adjacent pair with the lowest merge rank (leftmost first) until no
     pair has a rank; each final symbol is looked up in the vocabulary.
"""

import json
import re
import unicodedata

EOS_TOKEN = "<|endoftext|>"

# Unicode White_Space property (what \s means in the Oniguruma/Rust regex engines HF uses).
_WHITE_SPACE = frozenset(
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)


def _is_space(c):
    return c in _WHITE_SPACE


def _is_letter(c):
    return unicodedata.category(c)[0] == "L"


def _is_number(c):
    return unicodedata.category(c)[0] == "N"


def _is_other(c):
    return not (_is_space(c) or _is_letter(c) or _is_number(c))


_CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")


def pretokenize(text):
    """Splits text exactly as the GPT-2 regex above would (leftmost alternative that matches)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        # 's 't 're 've 'm 'll 'd
        matched = False
        if text[i] == "'":
            for c in _CONTRACTIONS:
                if text.startswith(c, i):
                    out.append(c)
                    i += len(c)
                    matched = True
                    break
        if matched:
            continue
        # ' ?\p{L}+', ' ?\p{N}+', ' ?[^\s\p{L}\p{N}]+' in that order.
        start = i + 1 if (text[i] == " " and i + 1 < n) else i
        for cls in (_is_letter, _is_number, _is_other):
            if start < n and cls(text[start]):
                j = start + 1
                while j < n and cls(text[j]):
                    j += 1
                out.append(text[i:j])
                i = j
                matched = True
                break
        if matched:
            continue
        # '\s+(?!\S)' then '\s+'
        if _is_space(text[i]):
            j = i + 1
            while j < n and _is_space(text[j]):
                j += 1
            if j == n:
                end = j  # run reaches the end: nothing non-space follows
            elif j - i >= 2:
                end = j - 1  # leave the last space to prefix the following word
            else:
                end = j  # single space before non-space: '\s+(?!\S)' fails, '\s+' takes it
            out.append(text[i:end])
            i = end
            continue
        raise AssertionError("unreachable: every character is a letter, number, space or other")
    return out


def bytes_to_unicode():
    """GPT-2's reversible map from the 256 byte values to printable Unicode characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + list(
        range(ord("\xae"), ord("\xff") + 1)
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


BYTE_ENCODER = bytes_to_unicode()
BYTE_DECODER = {c: b for b, c in BYTE_ENCODER.items()}


def word_symbols(pretoken):
    """The byte-level characters of one pre-token (each a one-character string)."""
    return [BYTE_ENCODER[b] for b in pretoken.encode("utf-8")]


_ADDED_PATTERNS = {}


def split_added(text, added_tokens):
    """Yields (is_added, piece) with the added tokens matched longest first, left to right."""
    key = tuple(sorted(added_tokens, key=lambda t: (-len(t), t)))
    pattern = _ADDED_PATTERNS.get(key)
    if pattern is None:
        # An alternation tries its branches in order at the leftmost position: longest first.
        pattern = _ADDED_PATTERNS[key] = re.compile("|".join(re.escape(t) for t in key)) if key else None
    pos = 0
    if pattern is not None:
        for m in pattern.finditer(text):
            if pos < m.start():
                yield False, text[pos:m.start()]
            yield True, m.group(0)
            pos = m.end()
    if pos < len(text):
        yield False, text[pos:]


class Tokenizer:
    def __init__(self, vocab, merges, added):
        self.vocab = vocab  # token string -> id
        self.id_to_token = {i: t for t, i in vocab.items()}
        self.merges = merges  # list of (a, b)
        self.ranks = {pair: r for r, pair in enumerate(merges)}
        self.added = added  # token string -> id
        self._cache = {}

    @staticmethod
    def load(path):
        with open(path, encoding="utf-8") as f:
            j = json.load(f)
        m = j["model"]
        merges = []
        for entry in m["merges"]:
            if isinstance(entry, str):
                a, b = entry.split(" ")
            else:
                a, b = entry
            merges.append((a, b))
        added = {t["content"]: t["id"] for t in j.get("added_tokens", [])}
        return Tokenizer(dict(m["vocab"]), merges, added)

    def bpe(self, pretoken):
        cached = self._cache.get(pretoken)
        if cached is not None:
            return cached
        syms = word_symbols(pretoken)
        ranks = self.ranks
        while len(syms) > 1:
            best_rank, best_i = None, -1
            for i in range(len(syms) - 1):
                r = ranks.get((syms[i], syms[i + 1]))
                if r is not None and (best_rank is None or r < best_rank):
                    best_rank, best_i = r, i
            if best_rank is None:
                break
            a, b = syms[best_i], syms[best_i + 1]
            merged = []
            i = 0
            while i < len(syms):
                if i + 1 < len(syms) and syms[i] == a and syms[i + 1] == b:
                    merged.append(a + b)
                    i += 2
                else:
                    merged.append(syms[i])
                    i += 1
            syms = merged
        ids = [self.vocab[s] for s in syms]
        self._cache[pretoken] = ids
        return ids

    def encode(self, text):
        ids = []
        for is_added, piece in split_added(text, self.added):
            if is_added:
                ids.append(self.added[piece])
                continue
            piece = unicodedata.normalize("NFC", piece)
            for pt in pretokenize(piece):
                ids.extend(self.bpe(pt))
        return ids

    def decode(self, ids):
        out = bytearray()
        parts = []
        for i in ids:
            tok = self.id_to_token[i]
            if tok in self.added:
                parts.append(out.decode("utf-8", errors="replace"))
                out = bytearray()
                parts.append(tok)
            else:
                out.extend(BYTE_DECODER[c] for c in tok)
        parts.append(out.decode("utf-8", errors="replace"))
        return "".join(parts)


# OLMoE's added tokens (its tokenizer.json): two specials, PII placeholders and runs of 2..24 spaces.
# Special ones are matched before normalisation; the others after (HF "normalized": true).
PAD_TOKEN = "<|padding|>"
SPECIAL_TOKENS = (PAD_TOKEN, EOS_TOKEN)
PLAIN_ADDED_TOKENS = ("|||IP_ADDRESS|||", "|||EMAIL_ADDRESS|||", "|||PHONE_NUMBER|||") + tuple(
    " " * n for n in range(24, 1, -1))
OLMOE_ADDED_TOKENS = SPECIAL_TOKENS + PLAIN_ADDED_TOKENS


def tokenizer_json(vocab, merges, eos_id, added=None):
    """The tokenizer.json document, in the layout of OLMoE's own (see ../shared/olmoe).

    added: {token: id} of added tokens (default: only <|endoftext|> at eos_id); a token in
    SPECIAL_TOKENS is written as special and not normalised, any other as plain and normalised."""
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    if added is None:
        added = {EOS_TOKEN: eos_id}
    added_tokens = [
        {
            "id": i,
            "content": t,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": t not in SPECIAL_TOKENS,
            "special": t in SPECIAL_TOKENS,
        }
        for t, i in sorted(added.items(), key=lambda kv: kv[1])
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added_tokens,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": dict(byte_level),
        "post_processor": dict(byte_level),
        "decoder": dict(byte_level),
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "vocab": vocab,
            "merges": [a + " " + b for a, b in merges],
        },
    }
