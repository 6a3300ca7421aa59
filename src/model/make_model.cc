#include "model/make_model.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <future>
#include <thread>

#include <nlohmann/json.hpp>

#include "model/tensor_names.h"
#include "util/error.h"
#include "util/file.h"
#include "util/json.h"

namespace bhmoe::model {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using nlohmann::ordered_json;

constexpr double kInitStd = 0.02;
// Random values come in chunks of this many elements, each from its own generator seeded by
// (seed, tensor, chunk): chunks can be filled in any order by any thread with the same result.
constexpr int64_t kChunkElements = int64_t{1} << 20;
constexpr size_t kWriteBufferBytes = size_t{64} << 20;

uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

uint64_t fnv1a64(std::string_view text) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char ch : text) h = (h ^ ch) * 0x100000001b3ull;
  return h;
}

// xoshiro256+ (Blackman & Vigna): fast, and good enough in its high bits for initial weights.
class Xoshiro256 {
 public:
  explicit Xoshiro256(uint64_t seed) {
    for (auto& word : s_) word = splitmix64(seed);
  }
  uint64_t next() {
    const uint64_t result = s_[0] + s_[3];
    const uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = (s_[3] << 45) | (s_[3] >> 19);
    return result;
  }

 private:
  uint64_t s_[4];
};

uint16_t float_to_bf16(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, 4);
  bits += 0x7fffu + ((bits >> 16) & 1u);  // round to nearest even (values here are finite)
  return static_cast<uint16_t>(bits >> 16);
}

uint16_t float_to_f16(float value) {
  // IEEE half, round to nearest even; the values written here are small and finite.
  uint32_t bits;
  std::memcpy(&bits, &value, 4);
  const uint32_t sign = (bits >> 16) & 0x8000u;
  const int exponent = static_cast<int>((bits >> 23) & 0xff) - 127 + 15;
  uint32_t mantissa = bits & 0x7fffffu;
  if (exponent >= 31) return static_cast<uint16_t>(sign | 0x7c00u);
  if (exponent <= 0) {
    if (exponent < -10) return static_cast<uint16_t>(sign);
    mantissa |= 0x800000u;
    const int shift = 14 - exponent;
    uint32_t half = mantissa >> shift;
    const uint32_t rest = mantissa & ((1u << shift) - 1), halfway = 1u << (shift - 1);
    if (rest > halfway || (rest == halfway && (half & 1))) ++half;
    return static_cast<uint16_t>(sign | half);
  }
  uint32_t half = (static_cast<uint32_t>(exponent) << 10) | (mantissa >> 13);
  const uint32_t rest = mantissa & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (half & 1)))
    ++half;  // may carry into the exponent: fine
  return static_cast<uint16_t>(sign | half);
}

// One run of a file tensor's elements that comes from one logical (per-expert layout) tensor.
struct Segment {
  uint64_t stream;  // fnv1a64 of the logical tensor's per-expert-layout name
  int64_t numel;
  bool ones;  // norm weights: all 1
};

struct PlannedTensor {
  TensorSpec spec;
  std::vector<Segment> segments;
};

bool is_norm(const std::string& name) {
  return name.find("norm") != std::string::npos;
}

