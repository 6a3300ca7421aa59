// BPE tokenizers read from a Hugging Face tokenizer.json, of two kinds, chosen from the file:
//   - byte-level BPE (GPT-2 style: OLMoE, Qwen2/Qwen3-MoE), when the pre_tokenizer or the decoder
//     has a ByteLevel step: text is pre-tokenised, then each piece's bytes are mapped to printable
//     byte-level symbols;
//   - SentencePiece-style BPE (Llama, Mistral/Mixtral), when nothing is ByteLevel: the symbols are
//     the text's characters, and a character absent from model.vocab becomes its UTF-8 bytes as
//     <0xXX> tokens (model.byte_fallback must be true and all 256 byte tokens present).
//
// Encoding follows the Hugging Face `tokenizers` pipeline:
//   1. added tokens with `normalized: false` are matched in the raw text (leftmost, longest first);
//   2. every stretch between them is normalised (steps NFC/NFD/NFKC/NFKD via utf8proc; Prepend,
//      which prefixes a non-empty stretch; Replace of a literal string), then added tokens with
//      `normalized: true` are matched in the normalised text;
//   3. every remaining stretch goes through the pre-tokeniser steps:
//      - byte-level: Split (regex or string), Digits (a Split of \p{N}, or of \p{N}+ without
//        individual_digits, behavior Isolated: Hugging Face's char::is_numeric is \p{N}) and
//        ByteLevel (the GPT-2 regex when use_regex), last;
//      - SentencePiece: none (the whole stretch is one piece: the Mixtral/Llama layout with a
//        Prepend("▁") + Replace(" " -> "▁") normaliser), or Metaspace: spaces become the
//        replacement character, which is prepended unless the stretch already starts with it, per
//        prepend_scheme: "always" (the default), "first" (only to the stretch at the very start of
//        the text, so not after an added token), "never" (also what add_prefix_space false, of
//        older files, means); with split (default true) a piece starts at every replacement
//        character;
//   4. BPE on each piece: one merge loop for both kinds, merging the adjacent pair of lowest merge
//      rank, leftmost among equal ranks, until no adjacent pair has a merge. SentencePiece's own
//      rule (merge the pair whose merged piece scores highest) is the same when merges are ranked
//      by the merged piece's score, which is how SentencePiece models convert to tokenizer.json.
// Decoding maps ids to token strings (added tokens to their content), then:
//   - byte-level: token strings to bytes through the inverse byte-level map;
//   - SentencePiece: the decoder steps Replace (literal string), ByteFallback (a run of <0xXX>
//     tokens becomes its bytes when they are valid UTF-8, else one U+FFFD per byte, so the text is
//     always valid UTF-8), Fuse, Strip (up to `start` leading and `stop` trailing characters equal
//     to `content`), in the file's order, over the list of token strings.
//
// Split regexes are written for Oniguruma, the engine of Hugging Face tokenizers, and run here by
// PCRE2 (UTF, Unicode properties), translated where the two differ: \s \S are Unicode White_Space
// (PCRE2's \s also takes U+180E), \w \W letters, marks, numbers and connector punctuation, \h \H
// hexadecimal digits (horizontal space in PCRE2), \v the vertical tab (any vertical space in
// PCRE2), and ^ $ match at line boundaries. Constructs whose meaning differs and that are not
// translated are errors: \b \B, \V, \Q \E, POSIX brackets, nested classes and && in classes,
// \S \W \H inside a class, inline options other than i and x. Case-insensitive matching is PCRE2's
// one-to-one case folding: unlike Oniguruma, (?i:ss) does not match "ß" (multi-character folds);
// Qwen2's (?i:'s|'t|'re|'ve|'m|'ll|'d) has no sequence that a single character folds to.
//
// Decisions where the file can be inconsistent (each an error naming the file and field, as the
// Hugging Face loader does, never a silent skip):
//   - a merge naming a token absent from the vocabulary, or whose concatenation is absent: error;
//   - two vocabulary entries with one id: error;
//   - model types other than BPE, BPE options that change the algorithm (dropout, subword
//     prefixes/suffixes), byte_fallback other than false for byte-level and true for SentencePiece,
//     normalisers other than the above, pre-tokenisers other than Split/Digits/ByteLevel
//     (byte-level) or Metaspace (SentencePiece), decoders other than ByteLevel (byte-level) or
//     Replace, ByteFallback, Fuse and Strip (SentencePiece): error.
// The post_processor, truncation and padding only matter when special tokens are added or batches
// padded, which this tokenizer never does; they are accepted and ignored. fuse_unk only matters
// when the unknown token is produced, which byte fallback with all 256 byte tokens never does. Text
// must be valid UTF-8 (the Hugging Face API takes Rust strings, which always are); invalid input is
// an error naming the byte offset. A byte with no symbol in a byte-level vocabulary (only possible
// for vocabularies lacking some of the 256 byte-level symbols) is an error unless unk_token is set.
#include "model/tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <utf8proc.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cstring>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <unordered_map>

#include "util/error.h"
#include "util/file.h"
#include "util/json.h"

namespace bhmoe::model {
namespace {

using nlohmann::json;

// The GPT-2 pre-tokeniser regex used by ByteLevel when use_regex is true (SPEC §1), in Hugging
// Face's (Oniguruma) spelling; it runs through oniguruma_to_pcre2 like any Split regex.
constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// ---- UTF-8 helpers --------------------------------------------------------------------------

// Offset of the first invalid byte, or npos when `text` is valid UTF-8 (no overlongs, surrogates
// or code points above U+10FFFF).
size_t first_invalid_utf8(std::string_view text) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    unsigned char c = s[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    uint32_t min_cp;
    uint32_t cp;
    if ((c & 0xE0) == 0xC0) {
      len = 2, min_cp = 0x80, cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3, min_cp = 0x800, cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4, min_cp = 0x10000, cp = c & 0x07;
    } else {
      return i;
    }
    if (i + len > n) return i;
    for (size_t k = 1; k < len; ++k) {
      if ((s[i + k] & 0xC0) != 0x80) return i;
      cp = (cp << 6) | (s[i + k] & 0x3F);
    }
    if (cp < min_cp || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return i;
    i += len;
  }
  return std::string_view::npos;
}

bool is_ascii(std::string_view text) {
  for (char c : text) {
    if (static_cast<unsigned char>(c) >= 0x80) return false;
  }
  return true;
}

// Decodes the code point at text[pos] (text is valid UTF-8); returns its length in bytes.
size_t decode_utf8(std::string_view text, size_t pos, int32_t& cp) {
  utf8proc_int32_t value = 0;
  auto len = utf8proc_iterate(reinterpret_cast<const utf8proc_uint8_t*>(text.data() + pos),
                              static_cast<utf8proc_ssize_t>(text.size() - pos), &value);
  if (len <= 0) {
    cp = -1;
    return 1;
  }
  cp = value;
  return static_cast<size_t>(len);
}

void append_utf8(std::string& out, int32_t cp) {
  utf8proc_uint8_t buf[4];
  auto len = utf8proc_encode_char(cp, buf);
  out.append(reinterpret_cast<const char*>(buf), static_cast<size_t>(len));
}

bool is_unicode_space(int32_t cp) {
  if (cp == ' ' || (cp >= 0x09 && cp <= 0x0D) || cp == 0x85) return true;
  if (cp < 0x80) return false;
  auto cat = utf8proc_category(cp);
  return cat == UTF8PROC_CATEGORY_ZS || cat == UTF8PROC_CATEGORY_ZL || cat == UTF8PROC_CATEGORY_ZP;
}

// Letters, digits and '_' (what Hugging Face's single_word option treats as part of a word).
bool is_word_char(int32_t cp) {
  if (cp == '_') return true;
  if (cp < 0) return false;
  auto cat = utf8proc_category(cp);
  return (cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO) ||
         (cat >= UTF8PROC_CATEGORY_ND && cat <= UTF8PROC_CATEGORY_NO);
}

// Code point ending just before `end` (text valid UTF-8, end > 0).
int32_t code_point_before(std::string_view text, size_t end, size_t& start) {
  start = end - 1;
  while (start > 0 && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
  int32_t cp;
  decode_utf8(text, start, cp);
  return cp;
}

// ---- Byte-level alphabet (GPT-2): every byte is a printable code point ----------------------

struct ByteAlphabet {
  std::array<int32_t, 256> code_point{};  // byte -> code point
  std::array<int16_t, 512> byte_of{};     // code point (< 512) -> byte, -1 if not in the alphabet

  ByteAlphabet() {
    byte_of.fill(-1);
    int32_t next_extra = 256;
    for (int b = 0; b < 256; ++b) {
      bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      code_point[b] = printable ? b : next_extra++;
      byte_of[code_point[b]] = static_cast<int16_t>(b);
    }
  }
};

const ByteAlphabet& byte_alphabet() {
  static const ByteAlphabet alphabet;
  return alphabet;
}

std::string bytes_to_symbols(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char b : bytes) append_utf8(out, byte_alphabet().code_point[b]);
  return out;
}

// The bytes a token string stands for. A token holding a character outside the byte-level
// alphabet (e.g. added tokens of raw spaces kept in the vocabulary) stands for its own UTF-8 bytes,
// as in the Hugging Face ByteLevel decoder.
std::string symbols_to_bytes(std::string_view token) {
  std::string out;
  out.reserve(token.size());
  for (size_t pos = 0; pos < token.size();) {
    int32_t cp;
    pos += decode_utf8(token, pos, cp);
    if (cp < 0 || cp >= 512 || byte_alphabet().byte_of[cp] < 0) return std::string(token);
    out.push_back(static_cast<char>(byte_alphabet().byte_of[cp]));
  }
  return out;
}

// ---- Regex (PCRE2, UTF + Unicode properties, JIT) -------------------------------------------

struct CodeDeleter {
  void operator()(pcre2_code* code) const { pcre2_code_free(code); }
};
struct MatchDataDeleter {
  void operator()(pcre2_match_data* data) const { pcre2_match_data_free(data); }
};
using RegexPtr = std::unique_ptr<pcre2_code, CodeDeleter>;
using MatchDataPtr = std::unique_ptr<pcre2_match_data, MatchDataDeleter>;

// Compiles `pattern` (UTF-8, Unicode properties; `literal`: a plain string); on failure returns
// null and sets `error`. A translated Oniguruma pattern needs `multiline` (^ and $ at line ends).
RegexPtr compile_regex(const std::string& pattern, bool literal, std::string& error,
                       bool multiline = false) {
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  uint32_t options = PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP);
  if (multiline && !literal) options |= PCRE2_MULTILINE;
  RegexPtr code(pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), options,
                              &error_code, &error_offset, nullptr));
  if (!code) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error_code, message, sizeof(message));
    error = cat(reinterpret_cast<const char*>(message), " at offset ", error_offset);
    return nullptr;
  }
  // Without JIT support pcre2_match falls back to the interpreter: slower, same results.
  pcre2_jit_compile(code.get(), PCRE2_JIT_COMPLETE);
  return code;
}

