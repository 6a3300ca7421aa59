// Fuzzes Tokenizer::load on tokenizer.json text; a tokenizer that loads must encode and decode a
// fixed text (with an added-token-like piece and invalid UTF-8 for the error path) without crashing,
// and every id it produces must be inside its vocabulary.
#include "fuzz/fuzz_common.h"
#include "model/tokenizer.h"

using namespace bhmoe;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  static fuzz::MemFile file;
  const std::string& path = file.write(data, size);
  std::unique_ptr<model::Tokenizer> tokenizer;
  try {
    tokenizer = model::Tokenizer::load(path);
  } catch (const Error& e) {
    fuzz::check_message(e, input);
    return 0;
  }
  for (std::string_view text : {std::string_view("Hello world, it's 2026!  \n\t<|padding|>x"),
                                std::string_view("caf\xc3\xa9 \xef\xac\x81", 9),
                                std::string_view("bad \xff byte")}) {
    try {
      std::vector<int32_t> ids = tokenizer->encode(text);
      for (int32_t id : ids) {
        if (id < 0 || id >= tokenizer->vocab_size()) fuzz::crash("id outside vocabulary", text);
      }
      (void)tokenizer->decode(ids);
    } catch (const Error& e) {
      fuzz::check_message(e, input);
    }
  }
  return 0;
}