std::vector<PlannedTensor> plan_tensors(const ModelConfig& c, kernels::DType dtype, bool fused) {
  const std::string dt = safetensors_dtype_name(dtype);
  const int64_t d = c.hidden_size, f = c.intermediate_size, v = c.vocab_size, n = c.num_experts;
  std::vector<PlannedTensor> out;
  auto simple = [&](std::string name, std::vector<int64_t> shape) {
    int64_t numel = 1;
    for (int64_t s : shape) numel *= s;
    PlannedTensor t{{name, dt, shape}, {{fnv1a64(name), numel, is_norm(name)}}};
    out.push_back(std::move(t));
  };
  simple(std::string(hf::kEmbed), {v, d});
  for (int l = 0; l < c.num_layers; ++l) {
    for (const hf::LayerTensor& t : hf::kLayerTensors) {
      if (!hf::needed(t.needs, c, l)) continue;
      const std::string name = hf::layer_tensor_name(l, t, c);
      if (t.vector) {
        simple(name, {hf::size(t.rows, c)});
      } else {
        simple(name, {hf::size(t.rows, c), hf::size(t.cols, c)});
      }
    }
    if (!hf::is_moe_layer(c, l)) continue;
    const std::string e = hf::experts_prefix(l, c);
    if (fused) {
      PlannedTensor gate_up{{cat(e, hf::kFusedGateUp), dt, {n, 2 * f, d}}, {}};
      PlannedTensor down{{cat(e, hf::kFusedDown), dt, {n, d, f}}, {}};
      // The fused tensors hold the values the per-expert layout would (same seeds per name).
      for (int64_t x = 0; x < n; ++x) {
        for (const hf::ExpertTensor& t : hf::kExpertTensors) {
          PlannedTensor& into = t.field == &ExpertWeights::down ? down : gate_up;
          into.segments.push_back({fnv1a64(hf::expert_name(l, x, t, c)), f * d, false});
        }
      }
      out.push_back(std::move(gate_up));
      out.push_back(std::move(down));
    } else {
      for (int64_t x = 0; x < n; ++x) {
        for (const hf::ExpertTensor& t : hf::kExpertTensors)
          simple(hf::expert_name(l, x, t, c), {hf::size(t.rows, c), hf::size(t.cols, c)});
      }
    }
  }
  simple(std::string(hf::kFinalNorm), {d});
  if (!c.tie_word_embeddings) simple(std::string(hf::kLmHead), {v, d});
  return out;
}

// Elements [first, first + count) of one segment, written at `offset` of a file's data region.
struct Piece {
  uint64_t offset;
  uint64_t stream;
  int64_t first;
  int64_t count;
  bool ones;
};

void fill_piece(const Piece& piece, uint64_t seed, kernels::DType dtype, uint8_t* out) {
  // Sum of four 16-bit uniforms (Irwin-Hall): mean 2, variance 1/3; scaled to N(0, 0.02)-like.
  const float scale = static_cast<float>(kInitStd * std::sqrt(3.0) / 65536.0);
  const float center = 2.0f * 65536.0f;
  uint64_t state = seed ^ (piece.stream * 0x9e3779b97f4a7c15ull) ^
                   static_cast<uint64_t>(piece.first / kChunkElements);
  Xoshiro256 rng(splitmix64(state));
  for (int64_t i = 0; i < piece.count; ++i) {
    float value = 1.0f;
    if (!piece.ones) {
      uint64_t r = rng.next();
      uint32_t sum = static_cast<uint32_t>((r & 0xffff) + ((r >> 16) & 0xffff) +
                                           ((r >> 32) & 0xffff) + (r >> 48));
      value = (static_cast<float>(sum) - center) * scale;
    }
    switch (dtype) {
      case kernels::DType::BF16: {
        uint16_t h = float_to_bf16(value);
        std::memcpy(out + 2 * i, &h, 2);
        break;
      }
      case kernels::DType::F16: {
        uint16_t h = float_to_f16(value);
        std::memcpy(out + 2 * i, &h, 2);
        break;
      }
      default:
        std::memcpy(out + 4 * i, &value, 4);
    }
  }
}

void write_all(int fd, const void* data, size_t size, const fs::path& path) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = ::write(fd, p, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail("cannot write ", path.string(), ": ", std::strerror(errno));
    }
    p += n;
    size -= static_cast<size_t>(n);
  }
}