// An Oniguruma pattern (what a tokenizer.json's Split Regex is written for) as a PCRE2 pattern of
// the same meaning, compiled with compile_regex(..., multiline = true); the header comment lists
// what is translated. Returns nullopt and sets `error` for a construct that is not translated.
std::optional<std::string> oniguruma_to_pcre2(std::string_view pattern, std::string& error) {
  // Unicode White_Space (Oniguruma's \s), written out because PCRE2's \s also takes U+180E.
  static const std::string kSpace =
      R"(\t\n\x0B\f\r \x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000})";
  static const std::string kWord = R"(\p{L}\p{M}\p{N}\p{Pc})";  // Oniguruma's Unicode \w
  static const std::string kHex = "0-9A-Fa-f";                  // Oniguruma's \h
  std::string out;
  out.reserve(pattern.size() * 2);
  bool in_class = false;
  size_t class_body = 0;  // index of the first character inside the current class
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    const char next = i + 1 < pattern.size() ? pattern[i + 1] : '\0';
    if (c == '\\' && i + 1 < pattern.size()) {
      ++i;
      const std::string* set = nullptr;
      switch (next) {
        case 's':
        case 'S':
          set = &kSpace;
          break;
        case 'w':
        case 'W':
          set = &kWord;
          break;
        case 'h':
        case 'H':
          set = &kHex;
          break;
        case 'b':
        case 'B':
          if (in_class) break;  // \b in a class is a backspace in both
          error = cat("\\", next, " (a word boundary by Oniguruma's \\w) is not supported");
          return std::nullopt;
        case 'v':  // Oniguruma: the vertical tab only; PCRE2: any vertical white space
          out += "\\x0B";
          continue;
        case 'V':
        case 'Q':
        case 'E':
          error = cat(
              "\\", next, " is not supported (",
              next == 'V' ? "PCRE2: not vertical space" : "PCRE2 quotes text between \\Q and \\E",
              ", Oniguruma: the letter ", next, ")");
          return std::nullopt;
        default:
          break;
      }
      if (!set) {
        out += '\\';
        out += next;
        continue;
      }
      const bool negated = next == 'S' || next == 'W' || next == 'H';
      if (in_class && negated) {
        error = cat("\\", next, " inside a character class is not supported");
        return std::nullopt;
      }
      out += in_class ? *set : (negated ? "[^" : "[") + *set + "]";
      continue;
    }
    if (in_class) {
      if (c == '[') {
        error = next == ':' ? "POSIX brackets ([:name:]) are not supported"
                            : "a nested character class is not supported";
        return std::nullopt;
      }
      if (c == '&' && next == '&') {
        error = "a class intersection (&&) is not supported";
        return std::nullopt;
      }
      if (c == ']' && i != class_body) in_class = false;  // a ']' first in a class is literal
      out += c;
      continue;
    }
    if (c == '[') {
      in_class = true;
      out += c;
      if (next == '^') {
        out += '^';
        ++i;
      }
      class_body = i + 1;
      continue;
    }
    if (c == '(' && next == '?') {
      // Inline options (?imx-imx) or (?imx-imx:...): Oniguruma's m is PCRE2's s (dot matches a
      // newline); only i and x mean the same in both.
      size_t j = i + 2;
      while (j < pattern.size() &&
             (std::isalpha(static_cast<unsigned char>(pattern[j])) || pattern[j] == '-')) {
        ++j;
      }
      if (j > i + 2 && j < pattern.size() && (pattern[j] == ')' || pattern[j] == ':')) {
        for (size_t k = i + 2; k < j; ++k) {
          if (pattern[k] != 'i' && pattern[k] != 'x' && pattern[k] != '-') {
            error = cat("the inline option ", pattern[k], " in \"", pattern.substr(i, j + 1 - i),
                        "\" is not supported (only i and x)");
            return std::nullopt;
          }
        }
      }
    }
    out += c;
  }
  return out;
}

struct Range {
  uint32_t begin;
  uint32_t end;
  bool is_match;
};

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

// ---- Merge table: (left id, right id) -> (rank, merged id), open addressing -----------------

class MergeTable {
 public:
  struct Entry {
    uint64_t key = kEmpty;
    int32_t rank = 0;
    int32_t merged = 0;
  };

  void reserve(size_t count) {
    size_t capacity = 16;
    while (capacity < count * 2) capacity <<= 1;
    slots_.assign(capacity, Entry{});
    mask_ = capacity - 1;
  }

  // Keeps the first (lowest-rank) entry when a pair repeats; returns false for a repeat.
  bool insert(int32_t left, int32_t right, int32_t rank, int32_t merged) {
    uint64_t key = make_key(left, right);
    for (size_t i = hash(key) & mask_;; i = (i + 1) & mask_) {
      if (slots_[i].key == key) return false;
      if (slots_[i].key == kEmpty) {
        slots_[i] = {key, rank, merged};
        return true;
      }
    }
  }

  const Entry* find(int32_t left, int32_t right) const {
    uint64_t key = make_key(left, right);
    for (size_t i = hash(key) & mask_;; i = (i + 1) & mask_) {
      if (slots_[i].key == key) return &slots_[i];
      if (slots_[i].key == kEmpty) return nullptr;
    }
  }

 private:
  static constexpr uint64_t kEmpty = ~uint64_t{0};
  static uint64_t make_key(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) |
           static_cast<uint32_t>(right);
  }
  static size_t hash(uint64_t key) {
    key ^= key >> 33;
    key *= 0xff51afd7ed558ccdULL;
    key ^= key >> 33;
    return static_cast<size_t>(key);
  }
  std::vector<Entry> slots_;
  size_t mask_ = 0;
};

// Hashing for maps keyed by std::string that are looked up by std::string_view.
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using StringMap = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

// ---- Word cache: pre-token bytes -> ids, sharded, thread-safe --------------------------------

class WordCache {
 public:
  static constexpr size_t kMaxWordBytes = 48;

  bool lookup(std::string_view word, size_t hash, std::vector<int32_t>& out) {
    Shard& shard = shards_[hash % kShards];
    std::lock_guard lock(shard.mutex);
    auto it = shard.words.find(word);
    if (it == shard.words.end()) return false;
    out.insert(out.end(), it->second.begin(), it->second.end());
    return true;
  }

  // A full shard stops taking words (as in Hugging Face): memory stays bounded and entries are
  // never evicted from under a reader.
  void insert(std::string_view word, size_t hash, std::span<const int32_t> ids) {
    Shard& shard = shards_[hash % kShards];
    std::lock_guard lock(shard.mutex);
    if (shard.words.size() >= kMaxWordsPerShard) return;
    shard.words.emplace(std::string(word), std::vector<int32_t>(ids.begin(), ids.end()));
  }

