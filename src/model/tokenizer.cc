// Byte-level BPE tokenizer read from a Hugging Face tokenizer.json.
//
// Encoding follows the Hugging Face `tokenizers` pipeline:
//   1. added tokens with `normalized: false` are matched in the raw text (leftmost, longest first);
//   2. every stretch between them is normalised (NFC etc. via utf8proc), then added tokens with
//      `normalized: true` are matched in the normalised text;
//   3. every remaining stretch goes through the pre-tokeniser steps (Split / ByteLevel, with the
//      GPT-2 regex when ByteLevel.use_regex), each piece is mapped to byte-level symbols and merged
//      by BPE (lowest merge rank first, leftmost among equal ranks).
// Decoding maps ids to token strings, token strings to bytes through the inverse byte-level map,
// added tokens to their content.
//
// Decisions where the file can be inconsistent (each an error naming the file and field, as the
// Hugging Face loader does, never a silent skip):
//   - a merge naming a token absent from the vocabulary, or whose concatenation is absent: error;
//   - two vocabulary entries with one id: error;
//   - model types other than BPE, BPE options that change the algorithm (dropout, subword
//     prefixes/suffixes, byte_fallback), normalisers other than NFC/NFD/NFKC/NFKD, pre-tokenisers
//     other than Split/ByteLevel, decoders other than ByteLevel: error.
// The post_processor, truncation and padding only matter when special tokens are added or batches
// padded, which this tokenizer never does; they are accepted and ignored.
// Text must be valid UTF-8 (the Hugging Face API takes Rust strings, which always are); invalid
// input is an error naming the byte offset. A byte with no symbol in the vocabulary (only possible
// for vocabularies lacking some of the 256 byte-level symbols) is an error unless unk_token is set.
#include "model/tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <utf8proc.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <unordered_map>

#include "util/error.h"
#include "util/file.h"
#include "util/json.h"

namespace bhmoe::model {
namespace {

using nlohmann::json;

// The GPT-2 pre-tokeniser regex used by ByteLevel when use_regex is true (SPEC §1):
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// spelt with \s as the Unicode White_Space set, which is what \s means in Oniguruma (the engine of
// Hugging Face tokenizers); PCRE2's own \s with UCP also takes U+180E.
std::string byte_level_pattern() {
  const std::string ws =
      R"(\t\n\x0B\f\r \x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000})";
  return R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^)" + ws + R"(\p{L}\p{N}]+|[)" + ws +
         "]+(?![^" + ws + "])|[" + ws + "]+";
}

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

// Compiles `pattern`; on failure returns null and sets `error`.
RegexPtr compile_regex(const std::string& pattern, bool literal, std::string& error) {
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  uint32_t options = PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP);
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
  struct Hash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  struct Shard {
    std::mutex mutex;
    std::unordered_map<std::string, std::vector<int32_t>, Hash, std::equal_to<>> words;
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

// ---- Pre-tokeniser steps --------------------------------------------------------------------

struct PreTokenizerStep {
  bool byte_level = false;        // ByteLevel (always the last step) or Split
  bool add_prefix_space = false;  // ByteLevel only
  RegexPtr regex;                 // null: the step does not split
  SplitBehavior behavior = SplitBehavior::kIsolated;
  bool invert = false;
};

// Per-call working memory: allocated once per encode() call, reused for every word.
struct EncodeScratch {
  MatchDataPtr match_data{pcre2_match_data_create(1, nullptr)};
  std::vector<std::vector<Range>> ranges;  // one per pre-tokeniser step (recursion depth)
  std::vector<Range> merged_ranges;
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
  std::string normalized;
};

// ---- The tokenizer --------------------------------------------------------------------------

class ByteLevelBpeTokenizer final : public Tokenizer {
 public:
  ByteLevelBpeTokenizer(const std::filesystem::path& path, const json& root);

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
  void load_decoder(const json& decoder, const std::string& field);

  void normalize(std::string_view text, std::string& out) const;
  template <typename OnText>
  void split_added(std::string_view text, const TokenMatcher& matcher, std::vector<int32_t>& out,
                   OnText&& on_text) const;
  void pre_tokenize(std::string_view piece, size_t step, EncodeScratch& scratch,
                    std::vector<int32_t>& out) const;
  void split_and_continue(std::string_view piece, size_t step, EncodeScratch& scratch,
                          std::vector<int32_t>& out) const;
  void bpe(std::string_view word, EncodeScratch& scratch, std::vector<int32_t>& out) const;
  int32_t byte_symbol(unsigned char byte) const;

  // Why an id >= id_limit_ is refused, for messages.
  std::string id_limit_text() const {
    return cat("the file defines ", defined_tokens_, " tokens (vocab and added_tokens), so ids must be below ",
               id_limit_, ": at most as many gaps as tokens, plus 256");
  }

