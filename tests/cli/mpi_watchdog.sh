# The collective watchdog (mpi.timeout, mpi/comm_mpi.c): a rank stopped with SIGSTOP during
# `mpirun -np 2 ccoe train` ends the job within seconds with exit code 3 and a message naming
# the stopped rank, and the last checkpoint stays intact (no temp file left); healthy runs with
# a short timeout, the default, or the watchdog off (0) finish normally and print nothing of it.
source "$(dirname "$0")/lib/common.sh"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
MPIRUN=(mpirun --allow-run-as-root --oversubscribe --bind-to none)
command -v mpirun >/dev/null || fail "mpirun not found (apt-get install openmpi-bin)"
cd "$WORK"
common=(--set train.eval_every=0 --set run.threads=1 --set data.task_examples=0)

# healthy runs: the watchdog never fires
for t in 3 0 300; do
  "${MPIRUN[@]}" -np 2 "$CCOE" train "$TINY" "${common[@]}" --set train.steps=30 \
    --set mpi.timeout=$t --set train.out_dir=ok-$t > ok-$t.log 2>&1 || fail "mpi.timeout=$t: $(cat ok-$t.log)"
  ! grep -q watchdog ok-$t.log || fail "mpi.timeout=$t: the watchdog spoke: $(cat ok-$t.log)"
done
pass "healthy 2-rank runs with mpi.timeout 3, 0 and 300 finish without the watchdog"

# the pid of rank R of the job training into OUT
rank_pid() {
  local p
  for p in $(pgrep -f "train.out_dir=$2( |$)" || true); do
    if tr '\0' '\n' < /proc/$p/environ 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=$1"; then
      echo "$p"
    fi
  done
}

for stopped in 1 0; do
  out=stop-$stopped
  rc=0
  # a wider model than tiny-test: most of a step is compute, so the stop usually lands outside
  # MPI and the peer sees rank $stopped not arrive (inside a transfer the monitor thread fires)
  timeout 120 "${MPIRUN[@]}" -np 2 "$CCOE" train "$TINY" "${common[@]}" --set train.steps=1000000 \
    --set model.n_embd=128 --set model.ffn_hidden=512 --set train.batch_size=8 \
    --set train.ckpt_every=20 --set mpi.timeout=3 --set train.out_dir=$out > $out.log 2>&1 &
  job=$!
  # training has started and written a checkpoint
  for i in $(seq 600); do
    [[ -s $out/checkpoint.safetensors ]] && (( $(grep -c '"step"' $out/metrics.jsonl 2>/dev/null || echo 0) >= 30 )) && break
    sleep 0.1
  done
  pid=$(rank_pid $stopped $out)
  [[ -n $pid ]] || { kill $job 2>/dev/null || true; fail "rank $stopped of the job not found: $(tail -5 $out.log)"; }
  sleep 0.5
  start=$(date +%s)
  kill -STOP "$pid"
  wait $job || rc=$?
  took=$(( $(date +%s) - start ))
  for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    ps -o pid,stat,cmd -p "$pid" >&2 || true
    kill -KILL "$pid" 2>/dev/null || true
    fail "stopped rank $stopped outlived the job (exit $rc): $(grep -v '^step' $out.log | tail -20)"
  fi
  [[ $rc -eq 3 ]] || fail "rank $stopped stopped: job exited $rc, not 3 (124 = hung): $(grep -v '^step' $out.log | tail -20)"
  [[ $took -le 30 ]] || fail "rank $stopped stopped: the job took $took s to end"
  other=$(( 1 - stopped ))
  grep -qE "\[rank $other\] watchdog: .*rank $stopped\b.*exit code 3" $out.log \
    || fail "no watchdog message of rank $other naming rank $stopped: $(grep -v '^step' $out.log | tail -20)"
  grep -qE "mpi.timeout = 3 s" $out.log || fail "the message does not name mpi.timeout"
  "$CCOE" info $out/checkpoint.safetensors > info.txt 2>&1 || fail "the last checkpoint is damaged: $(cat info.txt)"
  ! ls $out | grep -q '\.tmp\.' || fail "a temporary checkpoint file is left: $(ls $out)"
  pass "SIGSTOP of rank $stopped ends the job in $took s with exit 3: $(grep -o 'watchdog: .*' $out.log | head -1 | cut -c1-150)"
done
