#!/bin/bash
# bhmoe against llama.cpp on the same GGUF file, same machine, 2 threads, alternating rounds (the
# VM's memory bandwidth drifts within minutes, so only ratios within one series count):
#   bench/llamacpp_series.sh MODEL.gguf LLAMA_BENCH [ROUNDS] [RECORD]
# Each round runs `bhmoe bench model --model MODEL.gguf --threads 2` and
# `llama-bench -m MODEL.gguf -t 2 -p 64 -n 32 -r 3` (prefill of 64 tokens, 32 decoded tokens, the
# mean of 3 repetitions); every JSON line goes to RECORD (default bench/gguf.jsonl) tagged with the
# series, then the medians and their ratios are printed.
set -euo pipefail
model=${1:?usage: bench/llamacpp_series.sh MODEL.gguf LLAMA_BENCH [ROUNDS] [RECORD]}
llama_bench=${2:?usage: bench/llamacpp_series.sh MODEL.gguf LLAMA_BENCH [ROUNDS] [RECORD]}
rounds=${3:-5}
record=${4:-bench/gguf.jsonl}
here=$(cd "$(dirname "$0")/.." && pwd)
bhmoe=${BHMOE:-$here/build/bhmoe}
series=$(date -u +%Y-%m-%dT%H:%M:%SZ)
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
for ((round = 1; round <= rounds; ++round)); do
  echo "round $round/$rounds" >&2
  "$bhmoe" bench model --model "$model" --threads 2 --bandwidth-mib 1024 |
    /usr/bin/python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); d.update(series=sys.argv[1], tool="bhmoe", round=int(sys.argv[2])); print(json.dumps(d, sort_keys=True))' "$series" "$round" |
    tee -a "$tmp" >>"$record"
  "$llama_bench" -m "$model" -t 2 -p 64 -n 32 -r 3 -o json 2>/dev/null |
    /usr/bin/python3 -c 'import json,sys
for d in json.load(sys.stdin):
    d.update(series=sys.argv[1], tool="llama.cpp", round=int(sys.argv[2]))
    print(json.dumps(d, sort_keys=True))' "$series" "$round" |
    tee -a "$tmp" >>"$record"
done
/usr/bin/python3 - "$tmp" <<'PY'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
b = [r for r in rows if r["tool"] == "bhmoe"]
l = [r for r in rows if r["tool"] == "llama.cpp"]
series = {
    "prefill-64 tok/s": ([r["prefill_tokens_per_s_64"] for r in b],
                         [r["avg_ts"] for r in l if r["n_prompt"] == 64]),
    "decode tok/s": ([r["decode_tokens_per_s"] for r in b],
                     [r["avg_ts"] for r in l if r["n_gen"] == 32]),
}
print(f"series {rows[0]['series']}, {len(b)} rounds, llama.cpp {l[0]['build_commit']}")
print("| figure | bhmoe (median; all) | llama.cpp (median; all) | ratio of medians |")
print("|---|---|---|---|")
for name, (x, y) in series.items():
    mx, my = statistics.median(x), statistics.median(y)
    print(f"| {name} | {mx:.1f}; {', '.join(f'{v:.1f}' for v in x)} | {my:.1f}; {', '.join(f'{v:.1f}' for v in y)} | {mx / my:.2f} |")
k = statistics.median([r["decode_ms_per_token_by_k"]["1"] for r in b]), statistics.median([r["decode_ms_per_token_by_k"]["8"] for r in b])
byk = {kk: statistics.median([r["decode_ms_per_token_by_k"][kk] for r in b]) for kk in b[0]["decode_ms_per_token_by_k"]}
print("bhmoe decode ms/token by forced k (medians): " + ", ".join(f"k={kk}: {v:.1f}" for kk, v in sorted(byk.items(), key=lambda t: int(t[0]))))
print(f"bhmoe linear fit: {statistics.median([r['decode_ms_fixed'] for r in b]):.2f} ms + {statistics.median([r['decode_ms_per_expert'] for r in b]):.2f} ms per expert (max relative error {max(r['decode_ms_fit_max_relative_error'] for r in b):.3f})")
PY
