#include "model/materialize.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <vector>

#include "kernels/ops.h"
#include "kernels/thread_pool.h"
#include "util/error.h"

namespace bhmoe::model {
namespace {

// The stored copy of a converted matrix is never read again: drop its pages from this process's
// resident set (the mapping is read-only and file-backed, so this discards nothing).
void release_pages(const kernels::Matrix& m) {
  const long page = sysconf(_SC_PAGESIZE);
  if (page <= 0) return;
  const auto begin = reinterpret_cast<uintptr_t>(m.data);
  const auto end = begin + static_cast<uintptr_t>(m.rows) * kernels::row_bytes(m.dtype, m.cols);
  const uintptr_t first = (begin + page - 1) / page * page;
  const uintptr_t last = end / page * page;
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
}

// One matrix to convert: the view to repoint, and where its values (and Q8 scales) go in the arena.
struct Conversion {
  TensorView* target;
  uint8_t* values;
  float* scales;  // Q8 only
};

std::vector<TensorView*> converted_matrices(Weights& w) {
  std::vector<TensorView*> targets;
  for (auto& layer : w.layers) {
    for (TensorView* m :
         {&layer.q_proj, &layer.k_proj, &layer.v_proj, &layer.kv_a_proj, &layer.kv_b_proj,
          &layer.o_proj, &layer.shared_gate_proj, &layer.shared_up_proj, &layer.shared_down_proj,
          &layer.mlp_gate, &layer.mlp_up, &layer.mlp_down}) {
      if (m->data) targets.push_back(m);  // only the projections the family (and layer) has
    }
    for (auto& expert : layer.experts) {
      for (TensorView* m : {&expert.gate, &expert.up, &expert.down}) targets.push_back(m);
    }
  }
  targets.push_back(&w.lm_head);
  return targets;
}

}  // namespace

MaterializedWeights materialize_weights(const Weights& stored, DType dtype) {
  const char* what = dtype == DType::Q8 ? "weights q8" : "weights bf16";
  MaterializedWeights out;
  out.weights = stored;
  const std::vector<TensorView*> targets = converted_matrices(out.weights);
  if (dtype == DType::Q8) {
    for (const TensorView* m : targets) {
      if (m->cols % kernels::kQ8Block != 0) {
        fail(what, ": tensor ", m->name, " has ", m->cols, " columns, not a multiple of ",
             kernels::kQ8Block);
      }
    }
  }
  // Values then (Q8) scales of each matrix, each 64-byte aligned.
  const auto aligned = [](size_t n) { return (n + 63) / 64 * 64; };
  const auto value_bytes = [&](const TensorView* m) {
    return aligned(static_cast<size_t>(m->numel()) * kernels::dtype_size(dtype));
  };
  const auto scale_bytes = [&](const TensorView* m) {
    return dtype == DType::Q8
               ? aligned(static_cast<size_t>(m->numel() / kernels::kQ8Block) * sizeof(float))
               : size_t{0};
  };
  size_t total = 0;
  for (const TensorView* m : targets) total += value_bytes(m) + scale_bytes(m);
  out.arena = HugePageBuffer(total, what);
  std::vector<Conversion> conversions;
  conversions.reserve(targets.size());
  size_t offset = 0;
  for (TensorView* m : targets) {
    Conversion c{m, out.arena.data() + offset, nullptr};
    offset += value_bytes(m);
    if (dtype == DType::Q8) {
      c.scales = reinterpret_cast<float*>(out.arena.data() + offset);
      offset += scale_bytes(m);
    }
    conversions.push_back(c);
  }
  // Converting ~7 B parameters is worth all cores; each thread takes whole matrices. The views
  // still point at the stored tensors while this runs.
  kernels::ThreadPool pool(0);
  pool.parallel_for(static_cast<int64_t>(conversions.size()), [&](int, int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const Conversion& c = conversions[static_cast<size_t>(i)];
      const kernels::Matrix& src = *c.target;
      if (dtype == DType::Q8) {
        kernels::quantize_q8(src, reinterpret_cast<int8_t*>(c.values), c.scales);
      } else {
        kernels::convert_to_bf16(src, reinterpret_cast<uint16_t*>(c.values));
      }
      // At once, so the peak stays near the copy + one matrix per thread. A
      // tied lm_head is the embedding, which stays in use.
      if (src.data != stored.embed.data) release_pages(src);
    }
  });
  for (const Conversion& c : conversions) {
    TensorView& t = *c.target;
    if (dtype == DType::Q8) {
      const kernels::Matrix q8 =
          kernels::q8_matrix(reinterpret_cast<const int8_t*>(c.values), c.scales, t.rows, t.cols);
      t.data = q8.data;
      t.dtype = q8.dtype;
      t.scales = q8.scales;
    } else {
      t.data = c.values;
      t.dtype = DType::BF16;
      t.scales = nullptr;
    }
  }
  return out;
}

}  // namespace bhmoe::model
