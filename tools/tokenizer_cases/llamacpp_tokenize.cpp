// llama.cpp's tokenization of a list of texts with a vocabulary-only GGUF file: an independent
// reference for bhmoe's tokenizer tests (tools/tokenizer_cases/make_cases.py builds and runs it).
// Not part of bhmoe's build.
//
//   llamacpp_tokenize VOCAB.gguf TEXTS.bin IDS.txt
//
// TEXTS.bin: the texts one after another, each as an 8-byte little-endian length then its bytes.
// IDS.txt: one line per text, its ids separated by spaces (an empty line for no ids). Special and
// control tokens written in the text are matched (parse_special); no BOS/EOS is added.
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "llama.h"

namespace {

void quiet_log(ggml_log_level level, const char* text, void*) {
  if (level >= GGML_LOG_LEVEL_ERROR) std::fputs(text, stderr);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: llamacpp_tokenize VOCAB.gguf TEXTS.bin IDS.txt\n");
    return 2;
  }
  llama_log_set(quiet_log, nullptr);
  llama_backend_init();
  llama_model_params params = llama_model_default_params();
  params.vocab_only = true;
  llama_model* model = llama_model_load_from_file(argv[1], params);
  if (!model) {
    std::fprintf(stderr, "cannot load %s\n", argv[1]);
    return 1;
  }
  const llama_vocab* vocab = llama_model_get_vocab(model);

  std::ifstream in(argv[2], std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::FILE* out = std::fopen(argv[3], "w");
  if (!out) {
    std::fprintf(stderr, "cannot write %s\n", argv[3]);
    return 1;
  }
  size_t pos = 0;
  while (pos < bytes.size()) {
    if (pos + 8 > bytes.size()) {
      std::fprintf(stderr, "%s: truncated length at byte %zu\n", argv[2], pos);
      return 1;
    }
    uint64_t length = 0;
    for (int i = 7; i >= 0; --i)
      length = (length << 8) | static_cast<unsigned char>(bytes[pos + i]);
    pos += 8;
    if (length > bytes.size() - pos) {
      std::fprintf(stderr, "%s: text at byte %zu overruns the file\n", argv[2], pos);
      return 1;
    }
    const std::string text = bytes.substr(pos, length);
    pos += length;
    std::vector<llama_token> ids(text.size() + 8);
    int32_t n = llama_tokenize(vocab, text.data(), static_cast<int32_t>(text.size()), ids.data(),
                               static_cast<int32_t>(ids.size()), /*add_special=*/false,
                               /*parse_special=*/true);
    if (n < 0) {
      ids.resize(static_cast<size_t>(-n));
      n = llama_tokenize(vocab, text.data(), static_cast<int32_t>(text.size()), ids.data(),
                         static_cast<int32_t>(ids.size()), false, true);
    }
    if (n < 0) {
      std::fprintf(stderr, "llama_tokenize failed on text %zu bytes long\n", text.size());
      return 1;
    }
    for (int32_t i = 0; i < n; ++i) std::fprintf(out, i ? " %d" : "%d", ids[i]);
    std::fputc('\n', out);
  }
  std::fclose(out);
  llama_model_free(model);
  llama_backend_free();
  return 0;
}
