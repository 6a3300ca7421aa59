// The model's weights: named, non-owning views into the mmapped safetensors file(s) (or, for
// --weights q8, into buffers quantised once at load). Immutable after loading; shared by every
// sequence and thread.
#pragma once

#include <string>
#include <vector>

#include "kernels/matrix.h"

namespace bhmoe::model {

using kernels::DType;

// A checkpoint tensor as a kernel matrix, with its name for messages. Vectors have rows == 1.
struct TensorView : kernels::Matrix {
  std::string name;
};

// One expert's SwiGLU FFN. With the fused transformers-5 layout these point into the fused tensors.
struct ExpertWeights {
  TensorView gate;  // [F, D]
  TensorView up;    // [F, D]
  TensorView down;  // [D, F]
};

// A decoder layer. Tensors a family does not have (tensor_names.h: Needs) are empty views
// (data == nullptr).
struct LayerWeights {
  TensorView input_norm;  // [1, D]   input_layernorm
  TensorView q_proj;      // [Dq, D]  (Dq = num_heads * head_dim)
  TensorView k_proj;      // [Dkv, D] (Dkv = num_kv_heads * head_dim)
  TensorView v_proj;      // [Dkv, D]
  TensorView q_bias;      // [1, Dq]  qkv_bias only
  TensorView k_bias;      // [1, Dkv] qkv_bias only
  TensorView v_bias;      // [1, Dkv] qkv_bias only
  // DeepSeek-V2's multi-head latent attention (config.h), instead of k_proj and v_proj.
  TensorView kv_a_proj;  // [kv_lora_rank + qk_rope, D] self_attn.kv_a_proj_with_mqa
  TensorView kv_a_norm;  // [1, kv_lora_rank]         self_attn.kv_a_layernorm
  TensorView kv_b_proj;  // [H * (qk_nope + v_head), kv_lora_rank]
  TensorView o_proj;     // [D, H * v_head] (v_head = head_dim but for MLA)
  TensorView q_norm;     // [1, Dq] over the whole projection (OLMoE), [1, hd] per head (Qwen3)
  TensorView k_norm;     // [1, Dkv] (OLMoE), [1, hd] (Qwen3)
  TensorView post_norm;  // [1, D]   post_attention_layernorm
  TensorView router;     // [N, D]   mlp.gate; empty in a dense layer
  std::vector<ExpertWeights> experts;  // N; none in a dense layer
  // The shared expert (Fs = shared_expert_intermediate_size) of Qwen2-MoE (with its sigmoid gate)
  // and DeepSeek-V2 (the n_shared_experts as one FFN, no gate); MoE layers only.
  TensorView shared_gate_proj;  // [Fs, D]
  TensorView shared_up_proj;    // [Fs, D]
  TensorView shared_down_proj;  // [D, Fs]
  TensorView shared_gate;       // [1, D]  mlp.shared_expert_gate
  // DeepSeek-V2's leading dense layers (first_k_dense_replace): a SwiGLU MLP of width Fd
  // (config.json's intermediate_size) instead of router and experts.
  TensorView mlp_gate;  // [Fd, D]
  TensorView mlp_up;    // [Fd, D]
  TensorView mlp_down;  // [D, Fd]
};

struct Weights {
  TensorView embed;  // [V, D] model.embed_tokens
  std::vector<LayerWeights> layers;
  TensorView final_norm;  // [1, D] model.norm
  TensorView lm_head;     // [V, D] (the embedding when tie_word_embeddings)
};

}  // namespace bhmoe::model
