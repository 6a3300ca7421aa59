#!/usr/bin/env bash
# Builds the libFuzzer targets of fuzz/ with clang under AddressSanitizer + UndefinedBehaviorSanitizer
# and runs each for FUZZ_SECONDS, with seed corpora made at run time from the shared reference
# material (../shared beside the repository, or $BHMOE_SHARED_DIR; nothing of it is copied into the
# repository). Prints one line per target: executions, executions per second, coverage (libFuzzer's
# cov: and ft:), corpus size and the outcome; exits 1 when a target found a crash.
#   scripts/fuzz.sh                       every target, FUZZ_SECONDS (default 60) each
#   scripts/fuzz.sh npy router_spec       only these targets
#   FUZZ_SECONDS=30 scripts/fuzz.sh       a short run (CI)
#   FUZZ_BUILD_ONLY=1 scripts/fuzz.sh     build, make the seeds, do not run
# Needs clang and compiler-rt's libFuzzer (Debian: clang libclang-rt-dev), python3 for the seeds.
# Work files go to $FUZZ_DIR (default build-fuzz/): objects, targets, corpus/<target>/ (kept between
# runs, so coverage accumulates), seeds/<target>/, artifacts/ (crashing inputs) and logs/.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
shared=${BHMOE_SHARED_DIR:-$root/../shared}
out=${FUZZ_DIR:-$root/build-fuzz}
seconds=${FUZZ_SECONDS:-60}
cxx=${FUZZ_CXX:-clang++}
all_targets=(safetensors config tokenizer npy npz gguf calibration router_spec experiment)
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=("${all_targets[@]}")

command -v "$cxx" >/dev/null || { echo "fuzz.sh: $cxx not found (Debian: apt-get install clang libclang-rt-dev)" >&2; exit 1; }
[ -d "$shared" ] || { echo "fuzz.sh: no shared reference folder at $shared (set BHMOE_SHARED_DIR)" >&2; exit 1; }

flags=(-std=c++20 -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined
       -fno-sanitize-recover=undefined -I"$root/src" -I"$root")
mkdir -p "$out/obj" "$out/bin" "$out/logs" "$out/artifacts"

# The parsers under test and what they need; only these are compiled (with coverage
# instrumentation), archived, and linked into each target as needed.
sources=(util/file.cc util/json.cc util/npy.cc util/npz.cc util/gguf.cc routing/calibration.cc routing/adaptive.cc routing/router_ops.cc util/simd.cc routing/bh.cc routing/spec.cc
         kernels/matrix.cc model/safetensors.cc model/config.cc model/tokenizer.cc experiments/experiment.cc)
newest_header=$(find "$root/src" -name '*.h' -printf '%T@\n' | sort -n | tail -1)
stale() {  # stale OUTPUT INPUT: OUTPUT is missing or older than INPUT or than any header
  [ ! -e "$1" ] && return 0
  [ "$2" -nt "$1" ] && return 0
  awk -v a="$(stat -c %Y "$1")" -v b="$newest_header" 'BEGIN { exit !(b > a) }'
}
objects=()
for s in "${sources[@]}"; do
  o="$out/obj/${s//\//_}.o"
  if stale "$o" "$root/src/$s"; then
    echo "fuzz.sh: compiling src/$s" >&2
    nice -n 15 "$cxx" "${flags[@]}" -fsanitize=fuzzer-no-link -c "$root/src/$s" -o "$o"
  fi
  objects+=("$o")
done
# Re-archived only when an object changed, so that unchanged targets are not relinked.
if [ ! -e "$out/obj/libparsers.a" ] || [ -n "$(find "${objects[@]}" -newer "$out/obj/libparsers.a")" ]; then
  rm -f "$out/obj/libparsers.a"
  ar rcs "$out/obj/libparsers.a" "${objects[@]}"
fi
for t in "${targets[@]}"; do
  src="$root/fuzz/${t}_fuzz.cc"
  [ -f "$src" ] || { echo "fuzz.sh: no target $t (have: ${all_targets[*]})" >&2; exit 1; }
  bin="$out/bin/${t}_fuzz"
  if stale "$bin" "$src" || [ "$out/obj/libparsers.a" -nt "$bin" ] ||
     [ "$root/fuzz/fuzz_common.h" -nt "$bin" ]; then
    echo "fuzz.sh: linking $t" >&2
    nice -n 15 "$cxx" "${flags[@]}" -fsanitize=fuzzer "$src" "$out/obj/libparsers.a" \
      $(pkg-config --libs libpcre2-8) -lutf8proc -o "$bin"
  fi