  std::filesystem::path path_;
  int64_t id_limit_ = 0;  // every id is below this (set before loading)
  size_t defined_tokens_ = 0;
  // Id -> token string ("" and has_token_ false for ids the file leaves undefined).
  std::vector<std::string> tokens_;
  std::vector<uint8_t> has_token_;
  std::vector<std::string> token_bytes_;  // id -> the bytes it decodes to
  std::unordered_map<std::string, int32_t> vocab_;
  MergeTable merges_;
  std::array<int32_t, 256> byte_ids_{};  // byte -> id of its byte-level symbol, -1 if absent
  std::optional<int32_t> unk_id_;
  bool ignore_merges_ = false;

  std::vector<AddedToken> added_;
  std::vector<int32_t> added_index_of_id_;  // id -> index into added_, -1 if not added
  TokenMatcher raw_matcher_;                // added tokens with normalized == false
  TokenMatcher normalized_matcher_;         // added tokens with normalized == true

  std::vector<utf8proc_option_t> normalizers_;  // applied in order
  std::vector<PreTokenizerStep> steps_;

  mutable WordCache cache_;
};

std::string describe(const json& value) {
  std::string text = value.dump();
  if (text.size() > 80) text = text.substr(0, 77) + "...";
  return text;
}

ByteLevelBpeTokenizer::ByteLevelBpeTokenizer(const std::filesystem::path& path, const json& root)
    : path_(path) {
  if (!root.is_object()) bad("top level", "expected a JSON object, got " + describe(root));
  if (!root.contains("model")) bad("model", "missing");
  // Ids index per-id tables (token strings, bytes, added-token slots), so their range is bounded by
  // what the file defines: no more undefined ids than defined ones, plus a little. One stray huge id
  // is then an error naming it, never a table of gigabytes.
  size_t defined = 0;
  if (auto model = root.find("model"); model->is_object()) {
    if (auto vocab = model->find("vocab"); vocab != model->end() && vocab->is_object())
      defined += vocab->size();
  }
  if (auto added = root.find("added_tokens"); added != root.end() && added->is_array())
    defined += added->size();
  id_limit_ = std::min<int64_t>(2 * static_cast<int64_t>(defined) + 256, INT32_MAX);
  defined_tokens_ = defined;
  load_model(root["model"]);
  if (root.contains("added_tokens")) load_added_tokens(root["added_tokens"]);
  load_normalizer(root.value("normalizer", json()), "normalizer");
  load_pre_tokenizer(root.value("pre_tokenizer", json()), "pre_tokenizer");
  load_decoder(root.value("decoder", json()), "decoder");

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

void ByteLevelBpeTokenizer::load_model(const json& model) {
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
  null_or("byte_fallback", [](const json& v) { return v.is_boolean() && !v.get<bool>(); });
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
      bad("model.vocab", cat("token \"", it.key(), "\" has id ", it.value().get<int64_t>(), ", but ",
                             id_limit_text()));
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

  for (int b = 0; b < 256; ++b) {
    std::string symbol;
    append_utf8(symbol, byte_alphabet().code_point[b]);
    auto it = vocab_.find(symbol);
    byte_ids_[b] = it == vocab_.end() ? -1 : it->second;
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

void ByteLevelBpeTokenizer::load_added_tokens(const json& added) {
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
    vocab_.try_emplace(token.content, token.id);
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

void ByteLevelBpeTokenizer::load_normalizer(const json& normalizer, const std::string& field) {
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
    bad(field + ".type",
        "\"" + type + "\" is not supported (NFC, NFD, NFKC, NFKD, Sequence or null)");
  }
  normalizers_.push_back(options);
}

void ByteLevelBpeTokenizer::load_pre_tokenizer(const json& pre, const std::string& field) {
  if (pre.is_null()) {
    bad(field, "null is not supported: a byte-level BPE needs a ByteLevel pre-tokenizer");
  }
  if (!pre.is_object() || !pre.contains("type") || !pre["type"].is_string()) {
    bad(field, "expected an object with a \"type\"");
  }
  if (!steps_.empty() && steps_.back().byte_level) {
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
    if (field == "pre_tokenizer" && (steps_.empty() || !steps_.back().byte_level)) {
      bad(field, "the Sequence has no ByteLevel step: not a byte-level BPE");
    }
    return;
  }
  PreTokenizerStep step;
  std::string error;
  if (type == "ByteLevel") {
    step.byte_level = true;
    step.add_prefix_space = flag("add_prefix_space", true);
    if (flag("use_regex", true)) {
      step.regex = compile_regex(byte_level_pattern(), false, error);
      if (!step.regex) bad(field, "cannot compile the ByteLevel regex: " + error);
    }
  } else if (type == "Split") {
    if (!pre.contains("pattern") || !pre["pattern"].is_object()) {
      bad(field + ".pattern", "missing or not an object");
    }
    const json& pattern = pre["pattern"];
    if (pattern.contains("Regex") && pattern["Regex"].is_string()) {
      step.regex = compile_regex(pattern["Regex"].get<std::string>(), false, error);
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
  } else {
    bad(field + ".type", "\"" + type + "\" is not supported (ByteLevel, Split or Sequence)");
  }
  steps_.push_back(std::move(step));
  if (field == "pre_tokenizer" && !steps_.back().byte_level) {
    bad(field, "a lone " + type + " is not a byte-level BPE pre-tokenizer (ByteLevel is needed)");
  }
}

void ByteLevelBpeTokenizer::load_decoder(const json& decoder, const std::string& field) {
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

void ByteLevelBpeTokenizer::normalize(std::string_view text, std::string& out) const {
  out.assign(text);
  if (normalizers_.empty() || is_ascii(text)) return;  // ASCII is invariant under all four forms
  for (utf8proc_option_t options : normalizers_) {
    utf8proc_uint8_t* result = nullptr;
    utf8proc_ssize_t length =
        utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(out.data()),
                     static_cast<utf8proc_ssize_t>(out.size()), &result, options);
    if (length < 0) fail("cannot normalise text: ", utf8proc_errmsg(length));
    out.assign(reinterpret_cast<const char*>(result), static_cast<size_t>(length));
    std::free(result);
  }
}

template <typename OnText>
void ByteLevelBpeTokenizer::split_added(std::string_view text, const TokenMatcher& matcher,
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

void ByteLevelBpeTokenizer::pre_tokenize(std::string_view piece, size_t step,
                                         EncodeScratch& scratch, std::vector<int32_t>& out) const {
  if (piece.empty()) return;
  if (step == steps_.size()) {
    bpe(piece, scratch, out);
    return;
  }
  const PreTokenizerStep& current = steps_[step];
  if (current.byte_level && current.add_prefix_space && piece[0] != ' ') {
    std::string spaced;
    spaced.reserve(piece.size() + 1);
    spaced.push_back(' ');
    spaced.append(piece);
    split_and_continue(spaced, step, scratch, out);
    return;
  }
  split_and_continue(piece, step, scratch, out);
}

void ByteLevelBpeTokenizer::split_and_continue(std::string_view piece, size_t step,
                                               EncodeScratch& scratch,
                                               std::vector<int32_t>& out) const {
  const PreTokenizerStep& current = steps_[step];
  if (!current.regex) {
    pre_tokenize(piece, step + 1, scratch, out);
    return;
  }
  std::vector<Range>& ranges = scratch.ranges[step];
  find_ranges(current.regex.get(), piece, scratch.match_data.get(), ranges);
  apply_behavior(current.behavior, current.invert, ranges, scratch.merged_ranges);
  for (const Range& r : ranges) {
    pre_tokenize(piece.substr(r.begin, r.end - r.begin), step + 1, scratch, out);
  }
}

int32_t ByteLevelBpeTokenizer::byte_symbol(unsigned char byte) const {
  int32_t id = byte_ids_[byte];
  if (id >= 0) return id;
  if (unk_id_) return *unk_id_;
  fail(path_.string(), ": the vocabulary has no symbol for byte 0x", std::hex, int{byte},
       " and model.unk_token is null");
}

void ByteLevelBpeTokenizer::bpe(std::string_view word, EncodeScratch& scratch,
                                std::vector<int32_t>& out) const {
  if (word.size() == 1) {
    out.push_back(byte_symbol(static_cast<unsigned char>(word[0])));
    return;
  }
  if (ignore_merges_) {
    auto it = vocab_.find(bytes_to_symbols(word));
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

  auto& symbols = scratch.symbols;
  auto& heap = scratch.heap;
  const auto n = static_cast<int32_t>(word.size());
  symbols.resize(word.size());
  for (int32_t i = 0; i < n; ++i) {
    symbols[i] = {byte_symbol(static_cast<unsigned char>(word[i])), i - 1, i + 1};
  }
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
  const size_t first = out.size();
  for (int32_t i = 0; i < n; i = symbols[i].next) out.push_back(symbols[i].id);
  if (cacheable) {
    cache_.insert(word, hash, std::span<const int32_t>(out.data() + first, out.size() - first));
  }
}

std::vector<int32_t> ByteLevelBpeTokenizer::encode(std::string_view text) const {
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
    normalize(raw, normalized);
    split_added(normalized, normalized_matcher_, ids,
                [&](std::string_view piece) { pre_tokenize(piece, 0, scratch, ids); });
  });
  return ids;
}

std::string ByteLevelBpeTokenizer::decode(std::span<const int32_t> ids) const {
  std::string text;
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size() || !has_token_[id]) {
      fail("token id ", id, " is outside the vocabulary of ", path_.string(), " (ids 0..",
           vocab_size() - 1, (id >= 0 && id < vocab_size() ? ", this one undefined)" : ")"));
    }
    if (added_index_of_id_.size() > static_cast<size_t>(id) && added_index_of_id_[id] >= 0) {
      text += added_[added_index_of_id_[id]].content;
    } else {
      text += token_bytes_[id];
    }
  }
  return text;
}

std::optional<int32_t> ByteLevelBpeTokenizer::token_to_id(std::string_view token) const {
  auto it = vocab_.find(std::string(token));
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

std::string ByteLevelBpeTokenizer::id_to_token(int32_t id) const {
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
    return std::make_unique<ByteLevelBpeTokenizer>(source, root);
  } catch (const json::exception& e) {
    // Every field is type-checked before use; this is a last line, in our words all the same.
    fail(source, ": unexpected JSON structure: ", json_error_text(e));
  }
}

}  // namespace bhmoe::model
