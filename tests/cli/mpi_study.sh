# `mpirun -np 2 ccoe study`: every variant trains on both ranks (data parallel; the MoE variant
# with its experts spread over the ranks) and the table's validation losses equal the
# one-process study's (1e-5 relative); rank 0 alone prints and writes; the table names the
# ranks; a second 2-rank run reuses every finished run, also those of the one-process study; a
# directory holding a different run stops every rank with one message naming it and --force,
# in well under 30 s (no rank waits).
source "$(dirname "$0")/lib/common.sh"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
MPIRUN=(mpirun --allow-run-as-root --oversubscribe --bind-to none)
command -v mpirun >/dev/null || fail "mpirun not found (apt-get install openmpi-bin)"
cd "$WORK"
cat > s.ini <<INI
[study]
name = mpi
base = $TINY
budget = tokens:6144
variants = dense moe ccoe
[train]
eval_every = 24
eval_batches = 2
eps = 1e-6
[data]
task_examples = 4
[run]
threads = 1
[variant.dense]
[variant.moe]
moe.gate = topk
moe.n_experts = 4
moe.top_k = 2
moe.capacity_factor = 0
[variant.ccoe]
ccoe.form = tail
experts_per_domain = 1
INI
"$CCOE" study s.ini --set study.out_dir=one > one.log 2>&1 || fail "1-process study: $(cat one.log)"
"${MPIRUN[@]}" -np 2 "$CCOE" study s.ini --set study.out_dir=two > two.log 2>&1 \
  || fail "2-rank study: $(cat two.log)"
col() { head -1 "$1" | tr ',' '\n' | grep -nx "$2" | cut -d: -f1; }
c=$(col one/study.csv mean_val_loss)
[[ -n $c ]] || fail "no mean_val_loss column in study.csv"
paste -d, <(cut -d, -f1,"$c" one/study.csv) <(cut -d, -f1,"$c" two/study.csv) | tail -n +2 |
  awk -F, 'NF != 4 || $1 != $3 {exit 1}
    {d = $2 - $4; if (d < 0) d = -d; if (!(d <= 1e-5 * $2)) {print $1 ": " $2 " vs " $4; exit 1}}
    END {if (NR != 3) exit 1}' || fail "2-rank study's losses differ from 1 process"
grep -q 'every variant on 2 ranks' two.log || fail "the study did not say it runs on 2 ranks"
grep -q '2 MPI ranks x 1 threads per run' two/study.md || fail "study.md does not name the ranks"
[[ $(grep -c '^study mpi:' two.log) -eq 1 && $(grep -c '^| dense ' two.log) -eq 2 ]] \
  || fail "rank 0 alone should print (header once, dense in two tables): $(cat two.log)"
for v in dense moe ccoe; do
  grep -q '"ranks":2' "two/$v/metrics.jsonl" || fail "variant $v did not train on 2 ranks"
done
pass "a 2-rank study trains every variant on both ranks and equals the 1-process study"

"${MPIRUN[@]}" -np 2 "$CCOE" study s.ini --set study.out_dir=one > again.log 2>&1 \
  || fail "2-rank rerun: $(cat again.log)"
[[ $(grep -c 'reusing the finished run' again.log) -eq 3 ]] \
  || fail "the 2-rank rerun did not reuse the 1-process runs: $(cat again.log)"
pass "a 2-rank study reuses finished runs"

start=$(date +%s)
rc=0
timeout 60 "${MPIRUN[@]}" -np 2 "$CCOE" study s.ini --set study.out_dir=one --set train.lr=0.001 \
  > changed.log 2>&1 || rc=$?
took=$(( $(date +%s) - start ))
[[ $rc -ne 0 && $rc -ne 124 ]] || fail "changed config: exit $rc (124 = hung): $(cat changed.log)"
[[ $took -le 30 ]] || fail "changed config took $took s"
[[ $(grep -c 'one/dense already holds a different or unfinished run of variant dense: rerun with --force' changed.log) -eq 1 ]] \
  || fail "expected one message naming the directory and --force: $(cat changed.log)"
pass "a directory holding a different run stops every rank with one message (${took} s)"
