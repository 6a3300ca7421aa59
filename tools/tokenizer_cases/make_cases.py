#!/usr/bin/python3
"""Makes the tokenizer test vocabularies and their reference cases for the Qwen2 and the
Mixtral/Llama (SentencePiece BPE) tokenizer families, from implementations independent of bhmoe.

  /usr/bin/python3 tools/tokenizer_cases/make_cases.py --llama-cpp LLAMA_CPP_DIR [--out DIR]
      [--families spm,qwen2,deepseek]

Run from the repository root. LLAMA_CPP_DIR is a llama.cpp checkout built with its `llama` library
(build/bin/libllama.so); its gguf-py writes the GGUF files. Needs Debian's python3-sentencepiece,
libonig5 and python3-numpy (for gguf-py). Writes into --out (default src/model/testdata/tokenizers):

SentencePiece BPE (Mixtral/Llama layout):
  spm-bpe.model            a BPE model trained by sentencepiece (byte_fallback, identity normaliser,
                           extra spaces kept) on the common licenses and a little hand-written text;
  spm-bpe.tokenizer.json   the Hugging Face tokenizer.json of that model in Mixtral's layout
                           (Prepend/Replace normaliser, BPE with byte_fallback and merges, decoder
                           Replace/ByteFallback/Fuse/Strip), converted by sp_to_hf() below;
  spm-bpe.gguf             the model's vocabulary as llama.cpp's convert_hf_to_gguf writes it for
                           a tokenizer.model: tokenizer.ggml.model "llama", tokens, scores, types;
  spm-cases.json           texts with sentencepiece's ids and decoded text, and llama.cpp's ids for
                           spm-bpe.gguf; texts with <s>/</s> markers have llama.cpp's ids only
                           (sentencepiece's encode does not parse control tokens).
Byte-level BPE with the Qwen2 pre-tokeniser:
  qwen2-bpe.tokenizer.json a byte-level BPE trained here (train_tokenizer.train_bpe) on text
                           pre-split by Oniguruma with Qwen2's regex, in Qwen2's tokenizer.json
                           layout (NFC, Split + ByteLevel, added <|endoftext|> <|im_start|> <|im_end|>);
  qwen2-bpe.gguf           its vocabulary as tokenizer.ggml.model "gpt2", tokenizer.ggml.pre "qwen2";
  qwen2-cases.json         texts with two references: llama.cpp's ids for qwen2-bpe.gguf, and
                           Hugging Face semantics computed here (NFC, added tokens, Oniguruma split
                           with the exact regex, byte map, BPE by merge rank). "ids" are the latter;
                           "llamacpp_ids" appear where llama.cpp differs, with the reason in "note".
Byte-level BPE with the DeepSeek-LLM/V2 pre-tokeniser:
  deepseek-bpe.tokenizer.json a byte-level BPE in DeepSeek's layout (no normaliser, five Split
                           regexes and Digits(individual_digits) in sequence + ByteLevel, added
                           begin/end of sentence at ids 0, 1), no token with two numeric characters,
                           trained on the DeepSeek pieces and on coarser pieces (COARSE_TRAINING_REGEX)
                           so that it has merges across every regex's boundaries;
  deepseek-bpe.gguf        its vocabulary as "gpt2" with tokenizer.ggml.pre "deepseek-llm";
  deepseek-cases.json      as qwen2-cases.json (Hugging Face semantics: each Split applied by
                           Oniguruma to every piece of the one before; llama.cpp's ids alongside).
"""

import argparse
import glob
import hashlib
import json
import os
import struct
import subprocess
import sys
import tempfile
import unicodedata

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
import onig  # noqa: E402
import bhmoe_tok  # noqa: E402
import train_tokenizer  # noqa: E402

import sentencepiece as spm  # noqa: E402

SPACE = "\u2581"  # ▁, SentencePiece's meta symbol for a space
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
               r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_ADDED = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# DeepSeek-LLM/V2's pre-tokeniser: Split regexes (behavior Isolated) applied one after another, each
