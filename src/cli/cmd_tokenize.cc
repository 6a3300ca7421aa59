// bhmoe tokenize / bhmoe detokenize: text <-> token ids with a Hugging Face tokenizer.json.
//
//   bhmoe tokenize (--model DIR | --tokenizer F) (--text S | --text-file F) [--stats]
//       prints the ids as a JSON array on one line ([] for empty text); --stats adds token count,
//       load and encode times and tokens/s on stderr.
//   bhmoe detokenize (--model DIR | --tokenizer F) --ids "1 2 3" [--no-newline]
//       prints the text; ids are separated by spaces and/or commas, or given as a JSON array.
// --model DIR means DIR/tokenizer.json; --model F.gguf the GGUF file's tokenizer.
#include <charconv>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "cli/command.h"
#include "model/gguf_checkpoint.h"
#include "model/tokenizer.h"
#include "util/error.h"
#include "util/file.h"

namespace {

using namespace bhmoe;
namespace fs = std::filesystem;

struct TokenizerSource {
  std::string model_dir;
  std::string tokenizer_file;
};

void add_source_options(CLI::App& app, TokenizerSource& source) {
  auto* model = app.add_option("--model", source.model_dir,
                               "Checkpoint folder (its tokenizer.json) or GGUF file");
  auto* file = app.add_option("--tokenizer", source.tokenizer_file, "A tokenizer.json file");
  model->excludes(file);
  file->excludes(model);
}

std::unique_ptr<model::Tokenizer> load_tokenizer(const TokenizerSource& source) {
  if (!source.tokenizer_file.empty()) return model::Tokenizer::load(source.tokenizer_file);
  if (!source.model_dir.empty()) return model::load_model_tokenizer(source.model_dir);
  fail("give the tokenizer with --model DIR or --tokenizer FILE");
}

void write_stdout(std::string_view data) {
  if (!data.empty() && std::fwrite(data.data(), 1, data.size(), stdout) != data.size()) {
    fail("cannot write to standard output");
  }
  if (std::fflush(stdout) != 0) fail("cannot write to standard output");
}

// "1 2 3", "1,2,3", "1, 2, 3" or "[1, 2, 3]" -> ids. Each item must be a whole int32 integer.
std::vector<int32_t> parse_ids(std::string_view text) {
  auto is_separator = [](char c) {
    return c == ' ' || c == ',' || c == '\t' || c == '\n' || c == '\r';
  };
  size_t first = text.find_first_not_of(" \t\r\n");
  size_t last = text.find_last_not_of(" \t\r\n");
  if (first != std::string_view::npos && text[first] == '[') {
    if (text[last] != ']') fail("--ids: \"", text, "\" opens a JSON array but does not close it");
    text = text.substr(first + 1, last - first - 1);
  }
  std::vector<int32_t> ids;
  size_t pos = 0;
  while (pos < text.size()) {
    if (is_separator(text[pos])) {
      ++pos;
      continue;
    }
    size_t end = pos;
    while (end < text.size() && !is_separator(text[end])) ++end;
    std::string_view item = text.substr(pos, end - pos);
    int32_t id = 0;
    auto [ptr, ec] = std::from_chars(item.data(), item.data() + item.size(), id);
    if (ec == std::errc::result_out_of_range) fail("--ids: \"", item, "\" is out of range");
    if (ec != std::errc() || ptr != item.data() + item.size()) {
      fail("--ids: \"", item, "\" is not an integer token id");
    }
    ids.push_back(id);
    pos = end;
  }
  return ids;
}

std::string ids_to_json(const std::vector<int32_t>& ids) {
  std::string out = "[";
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i) out += ',';
    out += std::to_string(ids[i]);
  }
  out += "]\n";
  return out;
}

struct TokenizeOptions {
  TokenizerSource source;
  std::string text;
  std::string text_file;
  bool stats = false;
};

bhmoe::cli::CommandRegistration tokenize_command{
    "tokenize", "Print the token ids of a text as a JSON array", [](CLI::App& app) {
      auto options = std::make_shared<TokenizeOptions>();
      add_source_options(app, options->source);
      auto* text = app.add_option("--text", options->text, "The text to tokenize");
      auto* file = app.add_option("--text-file", options->text_file, "A file holding the text");
      text->excludes(file);
      file->excludes(text);
      app.add_flag("--stats", options->stats,
                   "Also print token count, timings and tokens/s on standard error");
      return [options, text, file] {
        if (options->source.model_dir.empty() && options->source.tokenizer_file.empty()) {
          fail("tokenize: give the tokenizer with --model DIR or --tokenizer FILE");
        }
        if (text->count() == 0 && file->count() == 0) {
          fail("tokenize: give the text with --text S or --text-file FILE");
        }
        const std::string input =
            file->count() ? read_file(options->text_file) : std::string(options->text);
        using Clock = std::chrono::steady_clock;
        auto t0 = Clock::now();
        auto tokenizer = load_tokenizer(options->source);
        auto t1 = Clock::now();
        std::vector<int32_t> ids;
        try {
          ids = tokenizer->encode(input);
        } catch (const Error& e) {
          if (file->count() == 0) throw;
          fail(options->text_file, ": ", e.what());
        }
        auto t2 = Clock::now();
        write_stdout(ids_to_json(ids));
        if (options->stats) {
          double load_s = std::chrono::duration<double>(t1 - t0).count();
          double encode_s = std::chrono::duration<double>(t2 - t1).count();
          std::fprintf(stderr,
                       "tokens %zu, bytes %zu, load %.3f s, encode %.3f s, %.0f tokens/s, %.2f "
                       "MB/s\n",
                       ids.size(), input.size(), load_s, encode_s,
                       encode_s > 0 ? ids.size() / encode_s : 0.0,
                       encode_s > 0 ? input.size() / encode_s / 1e6 : 0.0);
        }
        return 0;
      };
    }};

struct DetokenizeOptions {
  TokenizerSource source;
  std::string ids;
  bool no_newline = false;
};

bhmoe::cli::CommandRegistration detokenize_command{
    "detokenize", "Print the text of token ids", [](CLI::App& app) {
      auto options = std::make_shared<DetokenizeOptions>();
      add_source_options(app, options->source);
      app.add_option("--ids", options->ids,
                     "Token ids separated by spaces or commas, or a JSON array")
          ->required();
      app.add_flag("-n,--no-newline", options->no_newline,
                   "Print exactly the decoded text, without a final newline");
      return [options] {
        if (options->source.model_dir.empty() && options->source.tokenizer_file.empty()) {
          fail("detokenize: give the tokenizer with --model DIR or --tokenizer FILE");
        }
        std::vector<int32_t> ids = parse_ids(options->ids);
        auto tokenizer = load_tokenizer(options->source);
        std::string text = tokenizer->decode(ids);
        if (!options->no_newline) text += '\n';
        write_stdout(text);
        return 0;
      };
    }};

}  // namespace
