#!/usr/bin/env bash
# Expert-parallel MoE benchmark: training steps of the `ccoe bench` small shape (L4 C256 H4
# V256, T 128, global batch 8) with every FFN an E = 8, K = 2 top-k MoE layer, on 1 rank and
# under mpirun -np 2 (experts 0-3 on rank 0, 4-7 on rank 1; one thread per rank). Prints per
# step: step time, the time inside the MoE exchanges (count allgather, aux allreduce, the four
# alltoallv of each layer; waiting for the other rank included) and its share of the step, the
# gradient allreduce, and the bytes of token rows each rank sent.
#
#   scripts/bench_ep.sh [BUILD_DIR]        (default: build; builds test_moe_mpi if needed)
# Environment: STEPS (10), CF (capacity factors to run, default "0 1.25").
# The numbers are only meaningful on an otherwise idle machine: check `uptime` first.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$here/build}
if [ ! -x "$build/test_moe_mpi" ]; then
    cmake -S "$here" -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
    cmake --build "$build" -j2 --target test_moe_mpi >/dev/null
fi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMP_NUM_THREADS=1 BLIS_NUM_THREADS=1 CCOE_EP_BENCH=1 CCOE_EP_BENCH_STEPS=${STEPS:-10}
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) (2 cores; > 0.5 before the runs skews the timings)"
for cf in ${CF:-0 1.25}; do
    for np in 1 2; do
        CCOE_EP_BENCH_CF=$cf mpirun --bind-to core -np "$np" "$build/test_moe_mpi" |
            { if [ "$np" = 1 ]; then cat; else tail -n 1; fi; }
    done
done