// Streams one safetensors file: the data region is produced in 64 MB batches, each filled by
// `threads` threads while the previous batch is being written (double buffering).
void write_random_safetensors(const fs::path& path,
                              const std::vector<const PlannedTensor*>& tensors,
                              kernels::DType dtype, uint64_t seed, int threads) {
  std::vector<TensorSpec> specs;
  for (const auto* t : tensors) specs.push_back(t->spec);
  SafetensorsLayout layout = plan_safetensors(specs, {{"format", "pt"}});
  const size_t element_size = safetensors_dtype_size(specs.empty() ? "F32" : specs[0].dtype);

  std::vector<Piece> pieces;
  for (size_t i = 0; i < tensors.size(); ++i) {
    uint64_t offset = layout.begin[i];
    for (const Segment& s : tensors[i]->segments) {
      for (int64_t first = 0; first < s.numel; first += kChunkElements) {
        int64_t count = std::min(kChunkElements, s.numel - first);
        pieces.push_back({offset, s.stream, first, count, s.ones});
        offset += static_cast<uint64_t>(count) * element_size;
      }
    }
  }

  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) fail("cannot create ", path.string(), ": ", std::strerror(errno));
  std::vector<uint8_t> buffers[2];
  std::future<void> pending;
  try {
    write_all(fd, layout.prefix.data(), layout.prefix.size(), path);
    size_t next = 0;
    for (int batch = 0; next < pieces.size(); ++batch) {
      const uint64_t start = pieces[next].offset;
      size_t end_piece = next;
      while (end_piece < pieces.size() &&
             pieces[end_piece].offset + pieces[end_piece].count * element_size - start <=
                 kWriteBufferBytes) {
        ++end_piece;
      }
      const uint64_t stop =
          pieces[end_piece - 1].offset + pieces[end_piece - 1].count * element_size;
      std::vector<uint8_t>& buffer = buffers[batch % 2];
      buffer.resize(stop - start);
      auto work = [&, next, end_piece](int worker) {
        for (size_t i = next + worker; i < end_piece; i += threads) {
          fill_piece(pieces[i], seed, dtype, buffer.data() + (pieces[i].offset - start));
        }
      };
      std::vector<std::thread> helpers;
      for (int w = 1; w < threads; ++w) helpers.emplace_back(work, w);
      work(0);
      for (auto& h : helpers) h.join();
      if (pending.valid()) pending.get();
      pending = std::async(std::launch::async, [&buffer, fd, &path] {
        write_all(fd, buffer.data(), buffer.size(), path);
      });
      next = end_piece;
    }
    if (pending.valid()) pending.get();
    if (::fsync(fd) != 0) fail("cannot sync ", path.string(), ": ", std::strerror(errno));
  } catch (...) {
    if (pending.valid()) pending.wait();
    ::close(fd);
    throw;
  }
  if (::close(fd) != 0) fail("cannot close ", path.string(), ": ", std::strerror(errno));
}

// GPT-2's byte-to-unicode table: printable bytes map to themselves, the rest to U+0100 upwards.
std::vector<std::string> byte_to_unicode() {
  std::vector<int> code(256, -1);
  for (int b = 0; b < 256; ++b) {
    if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)) code[b] = b;
  }
  int extra = 0;
  for (int b = 0; b < 256; ++b) {
    if (code[b] < 0) code[b] = 256 + extra++;
  }
  std::vector<std::string> out(256);
  for (int b = 0; b < 256; ++b) {
    int cp = code[b];
    std::string s;
    if (cp < 0x80) {
      s += static_cast<char>(cp);
    } else {
      s += static_cast<char>(0xC0 | (cp >> 6));
      s += static_cast<char>(0x80 | (cp & 0x3F));
    }
    out[b] = s;
  }
  return out;
}

struct TokenizerIds {
  int max_id = -1;
  std::optional<int> eos, pad;
};

// Reads just enough of a tokenizer.json to check it fits the vocabulary and to find its special
// ids.
TokenizerIds scan_tokenizer(const std::string& text, const fs::path& path) {
  const json t = parse_json(text, path.string());
  if (!t.is_object() || !t.contains("model") || !t["model"].is_object() ||
      !t["model"].contains("vocab") || !t["model"]["vocab"].is_object()) {
    fail(path.string(), ": not a tokenizer.json (no model.vocab object)");
  }
  TokenizerIds ids;
  auto note = [&](const std::string& token, const json& id) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > (1 << 30)) {
      fail(path.string(), ": token ", token, " has id ", id.dump(), ", not an id >= 0");
    }
    int value = id.get<int>();
    ids.max_id = std::max(ids.max_id, value);
    if (token == "<|endoftext|>") ids.eos = value;
    if (token == "<|padding|>") ids.pad = value;
  };
  for (auto& [token, id] : t["model"]["vocab"].items()) note(token, id);
  if (t.contains("added_tokens") && t["added_tokens"].is_array()) {
    for (const auto& added : t["added_tokens"]) {
      if (added.is_object() && added.contains("content") && added["content"].is_string() &&
          added.contains("id")) {
        note(added["content"].get<std::string>(), added["id"]);
      }
    }
  }
  return ids;
}