# to every piece of the one before, then ByteLevel without its regex. The list is llama.cpp's
# LLAMA_VOCAB_PRE_TYPE_DEEPSEEK_LLM (src/llama-vocab.cpp, pre "deepseek-llm"), which copies
# deepseek-llm-7b-base's tokenizer.json.
DEEPSEEK_REGEXES = [
    "[\r\n]",
    "\\s?[A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293"
    "\u0295-\u02af\u0370-\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c"
    "\u038e-\u03a1\u03a3-\u03f5\u03f7-\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5"
    "\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77"
    "\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59"
    "\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc"
    "\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107"
    "\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139"
    "\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee"
    "\u2cf2\u2cf3\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e"
    "\uab70-\uabbf\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f"
    "\U000104b0-\U000104d3\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2"
    "\U000118a0-\U000118df\U0001e900-\U0001e943]+",
    "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+",
    "\\s+$",
    "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+",
    "\\p{N}+",
]
# DeepSeek's own tokenizer.json has the first five as Splits and, for the sixth, Hugging Face's
# Digits pre-tokenizer with individual_digits (every numeric character a piece: a Split of \p{N});
# llama.cpp's \p{N}+ gives the same ids wherever no token holds two numeric characters, as in
# DeepSeek's vocabulary and in the one made here.
DEEPSEEK_HF_SPLITS = DEEPSEEK_REGEXES[:5] + ["\\p{N}"]
DEEPSEEK_ADDED = ["<\uff5cbegin\u2581of\u2581sentence\uff5c>",
                  "<\uff5cend\u2581of\u2581sentence\uff5c>"]

# Hand-written training text beside the licenses: accented Latin, upper-case contractions, code,
# numbers, so that the vocabularies have merges for what the cases exercise.
EXTRA_TRAINING_TEXT = """\
The café on the Rue de Médicis serves crème brûlée, pâté and a naïve rosé; déjà vu in Köln and Zürich.
Señor Muñoz said: ¿Dónde está la estación? ¡Olé! Ça va très bien, merci. Straße, Größe, Übung.
IT'S TRUE THAT WE DON'T KNOW. THEY'RE HERE, WE'VE SEEN IT, I'M SURE YOU'LL AGREE AND HE'D SAY SO.
It's true that we don't know. They're here, we've seen it, I'm sure you'll agree and he'd say so.
def main(argv):
    for index, value in enumerate(argv[1:]):
        if value.startswith("--"):
            print(f"option {index}: {value!r}")
    return {"status": 0, "items": [1, 2, 3]}
In 1991, 2003 and 2024 there were 365 days, 12 months and 52 weeks; 3.14159 is about 22/7.
Separators: a\u180e\u180eb, x\u180e\u180ey and q\u180e\u180er (U+180E is not white space).
"""