 private:
  static constexpr size_t kShards = 32;
  static constexpr size_t kMaxWordsPerShard = 4096;
  struct Shard {
    std::mutex mutex;
    std::unordered_map<std::string, std::vector<int32_t>, StringHash, std::equal_to<>> words;
  };
  std::array<Shard, kShards> shards_;
};

// ---- Added tokens ---------------------------------------------------------------------------

struct AddedToken {
  int32_t id = 0;
  std::string content;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = true;
  bool special = false;
};

// Leftmost-longest matching of a set of byte strings (a byte trie; the root is a direct table).
class TokenMatcher {
 public:
  TokenMatcher() { root_.fill(-1); }

  void add(std::string_view pattern, int32_t token_index) {
    if (pattern.empty()) return;
    int32_t node = child_of_root(static_cast<unsigned char>(pattern[0]), true);
    for (size_t i = 1; i < pattern.size(); ++i) node = child(node, pattern[i], true);
    // An earlier token with the same pattern keeps it (first declared wins).
    if (nodes_[node].token < 0) nodes_[node].token = token_index;
  }

  bool empty() const { return nodes_.empty(); }

  // Longest pattern starting at text[pos]: token index and length, or token -1.
  std::pair<int32_t, size_t> longest_at(std::string_view text, size_t pos) const {
    int32_t node = root_[static_cast<unsigned char>(text[pos])];
    std::pair<int32_t, size_t> best{-1, 0};
    size_t i = pos + 1;
    while (node >= 0) {
      if (nodes_[node].token >= 0) best = {nodes_[node].token, i - pos};
      if (i == text.size()) break;
      node = child(node, text[i++], false);
    }
    return best;
  }

 private:
  struct Node {
    std::vector<std::pair<char, int32_t>> children;
    int32_t token = -1;
  };

  int32_t child_of_root(unsigned char byte, bool create) {
    if (root_[byte] < 0 && create) {
      root_[byte] = static_cast<int32_t>(nodes_.size());
      nodes_.emplace_back();
    }
    return root_[byte];
  }

  int32_t child(int32_t node, char byte, bool create) const {
    for (const auto& [b, next] : nodes_[node].children) {
      if (b == byte) return next;
    }
    if (!create) return -1;
    auto& self = const_cast<TokenMatcher&>(*this);
    int32_t next = static_cast<int32_t>(nodes_.size());
    self.nodes_.emplace_back();
    self.nodes_[node].children.emplace_back(byte, next);
    return next;
  }

  std::array<int32_t, 256> root_;
  std::vector<Node> nodes_;
};

// ---- Normaliser, pre-tokeniser and decoder steps ----------------------------------------------

struct NormalizerStep {
  enum class Type { kUnicode, kPrepend, kReplace } type = Type::kUnicode;
  utf8proc_option_t options{};  // kUnicode
  std::string text;             // kPrepend: the prefix; kReplace: the string replaced
  std::string content;          // kReplace: what replaces it
};

enum class PrependScheme { kAlways, kFirst, kNever };

struct PreTokenizerStep {
  enum class Type { kSplit, kByteLevel, kMetaspace } type = Type::kSplit;
  bool add_prefix_space = false;  // ByteLevel
  // Split: its pattern; ByteLevel: the GPT-2 regex or null; Metaspace: the replacement character
  // (MergedWithNext) when it splits, else null. Null: the step does not split.
  RegexPtr regex;
  SplitBehavior behavior = SplitBehavior::kIsolated;
  bool invert = false;
  std::string replacement;  // Metaspace
  PrependScheme prepend = PrependScheme::kAlways;
};

struct DecoderStep {
  enum class Type { kReplace, kByteFallback, kFuse, kStrip } type = Type::kFuse;
  std::string pattern;  // kReplace: the string replaced
  std::string content;  // kReplace: what replaces it; kStrip: the character stripped
  size_t start = 0;     // kStrip: at most this many leading characters
  size_t stop = 0;      // kStrip: at most this many trailing characters
};

// Every non-overlapping occurrence of `from` (not empty) in `text`, left to right, replaced by
// `to`.
std::string replace_all(std::string_view text, std::string_view from, std::string_view to) {
  std::string out;
  out.reserve(text.size());
  size_t pos = 0;
  for (size_t hit; (hit = text.find(from, pos)) != std::string_view::npos;
       pos = hit + from.size()) {
    out.append(text.substr(pos, hit - pos));
    out.append(to);
  }
  out.append(text.substr(pos));
  return out;
}

// Per-call working memory: allocated once per encode() call, reused for every word.
struct EncodeScratch {
  MatchDataPtr match_data{pcre2_match_data_create(1, nullptr)};
  std::vector<std::vector<Range>> ranges;  // one per pre-tokeniser step (recursion depth)
  std::vector<Range> merged_ranges;
  std::vector<int32_t> initial;  // a word's symbols before merging
  struct Symbol {
    int32_t id;
    int32_t prev;
    int32_t next;
  };
  std::vector<Symbol> symbols;
  struct Candidate {
    int32_t rank;
    int32_t left;
    int32_t right;
    int32_t left_id;
    int32_t right_id;
    int32_t merged;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : left > o.left;
    }
  };
  std::vector<Candidate> heap;
};

// ---- The tokenizer --------------------------------------------------------------------------

enum class Kind { kByteLevel, kSentencePiece };

std::string describe(const json& value) {
  std::string text = value.dump();
  if (text.size() > 80) text = text.substr(0, 77) + "...";
  return text;
}

// True when `component` (a pre_tokenizer or decoder) is ByteLevel or a Sequence holding one.
bool has_byte_level(const json& component, const char* list_key) {
  if (!component.is_object()) return false;
  auto type = component.find("type");
  if (type != component.end() && type->is_string() && *type == "ByteLevel") return true;
  auto list = component.find(list_key);
  if (list == component.end() || !list->is_array()) return false;
  return std::any_of(list->begin(), list->end(),
                     [&](const json& step) { return has_byte_level(step, list_key); });
}

// "<0x0A>": the token SentencePiece's byte fallback gives a byte.
std::string byte_token(unsigned char byte) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  return std::string("<0x") + kHex[byte >> 4] + kHex[byte & 15] + ">";
}

