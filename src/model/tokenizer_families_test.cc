// The Qwen2 and Mixtral/Llama tokenizer families, against references made by implementations
// independent of bhmoe (src/model/testdata/tokenizers, made by
// tools/tokenizer_cases/make_cases.py):
// - SentencePiece BPE: a model trained by sentencepiece, its ids from sentencepiece's encoder (the
//   tokenizer.json path) and from llama.cpp's SPM tokenizer on the model's GGUF vocabulary (the
//   GGUF path);
// - DeepSeek-LLM/V2: a byte-level BPE with DeepSeek's tokenizer.json layout (six Split regexes in
//   sequence), its ids from Hugging Face semantics in Python with Oniguruma and from llama.cpp's
//   "deepseek-llm" pre-tokeniser on its GGUF vocabulary (the two agree on every case);
// - Qwen2: a byte-level BPE with Qwen2's tokenizer.json layout, its ids from Hugging Face semantics
//   computed in Python with Oniguruma, HF's regex engine (the tokenizer.json path), and from
//   llama.cpp's "qwen2" pre-tokeniser on its GGUF vocabulary (the GGUF path).
// Then the semantics that have no independent reference here (the Metaspace layout, the decoder
// steps, the Oniguruma-to-PCRE2 regex translation) and bad input.
#include <gtest/gtest.h>
#include <unistd.h>
#include <utf8proc.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/gguf_checkpoint.h"
#include "model/gguf_export.h"
#include "model/tokenizer.h"
#include "model/tokenizer_test_util.h"
#include "util/error.h"
#include "util/file.h"
#include "util/gguf.h"

