#!/usr/bin/env bash
# bench_kernels.sh - RoPE and grouped-query attention against multi-head attention
# (tests/bench_kernels.c), on 1 and 2 threads, ROUNDS runs each; per table row the fastest run
# is kept, so that other load on a shared machine inflates the figures as little as possible.
# The table goes to stdout (papers/rope-gqa.md quotes it), with the machine and its load.
# Usage: scripts/bench_kernels.sh [BUILD_DIR] [ROUNDS]    (defaults: build, 3)
set -euo pipefail
build=${1:-build}
rounds=${2:-3}
bin="$build/bench_kernels"
if [[ ! -x "$bin" ]]; then
  echo "bench_kernels.sh: $bin not found: build first (cmake --build $build --target bench_kernels)" >&2
  exit 1
fi
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) CPUs," \
     "$(grep -qw avx512f /proc/cpuinfo && echo AVX-512 || echo AVX2); load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for threads in 1 2; do
  out=$(for r in $(seq "$rounds"); do OMP_NUM_THREADS=$threads "$bin" --threads "$threads"; done)
  echo
  echo "$out" | grep -m1 '^kernels:' | sed "s/best of/best of $rounds runs x/"
  echo
  echo "| kernel | heads (q/kv) | B | T | us/call | rate |"
  echo "|---|---|---|---|---|---|"
  # rows are "| kernel | heads | B | T | us | rate |": keep the smallest us per (kernel, heads, T)
  echo "$out" | awk -F'|' '/^\| (rope|attention|decode)/ {
      k = $2 "|" $3 "|" $4 "|" $5
      if (!(k in best) || $6 + 0 < best[k] + 0) { best[k] = $6; line[k] = $0 }
      if (!(k in seen)) { seen[k] = 1; order[n++] = k } }
    END { for (i = 0; i < n; i++) print line[order[i]] }'
done
echo
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