// The byte a "<0xXX>" token stands for (two hex digits of either case), or -1.
int byte_of_token(std::string_view token) {
  if (token.size() != 6 || token.substr(0, 3) != "<0x" || token[5] != '>') return -1;
  auto digit = [](char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  const int high = digit(token[3]);
  const int low = digit(token[4]);
  return high < 0 || low < 0 ? -1 : high * 16 + low;
}

class BpeTokenizer final : public Tokenizer {
 public:
  BpeTokenizer(const std::filesystem::path& path, const json& root);

  std::vector<int32_t> encode(std::string_view text) const override;
  std::string decode(std::span<const int32_t> ids) const override;
  int32_t vocab_size() const override { return static_cast<int32_t>(tokens_.size()); }
  std::optional<int32_t> token_to_id(std::string_view token) const override;
  std::string id_to_token(int32_t id) const override;

 private:
  [[noreturn]] void bad(const std::string& field, const std::string& problem) const {
    fail(path_.string(), ": ", field, ": ", problem);
  }
  void load_model(const json& model);
  void load_added_tokens(const json& added);
  void load_normalizer(const json& normalizer, const std::string& field);
  void load_pre_tokenizer(const json& pre_tokenizer, const std::string& field);
  void load_metaspace(const json& pre, const std::string& field);
  void load_decoder(const json& decoder, const std::string& field);
  void load_decoder_step(const json& step, const std::string& field);

  void normalize(std::string_view text, std::string& out) const;
  template <typename OnText>
  void split_added(std::string_view text, const TokenMatcher& matcher, std::vector<int32_t>& out,
                   OnText&& on_text) const;
  // `at_start`: the piece begins at the very start of the text (Metaspace's "first").
  void pre_tokenize(std::string_view piece, size_t step, bool at_start, EncodeScratch& scratch,
                    std::vector<int32_t>& out) const;
  void split_and_continue(std::string_view piece, size_t step, bool at_start,
                          EncodeScratch& scratch, std::vector<int32_t>& out) const;
  void bpe(std::string_view word, EncodeScratch& scratch, std::vector<int32_t>& out) const;
  void merge(EncodeScratch& scratch, std::vector<int32_t>& out) const;
  int32_t byte_symbol(unsigned char byte) const;
  void character_symbols(std::string_view word, std::vector<int32_t>& ids) const;
  std::string decode_pieces(std::span<const int32_t> ids) const;

  // Why an id >= id_limit_ is refused, for messages.
  std::string id_limit_text() const {
    return cat("the file defines ", defined_tokens_,
               " tokens (vocab and added_tokens), so ids must be below ", id_limit_,
               ": at most as many gaps as tokens, plus 256");
  }

  std::filesystem::path path_;
  Kind kind_ = Kind::kByteLevel;
  int64_t id_limit_ = 0;  // every id is below this (set before loading)
  size_t defined_tokens_ = 0;
  // Id -> token string ("" and has_token_ false for ids the file leaves undefined).
  std::vector<std::string> tokens_;
  std::vector<uint8_t> has_token_;
  std::vector<std::string> token_bytes_;  // byte-level: id -> the bytes it decodes to
  StringMap vocab_;                       // model.vocab only (what BPE looks symbols up in)
  StringMap added_ids_;                   // added token content -> id
  MergeTable merges_;
  std::array<int32_t, 256> byte_ids_{};      // byte-level: byte -> id of its symbol, -1 if absent
  std::array<int32_t, 256> fallback_ids_{};  // SentencePiece: byte -> id of its <0xXX> token
  std::optional<int32_t> unk_id_;
  bool ignore_merges_ = false;

  std::vector<AddedToken> added_;
  std::vector<int32_t> added_index_of_id_;  // id -> index into added_, -1 if not added
  TokenMatcher raw_matcher_;                // added tokens with normalized == false
  TokenMatcher normalized_matcher_;         // added tokens with normalized == true

  std::vector<NormalizerStep> normalizers_;  // applied in order
  std::vector<PreTokenizerStep> steps_;
  std::vector<DecoderStep> decoders_;  // SentencePiece only, applied in order

  mutable WordCache cache_;
};

BpeTokenizer::BpeTokenizer(const std::filesystem::path& path, const json& root) : path_(path) {
  if (!root.is_object()) bad("top level", "expected a JSON object, got " + describe(root));
  if (!root.contains("model")) bad("model", "missing");
  // Ids index per-id tables (token strings, bytes, added-token slots), so their range is bounded by
  // what the file defines: no more undefined ids than defined ones, plus a little. One stray huge
  // id is then an error naming it, never a table of gigabytes.
  size_t defined = 0;
  if (auto model = root.find("model"); model->is_object()) {
    if (auto vocab = model->find("vocab"); vocab != model->end() && vocab->is_object())
      defined += vocab->size();
  }
  if (auto added = root.find("added_tokens"); added != root.end() && added->is_array())
    defined += added->size();
  id_limit_ = std::min<int64_t>(2 * static_cast<int64_t>(defined) + 256, INT32_MAX);
  defined_tokens_ = defined;
  const json pre_tokenizer = root.value("pre_tokenizer", json());
  const json decoder = root.value("decoder", json());
  kind_ = has_byte_level(pre_tokenizer, "pretokenizers") || has_byte_level(decoder, "decoders")
              ? Kind::kByteLevel
              : Kind::kSentencePiece;
  load_model(root["model"]);
  if (root.contains("added_tokens")) load_added_tokens(root["added_tokens"]);
  load_normalizer(root.value("normalizer", json()), "normalizer");
  load_pre_tokenizer(pre_tokenizer, "pre_tokenizer");
  load_decoder(decoder, "decoder");

  // Normalised added tokens are matched in normalised text, so their patterns are normalised too.
  for (size_t i = 0; i < added_.size(); ++i) {
    const AddedToken& token = added_[i];
    if (token.normalized) {
      std::string pattern;
      normalize(token.content, pattern);
      normalized_matcher_.add(pattern, static_cast<int32_t>(i));
    } else {
      raw_matcher_.add(token.content, static_cast<int32_t>(i));
    }
  }
}

void BpeTokenizer::load_model(const json& model) {
  if (!model.is_object()) bad("model", "expected an object, got " + describe(model));
  if (model.contains("type")) {
    if (!model["type"].is_string()) bad("model.type", "expected a string");
    std::string type = model["type"];
    if (type != "BPE") bad("model.type", "\"" + type + "\" is not supported (only BPE)");
  } else if (!model.contains("merges")) {
    bad("model.type", "missing (and no merges: not a BPE model)");
  }
  auto null_or = [&](const char* key, auto accept) {
    if (!model.contains(key) || model[key].is_null()) return;
    if (!accept(model[key])) {
      bad(std::string("model.") + key, describe(model[key]) + " is not supported");
    }
  };
  null_or("dropout", [](const json& v) { return v.is_number() && v.get<double>() == 0.0; });
  null_or("continuing_subword_prefix",
          [](const json& v) { return v.is_string() && v.get<std::string>().empty(); });
  null_or("end_of_word_suffix",
          [](const json& v) { return v.is_string() && v.get<std::string>().empty(); });
  bool byte_fallback = false;
  if (model.contains("byte_fallback") && !model["byte_fallback"].is_null()) {
    if (!model["byte_fallback"].is_boolean()) bad("model.byte_fallback", "expected a boolean");
    byte_fallback = model["byte_fallback"].get<bool>();
  }
  if (kind_ == Kind::kByteLevel && byte_fallback) {
    bad("model.byte_fallback",
        "true is not supported for a byte-level BPE (a ByteLevel pre-tokenizer or decoder); "
        "byte fallback belongs to SentencePiece-style BPE");
  }
  if (kind_ == Kind::kSentencePiece && !byte_fallback) {
    bad("model.byte_fallback",
        "false or missing: without a ByteLevel pre-tokenizer or decoder this is a "
        "SentencePiece-style BPE, which bhmoe reads only with byte_fallback true");
  }
  if (model.contains("ignore_merges") && !model["ignore_merges"].is_null()) {
    if (!model["ignore_merges"].is_boolean()) bad("model.ignore_merges", "expected a boolean");
    ignore_merges_ = model["ignore_merges"].get<bool>();
  }

  if (!model.contains("vocab")) bad("model.vocab", "missing");
  const json& vocab = model["vocab"];
  if (!vocab.is_object()) bad("model.vocab", "expected an object of token -> id");
  int64_t max_id = -1;
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0 ||
        it.value().get<int64_t>() > INT32_MAX - 1) {
      bad("model.vocab", "token \"" + it.key() + "\" has id " + describe(it.value()) +
                             " (ids must be integers in 0..2^31-2)");
    }
    if (it.value().get<int64_t>() >= id_limit_) {
      bad("model.vocab", cat("token \"", it.key(), "\" has id ", it.value().get<int64_t>(),
                             ", but ", id_limit_text()));
    }
    max_id = std::max(max_id, it.value().get<int64_t>());
  }
  tokens_.assign(static_cast<size_t>(max_id + 1), std::string());
  has_token_.assign(tokens_.size(), 0);
  vocab_.reserve(vocab.size());
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    auto id = static_cast<int32_t>(it.value().get<int64_t>());
    if (has_token_[id]) {
      bad("model.vocab", cat("tokens \"", tokens_[id], "\" and \"", it.key(), "\" share id ", id));
    }
    if (first_invalid_utf8(it.key()) != std::string_view::npos) {
      bad("model.vocab", cat("token with id ", id, " is not valid UTF-8"));
    }
    tokens_[id] = it.key();
    has_token_[id] = 1;
    vocab_.emplace(it.key(), id);
  }

  byte_ids_.fill(-1);
  fallback_ids_.fill(-1);
  for (int b = 0; b < 256; ++b) {
    if (kind_ == Kind::kByteLevel) {
      std::string symbol;
      append_utf8(symbol, byte_alphabet().code_point[b]);
      auto it = vocab_.find(symbol);
      byte_ids_[b] = it == vocab_.end() ? -1 : it->second;
    } else {
      const std::string token = byte_token(static_cast<unsigned char>(b));
      auto it = vocab_.find(token);
      if (it == vocab_.end()) {
        bad("model.byte_fallback", "true, but model.vocab has no \"" + token +
                                       "\" (byte fallback needs all of <0x00> to <0xFF>)");
      }
      fallback_ids_[b] = it->second;
    }
  }

  if (model.contains("unk_token") && !model["unk_token"].is_null()) {
    if (!model["unk_token"].is_string()) bad("model.unk_token", "expected a string or null");
    auto it = vocab_.find(model["unk_token"].get<std::string>());
    if (it == vocab_.end()) {
      bad("model.unk_token",
          "\"" + model["unk_token"].get<std::string>() + "\" is not in the vocabulary");
    }
    unk_id_ = it->second;
  }

  if (!model.contains("merges")) bad("model.merges", "missing");
  const json& merges = model["merges"];
  if (!merges.is_array()) bad("model.merges", "expected an array");
  merges_.reserve(merges.size());
  std::string merged;
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const json& merge = merges[rank];
    std::string left, right;
    if (merge.is_string()) {
      const std::string& text = merge.get_ref<const std::string&>();
      size_t space = text.find(' ');
      if (space == std::string::npos || text.find(' ', space + 1) != std::string::npos) {
        bad(cat("model.merges[", rank, "]"),
            "\"" + text + "\" is not two tokens separated by one space");
      }
      left = text.substr(0, space);
      right = text.substr(space + 1);
    } else if (merge.is_array() && merge.size() == 2 && merge[0].is_string() &&
               merge[1].is_string()) {
      left = merge[0].get<std::string>();
      right = merge[1].get<std::string>();
    } else {
      bad(cat("model.merges[", rank, "]"),
          describe(merge) + " is neither \"a b\" nor [\"a\", \"b\"]");
    }
    merged = left + right;
    auto find = [&](const std::string& token) {
      auto it = vocab_.find(token);
      if (it == vocab_.end()) {
        bad(cat("model.merges[", rank, "]"), "\"" + left + " " + right + "\" names \"" + token +
                                                 "\", which is not in the vocabulary");
      }
      return it->second;
    };
    int32_t left_id = find(left);
    int32_t right_id = find(right);
    int32_t merged_id = find(merged);
    merges_.insert(left_id, right_id, static_cast<int32_t>(rank), merged_id);
  }
}

