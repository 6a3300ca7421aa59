#!/bin/bash
# Runs `bhmoe bench model` in alternating rounds over the weight modes (and one adaptive router),
# appending every JSON line to a record, then prints the per-mode medians. This VM's memory
# bandwidth drifts by up to 2x within minutes, so single runs mislead; alternating rounds expose
# every mode to the same drift.
#   bench/model_series.sh MODEL_DIR [ROUNDS] [RECORD] [CALIBRATION] [ROUTER]
# CALIBRATION (a bh-calibration-grid/1 file, e.g. ../shared/calibration/olmoe-1b-7b-0924.kde.json)
# adds a q8 run of ROUTER (default bh:alpha=0.05,max_k=16) against fixed top-k at its mean count.
set -euo pipefail
model=${1:?usage: bench/model_series.sh MODEL_DIR [ROUNDS] [RECORD] [CALIBRATION] [ROUTER]}
rounds=${2:-3}
record=${3:-bench/model.jsonl}
calibration=${4:-}
router=${5:-bh:alpha=0.05,max_k=16}
here=$(cd "$(dirname "$0")/.." && pwd)
bhmoe=${BHMOE:-$here/build/bhmoe}
series=$(date -u +%Y-%m-%dT%H:%M:%SZ)
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
# One bench run, its JSON line tagged with the series, appended to the record and to this series.
bench() {
  echo "round $round/$rounds: $*" >&2
  "$bhmoe" bench model --model "$model" --threads 2 --bandwidth-mib 1024 "$@" |
    python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); d["series"]=sys.argv[1]; print(json.dumps(d, sort_keys=True))' "$series" |
    tee -a "$tmp" >>"$record"
}
for ((round = 1; round <= rounds; ++round)); do
  for weights in native bf16 q8; do
    bench --weights "$weights"
  done
  if [[ -n $calibration ]]; then
    bench --weights q8 --router "$router" --calibration "$calibration"
  fi
done
python3 "$here/bench/summarize.py" "$tmp"
