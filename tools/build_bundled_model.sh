#!/usr/bin/env bash
# Rebuilds the bundled model models/bhmoe-tiny-moe from nothing: corpus -> tokenizer -> training ->
# export (weights, tokenizer, calibration, held-out text, reference logits, model card).
#
#   tools/build_bundled_model.sh [--seed N] [--steps N] [--max-minutes M] [--out DIR] [--work DIR]
#
# Needs Debian's python3-torch and python3-numpy for /usr/bin/python3 (a development tool: neither
# is needed to build, test or run bhmoe). Single-threaded and deterministic for a given seed unless
# --max-minutes cuts training short. About 50 minutes on one busy core.
# When the engine is built (BHMOE_BINARY or build/bhmoe exists), calibration.json is made by
# `bhmoe calibrate` from calibration.txt (and the model card's BH figures use it); otherwise
# export.py fits the same kind of ECDF in Python.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
python=/usr/bin/python3
seed=1
steps=420
max_minutes=0
out="$root/models/bhmoe-tiny-moe"
work="$root/build-bundled-model"
while [ $# -gt 0 ]; do
  case "$1" in
    --seed) seed=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --max-minutes) max_minutes=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --work) work=$2; shift 2 ;;
    *) echo "build_bundled_model: unknown argument '$1'" >&2; exit 2 ;;
  esac
done

"$python" -c 'import torch, numpy' 2>/dev/null || {
  echo "build_bundled_model: $python lacks torch/numpy: apt-get install python3-torch python3-numpy" >&2
  exit 1
}

mkdir -p "$work" "$out"
"$python" "$here/make_corpus.py" --seed "$seed" --out "$work/corpus"
"$python" "$here/train_tokenizer.py" --corpus "$work/corpus" --vocab-size 2048 --out "$work/tokenizer.json"
"$python" "$here/train_moe.py" --corpus "$work/corpus" --tokenizer "$work/tokenizer.json" \
  --work "$work/train" --seed "$seed" --steps "$steps" --max-minutes "$max_minutes"
export_args=(--work "$work/train" --corpus "$work/corpus" --tokenizer "$work/tokenizer.json" --out "$out")
bhmoe=${BHMOE_BINARY:-$root/build/bhmoe}
if [ -x "$bhmoe" ]; then
  # The shipped calibration is the engine's own: ECDF of the raw router logits of all of
  # calibration.txt, in windows of the trained context (256 tokens).
  "$python" "$here/export.py" "${export_args[@]}" --weights-only
  "$bhmoe" calibrate --model "$out" --text-file "$out/calibration.txt" --out "$work/calibration.json" \
    --method ecdf --max-length 256 --max-tokens 1000000 --threads 1
  "$python" "$here/export.py" "${export_args[@]}" --calibration "$work/calibration.json"
  echo "build_bundled_model: calibration.json made by $bhmoe calibrate"
else
  "$python" "$here/export.py" "${export_args[@]}"
  echo "build_bundled_model: no bhmoe binary at $bhmoe: calibration.json is export.py's Python ECDF"
fi
du -sh "$out"
