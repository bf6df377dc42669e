# `mpirun -np 2 ccoe train` against one process: same loss curve (1e-5 relative), one
# checkpoint that a single process resumes; a rank that fails (an error, a NaN, a missing file,
# a kill -9) ends every rank non-zero within 30 s with a message naming the rank; `ccoe eval`
# and `ccoe train-expert` under mpirun split their work and match one process.
# The failures are injected with the test hook CCOE_TEST_FAIL_{MODE,RANK,STEP} (src/train.h).
source "$(dirname "$0")/lib/common.sh"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
MPIRUN=(mpirun --allow-run-as-root --oversubscribe --bind-to none)
command -v mpirun >/dev/null || fail "mpirun not found (apt-get install openmpi-bin)"
cd "$WORK"
common=(--set train.steps=8 --set train.eval_every=0 --set run.threads=1 --set train.eps=1e-6
        --set data.task_examples=0 --quiet)

"$CCOE" train "$TINY" "${common[@]}" --set train.out_dir=one || fail "1-process run"
"${MPIRUN[@]}" -np 2 "$CCOE" train "$TINY" "${common[@]}" --set train.out_dir=two \
  > two.log 2>&1 || fail "2-rank run: $(cat two.log)"
losses() { grep '"loss"' "$1/metrics.jsonl" | grep -v '"eval"' | sed -E 's/.*"loss":([0-9.eE+-]+).*/\1/'; }
paste <(losses one) <(losses two) | awk 'NF != 2 {exit 1}
  {d = $1 - $2; if (d < 0) d = -d; if (d > 1e-5 * $1) {print "step " NR ": " $1 " vs " $2; exit 1}}
  END {if (NR != 8) exit 1}' || fail "loss curves of 1 and 2 ranks differ"
grep -q '"allreduce_ms"' two/metrics.jsonl || fail "no timing breakdown in the metrics"
grep -q '"ranks":2' two/metrics.jsonl || fail "metrics do not record 2 ranks"
[[ $(grep -c '^' two.log) -lt 2 ]] || fail "ranks other than 0 printed (or --quiet was ignored): $(cat two.log)"
pass "2 ranks follow the 1-process loss curve"

# `mpirun ccoe eval`: every rank evaluates its share of the batches and task chunks, rank 0
# prints the same table as one process (and nothing else is printed twice)
"$CCOE" eval two/checkpoint.safetensors --batches 5 --set data.task_examples=9 > eval1.txt \
  || fail "1-process eval: $(cat eval1.txt)"
for np in 2 3; do
  "${MPIRUN[@]}" -np $np "$CCOE" eval two/checkpoint.safetensors --batches 5 \
    --set data.task_examples=9 > eval$np.txt 2>&1 || fail "$np-rank eval: $(cat eval$np.txt)"
  grep -q "evaluated on $np ranks" eval$np.txt || fail "$np-rank eval does not say so: $(cat eval$np.txt)"
  diff <(grep -v "evaluated on" eval$np.txt) eval1.txt \
    || fail "the $np-rank evaluation table differs from one process's"
done
grep -qE "arith .*[0-9]+/9" eval1.txt || fail "no arith task count in the table: $(cat eval1.txt)"
expect_fail 1 "cannot open 'nope.safetensors'" -- "${MPIRUN[@]}" -np 2 "$CCOE" eval nope.safetensors
pass "mpirun ccoe eval splits the work and prints one process's table"

# `mpirun ccoe train-expert`: the expert trains data parallel (the 1-process loss curve within
# 1e-5), rank 0 pushes it; the base of the pushed model is the input base bit for bit
xp=(--expert ar --domain arith --layers 1 --form tail "${common[@]}" --set train.steps=6)
"$CCOE" train-expert one/checkpoint.safetensors "${xp[@]}" -o x1 --push m1.safetensors \
  > x1.log 2>&1 || fail "1-process train-expert: $(cat x1.log)"
"${MPIRUN[@]}" -np 2 "$CCOE" train-expert one/checkpoint.safetensors "${xp[@]}" -o x2 \
  --push m2.safetensors > x2.log 2>&1 || fail "2-rank train-expert: $(cat x2.log)"
paste <(losses x1) <(losses x2) | awk 'NF != 2 {exit 1}
  {d = $1 - $2; if (d < 0) d = -d; if (d > 1e-5 * $1) {print "step " NR ": " $1 " vs " $2; exit 1}}
  END {if (NR != 6) exit 1}' || fail "train-expert loss curves of 1 and 2 ranks differ"
grep -q '"ranks":2' x2/metrics.jsonl || fail "2-rank train-expert metrics do not record 2 ranks"
[[ -s m2.safetensors && -s x2/ar.expert && ! -s x2.log ]] || fail "no pushed model, or --quiet ranks printed: $(cat x2.log)"
"$CCOE" compare one/checkpoint.safetensors m2.safetensors --only-base > cmp.txt \
  || fail "the pushed model's base differs from the input base: $(cat cmp.txt)"
info=$("$CCOE" info m2.safetensors) || fail "info m2.safetensors"
grep -q "ar" <<<"$info" || fail "m2 has no expert ar"
expect_fail 1 "\[rank 0\] .*cannot open 'nope.safetensors'" -- \
  "${MPIRUN[@]}" -np 2 "$CCOE" train-expert nope.safetensors --expert a --domain arith
pass "mpirun ccoe train-expert trains data parallel and pushes once"

# the 2-rank checkpoint (stopped early) resumed by one process
"${MPIRUN[@]}" -np 2 "$CCOE" train "$TINY" "${common[@]}" --set train.out_dir=half --stop-at 4 \
  > half.log 2>&1 || fail "2-rank run to step 4: $(cat half.log)"
"$CCOE" train "$TINY" "${common[@]}" --set train.out_dir=half \
  --resume half/checkpoint.safetensors || fail "resume on 1 process"
paste <(losses one) <(losses half) | awk '{d = $1 - $2; if (d < 0) d = -d; if (d > 1e-5 * $1) exit 1}
  END {if (NR != 8) exit 1}' || fail "2-rank checkpoint resumed on 1 process drifts"
pass "a 2-rank checkpoint resumes on 1 process"

# failures: every rank exits non-zero, within 30 s, naming the rank
for mode in error nan file abort kill; do
  start=$(date +%s)
  rc=0
  CCOE_TEST_FAIL_MODE=$mode CCOE_TEST_FAIL_RANK=1 CCOE_TEST_FAIL_STEP=3 timeout 60 \
    "${MPIRUN[@]}" -x CCOE_TEST_FAIL_MODE -x CCOE_TEST_FAIL_RANK -x CCOE_TEST_FAIL_STEP -np 2 \
    "$CCOE" train "$TINY" "${common[@]}" --set train.steps=200 --set train.out_dir=f-$mode \
    > fail-$mode.log 2>&1 || rc=$?
  took=$(( $(date +%s) - start ))
  [[ $rc -ne 0 && $rc -ne 124 ]] || fail "$mode: job exited $rc (124 = hung): $(cat fail-$mode.log)"
  [[ $took -le 30 ]] || fail "$mode: took $took s"
  case $mode in
    kill) pattern='rank 1 .*(signal 9|Killed)' ;;
    *) pattern='\[rank 1\]' ;;
  esac
  grep -qE "$pattern" fail-$mode.log || fail "$mode: no message naming rank 1: $(cat fail-$mode.log)"
  pass "failure '$mode' on rank 1 ends the job (exit $rc, ${took} s)"
done
grep -q 'rank 1 failed' fail-error.log || fail "rank 0 did not report rank 1's failure"