def sha256_of(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def training_sources():
    """The licenses, sorted by name (symlinks skipped: they repeat a file)."""
    files = sorted(p for p in glob.glob("/usr/share/common-licenses/*")
                   if os.path.isfile(p) and not os.path.islink(p))
    if not files:
        sys.exit("no training text in /usr/share/common-licenses")
    return files


def write_training_text(path):
    sources = training_sources()
    with open(path, "w", encoding="utf-8") as out:
        for p in sources:
            with open(p, encoding="utf-8", errors="replace") as f:
                out.write(f.read())
        out.write(EXTRA_TRAINING_TEXT * 20)
    return [{"file": os.path.basename(p), "sha256": sha256_of(p)} for p in sources]


# ---- Texts of the cases ------------------------------------------------------------------------

COMMON_TEXTS = [
    "",
    "Hello world",
    "Hello World!",
    "hello",
    "the license",
    "The GNU General Public License is a free, copyleft license for software.",
    " Hello",
    "  Hello",
    "   leading spaces",
    "trailing space ",
    "trailing spaces   ",
    "two  spaces   three    four",
    " ",
    "  ",
    "    ",
    "\n",
    "\n\n",
    "line one\nline two\n",
    "para one.\n\npara two.\n\n\n",
    "windows\r\nline\r\n",
    "\ttab\tseparated\t\tvalues",
    " \t \n mixed \n\t ",
    "0",
    "42",
    "1991",
    "12345678901234567890",
    "3.14159, 1,000,000 and 2024-01-31",
    "Version 2.0 of 19 November 2007",
    "!?.,;:'\"()[]{}<>@#$%^&*-_=+|\\/~`",
    "e.g. (a), [b] and {c}...",
    "--option=value --flag",
    "It's, I'm, you're, we've, they'll, he'd",
    "IT'S, I'M, YOU'RE, WE'VE, THEY'LL, HE'D, DON'T",
    "It'S mIxEd'Ll",
    "'s 't 're 've 'm 'll 'd",
    "café crème brûlée",
    "Köln Zürich Straße Größe",
    "Ça va? ¿Dónde? ¡Olé!",
    "naïve rosé déjà vu",
    "Ελληνικά και русский",
    "日本語のテキスト",
    "中文文本，还有한국어",
    "🦙",
    "Emoji: 🦙🚀 ✅ 🇫🇷!",
    "👩🏽‍💻 works",
    "ǅ ǈ ǋ ǲ",  # title-case digraphs: absent from the training text
    "\u00a0non-breaking\u00a0space",
    "em\u2003space and ideographic\u3000space",
    "zero\u200bwidth",
    "ﬁne ① ²",
    "int main(void) {\n    return 0;\n}\n",
    "def f(x):\n\treturn {'a': [1, 2]}  # comment\n",
    "for (i = 0; i < n; ++i) a[i] += b[i] * 2;",
    "https://www.gnu.org/licenses/ and <mailto:info@example.org>",
    "x" * 40,
    "ab" * 30,
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa bbbbbbbbbbbbbbbbbbbbbbbbbbbb",
]

SPM_ONLY_TEXTS = [
    "▁already▁meta",
    " ▁ mixed ▁▁ meta ",
]

QWEN2_ONLY_TEXTS = [
    "Cafe\u0301 de\u0301ja\u0300 vu",  # NFD: Hugging Face composes (NFC) before splitting
    "A\u030a and \u212b",  # Å decomposed and the Angstrom sign: NFC maps both to U+00C5
    "(word) \"quoted\" 'single' $var _under -dash",
    "x.y.z a_b_c self.name os.path.join",
    "end.\n\nNext:\r\n\r\n  \n\tx",
    "spaces before newline   \nand after\n   x",
    "a  \n\n  b",
    "\u180e\u180e mongolian vowel separator",
    "a\u180e\u180eb",
    "it'\u017f long s",  # (?i:'s) also matches 's with U+017F LATIN SMALL LETTER LONG S
    "WE'VERY, I'MADE, X'SOFT; we'very, i'made",  # (?i:'ve|'m|'s) cut 'VE 'M 'S off the words
    "\u0915\u094d\u0937 हिन्दी ไทย العربية",
    "x\u0085y next line",
    "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>",
    "text<|endoftext|>more text",
    "<|im_start|><|im_end|>",
    "<|im_start broken marker|>",
    "<|endoftext|",
]

DEEPSEEK_ONLY_TEXTS = [
    "Cafe\u0301 de\u0301ja\u0300 vu",  # no normaliser: the combining marks stay separate
    "(word) \"quoted\" 'single' $var _under -dash",
    "x.y.z a_b_c self.name os.path.join",
    "end.\n\nNext:\r\n\r\n  \n\tx",
    "spaces before newline   \nand after\n   x",
    "a  \n\n  b",
    "ends in spaces  ",
    "ends in a tab\t",
    "tab\t\tbetween",
    "1314151 and 2.5e10, x86_64, v1.2.3",
    "ⅫⅩ ٣٤٥ ۶۷ १२३",  # \p{N} beyond ASCII digits
    "全角！（括号）：“引号”，句号。",
    "Ｆｕｌｌｗｉｄｔｈ ＡＢＣ ａｂｃ",
    "한국어 텍스트와 中文 混合",
    "ひらがな カタカナ 漢字",  # kana (U+3040-U+30FF) lie in the CJK range U+0800-U+4E00
    "Ωmega K-Kelvin ℃ ℕ",
    "ǅ and ǈ letters, ĸ kra",
    "\u180e\u180e mongolian vowel separator",
    "x\u0085y next line",
    "\u0915\u094d\u0937 हिन्दी ไทย العربية",
    "<\uff5cbegin\u2581of\u2581sentence\uff5c>Hello",
    "Hi<\uff5cend\u2581of\u2581sentence\uff5c>",
    "<\uff5cbegin\u2581of\u2581sentence\uff5c>User: 2+2?\n\nAssistant: 4<\uff5cend\u2581of\u2581sentence\uff5c>",
    "<\uff5cbegin\u2581of\u2581sentence broken",
    "Ελληνικά, русский, café, crème.",
    "中文¿中文🦙",
    "¿12¿ ²³¿ ¹²³",
    "✅  ",
    "¿  ",
    "🦙  ",
]

# Texts with the SentencePiece control tokens written out: llama.cpp matches them (parse_special),
# as Hugging Face matches added tokens; sentencepiece's encode does not, so these have llama.cpp ids
# only.
SPM_SPECIAL_TEXTS = [
    "<s>",
    "<s>Hello",
    "<s> Hello",
    "Hello</s>",
    "Hello </s> world",
    "<s>[INST] What is 2+2? [/INST]</s>",
    "<unk>x<s></s>",
    "<s broken",
]


def long_text():
    with open(training_sources()[0], encoding="utf-8", errors="replace") as f:
        return f.read()[:3000]


# ---- SentencePiece -----------------------------------------------------------------------------


def train_spm(work, out_dir):
    train_path = os.path.join(work, "spm-train.txt")
    write_training_text(train_path)
    prefix = os.path.join(work, "spm-bpe")
    # The model records its input and prefix as given: relative names, run from `work`, keep this
    # machine's paths out of the committed file.
    cwd = os.getcwd()
    os.chdir(work)
    spm.SentencePieceTrainer.train(
        input=os.path.basename(train_path),
        model_prefix="spm-bpe",
        model_type="bpe",
        vocab_size=1200,
        byte_fallback=True,
        character_coverage=0.9995,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        allow_whitespace_only_pieces=True,
        split_digits=False,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        shuffle_input_sentence=False,
        minloglevel=2,
    )
    os.chdir(cwd)
    model = os.path.join(out_dir, "spm-bpe.model")
    os.replace(prefix + ".model", model)
    return model


def piece_kind(sp, i):
    if sp.is_unknown(i):
        return "unknown"
    if sp.is_control(i):
        return "control"
    if sp.is_byte(i):
        return "byte"
    if sp.is_unused(i):
        return "unused"
    return "normal"


def sp_to_hf(sp):
    """The Hugging Face tokenizer.json of a SentencePiece BPE model, in Mixtral's layout.

    Merges: every split of a normal piece into two normal pieces is a merge; merges are ranked by
    the merged piece's score, highest first (ties by its id, then the halves' ids), so that BPE by
    merge rank merges the pair whose merged piece scores highest, which is SentencePiece's rule."""
    n = sp.get_piece_size()
    vocab = {sp.id_to_piece(i): i for i in range(n)}
    normal = {sp.id_to_piece(i) for i in range(n) if piece_kind(sp, i) == "normal"}
    merges = []
    for i in range(n):
        piece = sp.id_to_piece(i)
        if piece not in normal:
            continue
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            if left in normal and right in normal:
                merges.append((-sp.get_score(i), i, vocab[left], vocab[right], left, right))
    merges.sort()
    added = []
    for i in range(n):
        if piece_kind(sp, i) in ("unknown", "control"):
            added.append({
                "id": i,
                "content": sp.id_to_piece(i),
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True
            })
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {
            "type": "Sequence",
            "normalizers": [{"type": "Prepend", "prepend": SPACE},
                            {"type": "Replace", "pattern": {"String": " "}, "content": SPACE}]
        },
        "pre_tokenizer": None,
        "post_processor": None,
        "decoder": {
            "type": "Sequence",
            "decoders": [{"type": "Replace", "pattern": {"String": SPACE}, "content": " "},
                         {"type": "ByteFallback"}, {"type": "Fuse"},
                         {"type": "Strip", "content": " ", "start": 1, "stop": 0}]
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": "<unk>",
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": True,
            "byte_fallback": True,
            "vocab": vocab,
            "merges": [m[4] + " " + m[5] for m in merges],
        },
    }


