// Weights materialisation for `weights` bf16 / q8: the attention, expert and lm_head matrices are
// converted once into an owned huge-page arena, as Q8 (quantised) or BF16 (copied, or rounded from
// f32/f16); norms, router and embedding stay as stored (they are small or read one row at a time).
// Huge pages spare the kernels the TLB misses of the 4 KiB-paged file mapping: measured +14%
// prefill for the bf16 copy on this project's VM (decode, bound by the VM's drifting memory
// bandwidth, showed no difference; README, Figures).
#pragma once

#include "model/weights.h"
#include "util/memory.h"

namespace bhmoe::model {

struct MaterializedWeights {
  Weights weights;       // the stored views, with the converted matrices pointing into arena
  HugePageBuffer arena;  // owns the converted matrices
};

// Converts `stored` to `dtype` (DType::BF16 or DType::Q8) with all hardware threads, each taking
// whole matrices, and drops each stored matrix's pages from the resident set once converted (the
// mapping is read-only and file-backed, so nothing is lost), keeping RSS near the copy's size.
// Throws bhmoe::Error naming the tensor when a Q8 matrix's columns are not a multiple of the block.
MaterializedWeights materialize_weights(const Weights& stored, DType dtype);

}  // namespace bhmoe::model
