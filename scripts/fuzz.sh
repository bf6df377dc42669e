#!/usr/bin/env bash
# Fuzzing with libFuzzer (tests/fuzz/): builds the harnesses into build-fuzz/ with clang
# (CCOE_FUZZ=ON: coverage, ASan, UBSan) and runs one for a long time with its seeds and
# dictionary, keeping what it finds in build-fuzz/corpus/HARNESS/ (reused by the next run).
# Usage: scripts/fuzz.sh HARNESS [SECONDS] [libFuzzer options...]   (default 3600 s)
#        scripts/fuzz.sh --build    configure and build build-fuzz/ only
#        scripts/fuzz.sh --list     the harnesses
# HARNESS: safetensors, config, data, study, sql (or fuzz_NAME). A crash, leak, sanitizer
# report or timeout stops the run (exit 1) and leaves the input in build-fuzz/corpus/ as
# HARNESS-crash-* / leak-* / timeout-*; rerun it with build-fuzz/tests/fuzz/fuzz_NAME FILE.
# Exit 77 when clang or libFuzzer is missing (scripts/setup.sh installs clang and
# libclang-rt-14-dev). CCOE_FUZZ_BUILD overrides the build directory.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
build=${CCOE_FUZZ_BUILD:-$here/build-fuzz}

if [[ ${1:-} == --list || $# -eq 0 ]]; then
  for f in "$here"/tests/fuzz/fuzz_*.c; do n=$(basename "$f" .c); echo "${n#fuzz_}"; done
  [[ $# -eq 0 ]] && { echo "usage: scripts/fuzz.sh HARNESS [SECONDS] | --build | --list" >&2; exit 2; }
  exit 0
fi

# clang with libFuzzer? (a one-line harness must link)
probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT
printf 'int LLVMFuzzerTestOneInput(const char *d, unsigned long n);\n%s\n' \
  'int LLVMFuzzerTestOneInput(const char *d, unsigned long n) { return d && n; }' >"$probe/p.c"
if ! command -v clang >/dev/null ||
   ! clang -fsanitize=fuzzer,address,undefined "$probe/p.c" -o "$probe/p" 2>"$probe/log"; then
  echo "fuzz: clang with libFuzzer is missing (apt-get install clang libclang-rt-14-dev, or" \
       "scripts/setup.sh)" >&2
  exit 77
fi

log=$build/fuzz-build.log
mkdir -p "$build"
if ! { { [[ -f $build/CMakeCache.txt ]] ||
         CC=clang cmake -S "$here" -B "$build" -DCCOE_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo; } &&
       cmake --build "$build" -j 2 --target ccoe_fuzz; } >"$log" 2>&1; then
  tail -n 40 "$log" >&2
  echo "fuzz: the build failed; the full log is $log" >&2
  exit 1
fi
[[ ${1:-} == --build ]] && exit 0

name=fuzz_${1#fuzz_}
seconds=${2:-3600}
shift
(($#)) && shift
bin=$build/tests/fuzz/$name
[[ -x $bin ]] || { echo "fuzz: no harness '$name' (scripts/fuzz.sh --list)" >&2; exit 2; }
seeds=$build/fuzz/seeds
if [[ ! -d $seeds/$name && -f $here/tests/fuzz/make_seeds.sh ]] || [[ $build/ccoe -nt $seeds ]]; then
  OMP_NUM_THREADS=1 bash "$here/tests/fuzz/make_seeds.sh" "$build/ccoe" "$here" "$seeds"
fi
OMP_NUM_THREADS=1 exec bash "$here/tests/fuzz/run.sh" "$bin" "$here" "$seeds" \
  "$build/corpus/$name" "$seconds" "$@"
