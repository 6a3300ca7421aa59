# Shared by the golden scripts (make_gguf_goldens.sh, ../make_family_goldens.sh); source it.
#
# build_reference_logits LLAMA_CPP_DIR OUT_BINARY
#   builds llama.cpp's `llama` library and tools/llamacpp/reference_logits.cpp against it.
# print_cases ENTRY...
#   prints each JSON entry on its own line, indented, comma-separated: the lines of a "cases" array.
# fnv1a64 FILE
#   prints the FNV-1a 64 of the file's bytes as 16 hex digits (the tests recompute it; they have no
#   SHA-256).

build_reference_logits() {
  local llama=$1 out=$2
  cmake --build "$llama/build" --target llama -j "$(nproc)" > "$out.build.log"
  g++ -O2 -std=c++17 tools/llamacpp/reference_logits.cpp -I"$llama/include" -I"$llama/ggml/include" \
    -L"$llama/build/bin" -lllama -Wl,-rpath,"$llama/build/bin" -o "$out"
}

fnv1a64() {
  /usr/bin/python3 -c 'import sys
h = 0xcbf29ce484222325
for b in open(sys.argv[1], "rb").read():
    h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
print("%016x" % h)' "$1"
}

print_cases() {
  local i=0
  for entry in "$@"; do
    i=$((i + 1))
    if [ "$i" -lt "$#" ]; then echo "    $entry,"; else echo "    $entry"; fi
  done
}
