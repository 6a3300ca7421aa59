#!/bin/bash
# Records the golden logits of the Qwen2-MoE, Qwen3-MoE, Mixtral and DeepSeek-V2 families
# (src/model/testdata/families/), from two references that share no code with bhmoe's engine:
# - llama.cpp (qwen2moe, llama and deepseek2 GGUF files that `bhmoe convert` writes; f32 native
#   and forced top-k, bf16, q8_0), through tools/llamacpp/reference_logits.cpp;
# - tools/moe_reference.py, a float64 NumPy forward pass written from the Hugging Face modelling
#   code, on the Hugging Face folders (native, forced top-k, Benjamini-Hochberg with a calibration
#   of its own router logits) — the only reference for Qwen3-MoE, which the llama.cpp snapshot
#   predates.
# The models are `bhmoe make-model --preset <family>-tiny --dtype f32 --seed 7`; the tests rebuild
# them (and the GGUF files) and check the FNV-1a 64 of each file against the one recorded here, so
# the logits belong to exactly those weights.
#
#   tools/make_family_goldens.sh LLAMA_CPP_DIR [BHMOE_BINARY] [OUT_DIR]
#
# LLAMA_CPP_DIR: a llama.cpp checkout configured as DEVELOPERS.md says (see make_gguf_goldens.sh).
# Run from the repository root.
set -euo pipefail
llama=$(cd "$1" && pwd)
bhmoe=${2:-build/bhmoe}
out=${3:-src/model/testdata/families}
python=/usr/bin/python3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"

source tools/llamacpp/common.sh
build_reference_logits "$llama" "$work/reference_logits"

ids="5 77 300 12 999 4 256 31 8 640 2 100"
ids_json="[$(echo $ids | tr ' ' ',')]"
# The calibration's ids: 96 fixed pseudo-random ids (not the test ids).
calib_ids=$("$python" -c 'import random; r = random.Random(11); print(" ".join(str(r.randrange(1024)) for _ in range(96)))')
declare -A forced=([qwen2-moe-tiny]=2 [qwen3-moe-tiny]=4 [mixtral-tiny]=4 [deepseek-v2-tiny]=4
                   [deepseek-v2-tiny-yarn]=4)
declare -A renorm=([qwen2-moe-tiny]=false [qwen3-moe-tiny]=true [mixtral-tiny]=true
                   [deepseek-v2-tiny]=false [deepseek-v2-tiny-yarn]=false)
declare -A llamacpp=([qwen2-moe-tiny]=1 [qwen3-moe-tiny]=0 [mixtral-tiny]=1 [deepseek-v2-tiny]=1
                     [deepseek-v2-tiny-yarn]=1)
bh="bh:alpha=0.2,max_k=6,min_k=1"

entries=()
add() {  # name model source(hf|gguf type) reference router file-fnv mean_experts
  entries+=("{\"name\": \"$1\", \"model\": \"$2\", \"source\": \"$3\", \"reference\": \"$4\", \"router\": \"$5\", \"fnv1a64\": \"$6\", \"mean_experts\": $7, \"ids\": $ids_json, \"logits\": \"$1.npy\"}")
}
for model in qwen2-moe-tiny qwen3-moe-tiny mixtral-tiny deepseek-v2-tiny deepseek-v2-tiny-yarn; do
  dir="$work/$model"
  "$bhmoe" make-model --preset "$model" --dtype f32 --seed 7 "$dir" > /dev/null
  hf_fnv=$(fnv1a64 "$dir/model.safetensors")
  k=${forced[$model]}
  topk="topk:k=$k"
  [ "${renorm[$model]}" = true ] && topk="$topk,renorm=true"
  "$python" tools/moe_reference.py calibrate "$dir" "$out/$model-calibration.json" --ids "$calib_ids" \
    --shrink 0.5
  for router in native "$topk" "$bh"; do
    case $router in native) tag=native ;; topk*) tag=top$k ;; bh*) tag=bh ;; esac
    name="$model-hf-$tag"
    mean=$("$python" tools/moe_reference.py logits "$dir" "$out/$name.npy" --ids "$ids" \
             --router "$router" --calibration "$out/$model-calibration.json" |
           "$python" -c 'import json, sys; print(json.load(sys.stdin)["mean_experts"])')
    add "$name" "$model" hf moe_reference.py "$router" "$hf_fnv" "$mean"
  done
  [ "${llamacpp[$model]}" = 1 ] || continue
  for type in f32 bf16 q8_0; do
    file="$work/$model-$type.gguf"
    "$bhmoe" convert --model "$dir" --type "$type" --out "$file" > /dev/null
    gguf_fnv=$(fnv1a64 "$file")
    for router in native "$topk"; do
      [ "$router" != native ] && [ "$type" != f32 ] && continue  # forced top-k: once per model
      args=()
      tag=native
      [ "$router" != native ] && args=(--experts-used "$k") && tag=top$k
      name="$model-$type-$tag"
      "$work/reference_logits" "$file" "$out/$name.npy" "${args[@]}" $ids 2> "$work/$name.log" \
        || { cat "$work/$name.log"; exit 1; }
      add "$name" "$model" "gguf $type" llama.cpp "$router" "$gguf_fnv" null
    done
  done
done

commit=$(git -C "$llama" rev-parse HEAD)
{
  echo "{"
  echo "  \"format\": \"bhmoe-family-goldens/1\","
  echo "  \"references\": {\"llama.cpp\": \"llama.cpp $commit (CPU, GGML_NATIVE=ON, 1 thread, fp32 KV cache, one batch from position 0)\", \"moe_reference.py\": \"tools/moe_reference.py (float64 NumPy, from the Hugging Face modelling code)\"},"
  echo "  \"made_by\": \"tools/make_family_goldens.sh\","
  echo "  \"models\": \"bhmoe make-model --preset MODEL --dtype f32 --seed 7; GGUF: bhmoe convert --type TYPE; calibration: moe_reference.py calibrate --shrink 0.5 over 96 ids of random.Random(11)\","
  echo "  \"cases\": ["
  print_cases "${entries[@]}"
  echo "  ]"
  echo "}"
} > "$out/goldens.json"
echo "wrote $out/goldens.json (${#entries[@]} cases, llama.cpp $commit)"