// Every preset is a config.json as the hub spells it for the family: parse_config derives what the
// family implies (q/k norm, biases, renormalisation, ...), so a preset and a downloaded config.json
// of the same shape give the same ModelConfig. The tiny shapes: D 64, 2 layers, 4 heads (2
// key/value heads where the family has GQA), 8 experts of width 32, V 1024.
struct Preset {
  const char* name;
  const char* config_json;
};
constexpr Preset kPresets[] = {
    {"tiny", R"({"model_type": "olmoe", "hidden_size": 64, "intermediate_size": 32,
      "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4, "num_experts": 8,
      "num_experts_per_tok": 2, "vocab_size": 1024})"},
    // Whole 256-value blocks in every row (GGUF's K types).
    {"tiny256", R"({"model_type": "olmoe", "hidden_size": 256, "intermediate_size": 256,
      "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4, "num_experts": 8,
      "num_experts_per_tok": 2, "vocab_size": 1024})"},
    {"olmoe-1b-7b", R"({"model_type": "olmoe", "hidden_size": 2048, "intermediate_size": 1024,
      "num_hidden_layers": 16, "num_attention_heads": 16, "num_key_value_heads": 16,
      "num_experts": 64, "num_experts_per_tok": 8, "vocab_size": 50304})"},
    {"qwen2-moe-tiny", R"({"model_type": "qwen2_moe", "hidden_size": 64,
      "moe_intermediate_size": 32, "shared_expert_intermediate_size": 64, "num_hidden_layers": 2,
      "num_attention_heads": 4, "num_key_value_heads": 2, "num_experts": 8,
      "num_experts_per_tok": 4, "vocab_size": 1024})"},
    {"qwen1.5-moe-a2.7b", R"({"model_type": "qwen2_moe", "hidden_size": 2048,
      "moe_intermediate_size": 1408, "shared_expert_intermediate_size": 5632,
      "num_hidden_layers": 24, "num_attention_heads": 16, "num_key_value_heads": 16,
      "num_experts": 60, "num_experts_per_tok": 4, "vocab_size": 151936, "rope_theta": 1000000.0,
      "rms_norm_eps": 1e-06, "max_position_embeddings": 8192})"},
    // heads x head_dim = 128 is not D, as in Qwen3-30B-A3B.
    {"qwen3-moe-tiny", R"({"model_type": "qwen3_moe", "hidden_size": 64,
      "moe_intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
      "num_key_value_heads": 2, "head_dim": 32, "num_experts": 8, "num_experts_per_tok": 2,
      "norm_topk_prob": true, "vocab_size": 1024})"},
    {"qwen3-30b-a3b", R"({"model_type": "qwen3_moe", "hidden_size": 2048,
      "moe_intermediate_size": 768, "num_hidden_layers": 48, "num_attention_heads": 32,
      "num_key_value_heads": 4, "head_dim": 128, "num_experts": 128, "num_experts_per_tok": 8,
      "norm_topk_prob": true, "vocab_size": 151936, "rope_theta": 1000000.0, "rms_norm_eps": 1e-06,
      "max_position_embeddings": 40960})"},
    {"mixtral-tiny", R"({"model_type": "mixtral", "hidden_size": 64, "intermediate_size": 32,
      "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
      "num_local_experts": 8, "num_experts_per_tok": 2, "vocab_size": 1024,
      "rope_theta": 1000000.0})"},
    {"mixtral-8x7b", R"({"model_type": "mixtral", "hidden_size": 4096, "intermediate_size": 14336,
      "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
      "num_local_experts": 8, "num_experts_per_tok": 2, "vocab_size": 32000,
      "rope_theta": 1000000.0, "max_position_embeddings": 32768})"},
    // DeepSeek-V2-Lite's structure in small: 27 layers, because llama.cpp reads q_proj (no
    // q_lora_rank) only at that layer count, the first dense; routed_scaling_factor 2, not 1, so
    // that a test sees it.
    {"deepseek-v2-tiny", R"({"model_type": "deepseek_v2", "hidden_size": 64,
      "intermediate_size": 96, "moe_intermediate_size": 32, "num_hidden_layers": 27,
      "num_attention_heads": 4, "num_key_value_heads": 4, "kv_lora_rank": 32,
      "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 16, "first_k_dense_replace": 1,
      "n_routed_experts": 8, "num_experts_per_tok": 2, "n_shared_experts": 2,
      "routed_scaling_factor": 2.0, "vocab_size": 1024})"},
    {"deepseek-v2-tiny-yarn", R"({"model_type": "deepseek_v2", "hidden_size": 64,
      "intermediate_size": 96, "moe_intermediate_size": 32, "num_hidden_layers": 27,
      "num_attention_heads": 4, "num_key_value_heads": 4, "kv_lora_rank": 32,
      "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 16, "first_k_dense_replace": 1,
      "n_routed_experts": 8, "num_experts_per_tok": 2, "n_shared_experts": 2,
      "routed_scaling_factor": 2.0, "vocab_size": 1024,
      "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
                       "beta_fast": 32, "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707}})"},
    {"deepseek-v2-lite", R"({"model_type": "deepseek_v2", "hidden_size": 2048,
      "intermediate_size": 10944, "moe_intermediate_size": 1408, "num_hidden_layers": 27,
      "num_attention_heads": 16, "num_key_value_heads": 16, "kv_lora_rank": 512,
      "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
      "first_k_dense_replace": 1, "n_routed_experts": 64, "num_experts_per_tok": 6,
      "n_shared_experts": 2, "routed_scaling_factor": 1.0, "vocab_size": 102400,
      "rms_norm_eps": 1e-06, "max_position_embeddings": 163840,
      "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
                       "beta_fast": 32, "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707}})"},
};

}  // namespace

