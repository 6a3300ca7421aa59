// The inference engine's public API: an immutable Model shared by all sequences, and a Session per
// sequence (KV cache and buffers allocated once) whose router can be any routing-library rule.
// Only the experts a router selects are computed.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "kernels/thread_pool.h"
#include "model/checkpoint.h"
#include "model/config.h"
#include "model/tokenizer.h"
#include "routing/router.h"

namespace bhmoe::model {

// What a router decided for one token in one layer. Pointers are valid only during the callback.
// Layers are routing layers: the layers with a router, numbered from 0 (ModelConfig::
// num_routed_layers; DeepSeek-V2's routing layer r is decoder layer first_k_dense_replace + r, its
// leading dense layers are never reported). Every other family routes in every layer, so the two
// numberings agree.
struct RouterEvent {
  int layer = 0;                  // routing layer
  int64_t position = 0;           // position of the token in the sequence
  const float* logits = nullptr;  // [num_experts] raw router logits
  int num_experts = 0;
  const int32_t* ids = nullptr;    // [count] selected experts, highest probability first
  const float* weights = nullptr;  // [count]
  int count = 0;
};

// Receives every routing decision. When no observer is set the engine does no extra work.
class RouterObserver {
 public:
  virtual ~RouterObserver() = default;
  virtual void on_route(const RouterEvent& event) = 0;
};

struct ModelOptions {
  // "native": the stored matrices, zero-copy from the mmapped file (bf16/f16/f32); "bf16": a bf16
  // copy (rounded from f32/f16) in huge pages; "q8": quantised at load, in huge pages. The copies
  // cover attention, experts and lm_head; the rest stays mapped.
  std::string weights = "native";
};

// Checkpoint + tokenizer; immutable after load, shared by every Session.
class Model {
 public:
  static std::shared_ptr<const Model> load(const std::filesystem::path& dir,
                                           const ModelOptions& options = {});
  virtual ~Model() = default;
  virtual const ModelConfig& config() const = 0;
  virtual const Weights& weights() const = 0;
  virtual const Tokenizer& tokenizer() const = 0;
  virtual const std::filesystem::path& dir() const = 0;
  // "f32", "f16" or "bf16" for native weights (the stored dtype), "bf16-copy" for weights "bf16",
  // "q8" for weights "q8".
  virtual std::string weights_kind() const = 0;
  // Throws, naming the file, when a weight file changed on disk since load (util/file.h
  // require_unchanged). Long jobs call it before each result they write.
  virtual void require_weight_files_unchanged() const = 0;
};

// Largest prefill chunk: big enough that a chunk is compute-bound on the experts (each expert's
// weights read once per chunk), small enough that the activation buffers stay a few MB. Callers
// that take logits of long sequences piece by piece use it as their piece size.
inline constexpr int64_t kMaxChunk = 256;

class Session {
 public:
  // router == nullptr: the model's native rule (config's top-k, renorm per norm_topk_prob).
  // The router must outlive the session; its num_experts() must equal the model's.
  // pool == nullptr: single-threaded. max_tokens bounds the KV cache; a cache larger than the
  // machine's physical memory is refused (bhmoe::Error with the sizes) before any allocation.
  Session(std::shared_ptr<const Model> model, const routing::Router* router,
          kernels::ThreadPool* pool, int64_t max_tokens = 4096);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  void set_router(const routing::Router* router);  // nullptr: native
  void set_observer(RouterObserver* observer);     // nullptr: none
  void reset();                                    // empties the KV cache
  int64_t position() const;                        // tokens in the KV cache
  // Keeps the first `position` tokens of the KV cache (0 <= position <= position(); anything else
  // throws bhmoe::Error) and forgets the rest, so one prefilled prefix serves several
  // continuations. last_logits() is unchanged until the next prefill or decode.
  void truncate(int64_t position);

  // Runs `tokens` through the model after what is cached (batched prefill). If all_logits is not
  // null it receives [tokens.size(), V] logits, one row per position; last_logits() always holds
  // the final position's. Throws bhmoe::Error for ids outside the vocabulary, an empty span or a
  // full cache.
  void prefill(std::span<const int32_t> tokens, float* all_logits = nullptr);
  void decode(int32_t token);        // one token; same as prefill of one, on the decode path
  const float* last_logits() const;  // [V]

  const Model& model() const;
  int64_t max_tokens() const;
  const routing::Router& router() const;  // the router in use (the native one when none was set)

  // Running totals of routing decisions since construction or reset_routing_totals() (kept by the
  // engine at the cost of one add per token and layer): experts selected per routing layer (see
  // RouterEvent), summed over tokens, and the number of tokens routed (each token is routed once
  // in every routing layer).
  const std::vector<int64_t>& selected_experts_per_layer() const;
  int64_t routed_tokens() const;
  void reset_routing_totals();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The verbs built on a Session (generate, score_tokens, collect_router_logits, make_model_router)
// are in model/verbs.h.

}  // namespace bhmoe::model