void BpeTokenizer::load_added_tokens(const json& added) {
  if (!added.is_array()) bad("added_tokens", "expected an array");
  for (size_t i = 0; i < added.size(); ++i) {
    const json& entry = added[i];
    std::string field = cat("added_tokens[", i, "]");
    if (!entry.is_object()) bad(field, "expected an object");
    AddedToken token;
    if (!entry.contains("id") || !entry["id"].is_number_integer() ||
        entry["id"].get<int64_t>() < 0 || entry["id"].get<int64_t>() > INT32_MAX - 1) {
      bad(field + ".id", "missing or not an integer in 0..2^31-2");
    }
    if (entry["id"].get<int64_t>() >= id_limit_) {
      auto content = entry.find("content");
      bad(field + ".id",
          cat("id ", entry["id"].get<int64_t>(), " of \"",
              content != entry.end() && content->is_string() ? content->get<std::string>() : "",
              "\" is too large: ", id_limit_text()));
    }
    token.id = static_cast<int32_t>(entry["id"].get<int64_t>());
    if (!entry.contains("content") || !entry["content"].is_string() ||
        entry["content"].get<std::string>().empty()) {
      bad(field + ".content", "missing, empty or not a string");
    }
    token.content = entry["content"].get<std::string>();
    if (first_invalid_utf8(token.content) != std::string_view::npos) {
      bad(field + ".content", "not valid UTF-8");
    }
    auto flag = [&](const char* key, bool fallback) {
      if (!entry.contains(key) || entry[key].is_null()) return fallback;
      if (!entry[key].is_boolean()) bad(field + "." + key, "expected a boolean");
      return entry[key].get<bool>();
    };
    token.single_word = flag("single_word", false);
    token.lstrip = flag("lstrip", false);
    token.rstrip = flag("rstrip", false);
    token.special = flag("special", false);
    // Hugging Face default: special tokens are matched in the raw text, others after normalising.
    token.normalized = flag("normalized", !token.special);

    if (static_cast<size_t>(token.id) >= tokens_.size()) {
      tokens_.resize(static_cast<size_t>(token.id) + 1);
      has_token_.resize(tokens_.size(), 0);
    }
    // An added token overrides a vocabulary entry with the same id (as in Hugging Face).
    tokens_[token.id] = token.content;
    has_token_[token.id] = 1;
    added_ids_.try_emplace(token.content, token.id);
    added_.push_back(std::move(token));
  }
  added_index_of_id_.assign(tokens_.size(), -1);
  for (size_t i = 0; i < added_.size(); ++i) {
    if (added_index_of_id_[added_[i].id] >= 0) {
      bad(cat("added_tokens[", i, "].id"), cat("id ", added_[i].id, " is declared twice"));
    }
    added_index_of_id_[added_[i].id] = static_cast<int32_t>(i);
  }
}

void BpeTokenizer::load_normalizer(const json& normalizer, const std::string& field) {
  if (normalizer.is_null()) return;
  if (!normalizer.is_object() || !normalizer.contains("type") || !normalizer["type"].is_string()) {
    bad(field, "expected null or an object with a \"type\"");
  }
  std::string type = normalizer["type"];
  if (type == "Sequence") {
    if (!normalizer.contains("normalizers") || !normalizer["normalizers"].is_array()) {
      bad(field + ".normalizers", "missing or not an array");
    }
    const json& list = normalizer["normalizers"];
    for (size_t i = 0; i < list.size(); ++i) {
      load_normalizer(list[i], cat(field, ".normalizers[", i, "]"));
    }
    return;
  }
  auto string_field = [&](const char* key, bool may_be_empty) {
    auto it = normalizer.find(key);
    if (it == normalizer.end() || !it->is_string() ||
        (!may_be_empty && it->get<std::string>().empty())) {
      bad(field + "." + key,
          may_be_empty ? "missing or not a string" : "missing, empty or not a string");
    }
    return it->get<std::string>();
  };
  NormalizerStep step;
  if (type == "Prepend") {
    step.type = NormalizerStep::Type::kPrepend;
    step.text = string_field("prepend", false);
  } else if (type == "Replace") {
    step.type = NormalizerStep::Type::kReplace;
    auto pattern = normalizer.find("pattern");
    if (pattern == normalizer.end() || !pattern->is_object() || !pattern->contains("String") ||
        !(*pattern)["String"].is_string() || (*pattern)["String"].get<std::string>().empty()) {
      bad(field + ".pattern", describe(normalizer.value("pattern", json())) +
                                  " is not supported (only {\"String\": \"...\"}, not empty)");
    }
    step.text = (*pattern)["String"].get<std::string>();
    step.content = string_field("content", true);
  } else {
    auto options = static_cast<utf8proc_option_t>(UTF8PROC_STABLE);
    if (type == "NFC") {
      options = static_cast<utf8proc_option_t>(options | UTF8PROC_COMPOSE);
    } else if (type == "NFD") {
      options = static_cast<utf8proc_option_t>(options | UTF8PROC_DECOMPOSE);
    } else if (type == "NFKC") {
      options = static_cast<utf8proc_option_t>(options | UTF8PROC_COMPOSE | UTF8PROC_COMPAT);
    } else if (type == "NFKD") {
      options = static_cast<utf8proc_option_t>(options | UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT);
    } else {
      bad(field + ".type", "\"" + type +
                               "\" is not supported (NFC, NFD, NFKC, NFKD, Prepend, Replace, "
                               "Sequence or null)");
    }
    step.options = options;
  }
  normalizers_.push_back(std::move(step));
}

