#!/usr/bin/env bash
# CCoE expert placement benchmark: `mpirun -np 2 ccoe train` on the `ccoe bench` small shape
# (L4 C256 H4, V 320 (byte tokenizer), T 128, global batch 8, builtin data, one thread per rank) with two experts,
# replicated (--ccoe-placement replicated: experts data-parallel, their gradients allreduced)
# against placed (--ccoe-placement experts: each expert on one rank, rows exchanged), for
# form tail (Eq. 4, rows travel once after the base) and form ffn (Eqs. 6-7, post-LN, rows
# travel in every covered block). Prints per variant the means over steps 6..STEPS of rank 0's
# step time, exchange time (alltoallv and count allgather, waiting included) and its share of
# the step, allreduce time, and bytes exchanged / allreduced per step, plus the final loss.
#
#   scripts/bench_place.sh [CCOE_BIN]      (default: build/ccoe)
# Environment: STEPS (20), OUT (scratch directory, default a temporary one).
# The numbers are only meaningful on an otherwise idle machine: check `uptime` first.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-$here/build/ccoe}
[ -x "$bin" ] || { echo "bench_place: $bin not found: run scripts/setup.sh first" >&2; exit 1; }
steps=${STEPS:-20}
out=${OUT:-$(mktemp -d)}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMP_NUM_THREADS=1 BLIS_NUM_THREADS=1
common=(--set model.n_layer=4 --set model.n_embd=256 --set model.n_head=4 --set model.seq_len=128
        --set train.batch_size=8 --set "train.steps=$steps"
        --set train.eval_every=0 --set train.eval_batches=1 --set data.task_examples=0
        --set train.log_every=1000 --set run.threads=1 --set data.manifest=builtin)
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) (2 cores; > 0.5 before the runs skews the timings)"
printf "%-6s %-10s %9s %9s %7s %9s %12s %12s %9s\n" form placement step_ms exch_ms share \
    allred_ms bytes_exch bytes_allred loss
for form in tail ffn; do
    if [ "$form" = tail ]; then
        f=(--set ccoe.form=tail --set "ccoe.experts=arith:2 code:2")
    else
        f=(--set ccoe.form=ffn --set model.block=post_ln --set "ccoe.experts=arith:2 code:2")
    fi
    for place in replicated experts; do
        dir=$out/$form-$place
        mpirun --bind-to none -np 2 "$bin" train "$here/configs/default.ini" "${common[@]}" "${f[@]}" \
            --set "ccoe.routes=arith:arith code:code" --set "train.out_dir=$dir" \
            --ccoe-placement "$place" --force --quiet --no-progress >"$dir.log" 2>&1 ||
            { echo "bench_place: $form/$place failed (log: $dir.log)" >&2; tail -5 "$dir.log" >&2; exit 1; }
        python3 - "$dir/metrics.jsonl" "$form" "$place" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"loss"' in l and '"eval"' not in l]
rows = [r for r in rows if r.get("step", 0) > 5] or rows
mean = lambda k: sum(r[k] for r in rows) / len(rows)
step, ex = mean("step_ms"), mean("exchange_ms")
print("%-6s %-10s %9.1f %9.1f %6.1f%% %9.1f %12.0f %12.0f %9.4f" % (
    sys.argv[2], sys.argv[3], step, ex, 100 * ex / step, mean("allreduce_ms"),
    mean("bytes_exchanged"), mean("bytes_allreduce"), rows[-1]["loss"]))
EOF
    done
done
