// The model's weights: named, non-owning views into the mmapped safetensors file(s).
// Weights are immutable after loading and shared by every sequence and thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace bhmoe::model {

enum class DType : uint8_t { F32, F16, BF16, Q8 };

const char* dtype_name(DType dtype);
size_t dtype_size(DType dtype);  // bytes per element; Q8 is 1 (scales are separate)

// A row-major matrix [rows, cols] (a vector has rows == 1) in one dtype.
// For Q8, `data` holds int8 values and `scales` one float per kQ8Block consecutive values of a row.
struct TensorView {
  const void* data = nullptr;
  DType dtype = DType::F32;
  int64_t rows = 0;
  int64_t cols = 0;
  const float* scales = nullptr;  // Q8 only
  std::string name;               // checkpoint tensor name, for messages

  int64_t numel() const { return rows * cols; }
  bool empty() const { return data == nullptr; }
};

inline constexpr int kQ8Block = 32;

// One expert's SwiGLU FFN. With the fused transformers-5 layout these point into the fused tensors.
struct ExpertWeights {
  TensorView gate;  // [F, D]
  TensorView up;    // [F, D]
  TensorView down;  // [D, F]
};

struct LayerWeights {
  TensorView input_norm;   // [D]   input_layernorm
  TensorView q_proj;       // [D, D]
  TensorView k_proj;       // [D_kv, D]  (D_kv = num_kv_heads * head_dim)
  TensorView v_proj;       // [D_kv, D]
  TensorView o_proj;       // [D, D]
  TensorView q_norm;       // [D]   over the whole projection, not per head
  TensorView k_norm;       // [D_kv]
  TensorView post_norm;    // [D]   post_attention_layernorm
  TensorView router;       // [N, D] mlp.gate
  std::vector<ExpertWeights> experts;  // N
};

struct Weights {
  TensorView embed;        // [V, D] model.embed_tokens
  std::vector<LayerWeights> layers;
  TensorView final_norm;   // [D]   model.norm
  TensorView lm_head;      // [V, D] (the embedding when tie_word_embeddings)
};

}  // namespace bhmoe::model