void BpeTokenizer::load_pre_tokenizer(const json& pre, const std::string& field) {
  if (kind_ == Kind::kSentencePiece) {
    // Null (the Mixtral/Llama layout: the normaliser does the spaces), a Metaspace, or a Sequence
    // of one Metaspace.
    if (pre.is_null()) return;
    if (!pre.is_object() || !pre.contains("type") || !pre["type"].is_string()) {
      bad(field, "expected null or an object with a \"type\"");
    }
    std::string type = pre["type"];
    if (type == "Sequence" && pre.contains("pretokenizers") && pre["pretokenizers"].is_array() &&
        pre["pretokenizers"].size() == 1) {
      load_pre_tokenizer(pre["pretokenizers"][0], field + ".pretokenizers[0]");
      return;
    }
    if (type != "Metaspace") {
      bad(field + ".type", "\"" + type +
                               "\" is not supported in a SentencePiece-style BPE (null or "
                               "Metaspace; a byte-level BPE has a ByteLevel step)");
    }
    load_metaspace(pre, field);
    return;
  }
  if (pre.is_null()) {
    bad(field, "null is not supported: a byte-level BPE needs a ByteLevel pre-tokenizer");
  }
  if (!pre.is_object() || !pre.contains("type") || !pre["type"].is_string()) {
    bad(field, "expected an object with a \"type\"");
  }
  if (!steps_.empty() && steps_.back().type == PreTokenizerStep::Type::kByteLevel) {
    bad(field, "a pre-tokenizer after ByteLevel is not supported (ByteLevel must come last)");
  }
  auto flag = [&](const char* key, bool fallback) {
    if (!pre.contains(key) || pre[key].is_null()) return fallback;
    if (!pre[key].is_boolean()) bad(field + "." + key, "expected a boolean");
    return pre[key].get<bool>();
  };
  std::string type = pre["type"];
  if (type == "Sequence") {
    if (!pre.contains("pretokenizers") || !pre["pretokenizers"].is_array()) {
      bad(field + ".pretokenizers", "missing or not an array");
    }
    const json& list = pre["pretokenizers"];
    for (size_t i = 0; i < list.size(); ++i) {
      load_pre_tokenizer(list[i], cat(field, ".pretokenizers[", i, "]"));
    }
    if (field == "pre_tokenizer" &&
        (steps_.empty() || steps_.back().type != PreTokenizerStep::Type::kByteLevel)) {
      bad(field, "the Sequence has no ByteLevel step: not a byte-level BPE");
    }
    return;
  }
  PreTokenizerStep step;
  std::string error;
  if (type == "ByteLevel") {
    step.type = PreTokenizerStep::Type::kByteLevel;
    step.add_prefix_space = flag("add_prefix_space", true);
    if (flag("use_regex", true)) {
      step.regex = compile_regex(*oniguruma_to_pcre2(kGpt2Pattern, error), false, error, true);
      if (!step.regex) bad(field, "cannot compile the ByteLevel regex: " + error);
    }
  } else if (type == "Split") {
    if (!pre.contains("pattern") || !pre["pattern"].is_object()) {
      bad(field + ".pattern", "missing or not an object");
    }
    const json& pattern = pre["pattern"];
    if (pattern.contains("Regex") && pattern["Regex"].is_string()) {
      const std::optional<std::string> translated =
          oniguruma_to_pcre2(pattern["Regex"].get<std::string>(), error);
      if (!translated) bad(field + ".pattern.Regex", describe(pattern["Regex"]) + ": " + error);
      step.regex = compile_regex(*translated, false, error, true);
    } else if (pattern.contains("String") && pattern["String"].is_string()) {
      if (pattern["String"].get<std::string>().empty()) bad(field + ".pattern.String", "empty");
      step.regex = compile_regex(pattern["String"].get<std::string>(), true, error);
    } else {
      bad(field + ".pattern", "expected {\"Regex\": ...} or {\"String\": ...}");
    }
    if (!step.regex) bad(field + ".pattern", "cannot compile " + describe(pattern) + ": " + error);
    std::string behavior = pre.value("behavior", std::string("Isolated"));
    if (behavior == "Removed") {
      step.behavior = SplitBehavior::kRemoved;
    } else if (behavior == "Isolated") {
      step.behavior = SplitBehavior::kIsolated;
    } else if (behavior == "MergedWithPrevious") {
      step.behavior = SplitBehavior::kMergedWithPrevious;
    } else if (behavior == "MergedWithNext") {
      step.behavior = SplitBehavior::kMergedWithNext;
    } else if (behavior == "Contiguous") {
      step.behavior = SplitBehavior::kContiguous;
    } else {
      bad(field + ".behavior", "\"" + behavior + "\" is not supported");
    }
    step.invert = flag("invert", false);
  } else if (type == "Digits") {
    // DeepSeek-LLM/V2's tokenizer.json: every numeric character its own piece.
    const char* pattern = flag("individual_digits", false) ? R"(\p{N})" : R"(\p{N}+)";
    step.regex = compile_regex(*oniguruma_to_pcre2(pattern, error), false, error, true);
    if (!step.regex) bad(field, "cannot compile the Digits regex: " + error);
    step.behavior = SplitBehavior::kIsolated;
  } else {
    bad(field + ".type", "\"" + type +
                             "\" is not supported in a byte-level BPE (ByteLevel, Split, Digits "
                             "or Sequence)");
  }
  steps_.push_back(std::move(step));
  if (field == "pre_tokenizer" && steps_.back().type != PreTokenizerStep::Type::kByteLevel) {
    bad(field, "a lone " + type + " is not a byte-level BPE pre-tokenizer (ByteLevel is needed)");
  }
}

// As Hugging Face reads it: replacement (one character) is required; prepend_scheme defaults to
// "always"; add_prefix_space, from files written before prepend_scheme existed, false means "never"
// (and contradicts any other declared scheme); split defaults to true.
void BpeTokenizer::load_metaspace(const json& pre, const std::string& field) {
  PreTokenizerStep step;
  step.type = PreTokenizerStep::Type::kMetaspace;
  const json replacement = pre.value("replacement", json());
  int32_t cp = -1;
  if (replacement.is_string() && !replacement.get<std::string>().empty() &&
      first_invalid_utf8(replacement.get<std::string>()) == std::string_view::npos) {
    const std::string& text = replacement.get_ref<const std::string&>();
    if (decode_utf8(text, 0, cp) != text.size()) cp = -1;
  }
  if (cp < 0) bad(field + ".replacement", describe(replacement) + " is not one character");
  step.replacement = replacement.get<std::string>();
  auto flag = [&](const char* key, bool fallback) {
    if (!pre.contains(key) || pre[key].is_null()) return fallback;
    if (!pre[key].is_boolean()) bad(field + "." + key, "expected a boolean");
    return pre[key].get<bool>();
  };
  step.prepend = PrependScheme::kAlways;
  const bool scheme_given = pre.contains("prepend_scheme") && !pre["prepend_scheme"].is_null();
  if (scheme_given) {
    const json& scheme = pre["prepend_scheme"];
    if (scheme == "always") {
      step.prepend = PrependScheme::kAlways;
    } else if (scheme == "first") {
      step.prepend = PrependScheme::kFirst;
    } else if (scheme == "never") {
      step.prepend = PrependScheme::kNever;
    } else {
      bad(field + ".prepend_scheme",
          describe(scheme) + " is not supported (\"always\", \"first\" or \"never\")");
    }
  }
  if (!flag("add_prefix_space", true)) {
    if (scheme_given && step.prepend != PrependScheme::kNever) {
      bad(field + ".add_prefix_space",
          "false contradicts prepend_scheme " + describe(pre["prepend_scheme"]));
    }
    step.prepend = PrependScheme::kNever;
  }
  if (flag("split", true)) {
    std::string error;
    step.regex = compile_regex(step.replacement, true, error);
    if (!step.regex) bad(field + ".replacement", "cannot compile: " + error);
    step.behavior = SplitBehavior::kMergedWithNext;
  }
  steps_.push_back(std::move(step));
}

void BpeTokenizer::load_decoder(const json& decoder, const std::string& field) {
  if (kind_ == Kind::kSentencePiece) {
    if (!decoder.is_object() || !decoder.contains("type") || !decoder["type"].is_string()) {
      bad(field, describe(decoder) +
                     " is not supported (a SentencePiece-style BPE needs a Sequence of Replace, "
                     "ByteFallback, Fuse and Strip)");
    }
    if (decoder["type"] == "Sequence") {
      if (!decoder.contains("decoders") || !decoder["decoders"].is_array()) {
        bad(field + ".decoders", "missing or not an array");
      }
      const json& list = decoder["decoders"];
      for (size_t i = 0; i < list.size(); ++i) {
        load_decoder_step(list[i], cat(field, ".decoders[", i, "]"));
      }
    } else {
      load_decoder_step(decoder, field);
    }
    return;
  }
  if (!decoder.is_object() || !decoder.contains("type") || !decoder["type"].is_string()) {
    bad(field, describe(decoder) + " is not supported (only ByteLevel)");
  }
  std::string type = decoder["type"];
  if (type == "Sequence" && decoder.contains("decoders") && decoder["decoders"].is_array() &&
      decoder["decoders"].size() == 1) {
    load_decoder(decoder["decoders"][0], field + ".decoders[0]");
    return;
  }
  if (type != "ByteLevel")
    bad(field + ".type", "\"" + type + "\" is not supported (only ByteLevel)");

  token_bytes_.resize(tokens_.size());
  for (size_t id = 0; id < tokens_.size(); ++id) {
    if (has_token_[id]) token_bytes_[id] = symbols_to_bytes(tokens_[id]);
  }
}

void BpeTokenizer::load_decoder_step(const json& step, const std::string& field) {
  if (!step.is_object() || !step.contains("type") || !step["type"].is_string()) {
    bad(field, "expected an object with a \"type\"");
  }
  const std::string type = step["type"];
  DecoderStep decoder;
  if (type == "Replace") {
    decoder.type = DecoderStep::Type::kReplace;
    auto pattern = step.find("pattern");
    if (pattern == step.end() || !pattern->is_object() || !pattern->contains("String") ||
        !(*pattern)["String"].is_string() || (*pattern)["String"].get<std::string>().empty()) {
      bad(field + ".pattern", describe(step.value("pattern", json())) +
                                  " is not supported (only {\"String\": \"...\"}, not empty)");
    }
    if (!step.contains("content") || !step["content"].is_string()) {
      bad(field + ".content", "missing or not a string");
    }
    decoder.pattern = (*pattern)["String"].get<std::string>();
    decoder.content = step["content"].get<std::string>();
  } else if (type == "ByteFallback") {
    decoder.type = DecoderStep::Type::kByteFallback;
  } else if (type == "Fuse") {
    decoder.type = DecoderStep::Type::kFuse;
  } else if (type == "Strip") {
    decoder.type = DecoderStep::Type::kStrip;
    int32_t cp = -1;
    if (step.contains("content") && step["content"].is_string()) {
      const std::string& text = step["content"].get_ref<const std::string&>();
      if (!text.empty() && first_invalid_utf8(text) == std::string_view::npos &&
          decode_utf8(text, 0, cp) != text.size()) {
        cp = -1;
      }
      decoder.content = text;
    }
    if (cp < 0) bad(field + ".content", "missing or not one character");
    for (const char* key : {"start", "stop"}) {
      if (!step.contains(key) || !step[key].is_number_integer() || step[key].get<int64_t>() < 0) {
        bad(field + "." + key, "missing or not a non-negative integer");
      }
    }
    decoder.start = step["start"].get<size_t>();
    decoder.stop = step["stop"].get<size_t>();
  } else {
    bad(field + ".type", "\"" + type +
                             "\" is not supported in a SentencePiece-style BPE (Replace, "
                             "ByteFallback, Fuse, Strip or Sequence)");
  }
  decoders_.push_back(std::move(decoder));
}