# ---- GGUF (vocabulary only) through llama.cpp's gguf-py ----------------------------------------


def gguf_writer(llama_cpp, path, arch):
    sys.path.insert(0, os.path.join(llama_cpp, "gguf-py"))
    import gguf  # noqa: E402
    w = gguf.GGUFWriter(path, arch)
    # The hyperparameters llama.cpp reads before the vocabulary (values of a small model).
    w.add_block_count(1)
    w.add_context_length(4096)
    w.add_embedding_length(64)
    w.add_feed_forward_length(128)
    w.add_head_count(4)
    w.add_head_count_kv(4)
    w.add_layer_norm_rms_eps(1e-6)
    return gguf, w


def finish(w):
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_spm_gguf(llama_cpp, sp, path):
    gguf, w = gguf_writer(llama_cpp, path, "llama")
    types = {
        "normal": gguf.TokenType.NORMAL,
        "unknown": gguf.TokenType.UNKNOWN,
        "control": gguf.TokenType.CONTROL,
        "unused": gguf.TokenType.UNUSED,
        "byte": gguf.TokenType.BYTE,
    }
    n = sp.get_piece_size()
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list([sp.id_to_piece(i).encode("utf-8") for i in range(n)])
    w.add_token_scores([sp.get_score(i) for i in range(n)])
    w.add_token_types([types[piece_kind(sp, i)] for i in range(n)])
    w.add_bos_token_id(sp.bos_id())
    w.add_eos_token_id(sp.eos_id())
    w.add_unk_token_id(sp.unk_id())
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    finish(w)


