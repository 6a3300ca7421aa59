// Hugging Face tokenizer.json BPE tokenizers: byte-level BPE (OLMoE: NFC, the GPT-2/NeoX regex;
// Qwen2/Qwen3-MoE: NFC, Qwen2's Split regex; ByteLevel decoder) and SentencePiece-style BPE with
// byte fallback (Llama, Mistral/Mixtral: Prepend/Replace normaliser or Metaspace, decoder
// Replace/ByteFallback/Fuse/Strip); added/special tokens matched before BPE. The contracts are in
// tokenizer.cc's header comment.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace bhmoe::model {

class Tokenizer {
 public:
  // Throws bhmoe::Error naming the file and what is malformed or unsupported.
  static std::unique_ptr<Tokenizer> load(const std::filesystem::path& tokenizer_json);
  // The same from a parsed tokenizer.json; `source` names it in messages.
  static std::unique_ptr<Tokenizer> from_json(const nlohmann::json& root,
                                              const std::string& source);
  virtual ~Tokenizer() = default;

  // Ids for `text`, no special tokens added. Thread-safe.
  virtual std::vector<int32_t> encode(std::string_view text) const = 0;
  // Text for `ids`; throws bhmoe::Error for an id outside the vocabulary.
  virtual std::string decode(std::span<const int32_t> ids) const = 0;
  virtual int32_t vocab_size() const = 0;  // number of ids the tokenizer defines
  virtual std::optional<int32_t> token_to_id(std::string_view token) const = 0;
  virtual std::string id_to_token(int32_t id) const = 0;
};

}  // namespace bhmoe::model