void BpeTokenizer::normalize(std::string_view text, std::string& out) const {
  out.assign(text);
  for (const NormalizerStep& step : normalizers_) {
    switch (step.type) {
      case NormalizerStep::Type::kPrepend:
        if (!out.empty()) out.insert(0, step.text);
        break;
      case NormalizerStep::Type::kReplace:
        out = replace_all(out, step.text, step.content);
        break;
      case NormalizerStep::Type::kUnicode: {
        if (is_ascii(out)) break;  // ASCII is invariant under all four forms
        utf8proc_uint8_t* result = nullptr;
        utf8proc_ssize_t length =
            utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(out.data()),
                         static_cast<utf8proc_ssize_t>(out.size()), &result, step.options);
        if (length < 0) fail("cannot normalise text: ", utf8proc_errmsg(length));
        out.assign(reinterpret_cast<const char*>(result), static_cast<size_t>(length));
        std::free(result);
        break;
      }
    }
  }
}
template <typename OnText>
void BpeTokenizer::split_added(std::string_view text, const TokenMatcher& matcher,
                               std::vector<int32_t>& out, OnText&& on_text) const {
  if (matcher.empty()) {
    if (!text.empty()) on_text(text);
    return;
  }
  size_t emitted = 0;  // text[emitted..] is not yet passed on
  size_t pos = 0;
  while (pos < text.size()) {
    auto [index, length] = matcher.longest_at(text, pos);
    if (index < 0) {
      ++pos;
      continue;
    }
    const AddedToken& token = added_[index];
    size_t start = pos;
    size_t stop = pos + length;
    if (token.single_word) {
      int32_t before = -1;
      int32_t after = -1;
      size_t unused;
      if (start > 0) before = code_point_before(text, start, unused);
      if (stop < text.size()) decode_utf8(text, stop, after);
      if (is_word_char(before) || is_word_char(after)) {
        pos = stop;
        continue;
      }
    }
    if (token.lstrip) {
      while (start > emitted) {
        size_t previous;
        if (!is_unicode_space(code_point_before(text, start, previous))) break;
        start = previous;
      }
    }
    if (token.rstrip) {
      while (stop < text.size()) {
        int32_t cp;
        size_t length_of_cp = decode_utf8(text, stop, cp);
        if (!is_unicode_space(cp)) break;
        stop += length_of_cp;
      }
    }
    if (start > emitted) on_text(text.substr(emitted, start - emitted));
    out.push_back(token.id);
    emitted = pos = stop;
  }
  if (emitted < text.size()) on_text(text.substr(emitted));
}

// Splits text into (offsets, is_match) ranges covering it: the regex matches and the gaps between.
void find_ranges(const pcre2_code* regex, std::string_view text, pcre2_match_data* match_data,
                 std::vector<Range>& ranges) {
  ranges.clear();
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t previous_end = 0;
  size_t offset = 0;
  while (offset < text.size()) {
    int rc =
        pcre2_match(regex, subject, text.size(), offset, PCRE2_NO_UTF_CHECK, match_data, nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(rc, message, sizeof(message));
      fail("pre-tokenizer regex failed: ", reinterpret_cast<const char*>(message));
    }
    const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(match_data);
    size_t begin = ovector[0];
    size_t end = ovector[1];
    if (end == begin) {  // empty matches split nothing; step over one character
      offset = begin + 1;
      while (offset < text.size() && (static_cast<unsigned char>(text[offset]) & 0xC0) == 0x80) {
        ++offset;
      }
      continue;
    }
    if (begin > previous_end) {
      ranges.push_back({static_cast<uint32_t>(previous_end), static_cast<uint32_t>(begin), false});
    }
    ranges.push_back({static_cast<uint32_t>(begin), static_cast<uint32_t>(end), true});
    previous_end = offset = end;
  }
  if (previous_end < text.size()) {
    ranges.push_back(
        {static_cast<uint32_t>(previous_end), static_cast<uint32_t>(text.size()), false});
  }
}

// Applies a Split behaviour (Hugging Face semantics) to the ranges of one piece.
void apply_behavior(SplitBehavior behavior, bool invert, std::vector<Range>& ranges,
                    std::vector<Range>& merged) {
  if (invert) {
    for (Range& r : ranges) r.is_match = !r.is_match;
  }
  merged.clear();
  bool previous_match = false;
  switch (behavior) {
    case SplitBehavior::kIsolated:
      return;
    case SplitBehavior::kRemoved:
      for (const Range& r : ranges) {
        if (!r.is_match) merged.push_back(r);
      }
      break;
    case SplitBehavior::kMergedWithPrevious:
      for (const Range& r : ranges) {
        if (r.is_match && !previous_match && !merged.empty()) {
          merged.back().end = r.end;
        } else {
          merged.push_back({r.begin, r.end, false});
        }
        previous_match = r.is_match;
      }
      break;
    case SplitBehavior::kMergedWithNext:
      for (auto it = ranges.rbegin(); it != ranges.rend(); ++it) {
        if (it->is_match && !previous_match && !merged.empty()) {
          merged.back().begin = it->begin;
        } else {
          merged.push_back({it->begin, it->end, false});
        }
        previous_match = it->is_match;
      }
      std::reverse(merged.begin(), merged.end());
      break;
    case SplitBehavior::kContiguous:
      for (const Range& r : ranges) {
        if (r.is_match == previous_match && !merged.empty()) {
          merged.back().end = r.end;
        } else {
          merged.push_back({r.begin, r.end, false});
        }
        previous_match = r.is_match;
      }
      break;
  }
  ranges.swap(merged);
}

void BpeTokenizer::pre_tokenize(std::string_view piece, size_t step, bool at_start,
                                EncodeScratch& scratch, std::vector<int32_t>& out) const {
  if (piece.empty()) return;
  if (step == steps_.size()) {
    bpe(piece, scratch, out);
    return;
  }
  const PreTokenizerStep& current = steps_[step];
  if (current.type == PreTokenizerStep::Type::kByteLevel && current.add_prefix_space &&
      piece[0] != ' ') {
    std::string spaced;
    spaced.reserve(piece.size() + 1);
    spaced.push_back(' ');
    spaced.append(piece);
    split_and_continue(spaced, step, at_start, scratch, out);
    return;
  }
  if (current.type == PreTokenizerStep::Type::kMetaspace) {
    std::string replaced = replace_all(piece, " ", current.replacement);
    const bool prepend = current.prepend == PrependScheme::kAlways ||
                         (current.prepend == PrependScheme::kFirst && at_start);
    if (prepend && !std::string_view(replaced).starts_with(current.replacement)) {
      replaced.insert(0, current.replacement);
    }
    split_and_continue(replaced, step, at_start, scratch, out);
    return;
  }
  split_and_continue(piece, step, at_start, scratch, out);
}

void BpeTokenizer::split_and_continue(std::string_view piece, size_t step, bool at_start,
                                      EncodeScratch& scratch, std::vector<int32_t>& out) const {
  const PreTokenizerStep& current = steps_[step];
  if (!current.regex) {
    pre_tokenize(piece, step + 1, at_start, scratch, out);
    return;
  }
  std::vector<Range>& ranges = scratch.ranges[step];
  find_ranges(current.regex.get(), piece, scratch.match_data.get(), ranges);
  apply_behavior(current.behavior, current.invert, ranges, scratch.merged_ranges);
  for (const Range& r : ranges) {
    pre_tokenize(piece.substr(r.begin, r.end - r.begin), step + 1, at_start && r.begin == 0,
                 scratch, out);
  }
}

int32_t BpeTokenizer::byte_symbol(unsigned char byte) const {
  int32_t id = byte_ids_[byte];
  if (id >= 0) return id;
  if (unk_id_) return *unk_id_;
  fail(path_.string(), ": the vocabulary has no symbol for byte 0x", std::hex, int{byte},
       " and model.unk_token is null");
}

// SentencePiece-style symbols: each character's token, or for a character absent from model.vocab
// the <0xXX> tokens of its UTF-8 bytes (Hugging Face's byte fallback, applied before merging).
void BpeTokenizer::character_symbols(std::string_view word, std::vector<int32_t>& ids) const {
  for (size_t pos = 0; pos < word.size();) {
    int32_t cp;
    const size_t length = decode_utf8(word, pos, cp);
    const std::string_view character = word.substr(pos, length);
    if (auto it = vocab_.find(character); it != vocab_.end()) {
      ids.push_back(it->second);
    } else {
      for (unsigned char byte : character) ids.push_back(fallback_ids_[byte]);
    }
    pos += length;
  }
}