std::vector<std::string> preset_names() {
  std::vector<std::string> names;
  for (const Preset& p : kPresets) names.emplace_back(p.name);
  return names;
}

ModelConfig preset_config(std::string_view preset) {
  for (const Preset& p : kPresets) {
    if (preset != p.name) continue;
    ModelConfig c = parse_config(json::parse(p.config_json), cat("make-model preset ", p.name));
    c.torch_dtype = "bfloat16";
    return c;
  }
  std::string names;
  for (const Preset& p : kPresets) names += (names.empty() ? "" : ", ") + std::string(p.name);
  fail("unknown preset \"", preset, "\" (expected one of ", names, ")");
}

std::vector<TensorSpec> checkpoint_tensor_specs(const ModelConfig& config, kernels::DType dtype,
                                                bool fused) {
  std::vector<TensorSpec> specs;
  for (auto& t : plan_tensors(config, dtype, fused)) specs.push_back(std::move(t.spec));
  return specs;
}

std::string byte_level_tokenizer_json() {
  const auto bytes = byte_to_unicode();
  ordered_json vocab = ordered_json::object();
  for (int b = 0; b < 256; ++b) vocab[bytes[b]] = b;
  vocab["<|endoftext|>"] = kByteTokenizerEos;
  const ordered_json byte_level = {{"type", "ByteLevel"},
                                   {"add_prefix_space", false},
                                   {"trim_offsets", true},
                                   {"use_regex", true}};
  ordered_json t = ordered_json::object();
  t["version"] = "1.0";
  t["truncation"] = nullptr;
  t["padding"] = nullptr;
  t["added_tokens"] = ordered_json::array({{{"id", kByteTokenizerEos},
                                            {"content", "<|endoftext|>"},
                                            {"single_word", false},
                                            {"lstrip", false},
                                            {"rstrip", false},
                                            {"normalized", false},
                                            {"special", true}}});
  t["normalizer"] = {{"type", "NFC"}};
  t["pre_tokenizer"] = byte_level;
  t["post_processor"] = byte_level;
  t["decoder"] = byte_level;
  t["model"] = {{"type", "BPE"},
                {"dropout", nullptr},
                {"unk_token", nullptr},
                {"continuing_subword_prefix", nullptr},
                {"end_of_word_suffix", nullptr},
                {"fuse_unk", false},
                {"byte_fallback", false},
                {"vocab", vocab},
                {"merges", ordered_json::array()}};
  return t.dump(2) + "\n";
}

