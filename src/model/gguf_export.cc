#include "model/gguf_export.h"

#include <algorithm>
#include <cctype>
#include <cstring>
#include <string>
#include <vector>

#include <utf8proc.h>

#include <optional>

#include "kernels/ops.h"
#include "kernels/quant.h"
#include "model/gguf_checkpoint.h"
#include "model/tensor_names.h"
#include "util/error.h"
#include "util/gguf.h"

namespace bhmoe::model {
namespace {

using kernels::DType;
using nlohmann::json;

// The rows of `m` converted to `type`, appended to `out`. Same type: the stored bytes.
void append_converted(const kernels::Matrix& m, DType type, std::string& out) {
  const size_t row_bytes = kernels::row_bytes(type, m.cols);
  const size_t start = out.size();
  out.resize(start + row_bytes * static_cast<size_t>(m.rows));
  auto* dst = reinterpret_cast<uint8_t*>(out.data() + start);
  if (m.dtype == type) {
    std::memcpy(dst, m.data, row_bytes * static_cast<size_t>(m.rows));
    return;
  }
  std::vector<float> row(static_cast<size_t>(m.cols));
  std::vector<uint16_t> half(static_cast<size_t>(m.cols));
  for (int64_t r = 0; r < m.rows; ++r) {
    kernels::dequantize_row(m, r, row.data());
    uint8_t* d = dst + static_cast<size_t>(r) * row_bytes;
    switch (type) {
      case DType::F32:
        std::memcpy(d, row.data(), row_bytes);
        break;
      case DType::F16:
      case DType::BF16:
        for (size_t i = 0; i < row.size(); ++i)
          half[i] = type == DType::F16 ? kernels::f32_to_f16(row[i]) : kernels::f32_to_bf16(row[i]);
        std::memcpy(d, half.data(), row_bytes);
        break;
      default: {
        kernels::Matrix one;
        one.data = row.data();
        one.dtype = DType::F32;
        one.rows = 1;
        one.cols = m.cols;
        kernels::quantize_rows(one, type, d);
      }
    }
  }
}

std::string converted(const kernels::Matrix& m, DType type) {
  std::string out;
  append_converted(m, type, out);
  return out;
}

// ggml ne of a [rows, cols] matrix, or of a vector.
std::vector<int64_t> ne_of(const kernels::Matrix& m, bool vector) {
  if (vector) return {m.cols};
  return {m.cols, m.rows};
}

}  // namespace

namespace {

// A pre_tokenizer reduced to what tokenizes: the list of steps, Splits by regex, behaviour and
// invert, ByteLevel by use_regex and add_prefix_space (offsets and their trimming do not change
// ids). Null for anything else.
json pre_tokenizer_steps(const json& pre) {
  json steps = json::array();
  const json list = pre.is_object() && pre.value("type", "") == "Sequence"
                        ? pre.value("pretokenizers", json::array())
                        : json::array({pre});
  for (const json& step : list) {
    if (!step.is_object()) return nullptr;
    const std::string type = step.value("type", "");
    if (type == "Split" && step.contains("pattern") && step["pattern"].contains("Regex")) {
      steps.push_back({type, step["pattern"]["Regex"], step.value("behavior", ""),
                       step.value("invert", false)});
    } else if (type == "Digits") {
      steps.push_back({type, step.value("individual_digits", false)});
    } else if (type == "ByteLevel") {
      steps.push_back({type, step.value("use_regex", true), step.value("add_prefix_space", true)});
    } else {
      return nullptr;
    }
  }
  return steps;
}

// The bytes a byte-level (GPT-2) token string stands for; nullopt if a character is not one of
// the 256 byte symbols.
std::optional<std::string> bytelevel_bytes(const std::string& token) {
  std::string bytes;
  const auto* p = reinterpret_cast<const utf8proc_uint8_t*>(token.data());
  utf8proc_ssize_t left = static_cast<utf8proc_ssize_t>(token.size());
  while (left > 0) {
    utf8proc_int32_t cp = 0;
    const utf8proc_ssize_t n = utf8proc_iterate(p, left, &cp);
    if (n <= 0) return std::nullopt;
    p += n;
    left -= n;
    // GPT-2's map: 33-126, 161-172 and 174-255 stand for themselves, the other 68 bytes for
    // 256, 257, ... in byte order.
    auto printable = [](int b) {
      return (b >= 33 && b <= 126) || (b >= 161 && b <= 255 && b != 173);
    };
    if (cp < 256 && printable(cp)) {
      bytes.push_back(static_cast<char>(cp));
      continue;
    }
    int index = cp - 256, b = 0;
    for (; b < 256; ++b) {
      if (!printable(b) && index-- == 0) break;
    }
    if (b == 256 || cp < 256) return std::nullopt;
    bytes.push_back(static_cast<char>(b));
  }
  return bytes;
}

bool is_numeric(utf8proc_int32_t cp) {
  const utf8proc_category_t c = utf8proc_category(cp);
  return c == UTF8PROC_CATEGORY_ND || c == UTF8PROC_CATEGORY_NL || c == UTF8PROC_CATEGORY_NO;
}

// A vocabulary token (byte-level) holding two adjacent numeric characters, if any. Tokens that
// are not whole UTF-8 characters are not looked into.
std::optional<std::string> token_with_two_numerics(const json& vocab) {
  for (const auto& [token, id] : vocab.items()) {
    const std::optional<std::string> bytes = bytelevel_bytes(token);
    if (!bytes) continue;
    const auto* p = reinterpret_cast<const utf8proc_uint8_t*>(bytes->data());
    utf8proc_ssize_t left = static_cast<utf8proc_ssize_t>(bytes->size());
    bool previous = false;
    while (left > 0) {
      utf8proc_int32_t cp = 0;
      const utf8proc_ssize_t n = utf8proc_iterate(p, left, &cp);
      if (n <= 0) break;
      if (is_numeric(cp) && previous) return *bytes;
      previous = is_numeric(cp);
      p += n;
      left -= n;
    }
  }
  return std::nullopt;
}

// The tokenizer.ggml.pre of a byte-level tokenizer.json: the llama.cpp pre-tokeniser whose
// tokenizer.json pre_tokenizer (gguf_bytelevel_pre_tokenizer) splits as this one does. DeepSeek's
// own tokenizer.json ends its Splits with Digits(individual_digits) where llama.cpp's
// "deepseek-llm" splits \p{N}+: the same ids when no token holds two adjacent numeric characters
// (DeepSeek's vocabulary has none), so that layout is "deepseek-llm" after that check.
std::string bytelevel_pre_name(const json& tok) {
  const json steps = pre_tokenizer_steps(tok.value("pre_tokenizer", json()));
  for (const char* name : {"olmo", "qwen2", "deepseek-llm"}) {
    if (!steps.is_null() && steps == pre_tokenizer_steps(*gguf_bytelevel_pre_tokenizer(name)))
      return name;
  }
  json deepseek = pre_tokenizer_steps(*gguf_bytelevel_pre_tokenizer("deepseek-llm"));
  deepseek[5] = {"Digits", true};
  if (!steps.is_null() && steps == deepseek) {
    if (const auto token = token_with_two_numerics(tok.at("model").at("vocab"))) {
      fail("GGUF export: the tokenizer's vocab has the token \"", *token,
           "\" of two numeric characters, which llama.cpp's \"deepseek-llm\" (\\p{N}+ where the "
           "tokenizer.json has Digits with individual_digits) could produce and the tokenizer.json "
           "never does");
    }
    return "deepseek-llm";
  }
  fail("GGUF export: the tokenizer's pre_tokenizer (", tok.value("pre_tokenizer", json()).dump(),
       ") is none of those llama.cpp's pre-tokenisers \"olmo\" (ByteLevel with the GPT-2 regex), "
       "\"qwen2\" and \"deepseek-llm\" stand for");
}

// The SentencePiece-BPE (Mixtral/Llama) layout: normaliser [Prepend("▁")], Replace(" " -> "▁"),
// no pre_tokenizer, BPE with byte_fallback.
bool is_sentencepiece_layout(const json& tok) {
  const json& model = tok.at("model");
  return model.value("byte_fallback", false) && tok.value("pre_tokenizer", json()).is_null() &&
         tok.value("normalizer", json()).is_object();
}

// Whether the normaliser is [Prepend("▁")] + Replace(" " -> "▁"): true with the Prepend, false
// without; anything else is an error.
bool sentencepiece_add_space_prefix(const json& normalizer) {
  const std::string meta = "\u2581";
  json list = normalizer.value("type", "") == "Sequence"
                  ? normalizer.value("normalizers", json::array())
                  : json::array({normalizer});
  bool prepend = false;
  if (!list.empty() && list[0].value("type", "") == "Prepend" &&
      list[0].value("prepend", "") == meta) {
    prepend = true;
    list.erase(list.begin());
  }
  const json replace = {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", meta}};
  if (list.size() != 1 || list[0] != replace) {
    fail("GGUF export: a byte_fallback BPE tokenizer's normalizer (", normalizer.dump(),
         ") is not SentencePiece's [Prepend(\"\u2581\")] + Replace(\" \" -> \"\u2581\"), which "
         "llama.cpp's \"llama\" tokenizer does");
  }
  return prepend;
}

}  // namespace

// Byte-level BPE: tokenizer.ggml.model "gpt2" with the merges and the pre-tokeniser's name.
// SentencePiece BPE: tokenizer.ggml.model "llama" with scores and no merges. llama.cpp merges,
// among adjacent symbols, the pair whose concatenation is a token of the highest score (leftmost
// on ties), where the tokenizer.json merges the pair of lowest merge rank. The rule written here:
// a token's score is -(the rank of the first merge that produces it), so higher score = earlier
// merge; tokens no merge produces (single characters, bytes, added tokens) get
// -(number of merges) - 1 and lower, below every merge result. This gives llama.cpp's encoding
// the tokenizer.json's wherever the tokenizer.json's merges are those of its vocabulary's scores
// (as for SentencePiece-trained models, whose converter orders merges by the merged piece's score).
// Token types: byte tokens <0xXX> 6 (byte), the unk_token 2, special added tokens 3 (control),
// other added tokens 4 (user-defined), the rest 1 (normal); padding ids 5 (unused).
void add_gguf_tokenizer(GgufWriter& w, const json& tok, int vocab_size, const ModelConfig& c) {
  const json& model = tok.at("model");
  if (model.value("type", "") != "BPE")
    fail("GGUF export: the tokenizer's model is \"", model.value("type", ""), "\", not BPE");
  const bool spm = is_sentencepiece_layout(tok);
  const std::string pre = spm ? "" : bytelevel_pre_name(tok);
  const bool add_space_prefix = spm && sentencepiece_add_space_prefix(tok.at("normalizer"));
  std::vector<std::string> tokens(static_cast<size_t>(vocab_size));
  std::vector<int32_t> types(tokens.size(), 0);
  for (const auto& [text, id_json] : model.at("vocab").items()) {
    const int64_t id = id_json.get<int64_t>();
    if (id < 0 || id >= vocab_size)
      fail("GGUF export: token \"", text, "\" has id ", id, " outside the embedding's ", vocab_size,
           " rows");
    tokens[static_cast<size_t>(id)] = text;
    const bool byte = spm && text.size() == 6 && text.rfind("<0x", 0) == 0 && text[5] == '>';
    types[static_cast<size_t>(id)] = byte ? 6 : 1;  // byte : normal
  }
  if (spm && model.contains("unk_token") && model["unk_token"].is_string()) {
    const std::string unk = model["unk_token"];
    if (!model.at("vocab").contains(unk))
      fail("GGUF export: the tokenizer's unk_token \"", unk, "\" is not in its vocab");
    types[model["vocab"][unk].get<size_t>()] = 2;  // unknown
  }
  for (const json& a : tok.value("added_tokens", json::array())) {
    const int64_t id = a.at("id").get<int64_t>();
    if (id < 0 || id >= vocab_size)
      fail("GGUF export: added token id ", id, " outside the embedding's ", vocab_size, " rows");
    tokens[static_cast<size_t>(id)] = a.at("content").get<std::string>();
    if (types[static_cast<size_t>(id)] != 2)
      types[static_cast<size_t>(id)] = a.value("special", false) ? 3 : 4;  // control : user-def.
  }
  for (size_t id = 0; id < tokens.size(); ++id) {
    if (types[id] == 0) {
      tokens[id] = cat("[PAD", id, "]");
      types[id] = 5;  // unused
    }
  }
  std::vector<std::string> merges;
  for (const json& m : model.value("merges", json::array())) {
    if (m.is_string()) {
      merges.push_back(m.get<std::string>());
    } else {
      merges.push_back(m.at(0).get<std::string>() + " " + m.at(1).get<std::string>());
    }
  }
  if (spm) {
    std::vector<float> scores(tokens.size(), 0.0f);
    std::vector<bool> scored(tokens.size(), false);
    for (size_t rank = 0; rank < merges.size(); ++rank) {
      const size_t space = merges[rank].find(' ');
      if (space == std::string::npos)
        fail("GGUF export: the tokenizer's merges[", rank, "] \"", merges[rank],
             "\" is not two tokens");
      const std::string merged = merges[rank].substr(0, space) + merges[rank].substr(space + 1);
      if (!model["vocab"].contains(merged))
        fail("GGUF export: the tokenizer's merges[", rank, "] makes \"", merged,
             "\", which is not in its vocab");
      const size_t id = model["vocab"][merged].get<size_t>();
      if (!scored[id]) scores[id] = -static_cast<float>(rank), scored[id] = true;
    }
    const float lowest = -static_cast<float>(merges.size()) - 1.0f;
    for (size_t id = 0; id < tokens.size(); ++id) {
      if (!scored[id]) scores[id] = lowest - static_cast<float>(id);
    }
    w.add_string("tokenizer.ggml.model", "llama");
    w.add_string("tokenizer.ggml.pre", "default");
    w.add_string_array("tokenizer.ggml.tokens", tokens);
    w.add_float32_array("tokenizer.ggml.scores", scores);
    w.add_int32_array("tokenizer.ggml.token_type", types);
    w.add_bool("tokenizer.ggml.add_space_prefix", add_space_prefix);
  } else {
    w.add_string("tokenizer.ggml.model", "gpt2");
    w.add_string("tokenizer.ggml.pre", pre);
    w.add_string_array("tokenizer.ggml.tokens", tokens);
    w.add_int32_array("tokenizer.ggml.token_type", types);
    w.add_string_array("tokenizer.ggml.merges", merges);
  }
  if (c.bos_token_id)
    w.add_uint32("tokenizer.ggml.bos_token_id", static_cast<uint32_t>(*c.bos_token_id));
  if (c.eos_token_id)
    w.add_uint32("tokenizer.ggml.eos_token_id", static_cast<uint32_t>(*c.eos_token_id));
  if (c.pad_token_id)
    w.add_uint32("tokenizer.ggml.padding_token_id", static_cast<uint32_t>(*c.pad_token_id));
  w.add_bool("tokenizer.ggml.add_bos_token", false);
  w.add_bool("tokenizer.ggml.add_eos_token", false);
}

DType parse_gguf_matrix_type(const std::string& name) {
  auto lower = [](std::string text) {
    for (char& ch : text) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    return text;
  };
  std::string accepted;
  for (const GgufType& t : kGgufTypes) {
    const std::string type = lower(kernels::dtype_name(t.dtype));
    if (lower(name) == type) return t.dtype;
    accepted += (accepted.empty() ? "" : &t == std::end(kGgufTypes) - 1 ? " or " : ", ") + type;
  }
  fail("GGUF type \"", name, "\": expected ", accepted);
}

// llama.cpp's "llama" graph applies pairwise RoPE to (2i, 2i + 1), so its converter stores each
// head's q/k rows permuted from Hugging Face's NeoX halves: GGUF row 2i + j of a head is HF row
// j * hd/2 + i. The rows of `m` ([heads * hd, cols]) in that order.
std::string llama_permuted(const kernels::Matrix& m, int head_dim, DType type) {
  std::string out;
  const int64_t half = head_dim / 2;
  for (int64_t r = 0; r < m.rows; ++r) {
    const int64_t head = r / head_dim, within = r % head_dim;
    const int64_t source = head * head_dim + (within % 2) * half + within / 2;
    append_converted(m.row_block(source, 1), type, out);
  }
  return out;
}

void export_gguf(const Checkpoint& checkpoint, const json& tokenizer_json, DType matrix_type,
                 const std::filesystem::path& out) {
  const ModelConfig& c = checkpoint.config();
  const Weights& w = checkpoint.weights();
  const std::string arch = hf::gguf_architecture(c.family);
  const bool deepseek = c.family == Family::DeepseekV2;
  if (c.rope_interleaved && !deepseek)  // (DeepSeek's rope dims are paired so in every file)
    fail(
        "GGUF export: the checkpoint's q/k rows are already permuted for pairwise RoPE (a llama "
        "GGUF file); export from the Hugging Face folder");
  if (c.clip_qkv) fail("GGUF export: clip_qkv has no olmoe GGUF key (llama.cpp would not clip)");
  // llama.cpp's graphs renormalise the top-k weights of qwen3moe and llama, never of olmoe and
  // qwen2moe, whatever a key says.
  const bool renormalises = c.family == Family::Qwen3Moe || c.family == Family::Mixtral;
  if (c.norm_topk_prob != renormalises && !deepseek)  // deepseek2 has expert_weights_norm
    fail("GGUF export: norm_topk_prob ", c.norm_topk_prob ? "true" : "false", " has no ", arch,
         " GGUF key (llama.cpp would ", renormalises ? "" : "not ", "renormalise)");
  if (c.family == Family::Olmoe && c.num_kv_heads != c.num_heads)
    fail("GGUF export: llama.cpp's olmoe needs as many key/value heads as heads (", c.num_kv_heads,
         " vs ", c.num_heads, ")");
  if (deepseek && c.num_layers != 27) {
    // llama.cpp (c392e509) reads q_proj ("attn_q") only when block_count is 27, DeepSeek-V2-Lite's;
    // other counts must have the low-rank query (attn_q_a, attn_q_b), which bhmoe does not run.
    fail(
        "GGUF export: llama.cpp reads a deepseek2 file without q_lora_rank only with 27 layers "
        "(DeepSeek-V2-Lite's), and this model has ",
        c.num_layers, "; it would not load there");
  }
  const int64_t block = kernels::block_values(matrix_type);
  const int64_t query_width = int64_t{c.num_heads} * c.head_dim;
  if (c.hidden_size % block != 0 || c.intermediate_size % block != 0 ||
      c.shared_expert_intermediate_size % block != 0 || query_width % block != 0) {
    fail("GGUF export: ", kernels::dtype_name(matrix_type), " blocks of ", block,
         " values do not divide hidden_size ", c.hidden_size, ", the expert widths ",
         c.intermediate_size, " and ", c.shared_expert_intermediate_size, " and the query width ",
         query_width);
  }
  // DeepSeek-V2's other matrix rows: kv_b_proj's (the latent), o_proj's (H * v_head), the dense
  // MLP's down_proj.
  const int64_t attention_width = int64_t{c.num_heads} * c.value_head_dim();
  if (deepseek && (c.kv_lora_rank % block != 0 || attention_width % block != 0 ||
                   c.dense_intermediate_size % block != 0)) {
    fail("GGUF export: ", kernels::dtype_name(matrix_type), " blocks of ", block,
         " values do not divide kv_lora_rank ", c.kv_lora_rank, ", the attention output width ",
         attention_width, " or the dense layers' width ", c.dense_intermediate_size);
  }

  GgufWriter g;
  const std::string p = arch + ".";
  g.add_string("general.architecture", arch);
  g.add_string("general.name", checkpoint.dir().filename().string());
  g.add_uint32("general.file_type", gguf_type(matrix_type).llama_file_type);
  g.add_uint32(p + "block_count", static_cast<uint32_t>(c.num_layers));
  g.add_uint32(p + "context_length", static_cast<uint32_t>(c.max_position_embeddings));
  g.add_uint32(p + "embedding_length", static_cast<uint32_t>(c.hidden_size));
  if (deepseek) {
    // feed_forward_length is the leading dense layers' width.
    g.add_uint32(p + "feed_forward_length", static_cast<uint32_t>(c.dense_intermediate_size));
    g.add_uint32(p + "expert_feed_forward_length", static_cast<uint32_t>(c.intermediate_size));
  } else if (c.family == Family::Qwen2Moe || c.family == Family::Qwen3Moe) {
    // feed_forward_length is the dense width there; the experts' are their own keys.
    g.add_uint32(
        p + "feed_forward_length",
        static_cast<uint32_t>(std::max(c.intermediate_size, c.shared_expert_intermediate_size)));
    g.add_uint32(p + "expert_feed_forward_length", static_cast<uint32_t>(c.intermediate_size));
    if (c.shared_expert_intermediate_size > 0)
      g.add_uint32(p + "expert_shared_feed_forward_length",
                   static_cast<uint32_t>(c.shared_expert_intermediate_size));
  } else {
    g.add_uint32(p + "feed_forward_length", static_cast<uint32_t>(c.intermediate_size));
  }
  g.add_uint32(p + "attention.head_count", static_cast<uint32_t>(c.num_heads));
  g.add_uint32(p + "attention.head_count_kv", static_cast<uint32_t>(c.num_kv_heads));
  if (c.head_dim * c.num_heads != c.hidden_size || deepseek) {
    g.add_uint32(p + "attention.key_length", static_cast<uint32_t>(c.head_dim));
    g.add_uint32(p + "attention.value_length", static_cast<uint32_t>(c.value_head_dim()));
  }
  g.add_float32(p + "rope.freq_base", static_cast<float>(c.rope_theta));
  g.add_float32(p + "attention.layer_norm_rms_epsilon", c.rms_norm_eps);
  g.add_uint32(p + "expert_count", static_cast<uint32_t>(c.num_experts));
  g.add_uint32(p + "expert_used_count", static_cast<uint32_t>(c.num_experts_per_tok));
  if (deepseek) {
    // What llama.cpp's convert_hf_to_gguf.py writes for DeepseekV2ForCausalLM.
    g.add_uint32(p + "leading_dense_block_count", static_cast<uint32_t>(c.first_k_dense_replace));
    g.add_uint32(p + "attention.kv_lora_rank", static_cast<uint32_t>(c.kv_lora_rank));
    g.add_uint32(p + "expert_shared_count",
                 static_cast<uint32_t>(c.shared_expert_intermediate_size / c.intermediate_size));
    g.add_float32(p + "expert_weights_scale", static_cast<float>(c.routed_scaling_factor));
    g.add_bool(p + "expert_weights_norm", c.norm_topk_prob);
    g.add_uint32(p + "expert_gating_func", 1);  // softmax
    g.add_uint32(p + "rope.dimension_count", static_cast<uint32_t>(c.qk_rope_head_dim));
    if (c.yarn) {
      // llama.cpp keeps no beta_fast, beta_slow or mscale: it uses 32, 1 and mscale_all_dim.
      if (c.yarn->beta_fast != 32.0 || c.yarn->beta_slow != 1.0 ||
          c.yarn->mscale != c.yarn->mscale_all_dim)
        fail("GGUF export: rope_scaling yarn with beta_fast ", c.yarn->beta_fast, ", beta_slow ",
             c.yarn->beta_slow, ", mscale ", c.yarn->mscale, " and mscale_all_dim ",
             c.yarn->mscale_all_dim,
             " has no deepseek2 GGUF keys (llama.cpp assumes 32, 1 and mscale = mscale_all_dim)");
      g.add_string(p + "rope.scaling.type", "yarn");
      g.add_float32(p + "rope.scaling.factor", static_cast<float>(c.yarn->factor));
      g.add_uint32(p + "rope.scaling.original_context_length",
                   static_cast<uint32_t>(c.yarn->original_max_position_embeddings));
      g.add_float32(p + "rope.scaling.yarn_log_multiplier",
                    static_cast<float>(0.1 * c.yarn->mscale_all_dim));
    } else {
      g.add_string(p + "rope.scaling.type", "none");
      g.add_float32(p + "rope.scaling.yarn_log_multiplier", 0.0f);  // a key llama.cpp requires
    }
  }
  add_gguf_tokenizer(g, tokenizer_json, c.vocab_size, c);

  const GgmlType matrix_ggml = gguf_type(matrix_type).ggml;
  auto add_matrix = [&](const std::string& name, const TensorView& m, DType type) {
    g.add_tensor_later(name, gguf_type(type).ggml, ne_of(m, false),
                       [&m, type] { return converted(m, type); });
  };
  auto add_vector = [&](const std::string& name, const TensorView& m) {
    g.add_tensor_later(name, GgmlType::F32, ne_of(m, true),
                       [&m] { return converted(m, DType::F32); });
  };
  add_matrix(std::string(hf::kGgufEmbed), w.embed, matrix_type);
  for (int l = 0; l < c.num_layers; ++l) {
    const LayerWeights& lw = w.layers[static_cast<size_t>(l)];
    for (const hf::LayerTensor& t : hf::kLayerTensors) {
      if (!hf::needed(t.needs, c, l)) continue;
      const TensorView& m = lw.*t.field;
      const std::string name = hf::gguf_layer_name(l, t.gguf);
      const bool permuted = c.family == Family::Mixtral &&
                            (t.field == &LayerWeights::q_proj || t.field == &LayerWeights::k_proj);
      if (t.vector || t.rows == hf::Size::One) {
        add_vector(name, m);  // norms, biases and the shared expert's gate stay F32
      } else if (permuted) {
        g.add_tensor_later(name, matrix_ggml, ne_of(m, false), [&m, &c, matrix_type] {
          return llama_permuted(m, c.head_dim, matrix_type);
        });
      } else {
        add_matrix(name, m, t.field == &LayerWeights::router ? DType::F32 : matrix_type);
      }
    }
    if (!hf::is_moe_layer(c, l)) continue;
    for (const hf::ExpertTensor& t : hf::kExpertTensors) {
      const TensorView& first = lw.experts[0].*t.field;
      g.add_tensor_later(hf::gguf_layer_name(l, t.gguf_stacked), matrix_ggml,
                         {first.cols, first.rows, c.num_experts}, [&lw, &t, matrix_type] {
                           std::string bytes;
                           for (const ExpertWeights& e : lw.experts)
                             append_converted(e.*t.field, matrix_type, bytes);
                           return bytes;
                         });
    }
  }
  add_vector(std::string(hf::kGgufFinalNorm), w.final_norm);
  if (!c.tie_word_embeddings) add_matrix(std::string(hf::kGgufLmHead), w.lm_head, matrix_type);
  g.write(out);
}

}  // namespace bhmoe::model
