#!/usr/bin/env bash
# Rebuilds the bundled model models/bhmoe-tiny-moe from package names: corpus -> tokenizer ->
# training -> export (weights, tokenizer, texts, calibration, reference logits, model card).
#
#   tools/build_bundled_model.sh [--seed N] [--steps N] [--replan FIRST@STEP] [--max-minutes M]
#                                [--continue-steps N] [--continue-lr LR] [--continue-warmup N]
#                                [--out DIR] [--work DIR] [--baseline-model DIR] [--export-only]
#
# The bundled model's schedule, in two runs:
# 1. a cosine planned over 2600 steps, replanned at step 720 to end at step 1600 (train_moe.py
#    --replan-steps: the rate continues from where it was) so that training fitted the time
#    available (work folder train/). The defaults (--steps 1600 --replan 2600@720) repeat it bit for
#    bit; --replan none trains one plan of --steps.
# 2. a continued pre-training from run 1's weights with a fresh optimiser state (its optimiser state
#    was not kept across machines): train_moe.py --init-from train/snapshot, the rate warmed up again
#    over 50 steps to 1e-3 and decayed by cosine to step 2450 (work folder train2/), so the model
#    sees 20.1 M tokens in all. --continue-steps 0 stops after run 1.
#
# Training takes hours on a CPU core. It checkpoints every 5 minutes into --work and resumes from
# there when run again with the same settings (bit for bit, on one thread), so the script can be
# stopped and rerun any number of times; --max-minutes stops it cleanly. --work holds optimiser state:
# keep it outside the repository (default: build-bundled-model/, which git ignores).
#
# Needs Debian's python3-torch, python3-numpy and an optimised BLAS for torch (libopenblas0: with the
# reference BLAS, training is about 20x slower), all installed by scripts/install-deps.sh --tools.
# When the engine is built (BHMOE_BINARY or build/bhmoe), calibration.json is made by
# `bhmoe calibrate` on calibration.txt; otherwise export.py fits the same kind of ECDF in Python.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
python=/usr/bin/python3
seed=1
steps=1600
replan=2600@720
max_minutes=0
out="$root/models/bhmoe-tiny-moe"
work="$root/build-bundled-model"
baseline=()
export_only=0
continue_steps=2450
continue_lr=1e-3
continue_warmup=50
while [ $# -gt 0 ]; do
  case "$1" in
    --continue-steps) continue_steps=$2; shift 2 ;;
    --continue-lr) continue_lr=$2; shift 2 ;;
    --continue-warmup) continue_warmup=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --replan) replan=$2; shift 2 ;;
    --max-minutes) max_minutes=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --work) work=$2; shift 2 ;;
    --baseline-model) baseline=(--baseline-model "$2"); shift 2 ;;
    --export-only) export_only=1; shift ;;
    *) echo "build_bundled_model: unknown argument '$1'" >&2; exit 2 ;;
  esac
done

"$python" -c 'import torch, numpy' 2>/dev/null || {
  echo "build_bundled_model: $python lacks torch/numpy: run scripts/install-deps.sh --tools" >&2
  exit 1
}

mkdir -p "$work" "$out"
work=$(realpath "$work") out=$(realpath "$out")  # the calibration step runs inside $out
if [ ! -f "$work/corpus/manifest.json" ]; then
  "$python" "$here/make_corpus.py" --seed "$seed" --out "$work/corpus"
fi
if [ ! -f "$work/tokenizer.json" ]; then
  "$python" "$here/train_tokenizer.py" --corpus "$work/corpus" --vocab-size 8192 --out "$work/tokenizer.json"
fi
if [ "$export_only" = 0 ]; then
  train=("$python" "$here/train_moe.py" --corpus "$work/corpus" --tokenizer "$work/tokenizer.json"
         --work "$work/train" --seed "$seed" --max-minutes "$max_minutes")
  if [ "$replan" != none ]; then
    first=${replan%@*} at=${replan#*@}
    done_steps=$("$python" -c 'import json,sys
try: print(json.load(open(sys.argv[1]))["steps_done"])
except OSError: print(0)' "$work/train/train_log.json")
    if [ "$done_steps" -lt "$at" ]; then
      "${train[@]}" --steps "$first" --stop-at-step "$at"
      done_steps=$("$python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["steps_done"])' \
                   "$work/train/train_log.json")
      if [ "$done_steps" -lt "$at" ]; then exit 0; fi  # --max-minutes stopped it first: run again to go on
    fi
    "${train[@]}" --steps "$steps" --replan-steps
  else
    "${train[@]}" --steps "$steps"
  fi
  done_steps=$("$python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["steps_done"])' \
               "$work/train/train_log.json")
  if [ "$done_steps" -lt "$steps" ]; then exit 0; fi  # --max-minutes stopped run 1: run again to go on
  if [ "$continue_steps" -gt 0 ]; then
    "$python" "$here/train_moe.py" --corpus "$work/corpus" --tokenizer "$work/tokenizer.json" \
      --work "$work/train2" --seed "$seed" --max-minutes "$max_minutes" --init-from "$work/train/snapshot" \
      --steps "$continue_steps" --lr "$continue_lr" --warmup "$continue_warmup"
  fi
fi
final="$work/train"
[ "$continue_steps" -gt 0 ] && final="$work/train2"
export_args=(--work "$final" --corpus "$work/corpus" --tokenizer "$work/tokenizer.json" --out "$out"
             "${baseline[@]}")
bhmoe=$(realpath -m "${BHMOE_BINARY:-$root/build/bhmoe}")
if [ -x "$bhmoe" ]; then
  # The shipped calibration is the engine's own: ECDF of the raw router logits of all of
  # calibration.txt, in windows of the trained context.
  "$python" "$here/export.py" "${export_args[@]}" --weights-only
  ctx=$("$python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["max_position_embeddings"])' "$out/config.json")
  # Run inside the model folder so that the calibration's description names calibration.txt, not a
  # path of this machine.
  (cd "$out" && "$bhmoe" calibrate --model . --text-file calibration.txt --out "$work/calibration.json" \
    --method ecdf --max-length "$ctx" --max-tokens 2000000 --threads 1)
  "$python" "$here/export.py" "${export_args[@]}" --calibration "$work/calibration.json"
  echo "build_bundled_model: calibration.json made by $bhmoe calibrate"
else
  "$python" "$here/export.py" "${export_args[@]}"
  echo "build_bundled_model: no bhmoe binary at $bhmoe: calibration.json is export.py's Python ECDF"
fi
du -sh "$out"