def write_qwen2_gguf(llama_cpp, tokenizer, path, arch="qwen2", pre="qwen2", eos="<|endoftext|>",
                     bos=None):
    gguf, w = gguf_writer(llama_cpp, path, arch)
    model = tokenizer["model"]
    n = max(model["vocab"].values()) + 1
    for a in tokenizer["added_tokens"]:
        n = max(n, a["id"] + 1)
    tokens = [None] * n
    types = [gguf.TokenType.NORMAL] * n
    for t, i in model["vocab"].items():
        tokens[i] = t
    for a in tokenizer["added_tokens"]:
        tokens[a["id"]] = a["content"]
        types[a["id"]] = gguf.TokenType.CONTROL
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list([t.encode("utf-8") for t in tokens])
    w.add_token_types(types)
    w.add_token_merges(model["merges"])
    eos_id = tokens.index(eos)
    w.add_bos_token_id(tokens.index(bos) if bos else eos_id)
    w.add_eos_token_id(eos_id)
    w.add_pad_token_id(eos_id)
    w.add_add_bos_token(False)
    finish(w)


# ---- llama.cpp ---------------------------------------------------------------------------------


def build_llamacpp_tool(llama_cpp, work):
    exe = os.path.join(work, "llamacpp_tokenize")
    lib = os.path.join(llama_cpp, "build", "bin")
    subprocess.run([
        "g++", "-O2", "-std=c++17",
        os.path.join(HERE, "llamacpp_tokenize.cpp"), "-I" + os.path.join(llama_cpp, "include"),
        "-I" + os.path.join(llama_cpp, "ggml", "include"), "-L" + lib, "-lllama",
        "-Wl,-rpath," + lib, "-o", exe
    ], check=True)
    return exe


def llamacpp_ids(exe, gguf_path, texts, work):
    texts_path = os.path.join(work, "texts.bin")
    ids_path = os.path.join(work, "ids.txt")
    with open(texts_path, "wb") as f:
        for t in texts:
            data = t.encode("utf-8")
            f.write(struct.pack("<Q", len(data)) + data)
    subprocess.run([exe, gguf_path, texts_path, ids_path], check=True)
    with open(ids_path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    assert lines[-1] == "" and len(lines) == len(texts) + 1, (len(lines), len(texts))
    return [[int(x) for x in line.split()] for line in lines[:-1]]


def llamacpp_commit(llama_cpp):
    try:
        return subprocess.run(["git", "-C", llama_cpp, "rev-parse", "HEAD"], check=True,
                              capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# ---- Qwen2: training and the Hugging Face-semantics reference ----------------------------------


def train_qwen2(work):
    train_path = os.path.join(work, "qwen2-train.txt")
    write_training_text(train_path)
    with open(train_path, encoding="utf-8") as f:
        text = unicodedata.normalize("NFC", f.read())
    regex = onig.Regex(QWEN2_REGEX)
    counts = {}
    for piece in regex.split_isolated(text):
        counts[piece] = counts.get(piece, 0) + 1
    merges = train_tokenizer.train_bpe(counts, 1200)
    # Qwen2's id layout: the 256 byte symbols in GPT-2's order, the merges, then the added tokens.
    vocab = {}
    for b in sorted(range(256), key=lambda b: ord(bhmoe_tok.BYTE_ENCODER[b])):
        vocab[bhmoe_tok.BYTE_ENCODER[b]] = len(vocab)
    for a, b in merges:
        vocab[a + b] = len(vocab)
    added = []
    for t in QWEN2_ADDED:
        added.append({
            "id": len(vocab) + len(added),
            "content": t,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True
        })
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [{
                "type": "Split",
                "pattern": {"Regex": QWEN2_REGEX},
                "behavior": "Isolated",
                "invert": False
            }, {
                "type": "ByteLevel",
                "add_prefix_space": False,
                "trim_offsets": False,
                "use_regex": False
            }]
        },
        "post_processor": {
            "type": "ByteLevel",
            "add_prefix_space": False,
            "trim_offsets": False,
            "use_regex": False
        },
        "decoder": {
            "type": "ByteLevel",
            "add_prefix_space": False,
            "trim_offsets": False,
            "use_regex": False
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": [a + " " + b for a, b in merges],
        },
    }


