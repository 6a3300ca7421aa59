"""Oniguruma, the regex engine of Hugging Face `tokenizers`, through ctypes (Debian's libonig5).

Used by make_cases.py to split text as a tokenizer.json Split pre-tokenizer does, independently of
bhmoe (which uses PCRE2) and of llama.cpp (which uses std::regex over a category-collapsed copy of
the text). Patterns are compiled as the Rust `onig` crate's Regex::new does: no options, UTF-8,
the library's default syntax (OnigDefaultSyntax).
"""

import ctypes
import ctypes.util

ONIG_OPTION_NONE = 0
ONIG_MISMATCH = -1


class _Region(ctypes.Structure):
    _fields_ = [
        ("allocated", ctypes.c_int),
        ("num_regs", ctypes.c_int),
        ("beg", ctypes.POINTER(ctypes.c_int)),
        ("end", ctypes.POINTER(ctypes.c_int)),
        ("history_root", ctypes.c_void_p),
    ]


def _library():
    name = ctypes.util.find_library("onig") or "libonig.so.5"
    lib = ctypes.CDLL(name)
    lib.onig_initialize.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int]
    lib.onig_new.argtypes = [
        ctypes.POINTER(ctypes.c_void_p), ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint,
        ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p
    ]
    lib.onig_region_new.restype = ctypes.POINTER(_Region)
    lib.onig_search.argtypes = [
        ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
        ctypes.POINTER(_Region), ctypes.c_uint
    ]
    lib.onig_search.restype = ctypes.c_int
    lib.onig_version.restype = ctypes.c_char_p
    return lib


_LIB = _library()
_UTF8 = ctypes.addressof(ctypes.c_byte.in_dll(_LIB, "OnigEncodingUTF8"))
_encodings = (ctypes.c_void_p * 1)(_UTF8)
if _LIB.onig_initialize(_encodings, 1) != 0:
    raise RuntimeError("onig_initialize failed")


def version():
    return _LIB.onig_version().decode()


class Regex:

    def __init__(self, pattern):
        self.pattern = pattern
        raw = pattern.encode("utf-8")
        self._buffer = ctypes.create_string_buffer(raw, len(raw))
        start = ctypes.cast(self._buffer, ctypes.c_void_p).value
        self._reg = ctypes.c_void_p()
        error_info = ctypes.create_string_buffer(64)
        syntax = ctypes.c_void_p.in_dll(_LIB, "OnigDefaultSyntax").value
        rc = _LIB.onig_new(ctypes.byref(self._reg), ctypes.c_char_p(start),
                           ctypes.c_char_p(start + len(raw)), ONIG_OPTION_NONE, _UTF8, syntax,
                           error_info)
        if rc != 0:
            raise ValueError("Oniguruma cannot compile %r (error %d)" % (pattern, rc))
        self._region = _LIB.onig_region_new()

    def find_iter(self, text):
        """(start, end) character offsets of successive non-overlapping matches, as onig's
        find_iter gives them (an empty match advances by one character)."""
        data = text.encode("utf-8")
        buffer = ctypes.create_string_buffer(data, len(data) + 1)
        base = ctypes.cast(buffer, ctypes.c_void_p).value
        end = base + len(data)
        # Byte offsets -> character offsets.
        char_at = {}
        pos = 0
        for i, ch in enumerate(text):
            char_at[pos] = i
            pos += len(ch.encode("utf-8"))
        char_at[pos] = len(text)
        offset = 0
        while offset <= len(data):
            rc = _LIB.onig_search(self._reg, ctypes.c_char_p(base), ctypes.c_char_p(end),
                                  ctypes.c_char_p(base + offset), ctypes.c_char_p(end),
                                  self._region, ONIG_OPTION_NONE)
            if rc == ONIG_MISMATCH:
                return
            if rc < 0:
                raise RuntimeError("onig_search failed (%d)" % rc)
            b, e = self._region.contents.beg[0], self._region.contents.end[0]
            if e == b:
                # Step over one whole character.
                offset = b + 1
                while offset < len(data) and (data[offset] & 0xC0) == 0x80:
                    offset += 1
                continue
            yield char_at[b], char_at[e]
            offset = e

    def split_isolated(self, text):
        """The pieces of a Split(behavior Isolated, invert false) pre-tokenizer: every match and
        every stretch between matches, in order."""
        pieces = []
        previous = 0
        for b, e in self.find_iter(text):
            if b > previous:
                pieces.append(text[previous:b])
            pieces.append(text[b:e])
            previous = e
        if previous < len(text):
            pieces.append(text[previous:])
        return pieces
