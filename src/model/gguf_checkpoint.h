// A GGUF model file (llama.cpp's single-file format) opened for inference, as a Checkpoint:
// - the architecture's metadata read as a ModelConfig and validated as a config.json is (an error
//   names the GGUF key and the file);
// - every tensor the config implies found under llama.cpp's name, of a type bhmoe runs, shaped as
//   the config says, and viewed zero-copy in the mapping; a layer's stacked experts
//   (ffn_*_exps, [N, rows, cols]) are sliced into one view per expert;
// - the tokenizer from the tokenizer.ggml.* keys (byte-level BPE "gpt2", SentencePiece "llama"),
//   through the same tokenizer code as a tokenizer.json.
// Architectures: olmoe, qwen2moe, qwen3moe, llama with experts (Mixtral; its q/k rows are
// stored permuted for pairwise RoPE, which ModelConfig::rope_interleaved records), and deepseek2
// as llama.cpp c392e509 writes it (attn_kv_b whole, not split into attn_k_b / attn_v_b as later
// converters do; YaRN from rope.scaling.*, with llama.cpp's beta_fast 32 and beta_slow 1).
#pragma once

#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "kernels/matrix.h"
#include "model/checkpoint.h"
#include "model/config.h"
#include "model/tokenizer.h"
#include "util/gguf.h"

namespace bhmoe::model {

// The ggml types bhmoe runs: each with its kernel dtype and llama.cpp's general.file_type for a
// file whose matrices are of that type. The one table both the reader and the writer use.
struct GgufType {
  GgmlType ggml;
  kernels::DType dtype;
  uint32_t llama_file_type;
};
inline constexpr GgufType kGgufTypes[] = {
    {GgmlType::F32, kernels::DType::F32, 0},    {GgmlType::F16, kernels::DType::F16, 1},
    {GgmlType::BF16, kernels::DType::BF16, 32}, {GgmlType::Q8_0, kernels::DType::Q8_0, 7},
    {GgmlType::Q4_0, kernels::DType::Q4_0, 2},  {GgmlType::Q4_K, kernels::DType::Q4_K, 14},
    {GgmlType::Q6_K, kernels::DType::Q6_K, 18},
};
// The entry of a ggml type number (nullopt: a type bhmoe does not run) or of a kernel dtype
// (bhmoe::Error for Q8, which has no GGUF type).
std::optional<GgufType> gguf_type(uint32_t ggml_type);
GgufType gguf_type(kernels::DType dtype);
// "F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q6_K", for messages.
std::string gguf_type_names();

std::unique_ptr<Checkpoint> open_gguf_checkpoint(const std::filesystem::path& file);

// The checkpoint and its tokenizer, from one file.
struct GgufModel {
  std::unique_ptr<Checkpoint> checkpoint;
  std::unique_ptr<Tokenizer> tokenizer;
};
GgufModel open_gguf_model(const std::filesystem::path& file);

// A model's tokenizer: `model`/tokenizer.json for a checkpoint folder, the tokenizer.ggml.* keys
// for a GGUF file.
std::unique_ptr<Tokenizer> load_model_tokenizer(const std::filesystem::path& model);

// The first NaN or infinity in the file's tensors of a type bhmoe reads (F32, F16, BF16 and the
// block types, dequantised row by row), in file order; nullopt when every value is finite.
std::optional<NonFiniteValue> find_non_finite_in(const GgufFile& file);

// The model configuration the metadata describes (general.architecture and its keys; the
// vocabulary size from token_embd.weight; tie_word_embeddings when output.weight is absent).
ModelConfig gguf_model_config(const GgufFile& file);

// The Hugging Face tokenizer.json that the tokenizer.ggml.* keys describe:
// - tokenizer.ggml.model "gpt2" (byte-level BPE): tokens and their ids, merges, control and
//   user-defined tokens as added tokens, the pre-tokeniser that tokenizer.ggml.pre names, in
//   llama.cpp's names: "olmo", "gpt-2", "default" use the GPT-2 regex; "qwen2" is Qwen2's layout
//   (a Split with Qwen2's regex, then ByteLevel without a regex); no NFC normaliser, as llama.cpp;
// - tokenizer.ggml.model "llama" (SentencePiece BPE: tokens, scores, token types, no merges): a
//   SentencePiece-style BPE with byte fallback, the spaces done by a Prepend("▁") (unless
//   tokenizer.ggml.add_space_prefix is false) + Replace(" " -> "▁") normaliser, and merges derived
//   from the scores (see gguf_checkpoint.cc for the rule and how it matches llama.cpp's).
// Other tokenizer models or pre-tokenisers, and missing or mis-sized scores or token types, are
// errors naming the key and its value.
nlohmann::json gguf_tokenizer_json(const GgufFile& file);

// The tokenizer.json pre_tokenizer that a "gpt2" vocabulary's tokenizer.ggml.pre stands for:
// "olmo", "gpt-2" and "default" ByteLevel with the GPT-2 regex; "qwen2" a Sequence of Qwen2's
// Split regex and ByteLevel without regex; "deepseek-llm" a Sequence of DeepSeek-LLM's six Split
// regexes (each applied to every piece of the one before) and ByteLevel without regex. nullopt for
// any other name.
std::optional<nlohmann::json> gguf_bytelevel_pre_tokenizer(const std::string& pre);

}  // namespace bhmoe::model