def hf_bytelevel_encode(tokenizer, text, regex, nfc=True):
    """Hugging Face semantics for the Qwen2 layout, written out: added tokens (all special, not
    normalised) matched leftmost-longest in the raw text; NFC of each stretch between them; the
    Oniguruma Split; GPT-2's byte map; BPE merging the lowest-ranked adjacent pair, leftmost first."""
    model = tokenizer["model"]
    vocab = model["vocab"]
    rank = {tuple(m.split(" ")): r for r, m in enumerate(model["merges"])}
    added = {a["content"]: a["id"] for a in tokenizer["added_tokens"]}
    ids = []

    def bpe(piece):
        symbols = [bhmoe_tok.BYTE_ENCODER[b] for b in piece.encode("utf-8")]
        while len(symbols) > 1:
            best = None
            for i in range(len(symbols) - 1):
                r = rank.get((symbols[i], symbols[i + 1]))
                if r is not None and (best is None or r < best[0]):
                    best = (r, i)
            if best is None:
                break
            i = best[1]
            symbols[i:i + 2] = [symbols[i] + symbols[i + 1]]
        ids.extend(vocab[s] for s in symbols)

    def stretch(s):
        if s:
            for piece in regex.split_isolated(unicodedata.normalize("NFC", s) if nfc else s):
                bpe(piece)

    start = pos = 0
    while pos < len(text):
        match = max((t for t in added if text.startswith(t, pos)), key=len, default=None)
        if match is None:
            pos += 1
            continue
        stretch(text[start:pos])
        ids.append(added[match])
        pos = start = pos + len(match)
    stretch(text[start:])
    return ids


class SequentialSplit:
    """A Sequence of Split(behavior Isolated) pre-tokenizers as Hugging Face runs it: each regex
    splits every piece the previous ones made, the piece being the whole subject (so $ is its end)."""

    def __init__(self, patterns):
        self.regexes = [onig.Regex(p) for p in patterns]

    def split_isolated(self, text):
        pieces = [text]
        for regex in self.regexes:
            pieces = [q for p in pieces for q in regex.split_isolated(p)]
        return pieces


# Text for the DeepSeek vocabulary only (the other vocabularies stay as they were made): CJK,
# full-width punctuation, symbols before trailing spaces.
DEEPSEEK_EXTRA_TRAINING_TEXT = """\
中文文本，还有한국어。全角！（括号）：“引号”，句号。漢字とひらがな、カタカナ。
Ｆｕｌｌｗｉｄｔｈ ＡＢＣ ａｂｃ ① ② ③ ⅫⅩ  
fine ①  
a ¿  
x86_64 v1.2.3 2.5e10 utf8 h264 mp3 x64 sha256
Ελληνικά και русский язык, café, crème, naïve, Zürich.
中文¿中文🦙 ¿12¿ ²³¿ ¹²³  ¿  ✅  🦙  
"""

# A coarse split for training only: pieces that run across the DeepSeek regexes' boundaries
# (a newline and the word after it, letters and digits, words and punctuation, symbols and the
# spaces after them), so that the vocabulary has merges across every boundary and a pre-tokeniser
# that misses one of the six regexes tokenizes some case differently.
COARSE_TRAINING_REGEX = r"\s?\S+\s*"


def split_between_numerics(text):
    pieces, start = [], 0
    for i in range(1, len(text)):
        if (unicodedata.category(text[i - 1])[0] == "N" and
                unicodedata.category(text[i])[0] == "N"):
            pieces.append(text[start:i])
            start = i
    pieces.append(text[start:])
    return pieces


def train_deepseek(work):
    train_path = os.path.join(work, "deepseek-train.txt")
    write_training_text(train_path)
    with open(train_path, encoding="utf-8") as f:
        text = f.read() + DEEPSEEK_EXTRA_TRAINING_TEXT * 200
    counts = {}
    for piece in SequentialSplit(DEEPSEEK_HF_SPLITS).split_isolated(text):
        counts[piece] = counts.get(piece, 0) + 1
    for coarse in onig.Regex(COARSE_TRAINING_REGEX).split_isolated(text):
        # Cut between two numeric characters, so that no token holds two (as in DeepSeek's).
        for piece in split_between_numerics(coarse):
            counts[piece] = counts.get(piece, 0) + 1
    merges = train_tokenizer.train_bpe(counts, 1200)
    # DeepSeek's id layout: the added tokens first (begin/end of sentence are 0 and 1 in
    # DeepSeek-V2), then the 256 byte symbols in GPT-2's order, then the merges.
    added = []
    for t in DEEPSEEK_ADDED:
        added.append({
            "id": len(added),
            "content": t,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": True,
            "special": True
        })
    vocab = {a["content"]: a["id"] for a in added}
    for b in sorted(range(256), key=lambda b: ord(bhmoe_tok.BYTE_ENCODER[b])):
        vocab[bhmoe_tok.BYTE_ENCODER[b]] = len(vocab)
    for a, b in merges:
        vocab[a + b] = len(vocab)
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                  "use_regex": False}
    splits = [{"type": "Split", "pattern": {"Regex": r}, "behavior": "Isolated", "invert": False}
              for r in DEEPSEEK_REGEXES[:5]] + [{"type": "Digits", "individual_digits": True}]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": []},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": splits + [byte_level]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
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