namespace bhmoe::model {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;
using namespace tokenizer_test;  // read_json, nfc, TempDir, load_modified, expect_error

const fs::path kData = fs::path(BHMOE_SOURCE_DIR) / "src" / "model" / "testdata" / "tokenizers";
const fs::path kSpmJson = kData / "spm-bpe.tokenizer.json";
const fs::path kSpmGguf = kData / "spm-bpe.gguf";
const fs::path kQwenJson = kData / "qwen2-bpe.tokenizer.json";
const fs::path kQwenGguf = kData / "qwen2-bpe.gguf";
const fs::path kDeepseekJson = kData / "deepseek-bpe.tokenizer.json";
const fs::path kDeepseekGguf = kData / "deepseek-bpe.gguf";
const fs::path kTinyTokenizer =
    fs::path(BHMOE_SHARED_DIR) / "golden" / "tiny-f32" / "tokenizer.json";

const std::string kMeta = "\u2581";  // ▁

std::unique_ptr<Tokenizer> from_gguf(const fs::path& path) {
  return Tokenizer::from_json(gguf_tokenizer_json(GgufFile::open(path)), path.string());
}

const Tokenizer& spm_json() {
  static const std::unique_ptr<Tokenizer> tokenizer = Tokenizer::load(kSpmJson);
  return *tokenizer;
}
const Tokenizer& spm_gguf() {
  static const std::unique_ptr<Tokenizer> tokenizer = from_gguf(kSpmGguf);
  return *tokenizer;
}
const Tokenizer& qwen_json() {
  static const std::unique_ptr<Tokenizer> tokenizer = Tokenizer::load(kQwenJson);
  return *tokenizer;
}
const Tokenizer& qwen_gguf() {
  static const std::unique_ptr<Tokenizer> tokenizer = from_gguf(kQwenGguf);
  return *tokenizer;
}

std::vector<int32_t> ids_of(const json& array) {
  return array.get<std::vector<int32_t>>();
}

std::vector<int32_t> concat(std::initializer_list<std::vector<int32_t>> parts) {
  std::vector<int32_t> all;
  for (const auto& part : parts) all.insert(all.end(), part.begin(), part.end());
  return all;
}

int32_t id(const Tokenizer& tokenizer, const std::string& token) {
  const std::optional<int32_t> found = tokenizer.token_to_id(token);
  EXPECT_TRUE(found.has_value()) << token;
  return found.value_or(-1);
}

// ---- SentencePiece BPE (Mixtral / Llama layout) ------------------------------------------------

TEST(SentencePieceBpe, TokenizerJsonMatchesSentencePiece) {
  const json cases = read_json(kData / "spm-cases.json");
  ASSERT_EQ(cases["format"], "bhmoe-tokenizer-cases/1");
  ASSERT_GE(cases["cases"].size(), 60u);
  for (const json& c : cases["cases"]) {
    const std::string text = c["text"];
    SCOPED_TRACE("text: \"" + text.substr(0, 60) + "\"");
    EXPECT_EQ(spm_json().encode(text), ids_of(c["ids"]));
    EXPECT_EQ(spm_json().decode(ids_of(c["ids"])), c["decoded"].get<std::string>());
  }
}

TEST(SentencePieceBpe, GgufMatchesLlamaCpp) {
  const json cases = read_json(kData / "spm-cases.json");
  for (const json& c : cases["cases"]) {
    const std::string text = c["text"];
    SCOPED_TRACE("text: \"" + text.substr(0, 60) + "\"");
    // llama.cpp agrees with sentencepiece on every case (llamacpp_ids would record a difference).
    EXPECT_FALSE(c.contains("llamacpp_ids"));
    EXPECT_EQ(spm_gguf().encode(text), ids_of(c.value("llamacpp_ids", c["ids"])));
    EXPECT_EQ(spm_gguf().decode(ids_of(c["ids"])), c["decoded"].get<std::string>());
  }
}

// <s>, </s> and <unk> written in the text: llama.cpp matches them and puts a space before the text
// after each; the tokenizer.json matches them as added tokens and prepends ▁ to every stretch
// between them. Both paths give llama.cpp's ids.
TEST(SentencePieceBpe, SpecialTokensInTheTextMatchLlamaCpp) {
  const json cases = read_json(kData / "spm-cases.json");
  ASSERT_GE(cases["special_cases"].size(), 8u);
  for (const json& c : cases["special_cases"]) {
    const std::string text = c["text"];
    SCOPED_TRACE("text: \"" + text + "\"");
    EXPECT_EQ(spm_json().encode(text), ids_of(c["llamacpp_ids"]));
    EXPECT_EQ(spm_gguf().encode(text), ids_of(c["llamacpp_ids"]));
  }
}

// The GGUF has scores, not merges; ranking the merges by the merged piece's score gives the very
// merges (and order) that the converter wrote into the tokenizer.json.
TEST(SentencePieceBpe, MergesFromGgufScoresAreTheTokenizerJsonMerges) {
  const json from_gguf = gguf_tokenizer_json(GgufFile::open(kSpmGguf));
  const json from_file = read_json(kSpmJson);
  std::vector<std::string> gguf_merges;
  for (const json& m : from_gguf["model"]["merges"]) {
    gguf_merges.push_back(m[0].get<std::string>() + " " + m[1].get<std::string>());
  }
  const auto file_merges = from_file["model"]["merges"].get<std::vector<std::string>>();
  EXPECT_GT(file_merges.size(), 800u);
  EXPECT_EQ(gguf_merges, file_merges);
  EXPECT_EQ(from_gguf["model"]["vocab"], from_file["model"]["vocab"]);
  EXPECT_EQ(spm_gguf().vocab_size(), spm_json().vocab_size());
}

TEST(SentencePieceBpe, ByteFallbackAndDecoderSteps) {
  const Tokenizer& t = spm_json();
  // U+1F999 is not a piece: ▁ then its four bytes.
  EXPECT_EQ(t.encode("🦙"), (std::vector<int32_t>{id(t, kMeta), id(t, "<0xF0>"), id(t, "<0x9F>"),
                                                    id(t, "<0xA6>"), id(t, "<0x99>")}));
  EXPECT_EQ(t.encode("\n"), (std::vector<int32_t>{id(t, kMeta), id(t, "<0x0A>")}));
  // A run of byte tokens that is not valid UTF-8 decodes to one U+FFFD per byte (as Hugging Face).
  EXPECT_EQ(t.decode(std::vector<int32_t>{id(t, "<0xF0>"), id(t, "<0x9F>")}),
            "\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(t.decode(std::vector<int32_t>{id(t, "<0xC3>"), id(t, "<0xA9>")}), "é");
  // Runs end at a non-byte token: "é" then an invalid lone 0xC3.
  EXPECT_EQ(t.decode(std::vector<int32_t>{id(t, "<0xC3>"), id(t, "<0xA9>"), id(t, kMeta),
                                          id(t, "<0xC3>")}),
            "é \xEF\xBF\xBD");
  // Strip removes one leading space, of the whole text (Fuse comes first), not of every token.
  EXPECT_EQ(t.decode(std::vector<int32_t>{id(t, kMeta), id(t, kMeta)}), " ");
  EXPECT_EQ(t.decode(std::vector<int32_t>{1, id(t, kMeta)}), "<s> ");
  EXPECT_EQ(t.decode(std::vector<int32_t>{}), "");
  EXPECT_EQ(t.token_to_id("<s>"), 1);
  EXPECT_EQ(t.token_to_id("</s>"), 2);
  EXPECT_EQ(t.token_to_id("<unk>"), 0);
  EXPECT_EQ(t.id_to_token(3), "<0x00>");
  EXPECT_THROW(t.decode(std::vector<int32_t>{t.vocab_size()}), Error);
}

TEST(SentencePieceBpe, LongTextIsOnePieceAndRoundTrips) {
  // No pre-tokeniser: the whole text is one BPE word (thousands of symbols through the heap).
  std::string text;
  for (int i = 0; i < 300; ++i)
    text += cat("Copyright (C) ", 1989 + i % 30, " Free Software Foundation.\n");
  const std::vector<int32_t> ids = spm_json().encode(text);
  EXPECT_LT(ids.size(), text.size() / 2);
  EXPECT_EQ(spm_json().decode(ids), text);
  EXPECT_EQ(spm_gguf().encode(text), ids);
}

// The newer layout (transformers' legacy=false): no normaliser, a Metaspace pre-tokeniser. Its
// semantics here are Hugging Face's as its source states them (no independent reference ran):
// spaces become ▁, then ▁ is prepended unless the stretch already starts with one, only at the
// start of the text for "first"; split cuts before every ▁.
TEST(SentencePieceBpe, MetaspaceLayout) {
  TempDir dir;
  auto metaspace = [&](const std::string& scheme, bool split) {
    return load_modified(dir, kSpmJson, [&](json& root) {
      root["normalizer"] = nullptr;
      root["pre_tokenizer"] = {{"type", "Metaspace"},
                               {"replacement", kMeta},
                               {"prepend_scheme", scheme},
                               {"split", split}};
      root["model"]["merges"] = [&] {
        json pairs = json::array();
        for (const json& m : root["model"]["merges"]) {
          const std::string text = m;
          pairs.push_back({text.substr(0, text.find(' ')), text.substr(text.find(' ') + 1)});
        }
        return pairs;
      }();
    });
  };
  const Tokenizer& legacy = spm_json();
  const auto first = metaspace("first", false);
  const auto always = metaspace("always", false);
  const auto never = metaspace("never", false);
  const auto split = metaspace("first", true);
  // Text not starting with a space and without added tokens: the same ids as the legacy layout.
  const json cases = read_json(kData / "spm-cases.json");
  int same = 0;
  for (const json& c : cases["cases"]) {
    const std::string text = c["text"];
    if (text.empty() || text[0] == ' ' || text.starts_with(kMeta)) continue;
    EXPECT_EQ(first->encode(text), ids_of(c["ids"])) << text;
    ++same;
  }
  EXPECT_GE(same, 40);
  // A leading space is the prepended ▁ itself (the legacy layout adds another).
  EXPECT_EQ(first->encode(" Hello world"), legacy.encode("Hello world"));
  EXPECT_NE(first->encode(" Hello world"), legacy.encode(" Hello world"));
  // "first": nothing is prepended after an added token; "always": it is; "never": nowhere.
  EXPECT_EQ(first->encode("<s>Hello"), concat({{1}, never->encode("Hello")}));
  EXPECT_EQ(always->encode("<s>Hello"), concat({{1}, legacy.encode("Hello")}));
  EXPECT_EQ(always->encode("Hello"), legacy.encode("Hello"));
  EXPECT_NE(never->encode("Hello"), legacy.encode("Hello"));
  // split: each word is its own piece.
  EXPECT_EQ(split->encode("license the"), concat({legacy.encode("license"), legacy.encode("the")}));
  // Runs of spaces: split keeps every ▁ with the word after it, so no "▁▁▁" piece can form.
  EXPECT_EQ(split->encode("license    the"),
            concat({legacy.encode("license"),
                    {id(legacy, kMeta), id(legacy, kMeta), id(legacy, kMeta)},
                    legacy.encode("the")}));
  EXPECT_NE(split->encode("license    the"), first->encode("license    the"));
  EXPECT_EQ(split->decode(split->encode("Hello  world")), "Hello  world");
  // Files written before prepend_scheme say add_prefix_space.
  const auto old = load_modified(dir, kSpmJson, [&](json& root) {
    root["normalizer"] = nullptr;
    root["pre_tokenizer"] = {
        {"type", "Metaspace"}, {"replacement", kMeta}, {"add_prefix_space", true}};
  });
  EXPECT_EQ(old->encode("license the"), split->encode("license the"));
  EXPECT_EQ(old->encode("<s>Hello"), concat({{1}, legacy.encode("Hello")}));
  const auto old_never = load_modified(dir, kSpmJson, [&](json& root) {
    root["normalizer"] = nullptr;
    root["pre_tokenizer"] = {
        {"type", "Metaspace"}, {"replacement", kMeta}, {"add_prefix_space", false}};
  });
  EXPECT_EQ(old_never->encode("Hello"), never->encode("Hello"));
}

// ---- DeepSeek-LLM / DeepSeek-V2 byte-level BPE ------------------------------------------------

TEST(DeepseekBpe, TokenizerJsonAndGgufMatchHuggingFaceAndLlamaCpp) {
  const json cases = read_json(kData / "deepseek-cases.json");
  ASSERT_EQ(cases["format"], "bhmoe-tokenizer-cases/1");
  ASSERT_GE(cases["cases"].size(), 80u);
  const std::unique_ptr<Tokenizer> from_json = Tokenizer::load(kDeepseekJson);
  const std::unique_ptr<Tokenizer> gguf = from_gguf(kDeepseekGguf);
  for (const json& c : cases["cases"]) {
    const std::string text = c["text"];
    SCOPED_TRACE("text: \"" + text.substr(0, 60) + "\"");
    // No normaliser: llama.cpp and Hugging Face agree on every case.
    EXPECT_FALSE(c.contains("llamacpp_ids"));
    EXPECT_EQ(from_json->encode(text), ids_of(c["ids"]));
    EXPECT_EQ(gguf->encode(text), ids_of(c["ids"]));
    EXPECT_EQ(gguf->decode(ids_of(c["ids"])), text);
  }
  EXPECT_EQ(gguf->vocab_size(), from_json->vocab_size());
  for (const char* special :
       {"<\uff5cbegin\u2581of\u2581sentence\uff5c>", "<\uff5cend\u2581of\u2581sentence\uff5c>"}) {
    EXPECT_EQ(gguf->token_to_id(special), from_json->token_to_id(special)) << special;
  }
}

// Each of the six regexes matters: the vocabulary has merges across every regex's boundaries (it
// was trained on coarser pieces too), so a pre-tokeniser without any one of them tokenizes some
// case differently. (This is the planted fault "drop one regex", made a test.)
TEST(DeepseekBpe, EveryRegexOfTheSequenceIsNeeded) {
  const json cases = read_json(kData / "deepseek-cases.json");
  TempDir dir;
  for (size_t drop = 0; drop < 6; ++drop) {
    SCOPED_TRACE(cat("without regex ", drop));
    const std::unique_ptr<Tokenizer> faulty = load_modified(dir, kDeepseekJson, [&](json& root) {
      json& steps = root["pre_tokenizer"]["pretokenizers"];
      ASSERT_EQ(steps.size(), 7u);
      ASSERT_EQ(steps[drop]["type"], drop == 5 ? "Digits" : "Split");
      steps.erase(steps.begin() + static_cast<std::ptrdiff_t>(drop));
    });
    int differ = 0;
    for (const json& c : cases["cases"])
      differ += faulty->encode(c["text"].get<std::string>()) != ids_of(c["ids"]);
    EXPECT_GT(differ, 0);
  }
  // The GGUF reader has the tokenizer.json's five Splits, then llama.cpp's \p{N}+ where the
  // tokenizer.json has Digits(individual_digits) (the same ids: no token holds two digits).
  const json from_gguf = *gguf_bytelevel_pre_tokenizer("deepseek-llm");
  const json original = read_json(kDeepseekJson)["pre_tokenizer"];
  ASSERT_EQ(from_gguf["pretokenizers"].size(), 7u);
  for (size_t i : {0, 1, 2, 3, 4, 6}) {
    EXPECT_EQ(from_gguf["pretokenizers"][i].dump(), original["pretokenizers"][i].dump()) << i;
  }
  EXPECT_EQ(from_gguf["pretokenizers"][5]["pattern"]["Regex"], "\\p{N}+");
  EXPECT_EQ(original["pretokenizers"][5].dump(), R"({"individual_digits":true,"type":"Digits"})");
}

// Digits: individual_digits cuts every numeric character off (a Split of \p{N}), without it runs
// of them stay together (\p{N}+); shown with a token "42" added to the vocabulary.
TEST(DeepseekBpe, DigitsPreTokenizer) {
  TempDir dir;
  auto with_42 = [&](bool individual) {
    return load_modified(dir, kDeepseekJson, [&](json& root) {
      root["model"]["vocab"]["42"] = 1458;
      root["model"]["merges"].push_back("4 2");
      root["pre_tokenizer"]["pretokenizers"][5]["individual_digits"] = individual;
    });
  };
  const std::unique_ptr<Tokenizer> individual = with_42(true);
  const std::unique_ptr<Tokenizer> runs = with_42(false);
  EXPECT_EQ(individual->encode("x42"),
            concat({individual->encode("x"), individual->encode("4"), individual->encode("2")}));
  EXPECT_EQ(runs->encode("x42"), concat({runs->encode("x"), std::vector<int32_t>{1458}}));
  // \p{N} beyond ASCII: Arabic-Indic digits and a Roman numeral are cut apart too.
  EXPECT_EQ(individual->encode("\u0663\u0664\u216b"),
            concat({individual->encode("\u0663"), individual->encode("\u0664"),
                    individual->encode("\u216b")}));
}

// ---- bhmoe convert: the tokenizer.json as tokenizer.ggml.* keys --------------------------------

// The tokenizer.json written as GGUF keys by add_gguf_tokenizer (what `bhmoe convert` writes),
// then read back as bhmoe reads a GGUF vocabulary.
std::unique_ptr<Tokenizer> converted(const fs::path& tokenizer_json, std::string* model = nullptr,
                                     std::string* pre = nullptr) {
  const json tok = read_json(tokenizer_json);
  const std::unique_ptr<Tokenizer> original = Tokenizer::load(tokenizer_json);
  GgufWriter w;
  add_gguf_tokenizer(w, tok, original->vocab_size(), ModelConfig{});
  const std::string bytes = w.bytes();  // GgufFile::parse reads them in place: they must outlive it
  const GgufFile file = GgufFile::parse(bytes, "converted.gguf");
  if (model) *model = file.get_string("tokenizer.ggml.model");
  if (pre) *pre = file.get_string("tokenizer.ggml.pre");
  return Tokenizer::from_json(gguf_tokenizer_json(file), "converted.gguf");
}

TEST(ConvertTokenizer, SentencePieceLayoutAsLlamaWithScores) {
  std::string model, pre;
  const std::unique_ptr<Tokenizer> t = converted(kSpmJson, &model, &pre);
  EXPECT_EQ(model, "llama");
  EXPECT_EQ(pre, "default");
  const json cases = read_json(kData / "spm-cases.json");
  for (const json& c : cases["cases"]) {
    const std::string text = c["text"];
    SCOPED_TRACE("text: \"" + text.substr(0, 60) + "\"");
    EXPECT_EQ(t->encode(text), ids_of(c["ids"]));
  }
  for (const json& c : cases["special_cases"]) {
    const std::string text = c["text"];
    SCOPED_TRACE("text: \"" + text + "\"");
    EXPECT_EQ(t->encode(text), spm_gguf().encode(text));
  }
}

TEST(ConvertTokenizer, ByteLevelLayoutsKeepTheirPreTokeniser) {
  for (const auto& [file, cases_file, expected_pre] :
       {std::tuple{kQwenJson, "qwen2-cases.json", "qwen2"},
        std::tuple{kDeepseekJson, "deepseek-cases.json", "deepseek-llm"},
        std::tuple{kTinyTokenizer, "", "olmo"}}) {
    SCOPED_TRACE(file.string());
    std::string model, pre;
    const std::unique_ptr<Tokenizer> t = converted(file, &model, &pre);
    EXPECT_EQ(model, "gpt2");
    EXPECT_EQ(pre, expected_pre);
    if (std::string(cases_file).empty()) continue;
    // As the GGUF vocabulary llama.cpp tokenized (no NFC normaliser: llama.cpp's ids).
    const json cases =
        read_json(kData / cases_file);  // a range-for over a temporary's member dangles
    for (const json& c : cases["cases"]) {
      const std::string text = c["text"];
      SCOPED_TRACE("text: \"" + text.substr(0, 60) + "\"");
      EXPECT_EQ(t->encode(text), ids_of(c.value("llamacpp_ids", c["ids"])));
    }
  }
}

TEST(ConvertTokenizer, UnknownLayoutsAreErrors) {
  json tok = read_json(kDeepseekJson);
  tok["pre_tokenizer"]["pretokenizers"].erase(3);  // one regex fewer: no llama.cpp name for it
  GgufWriter w;
  expect_error([&] { add_gguf_tokenizer(w, tok, 2000, ModelConfig{}); },
               {"GGUF export: the tokenizer's pre_tokenizer", "\"deepseek-llm\""});
  // DeepSeek's Digits layout with a token of two digits: llama.cpp's \p{N}+ would differ.
  json digits = read_json(kDeepseekJson);
  digits["model"]["vocab"]["42"] = 1458;
  expect_error([&] { add_gguf_tokenizer(w, digits, 2000, ModelConfig{}); },
               {"GGUF export: the tokenizer's vocab has the token \"42\" of two numeric"});
  json spm = read_json(kSpmJson);
  spm["normalizer"] = {{"type", "NFC"}};
  expect_error([&] { add_gguf_tokenizer(w, spm, 2000, ModelConfig{}); },
               {"normalizer ({\"type\":\"NFC\"})", "SentencePiece's"});
}

// ---- Qwen2 byte-level BPE ----------------------------------------------------------------------

TEST(Qwen2Bpe, TokenizerJsonMatchesHuggingFaceSemantics) {
  const json cases = read_json(kData / "qwen2-cases.json");
  ASSERT_EQ(cases["format"], "bhmoe-tokenizer-cases/1");
  ASSERT_GE(cases["cases"].size(), 70u);
  for (const json& c : cases["cases"]) {
    const std::string text = c["text"];
    SCOPED_TRACE("text: \"" + text.substr(0, 60) + "\"");
    EXPECT_EQ(qwen_json().encode(text), ids_of(c["ids"]));
    EXPECT_EQ(qwen_json().decode(ids_of(c["ids"])), nfc(text));
  }
}

// The GGUF path tokenizes as llama.cpp (no NFC normaliser, as llama.cpp), so it gives llama.cpp's
// ids everywhere, which are the tokenizer.json's except on text not in NFC.
TEST(Qwen2Bpe, GgufMatchesLlamaCpp) {
  const json cases = read_json(kData / "qwen2-cases.json");
  int differ = 0;
  for (const json& c : cases["cases"]) {
    const std::string text = c["text"];
    SCOPED_TRACE("text: \"" + text.substr(0, 60) + "\"");
    EXPECT_EQ(qwen_gguf().encode(text), ids_of(c.value("llamacpp_ids", c["ids"])));
    if (c.contains("llamacpp_ids")) {
      ++differ;
      EXPECT_EQ(c["note"], "llama.cpp does not apply the NFC normaliser");
      EXPECT_NE(nfc(text), text);
      EXPECT_EQ(qwen_gguf().encode(nfc(text)), ids_of(c["ids"]));
    } else {
      EXPECT_EQ(qwen_gguf().decode(ids_of(c["ids"])), text);
    }
  }
  EXPECT_EQ(differ, 2);
  EXPECT_EQ(qwen_gguf().vocab_size(), qwen_json().vocab_size());
  for (const char* special : {"<|endoftext|>", "<|im_start|>", "<|im_end|>"}) {
    EXPECT_EQ(qwen_gguf().token_to_id(special), qwen_json().token_to_id(special)) << special;
  }
}

// Qwen2's regex cuts where GPT-2's does not: single digits, a non-letter before letters, the
// contractions in any case, newlines.
TEST(Qwen2Bpe, PreTokeniserPieces) {
  const Tokenizer& t = qwen_json();
  EXPECT_EQ(t.encode("2024"), concat({t.encode("2"), t.encode("0"), t.encode("2"), t.encode("4")}));
  EXPECT_EQ(t.encode("IT'SOMETHING"),
            concat({t.encode("IT"), t.encode("'S"), t.encode("OMETHING")}));
  EXPECT_EQ(t.encode("x.name"), concat({t.encode("x"), t.encode(".name")}));
  EXPECT_EQ(t.encode("end.\n\nNext"),
            concat({t.encode("end"), t.encode(".\n\n"), t.encode("Next")}));
  EXPECT_EQ(t.encode("a  \n\n  b"),
            concat({t.encode("a"), t.encode("  \n\n"), t.encode(" "), t.encode(" b")}));
}

// The symbol GPT-2's byte-level alphabet gives `byte` (written out here independently).
std::string byte_symbol(unsigned char byte) {
  auto printable = [](int b) {
    return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
  };
  int code_point = byte;
  if (!printable(byte)) {
    code_point = 256;
    for (int b = 0; b < byte; ++b) code_point += printable(b) ? 0 : 1;
  }
  std::string out;
  if (code_point < 0x80) {
    out.push_back(static_cast<char>(code_point));
  } else {
    out.push_back(static_cast<char>(0xC0 | (code_point >> 6)));
    out.push_back(static_cast<char>(0x80 | (code_point & 0x3F)));
  }
  return out;
}

// \s in a Split regex is Oniguruma's (Unicode White_Space), which excludes U+180E MONGOLIAN VOWEL
// SEPARATOR: "\u180E\u180E" is one [^\s\p{L}\p{N}]+ piece, and the training text had the pair, so
// its merged token applies. (PCRE2's own \s would cut the text into "a", "\u180E", "\u180Eb".)
TEST(Qwen2Bpe, SplitWhitespaceIsOnigurumas) {
  const Tokenizer& t = qwen_json();
  std::string both;  // the byte-level symbols of "\u180E\u180E"
  for (unsigned char b : std::string("\u180E\u180E")) both += byte_symbol(b);
  const std::optional<int32_t> joined = t.token_to_id(both);
  ASSERT_TRUE(joined.has_value());
  EXPECT_EQ(t.encode("a\u180E\u180Eb"), concat({t.encode("a"), {*joined}, t.encode("b")}));
  EXPECT_EQ(t.decode(t.encode("a\u180E\u180Eb")), "a\u180E\u180Eb");
}

// ---- Oniguruma regexes run by PCRE2 ------------------------------------------------------------

// A tiny byte-level tokenizer whose Split removes what `regex` matches: the ids show what matched.
std::unique_ptr<Tokenizer> removing(const TempDir& dir, const std::string& regex) {
  return load_modified(dir, kTinyTokenizer, [&](json& root) {
    root["normalizer"] = nullptr;
    root["pre_tokenizer"] = {
        {"type", "Sequence"},
        {"pretokenizers",
         {{{"type", "Split"}, {"pattern", {{"Regex", regex}}}, {"behavior", "Removed"}},
          {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}};
  });
}

TEST(SplitRegex, OnigurumaSemantics) {
  TempDir dir;
  auto text_of = [&](const std::string& regex, const std::string& text) {
    auto tokenizer = removing(dir, regex);
    return tokenizer->decode(tokenizer->encode(text));
  };
  // \s: White_Space (not U+180E, not U+200B); \S its complement.
  EXPECT_EQ(text_of(R"(\s)", "a b\u00a0c\u180Ed\u200Be\u3000f\u0085g"), "abc\u180Ed\u200Befg");
  EXPECT_EQ(text_of(R"(\S+)", "a \u180E\t"), " \t");
  EXPECT_EQ(text_of(R"([x\s]+)", "x y\u180E"), "y\u180E");
  // \w: letters, marks, numbers, connector punctuation; \W the rest.
  EXPECT_EQ(text_of(R"(\w+)", "a\u0301_\u203F\u2163\u00B2-9!"), "-!");
  EXPECT_EQ(text_of(R"(\W+)", "a\u0301 b-\u2163"), "a\u0301b\u2163");
  // \h: hexadecimal digits (PCRE2: horizontal space).
  EXPECT_EQ(text_of(R"(\h+)", "zz09afAF gq"), "zz gq");
  EXPECT_EQ(text_of(R"(\H+)", "zz09afAF gq"), "09afAF");
  // ^ and $ are line anchors.
  EXPECT_EQ(text_of("^a", "a\na\nba"), "\n\nba");
  EXPECT_EQ(text_of("b$", "b\nab\nb"), "\na\n");
  // \v: the vertical tab only.
  EXPECT_EQ(text_of(R"(\v)", "a\x0B\n\x0C\r b"), "a\n\x0C\r b");
  // (?i:...) folds case by Unicode (ſ is a case variant of s).
  EXPECT_EQ(text_of("(?i:'s)", "'s 'S '\u017F"), "  ");
}

TEST(SplitRegex, UntranslatedConstructsAreErrors) {
  TempDir dir;
  for (const auto& [regex, problem] : std::vector<std::pair<std::string, std::string>>{
           {R"(\bx)", "\\b"},
           {R"(a\Bb)", "\\B"},
           {R"(\Qa.b\E)", "\\Q"},
           {R"(\V)", "\\V"},
           {R"([[:alpha:]]+)", "POSIX brackets"},
           {R"([a[bc]])", "nested character class"},
           {R"([a-z&&[^aeiou]])", "intersection"},
           {R"([\S])", "\\S inside a character class"},
           {R"((?m:a.b))", "inline option m"},
           {R"((?s)a)", "inline option s"},
       }) {
    SCOPED_TRACE(regex);
    expect_error([&] { removing(dir, regex); },
                 {"tokenizer.json: pre_tokenizer.pretokenizers[0].pattern.Regex", problem});
  }
  // Options i and x, lookarounds and named groups pass.
  EXPECT_NO_THROW(removing(dir, R"((?i)a(?=b)(?<name>c)(?x: d ))"));
}

// ---- Bad input ---------------------------------------------------------------------------------

TEST(TokenizerFamiliesErrors, SentencePieceFilesNameTheField) {
  TempDir dir;
  struct Case {
    std::function<void(json&)> modify;
    std::vector<std::string> parts;
  };
  const std::vector<Case> cases = {
      {[](json& r) { r["model"]["vocab"].erase("<0x41>"); },
       {"model.byte_fallback", "no \"<0x41>\""}},
      {[](json& r) { r["model"]["byte_fallback"] = false; },
       {"model.byte_fallback", "false", "SentencePiece-style"}},
      {[](json& r) { r["model"].erase("byte_fallback"); }, {"model.byte_fallback"}},
      {[](json& r) { r["model"]["byte_fallback"] = "yes"; },
       {"model.byte_fallback", "expected a boolean"}},
      {[](json& r) {
         r["normalizer"]["normalizers"].push_back({{"type", "Lowercase"}});
       },
       {"normalizer.normalizers[2].type", "\"Lowercase\" is not supported"}},
      {[](json& r) {
         r["normalizer"]["normalizers"][1]["pattern"] = {{"Regex", " +"}};
       },
       {"normalizer.normalizers[1].pattern", "only {\"String\""}},
      {[](json& r) { r["normalizer"]["normalizers"][0].erase("prepend"); },
       {"normalizer.normalizers[0].prepend", "missing"}},
      {[](json& r) {
         r["pre_tokenizer"] = {{"type", "Whitespace"}};
       },
       {"pre_tokenizer.type", "\"Whitespace\" is not supported in a SentencePiece-style BPE"}},
      {[](json& r) {
         r["pre_tokenizer"] = {
             {"type", "Metaspace"}, {"replacement", kMeta}, {"prepend_scheme", "sometimes"}};
       },
       {"pre_tokenizer.prepend_scheme", "\"sometimes\""}},
      {[](json& r) {
         r["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "__"}};
       },
       {"pre_tokenizer.replacement", "not one character"}},
      {[](json& r) {
         r["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", kMeta}, {"split", "no"}};
       },
       {"pre_tokenizer.split", "expected a boolean"}},
      {[](json& r) {
         r["pre_tokenizer"] = {{"type", "Metaspace"}, {"prepend_scheme", "first"}};
       },
       {"pre_tokenizer.replacement", "null is not one character"}},
      {[](json& r) {
         r["pre_tokenizer"] = {{"type", "Metaspace"},
                               {"replacement", kMeta},
                               {"add_prefix_space", false},
                               {"prepend_scheme", "first"}};
       },
       {"pre_tokenizer.add_prefix_space", "false contradicts prepend_scheme \"first\""}},
      {[](json& r) { r["decoder"] = nullptr; }, {"decoder", "Sequence of Replace"}},
      {[](json& r) {
         r["decoder"]["decoders"][0] = {{"type", "Metaspace"}};
       },
       {"decoder.decoders[0].type", "\"Metaspace\" is not supported"}},
      {[](json& r) { r["decoder"]["decoders"][3]["content"] = "ab"; },
       {"decoder.decoders[3].content", "not one character"}},
      {[](json& r) { r["decoder"]["decoders"][3]["start"] = -1; },
       {"decoder.decoders[3].start", "non-negative"}},
      {[](json& r) {
         r["decoder"]["decoders"][0]["pattern"] = {{"Regex", "x"}};
       },
       {"decoder.decoders[0].pattern", "only {\"String\""}},
      {[](json& r) { r["model"]["merges"].push_back("▁zz q"); }, {"model.merges[", "\"▁zz\""}},
  };
  const std::string file = (dir.path() / "tokenizer.json").string();
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE(cat("case ", i));
    std::vector<std::string> parts = cases[i].parts;
    parts[0] = file + ": " + parts[0];  // the message names the file, then the field
    expect_error([&] { load_modified(dir, kSpmJson, cases[i].modify); }, parts);
  }
}

// A GGUF vocabulary file rewritten with one key replaced (`write` adds the new value, if any).
std::string gguf_with(const fs::path& source, const std::string& replaced,
                      const std::function<void(GgufWriter&)>& write) {
  const GgufFile g = GgufFile::open(source);
  GgufWriter w;
  for (const std::string& key : g.keys()) {
    const GgufValue& v = *g.find(key);
    if (key == replaced) {
      write(w);
      continue;
    }
    switch (v.type) {
      case GgufValueType::String:
        w.add_string(key, v.text);
        break;
      case GgufValueType::Uint32:
        w.add_uint32(key, static_cast<uint32_t>(v.as_unsigned));
        break;
      case GgufValueType::Float32:
        w.add_float32(key, static_cast<float>(v.as_double));
        break;
      case GgufValueType::Bool:
        w.add_bool(key, v.as_unsigned != 0);
        break;
      case GgufValueType::Array:
        if (v.element_type == GgufValueType::String) {
          w.add_string_array(key, v.strings);
        } else if (v.element_type == GgufValueType::Float32) {
          std::vector<float> reals;
          for (double x : g.get_real_array(key)) reals.push_back(static_cast<float>(x));
          w.add_float32_array(key, reals);
        } else {
          std::vector<int32_t> ints;
          for (int64_t x : g.get_int_array(key)) ints.push_back(static_cast<int32_t>(x));
          w.add_int32_array(key, ints);
        }
        break;
      default:
        ADD_FAILURE() << "key " << key << " of an unexpected type";
    }
  }
  if (!g.find(replaced)) write(w);
  return w.bytes();
}

TEST(TokenizerFamiliesErrors, GgufVocabulariesNameTheKey) {
  auto error_of = [](const fs::path& source, const std::string& key,
                     const std::function<void(GgufWriter&)>& write) {
    const std::string bytes = gguf_with(source, key, write);
    try {
      Tokenizer::from_json(gguf_tokenizer_json(GgufFile::parse(bytes, "edited.gguf")),
                           "edited.gguf");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  auto nothing = [](GgufWriter&) {};
  EXPECT_EQ(error_of(kSpmGguf, "tokenizer.ggml.scores", nothing),
            "edited.gguf: tokenizer.ggml.scores is missing (a \"llama\" vocabulary merges by "
            "score)");
  EXPECT_EQ(error_of(kSpmGguf, "tokenizer.ggml.scores",
                     [](GgufWriter& w) {
                       w.add_float32_array("tokenizer.ggml.scores", {0, -1});
                     }),
            "edited.gguf: tokenizer.ggml.scores has 2 entries for 1200 tokens");
  EXPECT_EQ(
      error_of(kSpmGguf, "tokenizer.ggml.scores",
               [](GgufWriter& w) {
                 std::vector<float> scores(1200, -1.0f);
                 scores[700] = std::nanf("");
                 w.add_float32_array("tokenizer.ggml.scores", scores);
               }),
      cat("edited.gguf: tokenizer.ggml.scores[700] (token \"",
          GgufFile::open(kSpmGguf).get_string_array("tokenizer.ggml.tokens")[700], "\") is NaN"));
  EXPECT_NE(error_of(kSpmGguf, "tokenizer.ggml.token_type", nothing)
                .find("edited.gguf: tokenizer.ggml.token_type is missing"),
            std::string::npos);
  EXPECT_NE(error_of(kSpmGguf, "tokenizer.ggml.pre",
                     [](GgufWriter& w) { w.add_string("tokenizer.ggml.pre", "qwen2"); })
                .find("edited.gguf: tokenizer.ggml.pre = \"qwen2\""),
            std::string::npos);
  EXPECT_NE(error_of(kSpmGguf, "tokenizer.ggml.model",
                     [](GgufWriter& w) { w.add_string("tokenizer.ggml.model", "bert"); })
                .find("edited.gguf: tokenizer.ggml.model = \"bert\""),
            std::string::npos);
  EXPECT_NE(error_of(kQwenGguf, "tokenizer.ggml.pre",
                     [](GgufWriter& w) { w.add_string("tokenizer.ggml.pre", "deepseek-v3"); })
                .find("edited.gguf: tokenizer.ggml.pre = \"deepseek-v3\": bhmoe knows the "
                      "pre-tokenisers"),
            std::string::npos);
  // A "llama" vocabulary without its byte tokens: the byte fallback cannot work.
  const std::string no_bytes = error_of(kSpmGguf, "tokenizer.ggml.tokens", [](GgufWriter& w) {
    std::vector<std::string> tokens =
        GgufFile::open(kSpmGguf).get_string_array("tokenizer.ggml.tokens");
    tokens[3 + 0x41] = "<0xG1>";
    w.add_string_array("tokenizer.ggml.tokens", tokens);
  });
  EXPECT_EQ(
      no_bytes,
      "edited.gguf: tokenizer.ggml.tokens has no \"<0x41>\" (a \"llama\" vocabulary needs the "
      "byte tokens <0x00> to <0xFF>)");
  // add_space_prefix false: no ▁ before the text, and none stripped when decoding.
  const std::string bytes =
      gguf_with(kSpmGguf, "tokenizer.ggml.add_space_prefix",
                [](GgufWriter& w) { w.add_bool("tokenizer.ggml.add_space_prefix", false); });
  auto bare =
      Tokenizer::from_json(gguf_tokenizer_json(GgufFile::parse(bytes, "bare.gguf")), "bare.gguf");
  EXPECT_EQ(bare->encode(" license"), spm_gguf().encode("license"));
  EXPECT_NE(bare->encode("license"), spm_gguf().encode("license"));
  EXPECT_EQ(bare->decode(bare->encode(" two  spaces")), " two  spaces");
}

}  // namespace
}  // namespace bhmoe::model
