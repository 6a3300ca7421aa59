#include "model/tokenizer.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>
#include <utf8proc.h>

#include <cstdlib>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <thread>

#include "model/tokenizer_test_util.h"
#include "util/error.h"
#include "util/file.h"

namespace bhmoe::model {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;
using namespace tokenizer_test;  // read_json, nfc, TempDir, load_modified, expect_error

const fs::path kShared = BHMOE_SHARED_DIR;
const fs::path kOlmoeTokenizer = kShared / "olmoe" / "tokenizer.json";
const fs::path kTinyTokenizer = kShared / "golden" / "tiny-f32" / "tokenizer.json";

// The real OLMoE tokenizer, loaded once for the whole suite (loading is the slow part).
const Tokenizer& olmoe() {
  static const std::unique_ptr<Tokenizer> tokenizer = Tokenizer::load(kOlmoeTokenizer);
  return *tokenizer;
}

std::vector<int32_t> ids_of(const json& array) {
  return array.get<std::vector<int32_t>>();
}

// ---- The shared reference cases -----------------------------------------------------------

TEST(Tokenizer, AllSharedCasesMatchExactly) {
  json cases = read_json(kShared / "olmoe" / "tokenizer-cases.json");
  ASSERT_EQ(cases["format"], "tokenizer-cases/1");
  ASSERT_FALSE(cases["add_special_tokens"].get<bool>());
  ASSERT_EQ(cases["cases"].size(), 57u);
  for (const json& c : cases["cases"]) {
    std::string text = c["text"];
    EXPECT_EQ(olmoe().encode(text), ids_of(c["ids"])) << "text: \"" << text << "\"";
    EXPECT_EQ(olmoe().decode(ids_of(c["ids"])), nfc(text)) << "text: \"" << text << "\"";
  }
}

TEST(Tokenizer, OlmoeVocabularyFacts) {
  EXPECT_EQ(olmoe().vocab_size(), 50280);
  EXPECT_EQ(olmoe().token_to_id("<|endoftext|>"), 50279);
  EXPECT_EQ(olmoe().token_to_id("<|padding|>"), 1);
  EXPECT_EQ(olmoe().token_to_id("Hello"), 12092);
  EXPECT_EQ(olmoe().token_to_id("ĠHello"), 24387);
  EXPECT_EQ(olmoe().token_to_id("no such token here"), std::nullopt);
  EXPECT_EQ(olmoe().id_to_token(24387), "ĠHello");
  EXPECT_EQ(olmoe().id_to_token(50279), "<|endoftext|>");
  EXPECT_THROW(olmoe().id_to_token(50280), Error);
  EXPECT_THROW(olmoe().id_to_token(-1), Error);
}

// ---- Added tokens ---------------------------------------------------------------------------

TEST(Tokenizer, AddedTokensAreMatchedBeforeBpe) {
  EXPECT_EQ(olmoe().encode("<|endoftext|>"), (std::vector<int32_t>{50279}));
  // "Hello" after an added token gets no space from anywhere (add_prefix_space is false).
  EXPECT_EQ(olmoe().encode("Hello<|endoftext|>Hello world"),
            (std::vector<int32_t>{12092, 50279, 12092, 1533}));
  EXPECT_EQ(olmoe().encode("<|padding|>|||IP_ADDRESS|||"), (std::vector<int32_t>{1, 0}));
  EXPECT_EQ(olmoe().encode("|||EMAIL_ADDRESS||| |||PHONE_NUMBER|||"),
            (std::vector<int32_t>{50277, 209, 50278}));
  // A broken marker is ordinary text.
  std::vector<int32_t> broken = olmoe().encode("<|endoftext|");
  EXPECT_EQ(std::count(broken.begin(), broken.end(), 50279), 0);
  EXPECT_EQ(olmoe().decode(broken), "<|endoftext|");
  EXPECT_EQ(olmoe().decode(std::vector<int32_t>{12092, 50279, 1, 0}),
            "Hello<|endoftext|><|padding|>|||IP_ADDRESS|||");
}

TEST(Tokenizer, SpaceRunsTakeTheLongestAddedTokenFirst) {
  // 30 spaces: the 24-space token (50254), then the 6-space one (50272).
  EXPECT_EQ(olmoe().encode(std::string(30, ' ') + "Hello"),
            (std::vector<int32_t>{50254, 50272, 12092}));
  EXPECT_EQ(olmoe().encode(std::string(24, ' ')), (std::vector<int32_t>{50254}));
  EXPECT_EQ(olmoe().encode(std::string(48, ' ')), (std::vector<int32_t>{50254, 50254}));
  // 25 spaces: 24 + a lone space, which BPE turns into "Ġ" (209).
  EXPECT_EQ(olmoe().encode(std::string(25, ' ')), (std::vector<int32_t>{50254, 209}));
  for (int n = 1; n <= 60; ++n) {
    std::string text(1, 'x');
    text.append(static_cast<size_t>(n), ' ');
    text += "y\n";
    EXPECT_EQ(olmoe().decode(olmoe().encode(text)), text) << n << " spaces";
  }
}

// Flags of added tokens, on the tiny tokenizer with three extra tokens.
TEST(Tokenizer, AddedTokenFlagsLstripRstripSingleWord) {
  TempDir dir;
  auto tokenizer = load_modified(dir, kTinyTokenizer, [](json& root) {
    root["added_tokens"].push_back({{"id", 1024},
                                    {"content", "<mask>"},
                                    {"single_word", false},
                                    {"lstrip", true},
                                    {"rstrip", false},
                                    {"normalized", false},
                                    {"special", true}});
    root["added_tokens"].push_back({{"id", 1025},
                                    {"content", "[SEP]"},
                                    {"single_word", false},
                                    {"lstrip", false},
                                    {"rstrip", true},
                                    {"normalized", false},
                                    {"special", true}});
    root["added_tokens"].push_back({{"id", 1026},
                                    {"content", "cat"},
                                    {"single_word", true},
                                    {"lstrip", false},
                                    {"rstrip", false},
                                    {"normalized", true},
                                    {"special", false}});
  });
  EXPECT_EQ(tokenizer->vocab_size(), 1027);
  auto a = tokenizer->encode("a");
  ASSERT_EQ(a.size(), 1u);
  // lstrip: the spaces before <mask> belong to it.
  EXPECT_EQ(tokenizer->encode("a   <mask>"), (std::vector<int32_t>{a[0], 1024}));
  // rstrip: the spaces after [SEP] belong to it.
  EXPECT_EQ(tokenizer->encode("[SEP]  \n a"), (std::vector<int32_t>{1025, a[0]}));
  // single_word: "cat" only as a whole word.
  std::vector<int32_t> word = tokenizer->encode("a cat.");
  EXPECT_EQ(std::count(word.begin(), word.end(), 1026), 1);
  std::vector<int32_t> inside = tokenizer->encode("a cats concat");
  EXPECT_EQ(std::count(inside.begin(), inside.end(), 1026), 0);
  EXPECT_EQ(tokenizer->decode(inside), "a cats concat");
  EXPECT_EQ(tokenizer->decode(std::vector<int32_t>{1024, 1025, 1026}), "<mask>[SEP]cat");
}

// ---- Round trips ----------------------------------------------------------------------------

TEST(Tokenizer, RoundTripIsNfcOfTheText) {
  const std::vector<std::string> texts = {
      "The quick brown fox jumps over the lazy dog.",
      "Cafe\xcc\x81 de\xcc\x81ja\xcc\x80 vu, Ko\xcc\x88ln, An\xcc\x83o\n",  // NFD accents
      "Café déjà vu, Köln, Año — “quoted” ‘text’ … «guillemets»",
      "日本語のテキストと中文文本，还有한국어 텍스트。",
      "Emoji: 🦙🚀😶‍🌫️👩🏽‍💻 ✅ 🇫🇷 flags",
      "   leading spaces\n\n\ttabs\t\tand\r\nCRLF  \n    \n trailing   ",
      "Digits 0123456789 3.14159 1,000,000 ١٢٣ ５６",
      "int main(int argc, char** argv) {\n    return argv[0][0] == '\\0' ? 1 : 0;\n}\n",
      "def f(x):\n\tif x >= 10: return {'a': [1, 2]}\n    # comment\n",
      "Mixed: aé日🦙1 _-+=*/\\|~`^<>?@#$%&\u00a0nbsp\u2003em\u3000ideographic",
      "He's, they're, I've, I'm, we'll, you'd, 'quoted' y'all",
      "Ελληνικά, русский, العربية, עברית, हिन्दी, ไทย",
      "\n",
      " ",
      "\x01\x02 control \x7f bytes",
  };
  for (const std::string& text : texts) {
    std::vector<int32_t> ids = olmoe().encode(text);
    for (int32_t id : ids) ASSERT_TRUE(id >= 0 && id < olmoe().vocab_size()) << id;
    EXPECT_EQ(olmoe().decode(ids), nfc(text)) << "text: \"" << text << "\"";
  }
}

TEST(Tokenizer, NfdAndNfcInputsEncodeAlike) {
  EXPECT_EQ(olmoe().encode("Cafe\xcc\x81"), olmoe().encode("Café"));
  EXPECT_EQ(olmoe().encode("Ko\xcc\x88ln"), olmoe().encode("Köln"));
}

TEST(Tokenizer, LongWordsAndLongTexts) {
  // One 20000-letter pre-token: exercises the heap-driven merge loop on a long word.
  std::string letters;
  for (int i = 0; i < 20000; ++i) letters.push_back(static_cast<char>('a' + (i * 7 + i / 13) % 26));
  std::vector<int32_t> ids = olmoe().encode(letters);
  EXPECT_LT(ids.size(), letters.size());
  EXPECT_EQ(olmoe().decode(ids), letters);

  std::string repeated(5000, 'a');
  EXPECT_EQ(olmoe().decode(olmoe().encode(repeated)), repeated);

  // The same words many times (the word cache) give the same ids every time.
  std::string sentence = " Tokenizers split text into words, and words into merges.";
  std::vector<int32_t> once = olmoe().encode(sentence);
  std::string many;
  for (int i = 0; i < 200; ++i) many += sentence;
  std::vector<int32_t> all = olmoe().encode(many);
  ASSERT_EQ(all.size(), 200 * once.size());
  for (size_t i = 0; i < all.size(); ++i) ASSERT_EQ(all[i], once[i % once.size()]) << i;
}

TEST(Tokenizer, ConcurrentEncodesAgreeWithSerial) {
  std::vector<std::string> texts;
  for (int t = 0; t < 8; ++t) {
    std::string text;
    for (int i = 0; i < 300; ++i) {
      text += cat("word", (i * 37 + t) % 101, " ünïcödé ", i % 7 == 0 ? "\n" : "", "🦙 ");
    }
    texts.push_back(text);
  }
  std::vector<std::vector<int32_t>> serial;
  // Serial results from a fresh tokenizer (empty cache) so both runs fill the cache concurrently.
  auto fresh = Tokenizer::load(kOlmoeTokenizer);
  for (const auto& text : texts) serial.push_back(fresh->encode(text));
  auto shared = Tokenizer::load(kOlmoeTokenizer);
  std::vector<std::vector<int32_t>> parallel(texts.size());
  std::vector<std::thread> threads;
  for (int w = 0; w < 2; ++w) {
    threads.emplace_back([&, w] {
      for (size_t i = w; i < texts.size(); i += 2) parallel[i] = shared->encode(texts[i]);
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(parallel, serial);
}

// ---- The golden tiny tokenizers ---------------------------------------------------------------

TEST(Tokenizer, GoldenTinyTokenizersLoad) {
  for (const char* folder : {"tiny-f32", "tiny-bf16"}) {
    auto tokenizer = Tokenizer::load(kShared / "golden" / folder / "tokenizer.json");
    EXPECT_EQ(tokenizer->vocab_size(), 1024) << folder;
    const std::string text = "Hello world, the theory of relativity states that\n  é 🦙";
    std::vector<int32_t> ids = tokenizer->encode(text);
    for (int32_t id : ids) EXPECT_TRUE(id >= 0 && id < 1024) << id;
    EXPECT_EQ(tokenizer->decode(ids), text) << folder;
    // Its ids are the first 1024 of OLMoE's, so the common merges give the same tokens.
    EXPECT_EQ(tokenizer->encode(" the"), olmoe().encode(" the"));
    EXPECT_THROW(tokenizer->decode(std::vector<int32_t>{1024}), Error);
  }
}

// ---- Accepted variants of the file ----------------------------------------------------------

TEST(Tokenizer, MergesAsPairsAndNormalizerSequenceGiveTheSameIds) {
  TempDir dir;
  auto variant = load_modified(dir, kOlmoeTokenizer, [](json& root) {
    json pairs = json::array();
    for (const json& merge : root["model"]["merges"]) {
      std::string text = merge;
      size_t space = text.find(' ');
      pairs.push_back({text.substr(0, space), text.substr(space + 1)});
    }
    root["model"]["merges"] = pairs;
    root["model"]["ignore_merges"] = false;
    root["normalizer"] = {{"type", "Sequence"}, {"normalizers", {{{"type", "NFC"}}}}};
  });
  json cases = read_json(kShared / "olmoe" / "tokenizer-cases.json");
  for (const json& c : cases["cases"]) {
    EXPECT_EQ(variant->encode(c["text"].get<std::string>()), ids_of(c["ids"]));
  }
}

TEST(Tokenizer, SplitThenByteLevelSequenceEqualsByteLevelRegex) {
  TempDir dir;
  // The layout of tokenizers that split with their own regex and byte-map without one.
  auto variant = load_modified(dir, kTinyTokenizer, [](json& root) {
    root["pre_tokenizer"] = {
        {"type", "Sequence"},
        {"pretokenizers",
         {{{"type", "Split"},
           {"pattern",
            {{"Regex",
              R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)"}}},
           {"behavior", "Isolated"},
           {"invert", false}},
          {{"type", "ByteLevel"},
           {"add_prefix_space", false},
           {"trim_offsets", true},
           {"use_regex", false}}}}};
  });
  auto tiny = Tokenizer::load(kTinyTokenizer);
  for (const std::string text :
       {"Hello world, it's   3 o'clock\n\n here", "  x  ", "日本 🦙!"}) {
    EXPECT_EQ(variant->encode(text), tiny->encode(text)) << text;
  }
}

TEST(Tokenizer, SplitBehaviorsAndNoRegex) {
  TempDir dir;
  auto with_split = [&](const std::string& behavior, bool invert) {
    return load_modified(dir, kTinyTokenizer, [&](json& root) {
      root["pre_tokenizer"] = {
          {"type", "Sequence"},
          {"pretokenizers",
           {{{"type", "Split"},
             {"pattern", {{"String", " "}}},
             {"behavior", behavior},
             {"invert", invert}},
            {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}};
    });
  };
  auto tiny = Tokenizer::load(kTinyTokenizer);
  auto pieces = [&](std::initializer_list<const char*> parts) {
    std::vector<int32_t> ids;
    for (const char* part : parts) {
      // Each part is a single pre-token: encode it with no regex split by using its ids alone.
      auto part_ids = tiny->encode(part);
      ids.insert(ids.end(), part_ids.begin(), part_ids.end());
    }
    return ids;
  };
  // "ab cd": Removed drops the spaces, MergedWithPrevious keeps "ab " together.
  EXPECT_EQ(with_split("Removed", false)->encode("ab cd"), pieces({"ab", "cd"}));
  EXPECT_EQ(with_split("Isolated", false)->encode("ab cd"), pieces({"ab", " ", "cd"}));
  auto merged_previous = with_split("MergedWithPrevious", false)->encode("ab cd");
  EXPECT_EQ(with_split("MergedWithPrevious", false)->decode(merged_previous), "ab cd");
  EXPECT_EQ(with_split("MergedWithNext", false)->encode("ab cd"), pieces({"ab", " cd"}));
  // Contiguous joins the two single-space matches into one piece; Isolated keeps them apart.
  EXPECT_EQ(with_split("Contiguous", false)->encode("ab  cd"), pieces({"ab", "  ", "cd"}));
  EXPECT_EQ(with_split("Isolated", false)->encode("ab  cd"), pieces({"ab", " ", " ", "cd"}));
  EXPECT_NE(pieces({"  "}), pieces({" ", " "}));
  // Inverted Removed keeps only the spaces.
  EXPECT_EQ(with_split("Removed", true)->encode("ab cd"), pieces({" "}));
}

TEST(Tokenizer, AddPrefixSpaceAndNullNormalizer) {
  TempDir dir;
  auto prefixed = load_modified(dir, kOlmoeTokenizer, [](json& root) {
    root["pre_tokenizer"]["add_prefix_space"] = true;
    root["normalizer"] = nullptr;
  });
  EXPECT_EQ(prefixed->encode("Hello"), (std::vector<int32_t>{24387}));
  EXPECT_EQ(prefixed->encode(" Hello"), (std::vector<int32_t>{24387}));
  // Each stretch between added tokens gets its own prefix space.
  EXPECT_EQ(prefixed->encode("Hello<|endoftext|>Hello"),
            (std::vector<int32_t>{24387, 50279, 24387}));
  // Without a normaliser, decomposed accents stay decomposed.
  EXPECT_NE(prefixed->encode("Cafe\xcc\x81"), prefixed->encode("Café"));
  EXPECT_EQ(prefixed->decode(prefixed->encode("Cafe\xcc\x81")), " Cafe\xcc\x81");
}

// The symbol GPT-2's byte-level alphabet gives `byte` (written out here independently).
std::string byte_symbol(unsigned char byte) {
  int code_point = byte;
  if (!((byte >= '!' && byte <= '~') || (byte >= 0xA1 && byte <= 0xAC) || byte >= 0xAE)) {
    int extra = 0;
    for (int b = 0; b < byte; ++b) {
      if (!((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE)) ++extra;
    }
    code_point = 256 + extra;
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

// \s in the ByteLevel regex is Unicode White_Space (as in Oniguruma), which excludes U+180E
// MONGOLIAN VOWEL SEPARATOR: "\u180E\u180E" is one [^\s\p{L}\p{N}]+ piece, so a merge across the
// two characters applies. (PCRE2's own \s would split it into two whitespace pieces.)
TEST(Tokenizer, ByteLevelWhitespaceIsUnicodeWhiteSpace) {
  TempDir dir;
  const std::string join = byte_symbol(0x8E) + byte_symbol(0xE1);  // U+180E is E1 A0 8E
  auto tokenizer = load_modified(dir, kTinyTokenizer, [&](json& root) {
    root["model"]["vocab"][join] = 1024;
    root["model"]["merges"].push_back(byte_symbol(0x8E) + " " + byte_symbol(0xE1));
  });
  std::vector<int32_t> ids = tokenizer->encode("\u180E\u180Ea");
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 1024), 1);
  EXPECT_EQ(tokenizer->decode(ids), "\u180E\u180Ea");
  // Real white space (U+2003 EM SPACE): the run before "y" splits as \s+(?!\S) then \s+.
  auto tiny = Tokenizer::load(kTinyTokenizer);
  std::vector<int32_t> expected = tiny->encode("\u2003");
  const size_t one = expected.size();
  expected.insert(expected.end(), expected.begin(), expected.begin() + one);
  std::vector<int32_t> y = tiny->encode("y");
  expected.insert(expected.end(), y.begin(), y.end());
  EXPECT_EQ(tiny->encode("\u2003\u2003y"), expected);
}

TEST(Tokenizer, NfkcNormalizer) {
  TempDir dir;
  auto nfkc = load_modified(dir, kTinyTokenizer, [](json& root) {
    root["normalizer"] = {{"type", "NFKC"}};
  });
  EXPECT_EQ(nfkc->decode(nfkc->encode("\xef\xac\x81ne \xe2\x91\xa0")), "fine 1");  // "ﬁne ①"
}

// ---- Bad input --------------------------------------------------------------------------------

TEST(TokenizerErrors, EmptyTextGivesNoIds) {
  EXPECT_TRUE(olmoe().encode("").empty());
  EXPECT_EQ(olmoe().decode(std::vector<int32_t>{}), "");
}

TEST(TokenizerErrors, MissingFileNamesIt) {
  expect_error([] { Tokenizer::load("/nonexistent/dir/tokenizer.json"); },
               {"/nonexistent/dir/tokenizer.json"});
  TempDir dir;
  fs::path folder = dir.write("x", "").parent_path();
  expect_error([&] { Tokenizer::load(folder); }, {folder.string(), "is a directory"});
}

TEST(TokenizerErrors, MalformedJsonNamesTheFile) {
  TempDir dir;
  fs::path file = dir.write("tokenizer.json", R"({"model": {"type": "BPE", "vocab": {"a": 0,)");
  expect_error([&] { Tokenizer::load(file); },
               {file.string() + ": malformed JSON at line 1, column", "(at key path model.vocab)"});
  fs::path not_object = dir.write("array.json", "[1, 2]");
  expect_error([&] { Tokenizer::load(not_object); }, {not_object.string(), "JSON object"});
}

// Ids index per-id tables: one huge id must be an error naming it, not gigabytes of table.
TEST(TokenizerErrors, HugeIdsAreBoundedByWhatTheFileDefines) {
  TempDir dir;
  // The tiny tokenizer defines 1024 vocabulary entries and 2 added tokens; one more entry: 1027.
  const std::string limit =
      "the file defines 1027 tokens (vocab and added_tokens), so ids must be below 2310";
  expect_error(
      [&] {
        load_modified(dir, kTinyTokenizer,
                      [](json& r) { r["model"]["vocab"]["zzhuge"] = 2147483646; });
      },
      {"tokenizer.json: model.vocab: token \"zzhuge\" has id 2147483646, but " + limit});
  expect_error(
      [&] {
        load_modified(dir, kTinyTokenizer, [](json& r) {
          r["added_tokens"].push_back({{"id", 20000000}, {"content", "<huge>"}, {"special", true}});
        });
      },
      {"tokenizer.json: added_tokens[2].id: id 20000000 of \"<huge>\" is too large: " + limit});
  // Ids up to the bound load (gaps are allowed).
  auto gappy = load_modified(dir, kTinyTokenizer, [](json& r) {
    r["added_tokens"].push_back({{"id", 2309}, {"content", "<far>"}, {"special", true}});
  });
  EXPECT_EQ(gappy->vocab_size(), 2310);
  EXPECT_EQ(gappy->token_to_id("<far>"), 2309);
}

TEST(TokenizerErrors, JsonErrorsNameTheKeyPath) {
  TempDir dir;
  std::string text = read_file(kTinyTokenizer);
  size_t at = text.find("\"added_tokens\"");
  ASSERT_NE(at, std::string::npos);
  text.insert(at, "\"bhmoe_extra\": 1e400, ");
  fs::path file = dir.write("tokenizer.json", text);
  expect_error([&] { Tokenizer::load(file); },
               {file.string() + ": number 1e400 at key path bhmoe_extra is not finite"});
  fs::path fifo = dir.write("fifo.json", "").parent_path() / "tokenizer.fifo";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  expect_error([&] { Tokenizer::load(fifo); },
               {fifo.string() + " is a FIFO (named pipe), not a regular file"});
}

TEST(TokenizerErrors, MissingModel) {
  TempDir dir;
  expect_error([&] { load_modified(dir, kTinyTokenizer, [](json& r) { r.erase("model"); }); },
               {"tokenizer.json", "model", "missing"});
  expect_error(
      [&] { load_modified(dir, kTinyTokenizer, [](json& r) { r["model"].erase("vocab"); }); },
      {"model.vocab", "missing"});
  expect_error(
      [&] { load_modified(dir, kTinyTokenizer, [](json& r) { r["model"].erase("merges"); }); },
      {"model.merges", "missing"});
}

TEST(TokenizerErrors, UnknownModelType) {
  TempDir dir;
  expect_error(
      [&] {
        load_modified(dir, kTinyTokenizer, [](json& r) { r["model"]["type"] = "WordPiece"; });
      },
      {"tokenizer.json", "model.type", "WordPiece"});
}

// Decision: a merge naming a token that is not in the vocabulary is an error (as in Hugging Face),
// never skipped silently, so a damaged file cannot give different ids without notice.
TEST(TokenizerErrors, MergesNamingUnknownTokensAreErrors) {
  TempDir dir;
  expect_error(
      [&] {
        load_modified(dir, kTinyTokenizer,
                      [](json& r) { r["model"]["merges"].push_back("zzqx Ġ"); });
      },
      {"tokenizer.json", "model.merges[779]", "zzqx"});
  // Both parts exist, their concatenation does not.
  expect_error(
      [&] {
        load_modified(dir, kTinyTokenizer, [](json& r) { r["model"]["merges"].push_back("x q"); });
      },
      {"model.merges[779]", "\"xq\""});
  expect_error(
      [&] {
        load_modified(dir, kTinyTokenizer, [](json& r) { r["model"]["merges"][3] = "h e x"; });
      },
      {"model.merges[3]", "two tokens"});
  expect_error(
      [&] { load_modified(dir, kTinyTokenizer, [](json& r) { r["model"]["merges"][3] = 42; }); },
      {"model.merges[3]"});
}

TEST(TokenizerErrors, UnsupportedFieldsAreNamed) {
  TempDir dir;
  struct Case {
    std::function<void(json&)> modify;
    std::vector<std::string> parts;
  };
  const std::vector<Case> cases = {
      {[](json& r) { r["model"]["byte_fallback"] = true; }, {"model.byte_fallback"}},
      {[](json& r) { r["model"]["dropout"] = 0.1; }, {"model.dropout"}},
      {[](json& r) { r["model"]["continuing_subword_prefix"] = "##"; },
       {"model.continuing_subword_prefix"}},
      {[](json& r) { r["model"]["unk_token"] = "<no such unk>"; }, {"model.unk_token"}},
      {[](json& r) { r["model"]["vocab"]["Ġduplicate"] = 5; }, {"model.vocab", "share id 5"}},
      {[](json& r) { r["model"]["vocab"]["negative"] = -3; }, {"model.vocab", "negative"}},
      {[](json& r) {
         r["normalizer"] = {{"type", "Lowercase"}};
       },
       {"normalizer.type", "Lowercase"}},
      {[](json& r) {
         r["normalizer"] = {{"type", "Sequence"},
                            {"normalizers", {{{"type", "NFC"}}, {{"type", "Strip"}}}}};
       },
       {"normalizer.normalizers[1].type", "Strip"}},
      {[](json& r) {
         r["pre_tokenizer"] = {{"type", "Metaspace"}};
       },
       {"pre_tokenizer.type", "Metaspace"}},
      {[](json& r) { r["pre_tokenizer"] = nullptr; }, {"pre_tokenizer", "ByteLevel"}},
      {[](json& r) {
         r["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "\\s+"}}}};
       },
       {"pre_tokenizer", "ByteLevel is needed"}},
      {[](json& r) {
         r["pre_tokenizer"] = {
             {"type", "Sequence"},
             {"pretokenizers",
              {{{"type", "ByteLevel"}}, {{"type", "Split"}, {"pattern", {{"Regex", "x"}}}}}}};
       },
       {"pre_tokenizer.pretokenizers[1]", "ByteLevel must come last"}},
      {[](json& r) {
         r["pre_tokenizer"] = {{"type", "Sequence"},
                               {"pretokenizers",
                                {{{"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}}},
                                 {{"type", "ByteLevel"}}}}};
       },
       {"pre_tokenizer.pretokenizers[0].pattern", "cannot compile"}},
      {[](json& r) {
         r["decoder"] = {{"type", "WordPiece"}};
       },
       {"decoder.type", "WordPiece"}},
      {[](json& r) { r["decoder"] = nullptr; }, {"decoder", "only ByteLevel"}},
      {[](json& r) { r["added_tokens"][0].erase("content"); }, {"added_tokens[0].content"}},
      {[](json& r) { r["added_tokens"][1]["id"] = "one"; }, {"added_tokens[1].id"}},
      {[](json& r) { r["added_tokens"][1]["id"] = 0; }, {"added_tokens[1].id", "twice"}},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE(cat("case ", i));
    expect_error([&] { load_modified(dir, kTinyTokenizer, cases[i].modify); }, cases[i].parts);
  }
}

TEST(TokenizerErrors, IdsOutsideTheVocabularyOnDecode) {
  for (int32_t id : {-1, 50280, 50303, 1 << 30, INT32_MIN}) {
    expect_error(
        [&] {
          olmoe().decode(std::vector<int32_t>{12092, id});
        },
        {cat("token id ", id), "outside the vocabulary"});
  }
}

TEST(TokenizerErrors, InvalidUtf8TextIsAnError) {
  expect_error([] { olmoe().encode("ok \xff bad"); }, {"not valid UTF-8", "byte offset 3"});
  expect_error([] { olmoe().encode("cut \xe6\x97"); }, {"byte offset 4"});
  expect_error([] { olmoe().encode("surrogate \xed\xa0\x80"); }, {"byte offset 10"});
  expect_error([] { olmoe().encode("overlong \xc0\xaf"); }, {"byte offset 9"});
}

}  // namespace
}  // namespace bhmoe::model
