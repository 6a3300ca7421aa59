// llama.cpp's logits for fixed token ids, written as a NumPy .npy [T, V] float32: the independent
// reference the GGUF goldens are recorded from (tools/llamacpp/make_gguf_goldens.sh builds and runs
// it against a llama.cpp checkout). Not part of bhmoe's build.
//
//   reference_logits MODEL.gguf OUT.npy [--experts-used K] ID [ID ...]
//
// One batch of every id from position 0, logits at every position, 1 thread, no flash attention,
// an fp32 KV cache.
// --experts-used K overrides the file's <arch>.expert_used_count (forced top-k routing).
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "llama.h"

namespace {

int usage() {
  std::fprintf(stderr, "usage: reference_logits MODEL.gguf OUT.npy [--experts-used K] ID [ID ...]\n");
  return 2;
}

// A version 1.0 .npy header for float32 [rows, cols], padded to a multiple of 64 bytes.
std::string npy_header(int64_t rows, int64_t cols) {
  std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + std::to_string(rows) +
                     ", " + std::to_string(cols) + "), }";
  const size_t unpadded = 10 + dict.size() + 1;
  dict += std::string((64 - unpadded % 64) % 64, ' ') + "\n";
  std::string header = "\x93NUMPY";
  header += static_cast<char>(1);
  header += static_cast<char>(0);
  header += static_cast<char>(dict.size() & 0xff);
  header += static_cast<char>((dict.size() >> 8) & 0xff);
  return header + dict;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) return usage();
  int first_id = 3;
  long experts_used = 0;
  if (std::string(argv[3]) == "--experts-used") {
    if (argc < 6) return usage();
    experts_used = std::atol(argv[4]);
    first_id = 5;
  }
  std::vector<llama_token> ids;
  for (int i = first_id; i < argc; ++i) ids.push_back(static_cast<llama_token>(std::atoi(argv[i])));

  llama_backend_init();
  llama_model_params model_params = llama_model_default_params();
  model_params.use_mmap = true;
  std::vector<llama_model_kv_override> overrides(2);  // the last one all zero: the list's end
  if (experts_used > 0) {
    // The key is the file's architecture's: read it from a vocabulary-only load first.
    llama_model_params probe_params = model_params;
    probe_params.vocab_only = true;
    llama_model* probe = llama_model_load_from_file(argv[1], probe_params);
    char arch[64] = {0};
    if (!probe || llama_model_meta_val_str(probe, "general.architecture", arch, sizeof arch) < 0) {
      std::fprintf(stderr, "cannot read general.architecture of %s\n", argv[1]);
      return 1;
    }
    llama_model_free(probe);
    overrides[0].tag = LLAMA_KV_OVERRIDE_TYPE_INT;
    std::snprintf(overrides[0].key, sizeof overrides[0].key, "%s.expert_used_count", arch);
    overrides[0].val_i64 = experts_used;
    model_params.kv_overrides = overrides.data();
  }
  llama_model* model = llama_model_load_from_file(argv[1], model_params);
  if (!model) {
    std::fprintf(stderr, "cannot load %s\n", argv[1]);
    return 1;
  }
  llama_context_params context_params = llama_context_default_params();
  context_params.n_ctx = static_cast<uint32_t>(ids.size() + 8);
  context_params.n_batch = static_cast<uint32_t>(ids.size());
  context_params.n_ubatch = static_cast<uint32_t>(ids.size());
  context_params.n_threads = 1;
  context_params.n_threads_batch = 1;
  context_params.flash_attn = false;
  // An fp32 KV cache (llama.cpp's default is f16, which rounds keys and values to 11 bits).
  context_params.type_k = GGML_TYPE_F32;
  context_params.type_v = GGML_TYPE_F32;
  llama_context* ctx = llama_init_from_model(model, context_params);
  if (!ctx) {
    std::fprintf(stderr, "cannot create a context\n");
    return 1;
  }
  const int n = static_cast<int>(ids.size());
  llama_batch batch = llama_batch_init(n, 0, 1);
  for (int i = 0; i < n; ++i) {
    batch.token[i] = ids[static_cast<size_t>(i)];
    batch.pos[i] = i;
    batch.n_seq_id[i] = 1;
    batch.seq_id[i][0] = 0;
    batch.logits[i] = 1;
  }
  batch.n_tokens = n;
  if (llama_decode(ctx, batch) != 0) {
    std::fprintf(stderr, "llama_decode failed\n");
    return 1;
  }
  const int vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
  FILE* out = std::fopen(argv[2], "wb");
  if (!out) {
    std::fprintf(stderr, "cannot write %s\n", argv[2]);
    return 1;
  }
  const std::string header = npy_header(n, vocab);
  std::fwrite(header.data(), 1, header.size(), out);
  for (int i = 0; i < n; ++i) {
    const float* row = llama_get_logits_ith(ctx, i);
    std::fwrite(row, sizeof(float), static_cast<size_t>(vocab), out);
  }
  if (std::fclose(out) != 0) {
    std::fprintf(stderr, "writing %s failed\n", argv[2]);
    return 1;
  }
  llama_batch_free(batch);
  llama_free(ctx);
  llama_model_free(model);
  llama_backend_free();
  return 0;
}
