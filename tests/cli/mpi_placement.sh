# Expert placement over MPI ranks ([mpi] placement / map): a list map on 4 ranks follows the
# 1-process loss curve and is printed and recorded; a map naming a rank >= P stops the job
# with a message naming mpi.map, the entry and the fix, also when a 4-rank checkpoint is
# resumed on 2 ranks (the checkpoint is left untouched); --set mpi.placement=... on resume
# recomputes the map for the new rank count; bad [mpi] values exit 2 naming the key; balanced
# CCoE placement evens the ranks' training sequences and follows the 1-process curve;
# --train-experts trains each expert on the rank mpi.map names (with more ranks than experts on
# a group of ranks); the final evaluation decodes
# task answers under expert parallelism and after CCoE placement.
source "$(dirname "$0")/lib/common.sh"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
MPIRUN=(mpirun --allow-run-as-root --oversubscribe --bind-to none)
command -v mpirun >/dev/null || fail "mpirun not found (apt-get install openmpi-bin)"
cd "$WORK"
common=(--set train.steps=6 --set train.eval_every=0 --set run.threads=1 --set train.eps=1e-6
        --set data.task_examples=0 --set moe.gate=topk --set moe.n_experts=4 --set moe.top_k=2
        --set moe.capacity_factor=0 --quiet)
losses() { grep '"loss"' "$1/metrics.jsonl" | grep -v '"eval"' | sed -E 's/.*"loss":([0-9.eE+-]+).*/\1/'; }
same_curve() {
  paste <(losses "$1") <(losses "$2") | awk -v n="$3" 'NF != 2 {exit 1}
    {d = $1 - $2; if (d < 0) d = -d; if (d > 1e-5 * $1) {print "step " NR ": " $1 " vs " $2; exit 1}}
    END {if (NR != n) exit 1}'
}

# bad values are rejected at config load (exit 2), naming the key
expect_fail 2 "mpi.placement = 'spread': allowed contiguous, round_robin, balanced, list" -- \
  "$CCOE" train "$TINY" "${common[@]}" --set mpi.placement=spread --set train.out_dir=bad
expect_fail 2 "mpi.map = '0,1' has 2 entries but the model has 4 experts" -- \
  "$CCOE" train "$TINY" "${common[@]}" --set mpi.placement=list --set mpi.map=0,1 \
  --set train.out_dir=bad
expect_fail 2 "mpi.map = '0,1,x,1': entry 2 \('x'\) is not a rank number" -- \
  "$CCOE" train "$TINY" "${common[@]}" --set mpi.placement=list --set mpi.map=0,1,x,1 \
  --set train.out_dir=bad
[[ ! -e bad ]] || fail "a rejected config created its out_dir"
pass "bad [mpi] values exit 2 naming the key"

# a list map on 4 ranks: printed once, recorded, the 1-process loss curve
"$CCOE" train "$TINY" "${common[@]}" --set train.out_dir=one || fail "1-process run"
"${MPIRUN[@]}" -np 4 "$CCOE" train "$TINY" "${common[@]/--quiet/--no-progress}" \
  --set mpi.placement=list --set mpi.map=3,1,2,0 --set train.out_dir=four --stop-at 3 \
  > four.log 2>&1 || fail "4-rank run with a list map: $(cat four.log)"
[[ $(grep -c '^placement: expert -> rank' four.log) -eq 1 ]] \
  || fail "the map is not printed exactly once: $(cat four.log)"
grep -q '^placement: expert -> rank .*mpi.placement = list.*: 0->3 1->1 2->2 3->0$' four.log \
  || fail "wrong placement line: $(grep placement four.log)"
grep -q '"event":"placement".*"policy":"list","ranks":4,"owner":\[3,1,2,0\]' four/metrics.jsonl \
  || fail "the map is not in the metrics: $(head -3 four/metrics.jsonl)"
pass "a list map on 4 ranks is printed and recorded"