done

# Seeds, made afresh each run from the shared material and the repository's test tokenizers (small
# versions of the real files, so that mutations reach the parsers' checks rather than spending the
# time on megabytes of valid data).
seeds="$out/seeds"
rm -rf "$seeds"
mkdir -p "$seeds"/{safetensors,config,tokenizer,npy,npz,gguf,calibration,router_spec,experiment}
for f in "$shared"/olmoe/config.json "$shared"/golden/*/config.json; do
  [ -f "$f" ] && cp "$f" "$seeds/config/$(echo "$f" | md5sum | cut -c1-12).json"
done
for f in "$shared"/golden/*/tokenizer.json "$root"/src/model/testdata/tokenizers/*.tokenizer.json; do
  [ -f "$f" ] && cp "$f" "$seeds/tokenizer/$(echo "$f" | md5sum | cut -c1-12).json"
done
for f in "$shared"/golden/*/*_1.npy "$shared"/routing-cases/*.npy; do
  [ -f "$f" ] && cp "$f" "$seeds/npy/$(echo "$f" | md5sum | cut -c1-12).npy"
done
{ grep -rhoE '"(topk|bh|topp):[^"]*"' "$shared" --include='*.json' --include='*.md' || true; } |
  sort -u | tr -d '"' | while read -r spec; do
    printf '%s' "$spec" >"$seeds/router_spec/$(printf '%s' "$spec" | md5sum | cut -c1-12)"
  done
# Debian's interpreter first: it has NumPy for the .npz seed (a python3 earlier on PATH may not).
"$( [ -x /usr/bin/python3 ] && echo /usr/bin/python3 || echo python3)" - "$shared" "$seeds" <<'PY'
# Small seeds from the shared files: calibrations cut to 2 layers of 16 points; safetensors files
# made of a golden checkpoint's smallest tensors, laid out back to back as the format requires.
import glob, json, os, struct, sys
shared, seeds = sys.argv[1], sys.argv[2]
for i, path in enumerate(sorted(glob.glob(f"{shared}/**/calibration*.json", recursive=True) +
                                glob.glob(f"{shared}/calibration/*.json"))):
    try:
        doc = json.load(open(path))
        for layer in doc["layers"][:2]:
            step = max(1, len(layer["x"]) // 16)
            layer["x"], layer["cdf"] = layer["x"][::step], layer["cdf"][::step]
        doc["layers"] = doc["layers"][:2]
        open(f"{seeds}/calibration/{i}.json", "w").write(json.dumps(doc))
    except (KeyError, ValueError, TypeError):
        pass
for i, path in enumerate(sorted(glob.glob(f"{shared}/golden/*/model.safetensors"))):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", None)
    small = sorted((k, v) for k, v in header.items()
                   if v["data_offsets"][1] - v["data_offsets"][0] <= 512)[:6]
    out, data = {}, b""
    if meta is not None:
        out["__metadata__"] = meta
    for name, v in small:
        b, e = v["data_offsets"]
        out[name] = {"dtype": v["dtype"], "shape": v["shape"], "data_offsets": [len(data), len(data) + e - b]}
        data += raw[8 + n + b:8 + n + e]
    text = json.dumps(out).encode()
    text += b" " * (-len(text) % 8)
    open(f"{seeds}/safetensors/{i}.safetensors", "wb").write(struct.pack("<Q", len(text)) + text + data)
# Experiment files: every key of the format (experiment.h), with the shared routing cases' specs.
specs = ["topk:k=8", "bh:alpha=0.05,max_k=16", "topp:p=0.7,max_k=16"]
experiments = [
    {"name": "seed-like", "routers": specs, "prompts": ["The cat sat on the", "Once upon a time"]},
    {"name": "full", "routers": ["topk:k=8", {"name": "bh_a005", "spec": specs[1]}],
     "prompts": [{"text": "The cat sat", "category": "simple", "description": "d", "id": "cat"}],
     "prompt_files": [{"path": "prompts.txt", "category": "domain"}],
     "texts": ["heldout.txt", {"name": "wiki", "path": "wiki.txt"}], "score_routers": specs,
     "generation": {"max_new_tokens": 50, "temperature": 0, "top_p": 1, "seed": 0,
                    "stop_at_eos": True},
     "scoring": {"window": 512, "max_tokens": 0}, "calibration": {"file": "calibration.json"}},
    {"name": "text", "texts": ["/dev/null"], "score_routers": ["topk:k=2"],
     "calibration": {"text": "calib.txt", "method": "kde"}},
]
for i, doc in enumerate(experiments):
    open(f"{seeds}/experiment/{i}.json", "w").write(json.dumps(doc))
# A small GGUF v3 file: metadata of each kind the model loader reads, and three tensors (F32, Q8_0,
# Q4_K) at 32-byte aligned offsets.
def gstr(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b
kv = (gstr("general.architecture") + struct.pack("<I", 8) + gstr("olmoe") +
      gstr("olmoe.block_count") + struct.pack("<II", 4, 2) +
      gstr("olmoe.attention.layer_norm_rms_epsilon") + struct.pack("<If", 6, 1e-5) +
      gstr("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 2) + gstr("a") + gstr("b") +
      gstr("tokenizer.ggml.token_type") + struct.pack("<IIQii", 9, 5, 2, 1, 3))
tensors = [("token_embd.weight", 0, [2, 2], 16), ("blk.0.q8", 8, [32], 34), ("blk.0.q4k", 12, [256], 144)]
infos, offset, blobs = b"", 0, []
for name, typ, ne, nbytes in tensors:
    infos += gstr(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", d) for d in ne)
    infos += struct.pack("<IQ", typ, offset)
    blobs.append((offset, bytes(range(nbytes))))
    offset = (offset + nbytes + 31) // 32 * 32
head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), 5) + kv + infos
head += b"\0" * (-len(head) % 32)
body = bytearray(offset)
for at, blob in blobs:
    body[at:at + len(blob)] = blob
open(f"{seeds}/gguf/small.gguf", "wb").write(head + bytes(body))
# A trace-shaped archive, stored as numpy.savez does (with its ZIP64 fields) when NumPy is there.
try:
    import numpy as np
    np.savez(f"{seeds}/npz/trace.npz", tokens=np.arange(3, dtype=np.int32),
             ids=np.zeros((3, 2, 2), np.int32), weights=np.ones((3, 2, 2), np.float32),
             counts=np.full((3, 2), 2, np.int32), router=np.array("topk:k=2"))
except ImportError:
    pass
PY

[ -n "${FUZZ_BUILD_ONLY:-}" ] && exit 0

declare -A max_len=([safetensors]=16384 [config]=4096 [tokenizer]=65536 [npy]=65536 [npz]=16384 [gguf]=16384
                    [calibration]=16384 [router_spec]=256 [experiment]=4096)
declare -A dict=([safetensors]=json [config]=json [tokenizer]=json [npy]=npy [npz]=npy [gguf]=gguf [calibration]=json
                 [router_spec]=spec [experiment]=experiment)
status=0
printf '%-12s %10s %8s %6s %7s %6s  %s\n' target runs exec/s cov ft corpus outcome
for t in "${targets[@]}"; do
  corpus="$out/corpus/$t"
  mkdir -p "$corpus"
  log="$out/logs/$t.log"
  set +e
  nice -n 10 "$out/bin/${t}_fuzz" "$corpus" "$seeds/$t" -max_total_time="$seconds" \
    -max_len="${max_len[$t]}" -dict="$root/fuzz/${dict[$t]}.dict" -rss_limit_mb=2048 \
    -malloc_limit_mb=512 -timeout=10 -print_final_stats=1 \
    -artifact_prefix="$out/artifacts/$t-" >"$log" 2>&1
  rc=$?
  set -e
  # The last status line, e.g. "#123456 DONE cov: 1234 ft: 5678 corp: 300/40Kb lim: ... exec/s: 2057 ..."
  line=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
  runs=$(sed -nE 's/^#([0-9]+).*/\1/p' <<<"$line")
  cov=$(sed -nE 's/.* cov: ([0-9]+).*/\1/p' <<<"$line")
  ft=$(sed -nE 's/.* ft: ([0-9]+).*/\1/p' <<<"$line")
  corp=$(sed -nE 's/.* corp: ([0-9]+)\/.*/\1/p' <<<"$line")
  eps=$(sed -nE 's/^stat::average_exec_per_sec: *([0-9]+).*/\1/p' "$log" | tail -1)
  outcome=ok
  if [ $rc -ne 0 ]; then
    outcome="FOUND A CRASH (rc $rc): see $log and $out/artifacts/"
    status=1
  fi
  printf '%-12s %10s %8s %6s %7s %6s  %s\n' "$t" "${runs:-?}" "${eps:-?}" "${cov:-?}" "${ft:-?}" \
    "${corp:-?}" "$outcome"
done
exit $status