void BpeTokenizer::bpe(std::string_view word, EncodeScratch& scratch,
                       std::vector<int32_t>& out) const {
  if (kind_ == Kind::kByteLevel && word.size() == 1) {
    out.push_back(byte_symbol(static_cast<unsigned char>(word[0])));
    return;
  }
  if (ignore_merges_) {
    auto it = kind_ == Kind::kByteLevel ? vocab_.find(bytes_to_symbols(word)) : vocab_.find(word);
    if (it != vocab_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  const bool cacheable = word.size() <= WordCache::kMaxWordBytes;
  size_t hash = 0;
  if (cacheable) {
    hash = std::hash<std::string_view>{}(word);
    if (cache_.lookup(word, hash, out)) return;
  }
  scratch.initial.clear();
  if (kind_ == Kind::kByteLevel) {
    for (unsigned char byte : word) scratch.initial.push_back(byte_symbol(byte));
  } else {
    character_symbols(word, scratch.initial);
  }
  const size_t first = out.size();
  merge(scratch, out);
  if (cacheable) {
    cache_.insert(word, hash, std::span<const int32_t>(out.data() + first, out.size() - first));
  }
}

// The merge loop of both kinds: starting from scratch.initial, repeatedly merges the adjacent pair
// of lowest merge rank (leftmost among equal ranks) until no adjacent pair has a merge, and
// appends the resulting ids to `out`. A heap of candidate pairs, each checked for staleness when
// popped, keeps it O(n log n) in the number of symbols.
void BpeTokenizer::merge(EncodeScratch& scratch, std::vector<int32_t>& out) const {
  auto& symbols = scratch.symbols;
  auto& heap = scratch.heap;
  const auto n = static_cast<int32_t>(scratch.initial.size());
  symbols.resize(scratch.initial.size());
  for (int32_t i = 0; i < n; ++i) symbols[i] = {scratch.initial[i], i - 1, i + 1};
  heap.clear();
  auto consider = [&](int32_t left, int32_t right) {
    const MergeTable::Entry* merge = merges_.find(symbols[left].id, symbols[right].id);
    if (!merge) return;
    heap.push_back({merge->rank, left, right, symbols[left].id, symbols[right].id, merge->merged});
    std::push_heap(heap.begin(), heap.end(), std::greater<>{});
  };
  for (int32_t i = 0; i + 1 < n; ++i) consider(i, i + 1);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), std::greater<>{});
    EncodeScratch::Candidate c = heap.back();
    heap.pop_back();
    // Stale when either side has merged since the candidate was queued.
    if (symbols[c.left].id != c.left_id || symbols[c.left].next != c.right ||
        symbols[c.right].id != c.right_id) {
      continue;
    }
    symbols[c.left].id = c.merged;
    int32_t next = symbols[c.right].next;
    symbols[c.left].next = next;
    symbols[c.right].id = -1;
    if (next < n) symbols[next].prev = c.left;
    if (symbols[c.left].prev >= 0) consider(symbols[c.left].prev, c.left);
    if (next < n) consider(c.left, next);
  }
  for (int32_t i = 0; i < n; i = symbols[i].next) out.push_back(symbols[i].id);
}

std::vector<int32_t> BpeTokenizer::encode(std::string_view text) const {
  std::vector<int32_t> ids;
  if (text.empty()) return ids;
  if (size_t bad_at = first_invalid_utf8(text); bad_at != std::string_view::npos) {
    fail("text to tokenize is not valid UTF-8 at byte offset ", bad_at);
  }
  if (text.size() > UINT32_MAX) fail("text to tokenize is larger than 4 GiB");
  ids.reserve(text.size() / 3 + 16);
  EncodeScratch scratch;
  scratch.ranges.resize(steps_.size());
  std::string normalized;  // one stretch between raw-matched added tokens
  split_added(text, raw_matcher_, ids, [&](std::string_view raw) {
    const bool raw_at_start = raw.data() == text.data();
    normalize(raw, normalized);
    split_added(normalized, normalized_matcher_, ids, [&](std::string_view piece) {
      pre_tokenize(piece, 0, raw_at_start && piece.data() == normalized.data(), scratch, ids);
    });
  });
  return ids;
}

// SentencePiece-style decoding: the decoder steps over the token strings, as Hugging Face runs
// them, then the strings joined.
std::string BpeTokenizer::decode_pieces(std::span<const int32_t> ids) const {
  std::vector<std::string> pieces;
  pieces.reserve(ids.size());
  for (int32_t id : ids) pieces.push_back(tokens_[id]);
  for (const DecoderStep& step : decoders_) {
    switch (step.type) {
      case DecoderStep::Type::kReplace:
        for (std::string& piece : pieces) piece = replace_all(piece, step.pattern, step.content);
        break;
      case DecoderStep::Type::kByteFallback: {
        std::vector<std::string> decoded;
        decoded.reserve(pieces.size());
        std::string bytes;  // the current run of <0xXX> tokens
        auto flush = [&] {
          if (bytes.empty()) return;
          if (first_invalid_utf8(bytes) == std::string_view::npos) {
            decoded.push_back(bytes);
          } else {
            for (size_t i = 0; i < bytes.size(); ++i) decoded.emplace_back("\xEF\xBF\xBD");
          }
          bytes.clear();
        };
        for (std::string& piece : pieces) {
          if (int byte = byte_of_token(piece); byte >= 0) {
            bytes.push_back(static_cast<char>(byte));
          } else {
            flush();
            decoded.push_back(std::move(piece));
          }
        }
        flush();
        pieces.swap(decoded);
        break;
      }
      case DecoderStep::Type::kFuse: {
        std::string fused;
        for (const std::string& piece : pieces) fused += piece;
        pieces.assign(1, std::move(fused));
        break;
      }
      case DecoderStep::Type::kStrip:
        for (std::string& piece : pieces) {
          size_t begin = 0;
          for (size_t k = 0;
               k < step.start && piece.compare(begin, step.content.size(), step.content) == 0;
               ++k) {
            begin += step.content.size();
          }
          size_t end = piece.size();
          for (size_t k = 0;
               k < step.stop && end >= begin + step.content.size() &&
               piece.compare(end - step.content.size(), step.content.size(), step.content) == 0;
               ++k) {
            end -= step.content.size();
          }
          piece = piece.substr(begin, end - begin);
        }
        break;
    }
  }
  std::string text;
  for (const std::string& piece : pieces) text += piece;
  return text;
}

std::string BpeTokenizer::decode(std::span<const int32_t> ids) const {
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size() || !has_token_[id]) {
      fail("token id ", id, " is outside the vocabulary of ", path_.string(), " (ids 0..",
           vocab_size() - 1, (id >= 0 && id < vocab_size() ? ", this one undefined)" : ")"));
    }
  }
  // tokens_ holds an added token's content at its id.
  if (kind_ == Kind::kSentencePiece) return decode_pieces(ids);
  std::string text;
  for (int32_t id : ids) {
    if (added_index_of_id_.size() > static_cast<size_t>(id) && added_index_of_id_[id] >= 0) {
      text += added_[added_index_of_id_[id]].content;
    } else {
      text += token_bytes_[id];
    }
  }
  return text;
}

// As in Hugging Face: an added token's content first, then model.vocab.
std::optional<int32_t> BpeTokenizer::token_to_id(std::string_view token) const {
  if (auto it = added_ids_.find(token); it != added_ids_.end()) return it->second;
  if (auto it = vocab_.find(token); it != vocab_.end()) return it->second;
  return std::nullopt;
}

std::string BpeTokenizer::id_to_token(int32_t id) const {
  if (id < 0 || id >= vocab_size() || !has_token_[id]) {
    fail("token id ", id, " is outside the vocabulary of ", path_.string(), " (ids 0..",
         vocab_size() - 1, ")");
  }
  return tokens_[id];
}

}  // namespace

std::unique_ptr<Tokenizer> Tokenizer::load(const std::filesystem::path& tokenizer_json) {
  std::error_code ec;
  if (std::filesystem::is_directory(tokenizer_json, ec)) {
    fail(tokenizer_json.string(), " is a directory, not a tokenizer.json file");
  }
  return from_json(read_json_file(tokenizer_json), tokenizer_json.string());
}

std::unique_ptr<Tokenizer> Tokenizer::from_json(const json& root, const std::string& source) {
  try {
    return std::make_unique<BpeTokenizer>(source, root);
  } catch (const json::exception& e) {
    // Every field is type-checked before use; this is a last line, in our words all the same.
    fail(source, ": unexpected JSON structure: ", json_error_text(e));
  }
}

}  // namespace bhmoe::model