MakeModelResult make_model(const fs::path& dir, const MakeModelOptions& options) {
  if (dir.empty()) fail("make-model: empty output directory");
  if (fs::exists(dir) && !(fs::is_directory(dir) && fs::is_empty(dir))) {
    fail(dir.string(), ": already exists and is not an empty directory (remove it first)");
  }
  if (options.dtype == kernels::DType::Q8) fail("make-model: dtype must be bf16, f16 or f32");
  if (options.threads < 1) fail("make-model: threads must be >= 1, got ", options.threads);
  if (options.max_shard_bytes == 0) fail("make-model: max shard bytes must be positive");

  ModelConfig config = preset_config(options.preset);
  if (options.layers) {
    if (*options.layers <= 0) fail("make_model: layers must be positive, got ", *options.layers);
    config.num_layers = *options.layers;
  }
  config.torch_dtype = options.dtype == kernels::DType::F32   ? "float32"
                       : options.dtype == kernels::DType::F16 ? "float16"
                                                              : "bfloat16";
  std::string tokenizer_text;
  if (options.tokenizer) {
    tokenizer_text = read_regular_file(*options.tokenizer);
    TokenizerIds ids = scan_tokenizer(tokenizer_text, *options.tokenizer);
    if (ids.max_id >= config.vocab_size) {
      fail(options.tokenizer->string(), ": token id ", ids.max_id, " does not fit vocab_size ",
           config.vocab_size, " of preset ", options.preset);
    }
    config.eos_token_id = ids.eos;
    config.pad_token_id = ids.pad;
  } else {
    tokenizer_text = byte_level_tokenizer_json();
    config.eos_token_id = kByteTokenizerEos;
  }
  // The config we write must be one we accept.
  parse_config(to_json(config), "make-model config");

  fs::path absolute = fs::absolute(dir).lexically_normal();
  if (absolute.filename().empty()) absolute = absolute.parent_path();
  fs::path parent = absolute.parent_path();
  fs::create_directories(parent);
  fs::path temp = parent / cat(".", absolute.filename().string(), ".tmp-", ::getpid());
  fs::remove_all(temp);
  fs::create_directory(temp);

  MakeModelResult result;
  result.config = config;
  result.parameters = count_parameters(config).total;
  try {
    write_file_atomic(temp / "config.json", to_json(config).dump(2) + "\n");
    write_file_atomic(temp / "tokenizer.json", tokenizer_text);

    std::vector<PlannedTensor> tensors = plan_tensors(config, options.dtype, options.fused);
    std::vector<std::vector<const PlannedTensor*>> shards(1);
    uint64_t shard_bytes = 0, total_bytes = 0;
    for (const auto& t : tensors) {
      uint64_t n = t.spec.nbytes();
      if (!shards.back().empty() && shard_bytes + n > options.max_shard_bytes) {
        shards.emplace_back();
        shard_bytes = 0;
      }
      shards.back().push_back(&t);
      shard_bytes += n;
      total_bytes += n;
    }
    std::vector<std::string> names;
    if (shards.size() == 1) {
      names.push_back("model.safetensors");
    } else {
      for (size_t i = 0; i < shards.size(); ++i) {
        char name[64];
        std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", i + 1, shards.size());
        names.push_back(name);
      }
      json weight_map = json::object();
      for (size_t i = 0; i < shards.size(); ++i) {
        for (const auto* t : shards[i]) weight_map[t->spec.name] = names[i];
      }
      json index = {{"metadata", {{"total_size", total_bytes}}}, {"weight_map", weight_map}};
      write_file_atomic(temp / "model.safetensors.index.json", index.dump(2) + "\n");
    }
    for (size_t i = 0; i < shards.size(); ++i) {
      write_random_safetensors(temp / names[i], shards[i], options.dtype, options.seed,
                               options.threads);
      result.weight_bytes += fs::file_size(temp / names[i]);
      result.weight_files.push_back(dir / names[i]);
    }
    if (fs::exists(dir)) fs::remove(dir);  // empty, checked above
    fs::rename(temp, dir);
  } catch (...) {
    std::error_code ignored;
    fs::remove_all(temp, ignored);
    throw;
  }
  return result;
}

}  // namespace bhmoe::model