def llamacpp_difference_note(text, nfc=True):
    notes = []
    if nfc and unicodedata.normalize("NFC", text) != text:
        notes.append("llama.cpp does not apply the NFC normaliser")
    if not nfc and any(unicodedata.category(a)[0] == unicodedata.category(b)[0] == "N"
                       for a, b in zip(text, text[1:])):
        notes.append("llama.cpp's deepseek-llm splits \\p{N}+ where DeepSeek's tokenizer.json "
                     "has Digits(individual_digits)")
    if any(c in text for c in "\u00a0\u2003\u3000\u0085\u180e\u200b"):
        notes.append("non-ASCII white space (llama.cpp runs these regexes with std::wregex, "
                     "whose \\s may not be Unicode White_Space)")
    if "\u017f" in text:
        notes.append("llama.cpp spells (?i:'s) as '[sS], which misses U+017F (Unicode case "
                     "folding maps it to s)")
    return "; ".join(notes) if notes else "unexplained"


# ---- Main --------------------------------------------------------------------------------------


def write_json(path, value):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, ensure_ascii=False, indent=1)
        f.write("\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--llama-cpp", required=True, help="llama.cpp checkout with build/bin")
    parser.add_argument("--out", default="src/model/testdata/tokenizers")
    parser.add_argument("--families", default="spm,qwen2,deepseek",
                        help="comma-separated subset of spm,qwen2,deepseek to (re)make")
    args = parser.parse_args()
    families = set(args.families.split(","))
    llama_cpp = os.path.abspath(args.llama_cpp)
    os.makedirs(args.out, exist_ok=True)
    commit = llamacpp_commit(llama_cpp)
    versions = {
        "sentencepiece": spm.__version__,
        "oniguruma": onig.version(),
        "llama.cpp": commit,
        "python": sys.version.split()[0],
        "unicodedata": unicodedata.unidata_version,
    }

    out = args.out
    with tempfile.TemporaryDirectory() as work:
        exe = build_llamacpp_tool(llama_cpp, work)
        sources = write_training_text(os.path.join(work, "sources.txt"))

        if "spm" in families:
            make_spm(llama_cpp, exe, work, out, versions, sources)
        if "qwen2" in families:
            make_qwen2(llama_cpp, exe, work, out, versions, sources)
        if "deepseek" in families:
            make_deepseek(llama_cpp, exe, work, out, versions, sources)


def make_spm(llama_cpp, exe, work, out, versions, sources):
    model_path = train_spm(work, out)
    sp = spm.SentencePieceProcessor(model_file=model_path)
    write_json(os.path.join(out, "spm-bpe.tokenizer.json"), sp_to_hf(sp))
    spm_gguf = os.path.join(out, "spm-bpe.gguf")
    write_spm_gguf(llama_cpp, sp, spm_gguf)
    texts = COMMON_TEXTS + SPM_ONLY_TEXTS + [long_text()]
    from_llamacpp = llamacpp_ids(exe, spm_gguf, texts + SPM_SPECIAL_TEXTS, work)
    cases = []
    for text, ll in zip(texts, from_llamacpp):
        ids = sp.encode(text)
        case = {"text": text, "ids": ids, "decoded": sp.decode(ids)}
        if ll != ids:
            case["llamacpp_ids"] = ll
        cases.append(case)
    special = [{"text": t, "llamacpp_ids": ll}
               for t, ll in zip(SPM_SPECIAL_TEXTS, from_llamacpp[len(texts):])]
    write_json(os.path.join(out, "spm-cases.json"), {
        "format": "bhmoe-tokenizer-cases/1",
        "made_by": "tools/tokenizer_cases/make_cases.py",
        "versions": versions,
        "training_text": {"licenses": sources, "extra": "EXTRA_TRAINING_TEXT x 20"},
        "tokenizer_json": "spm-bpe.tokenizer.json",
        "gguf": "spm-bpe.gguf",
        "ids_from": "sentencepiece SentencePieceProcessor.encode (spm-bpe.model), no BOS/EOS",
        "decoded_from": "sentencepiece decode of ids",
        "llamacpp_ids_from": "llama.cpp llama_tokenize on spm-bpe.gguf (add_special false, "
                             "parse_special true); present only where it differs from ids",
        "cases": cases,
        "special_cases": special,
    })
    differ = sum("llamacpp_ids" in c for c in cases)
    print("spm: %d pieces, %d cases (%d where llama.cpp differs), %d special cases" %
          (sp.get_piece_size(), len(cases), differ, len(special)))



