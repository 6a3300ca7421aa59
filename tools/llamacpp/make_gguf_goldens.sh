#!/bin/bash
# Records llama.cpp's logits for GGUF files that bhmoe writes, as the golden data of the GGUF tests
# (src/model/testdata/gguf/). The tests regenerate each file with bhmoe, check its SHA-256 against
# the one recorded here (so the logits belong to exactly that file) and compare bhmoe's logits.
#
#   tools/llamacpp/make_gguf_goldens.sh LLAMA_CPP_DIR [BHMOE_BINARY] [OUT_DIR]
#
# LLAMA_CPP_DIR: a llama.cpp checkout configured as DEVELOPERS.md says
#   (cmake -S . -B build -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DCMAKE_BUILD_TYPE=Release);
# the script builds its `llama` library and tools/llamacpp/reference_logits.cpp against it.
# Run from the repository root with ../shared beside it.
set -euo pipefail
llama=$(cd "$1" && pwd)
bhmoe=${2:-build/bhmoe}
out=${3:-src/model/testdata/gguf}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"

source tools/llamacpp/common.sh
build_reference_logits "$llama" "$work/reference_logits"

# The models: the golden tiny-f32 checkpoint (D 64: 32-value blocks) and a seeded tiny256 one
# (D and F 256: whole K-type super-blocks).
"$bhmoe" make-model --preset tiny256 --dtype f32 --seed 7 "$work/tiny256" > /dev/null
declare -A source=([tiny]=../shared/golden/tiny-f32 [tiny256]="$work/tiny256")
declare -A types=([tiny]="f32 bf16 f16 q8_0 q4_0" [tiny256]="f32 q8_0 q4_k q6_k")
ids_tiny="3 17 254 900 41 5 77 1000 12 600 33 8"
ids_tiny256="5 77 300 12 999 4 256 31 8 640 2 100"

entries=()
for model in tiny tiny256; do
  ids_var=ids_$model
  ids=${!ids_var}
  for type in ${types[$model]}; do
    file="$work/$model-$type.gguf"
    "$bhmoe" convert --model "${source[$model]}" --type "$type" --out "$file" > /dev/null
    sha=$(sha256sum "$file" | cut -d' ' -f1)
    fnv=$(fnv1a64 "$file")
    for used in native 4; do
      [ "$used" = 4 ] && [ "$type" != f32 ] && continue  # forced top-k: once per model
      name="$model-$type-$used"
      args=()
      [ "$used" != native ] && args=(--experts-used "$used")
      "$work/reference_logits" "$file" "$out/$name.npy" "${args[@]}" $ids 2> "$work/$name.log" \
        || { cat "$work/$name.log"; exit 1; }
      router=native
      [ "$used" != native ] && router="topk:k=$used"
      entries+=("{\"name\": \"$name\", \"model\": \"$model\", \"type\": \"$type\", \"sha256\": \"$sha\", \"fnv1a64\": \"$fnv\", \"router\": \"$router\", \"ids\": [$(echo $ids | tr ' ' ',')], \"logits\": \"$name.npy\"}")
    done
  done
done

commit=$(git -C "$llama" rev-parse HEAD)
{
  echo "{"
  echo "  \"format\": \"bhmoe-gguf-goldens/1\","
  echo "  \"reference\": \"llama.cpp $commit (CPU, GGML_NATIVE=ON, 1 thread, fp32 KV cache, one batch from position 0)\","
  echo "  \"made_by\": \"tools/llamacpp/make_gguf_goldens.sh\","
  echo "  \"models\": {\"tiny\": \"bhmoe convert --model ../shared/golden/tiny-f32 --type TYPE\", \"tiny256\": \"bhmoe make-model --preset tiny256 --dtype f32 --seed 7, then bhmoe convert --type TYPE\"},"
  echo "  \"cases\": ["
  print_cases "${entries[@]}"
  echo "  ]"
  echo "}"
} > "$out/goldens.json"
echo "wrote $out/goldens.json (${#entries[@]} cases, llama.cpp $commit)"
