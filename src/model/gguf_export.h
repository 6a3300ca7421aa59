// Writes a checkpoint as a GGUF file that llama.cpp and bhmoe both run (architecture olmoe,
// qwen2moe, qwen3moe, or llama for Mixtral):
// - metadata from the config (llama.cpp's keys of the architecture), general.file_type from the
//   matrix type;
// - the tokenizer.json as tokenizer.ggml.* keys (add_gguf_tokenizer): a byte-level BPE as "gpt2"
//   with the pre-tokeniser that splits as its pre_tokenizer ("olmo": ByteLevel with the GPT-2
//   regex, "qwen2", "deepseek-llm") and merges as "a b"; the SentencePiece-BPE layout
//   (Mixtral/Llama) as "llama" with scores and token types; tokens by id padded to the embedding's
//   rows with "[PAD<id>]", added tokens as control (special) or user-defined tokens;
// - llama.cpp's tensor names, a layer's experts stacked into ffn_{gate,up,down}_exps; for llama,
//   each head's q/k rows permuted for llama.cpp's pairwise RoPE, as its converter does;
// - every matrix converted to `matrix_type`, except the norms, biases, the router (ffn_gate_inp)
//   and the shared expert's gate, kept in F32 as llama.cpp's converter keeps them.
// The file is streamed tensor by tensor (memory stays at one stacked tensor) and renamed into
// place.
#pragma once

#include <filesystem>

#include <nlohmann/json.hpp>

#include "kernels/matrix.h"
#include "model/checkpoint.h"
#include "util/gguf.h"

namespace bhmoe::model {

// Throws bhmoe::Error for what the architecture's GGUF keys cannot express (clip_qkv, a
// norm_topk_prob llama.cpp's graph does not follow, fewer key/value heads than heads in olmoe), a
// tokenizer whose layout llama.cpp has no name for (add_gguf_tokenizer), or a matrix type whose
// blocks do not divide the rows.
void export_gguf(const Checkpoint& checkpoint, const nlohmann::json& tokenizer_json,
                 kernels::DType matrix_type, const std::filesystem::path& out);

// The tokenizer.json as tokenizer.ggml.* keys (as export_gguf writes them), for a vocabulary of
// `vocab_size` ids (the embedding's rows; ids the tokenizer does not define become "[PAD<id>]").
// The score rule for "llama" is in gguf_export.cc. Throws bhmoe::Error, naming the field, for a
// model other than BPE, a byte-level pre_tokenizer none of "olmo", "qwen2", "deepseek-llm" stands
// for, a byte_fallback BPE whose normaliser is not SentencePiece's, or ids outside the rows.
void add_gguf_tokenizer(GgufWriter& writer, const nlohmann::json& tokenizer_json, int vocab_size,
                        const ModelConfig& config);

// "f32", "f16", "bf16", "q8_0", "q4_0", "q4_k", "q6_k" (any case) to the dtype; an error names
// the accepted names otherwise.
kernels::DType parse_gguf_matrix_type(const std::string& name);

}  // namespace bhmoe::model