def make_qwen2(llama_cpp, exe, work, out, versions, sources):
    tokenizer = train_qwen2(work)
    write_json(os.path.join(out, "qwen2-bpe.tokenizer.json"), tokenizer)
    qwen_gguf = os.path.join(out, "qwen2-bpe.gguf")
    write_qwen2_gguf(llama_cpp, tokenizer, qwen_gguf)
    texts = COMMON_TEXTS + QWEN2_ONLY_TEXTS + [long_text()]
    regex = onig.Regex(QWEN2_REGEX)
    cases = []
    for text, ll in zip(texts, llamacpp_ids(exe, qwen_gguf, texts, work)):
        ids = hf_bytelevel_encode(tokenizer, text, regex)
        case = {"text": text, "ids": ids}
        if ll != ids:
            case["llamacpp_ids"] = ll
            case["note"] = llamacpp_difference_note(text)
        cases.append(case)
    write_json(os.path.join(out, "qwen2-cases.json"), {
        "format": "bhmoe-tokenizer-cases/1",
        "made_by": "tools/tokenizer_cases/make_cases.py",
        "versions": versions,
        "training_text": {"licenses": sources, "extra": "EXTRA_TRAINING_TEXT x 20"},
        "tokenizer_json": "qwen2-bpe.tokenizer.json",
        "gguf": "qwen2-bpe.gguf",
        "ids_from": "Hugging Face semantics in make_cases.py: NFC, added tokens, Oniguruma "
                    "Split with Qwen2's regex, GPT-2 byte map, BPE by merge rank",
        "llamacpp_ids_from": "llama.cpp llama_tokenize on qwen2-bpe.gguf (add_special false, "
                             "parse_special true); present only where it differs from ids",
        "cases": cases,
    })
    differ = [c for c in cases if "llamacpp_ids" in c]
    print("qwen2: %d tokens, %d cases (%d where llama.cpp differs)" %
          (len(tokenizer["model"]["vocab"]) + len(QWEN2_ADDED), len(cases), len(differ)))
    for c in differ:
        print("  llama.cpp differs on %r: %s" % (c["text"], c["note"]))



def make_deepseek(llama_cpp, exe, work, out, versions, sources):
    tokenizer = train_deepseek(work)
    write_json(os.path.join(out, "deepseek-bpe.tokenizer.json"), tokenizer)
    gguf_path = os.path.join(out, "deepseek-bpe.gguf")
    write_qwen2_gguf(llama_cpp, tokenizer, gguf_path, arch="deepseek2", pre="deepseek-llm",
                     eos=DEEPSEEK_ADDED[1], bos=DEEPSEEK_ADDED[0])
    texts = COMMON_TEXTS + DEEPSEEK_ONLY_TEXTS + [long_text()]
    split = SequentialSplit(DEEPSEEK_HF_SPLITS)
    cases = []
    for text, ll in zip(texts, llamacpp_ids(exe, gguf_path, texts, work)):
        ids = hf_bytelevel_encode(tokenizer, text, split, nfc=False)
        case = {"text": text, "ids": ids}
        if ll != ids:
            case["llamacpp_ids"] = ll
            case["note"] = llamacpp_difference_note(text, nfc=False)
        cases.append(case)
    write_json(os.path.join(out, "deepseek-cases.json"), {
        "format": "bhmoe-tokenizer-cases/1",
        "made_by": "tools/tokenizer_cases/make_cases.py",
        "versions": versions,
        "training_text": {"licenses": sources, "extra": "EXTRA_TRAINING_TEXT x 20"},
        "tokenizer_json": "deepseek-bpe.tokenizer.json",
        "gguf": "deepseek-bpe.gguf",
        "ids_from": "Hugging Face semantics in make_cases.py: added tokens, DeepSeek-LLM's five "
                    "Oniguruma Splits and Digits(individual_digits) as a Split of \\p{N}, applied "
                    "in sequence, GPT-2 byte map, BPE by merge rank",
        "llamacpp_ids_from": "llama.cpp llama_tokenize on deepseek-bpe.gguf (add_special false, "
                             "parse_special true); present only where it differs from ids",
        "cases": cases,
    })
    differ = [c for c in cases if "llamacpp_ids" in c]
    print("deepseek: %d tokens, %d cases (%d where llama.cpp differs)" %
          (len(tokenizer["model"]["vocab"]), len(cases), len(differ)))
    for c in differ:
        print("  llama.cpp differs on %r: %s" % (c["text"], c["note"]))


if __name__ == "__main__":
    main()
