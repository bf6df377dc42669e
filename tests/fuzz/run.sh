#!/usr/bin/env bash
# Runs one libFuzzer harness for a bounded time over its seeds, with its dictionary.
# Usage: run.sh HARNESS_BIN SOURCE_DIR SEEDS_DIR CORPUS_DIR SECONDS [--fresh] [libFuzzer args]
#   SEEDS_DIR/<name>/ (written by make_seeds.sh) and SOURCE_DIR/tests/fuzz/corpus/<name>/ are
#   read; new inputs go to CORPUS_DIR (emptied first with --fresh); a crash, leak, sanitizer
#   report or timeout is saved as CORPUS_DIR/../<name>-crash-* etc. and fails the run (exit 1).
set -euo pipefail
bin=$1 src=$2 seeds=$3 corpus=$4 seconds=$5
shift 5
name=$(basename "$bin")
if [[ ${1:-} == --fresh ]]; then
  rm -rf "$corpus"
  shift
fi
mkdir -p "$corpus"
dirs=("$corpus")
for d in "$seeds/$name" "$src/tests/fuzz/corpus/$name"; do
  [[ -d $d ]] && dirs+=("$d")
done
dict=()
[[ -f $src/tests/fuzz/$name.dict ]] && dict=("-dict=$src/tests/fuzz/$name.dict")
artifacts=$(dirname "$corpus")/$name-
# ASan: leaks are errors; UBSan already aborts (-fno-sanitize-recover)
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:allocator_may_return_null=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
echo "fuzz: $name for ${seconds}s over ${dirs[*]}" >&2
set +e
"$bin" -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
  -artifact_prefix="$artifacts" "${dict[@]}" "$@" "${dirs[@]}"
rc=$?
set -e
if ((rc != 0)); then
  echo "fuzz: $name FAILED (exit $rc); reproduce with: $bin ${artifacts}crash-... (see above)" >&2
  exit 1
fi
echo "fuzz: $name ok" >&2