# the 4-rank checkpoint on 2 ranks: its map names ranks 2 and 3 -> a clear error, nothing written
sum_before=$(md5sum four/checkpoint.safetensors four/metrics.jsonl)
rc=0
"${MPIRUN[@]}" -np 2 "$CCOE" train "$TINY" "${common[@]}" --set train.out_dir=four \
  --resume four/checkpoint.safetensors > resume2.log 2>&1 || rc=$?
[[ $rc -eq 2 ]] || fail "resume on 2 ranks of a 4-rank list map exited $rc: $(cat resume2.log)"
grep -q "mpi.map entry 0 names rank 3 but the job has 2 ranks; pass --set mpi.map=... with ranks 0..1 or --set mpi.placement=contiguous" resume2.log \
  || fail "no clear error on resume: $(cat resume2.log)"
[[ "$(md5sum four/checkpoint.safetensors four/metrics.jsonl)" == "$sum_before" ]] \
  || fail "the failed resume changed the checkpoint or the metrics"
pass "resuming a 4-rank list map on 2 ranks stops with the mpi.map error, checkpoint untouched"

# the same error on a fresh run
expect_fail 2 "mpi.map entry 2 names rank 2 but the job has 2 ranks" -- \
  "${MPIRUN[@]}" -np 2 "$CCOE" train "$TINY" "${common[@]}" --set mpi.placement=list \
  --set mpi.map=0,1,2,3 --set train.out_dir=fresh2
[[ ! -e fresh2/checkpoint.safetensors ]] || fail "a failed run wrote a checkpoint"
pass "a fresh run with a rank >= P stops with the mpi.map error"

# --set mpi.placement on resume: the map is recomputed for 2 ranks; the curve goes on
"${MPIRUN[@]}" -np 2 "$CCOE" train "$TINY" "${common[@]/--quiet/--no-progress}" \
  --set train.out_dir=four --resume four/checkpoint.safetensors \
  --set mpi.placement=round_robin > resume-rr.log 2>&1 || fail "resume with round_robin: $(cat resume-rr.log)"
grep -q '^placement: expert -> rank .*round_robin.*: 0->0 1->1 2->0 3->1$' resume-rr.log \
  || fail "resumed map: $(grep placement resume-rr.log)"
grep -q '"event":"placement","step":3,.*"policy":"round_robin","ranks":2,"owner":\[0,1,0,1\]' \
  four/metrics.jsonl || fail "the resumed map is not in the metrics"
same_curve one four 6 || fail "list map on 4 ranks + round_robin on 2 ranks drifts from 1 process"
pass "a 4-rank list-map checkpoint resumes on 2 ranks with --set mpi.placement=round_robin"

# balanced CCoE placement: expert a serves two domains, b and c one each; contiguous blocks
# would put a and b together (3:1 in training sequences), balanced puts a alone; the 2-rank
# run follows the 1-process loss curve
ccoe=(--set ccoe.form=tail --set "ccoe.experts=a:1 b:1 c:1"
      --set "ccoe.routes=arith:a code:a sql:b prose:c" --set train.steps=4 --set train.eval_every=0
      --set run.threads=1 --set train.eps=1e-6 --set data.task_examples=0 --set train.batch_size=6)
"$CCOE" train "$TINY" "${ccoe[@]}" --quiet --set train.out_dir=c-one || fail "1-process CCoE run"
"${MPIRUN[@]}" -np 2 "$CCOE" train "$TINY" "${ccoe[@]}" --no-progress --ccoe-placement experts \
  --set mpi.placement=balanced --set train.out_dir=c-bal > c-bal.log 2>&1 \
  || fail "2-rank balanced CCoE run: $(cat c-bal.log)"
grep -q '^placement: expert -> rank (CCoE experts, mpi.placement = balanced): a->0 b->1 c->1$' \
  c-bal.log || fail "balanced map: $(grep '^placement' c-bal.log)"
grep '^placement: training sequences' c-bal.log | awk '{a = $(NF-1); b = $NF; if (a < b) {t = a; a = b; b = t}
  if (b <= 0 || a > 1.5 * b) exit 1}' || fail "balanced ranks are uneven: $(grep '^placement' c-bal.log)"
