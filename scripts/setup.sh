#!/usr/bin/env bash
# Installs what ccoe needs from Debian 12 packages (non-interactive, idempotent: only missing
# packages are installed) and builds it into build/. Usage: scripts/setup.sh [BUILD_DIR]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$here/build}

packages=(
  build-essential cmake pkg-config
  libblis-openmp-dev   # BLIS (GEMM)
  libxsmm-dev          # libxsmm (small-GEMM JIT)
  libopenmpi-dev openmpi-bin  # Open MPI
  libcmocka-dev        # CMocka (unit tests)
  libinih-dev          # INI parser (configs, manifests)
  libcjson-dev         # JSON (safetensors headers, JSONL data)
  zlib1g-dev           # CRC-32 of checkpoint files
  gnuplot-nox          # PNG plots of studies (scripts/plot_study.sh)
  libsqlite3-dev       # SQL tasks: generated SQL is scored by running it (SQLite)
  libpcre2-dev         # PCRE2: the BPE tokenizers' pre-tokenizer regexes (Unicode classes)
  python3-regex        # tests: GPT-2's encoder.py, a reference for the BPE tokenizer
  python3 ca-certificates  # scripts/build_corpora.sh (extraction; npm is needed only there)
  clang libclang-rt-14-dev libomp-14-dev  # libFuzzer harnesses (scripts/fuzz.sh, tests/fuzz)
)
missing=()
for p in "${packages[@]}"; do
  [[ $p == \#* ]] && continue
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  if [[ $(id -u) -ne 0 ]]; then sudo=sudo; else sudo=; fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get -o DPkg::Lock::Timeout=600 update -qq
  $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

mkdir -p "$build"
log="$build/build.log"
if ! { cmake -S "$here" -B "$build" -DCMAKE_BUILD_TYPE=Release &&
       cmake --build "$build" -j "$(nproc)"; } >"$log" 2>&1; then
  tail -n 40 "$log" >&2
  echo "setup: the build failed; the full log is $log" >&2
  exit 1
fi
grep -E "warning:" "$log" >&2 || true