same_curve c-one c-bal 4 || fail "balanced CCoE placement on 2 ranks drifts from 1 process"
pass "balanced CCoE placement evens the ranks' training sequences and follows 1 process"

# --train-experts follows [mpi] too: a list map swaps which rank trains which expert (the
# experts themselves are trained exactly as before: tests/mpi/test_mpi_train.c experts_parallel)
"${MPIRUN[@]}" -np 2 "$CCOE" train "$TINY" "${ccoe[@]}" --no-progress --train-experts all \
  --set mpi.placement=list --set mpi.map=1,1,0 --set train.out_dir=te-list > te-list.log 2>&1 \
  || fail "--train-experts with a list map: $(cat te-list.log)"
grep -q '^training 3 experts in parallel over 2 ranks (mpi.placement = list): rank 0 \[c\] rank 1 \[a b\]$' \
  te-list.log || fail "--train-experts ranks: $(grep '^training' te-list.log)"
pass "--train-experts places the experts by mpi.map"

# a list map that leaves a rank out: the rank is reported idle, with the fix
"${MPIRUN[@]}" -np 3 "$CCOE" train "$TINY" "${ccoe[@]}" --no-progress --train-experts all \
  --set mpi.placement=list --set mpi.map=1,1,0 --set train.steps=2 --set train.out_dir=te-idle \
  > te-idle.log 2>&1 || fail "--train-experts with an idle rank: $(cat te-idle.log)"
grep -q '^training 3 experts in parallel over 3 ranks (mpi.placement = list): rank 0 \[c\] rank 1 \[a b\] rank 2 \[idle\] (1 idle rank: name it in mpi.map, or drop mpi.placement = list to use every rank)$' \
  te-idle.log || fail "idle rank not reported: $(grep '^training' te-idle.log)"
pass "--train-experts names a rank the list map leaves idle"

# more ranks than experts: each expert on its own group of ranks, data parallel there
"${MPIRUN[@]}" -np 4 "$CCOE" train "$TINY" "${ccoe[@]}" --no-progress --train-experts all \
  --set train.out_dir=te-groups > te-groups.log 2>&1 || fail "--train-experts on 4 ranks: $(cat te-groups.log)"
grep -q '^training 3 experts in parallel over 4 ranks (mpi.placement = contiguous): rank 0 \[a\] rank 1 \[b\] ranks 2-3 \[c\] (each group data parallel)$' \
  te-groups.log || fail "--train-experts groups: $(grep '^training' te-groups.log)"
head -1 te-groups/metrics.c.jsonl | grep -q '"ranks":2' || fail "expert c's metrics do not name 2 ranks"
pass "--train-experts with more ranks than experts trains each on a group of ranks"

# the final evaluation decodes the task answers (one forward over the prompts, then cached
# keys/values) under expert-parallel MoE (every rank decodes together) and after CCoE placement
# (rank 0 decodes the gathered model): the jobs end and record the task accuracy
tasks=(--set data.task_examples=6 --set train.steps=2)
"${MPIRUN[@]}" -np 2 "$CCOE" train "$TINY" "${common[@]}" "${tasks[@]}" \
  --set train.out_dir=ep-tasks > ep-tasks.log 2>&1 || fail "EP run with task decoding: $(cat ep-tasks.log)"
"${MPIRUN[@]}" -np 2 "$CCOE" train "$TINY" "${ccoe[@]}" "${tasks[@]}" --quiet \
  --ccoe-placement experts --set train.out_dir=pl-tasks > pl-tasks.log 2>&1 || fail "placed run with task decoding: $(cat pl-tasks.log)"
for d in ep-tasks pl-tasks; do
  grep '"eval"' "$d/metrics.jsonl" | tail -1 | grep -q '"sql":{[^}]*"task_n":6' \
    || fail "$d: no task accuracy in the final evaluation"
done
pass "task decoding at the final evaluation under expert parallelism and CCoE placement"
