# run.threads = auto (src/threads.h): with a forced slowdown of multi-threaded steps
# (CCOE_TEST_THREADS_SLOW, a test hook) it switches to 1 thread, without one it may stay; either
# way the losses, gradient norms and weights equal those of fixed 1- and 2-thread runs. Bad
# values are clear errors; bench takes --threads auto.
source "$(dirname "$0")/lib/common.sh"
if [[ $(nproc) -lt 2 ]]; then
  echo "skipped: one CPU, auto has nothing to choose"
  exit 77
fi
# C = 64: above the gradient norm's serial threshold, so its threaded split is exercised too
common=(--set train.steps=16 --set train.log_every=1 --set train.eval_every=0
        --set train.eval_batches=1 --set data.task_examples=0 --set model.n_embd=64)
run() { # NAME THREADS [ENV...]
  local name=$1 th=$2; shift 2
  (cd "$WORK" && env "$@" "$CCOE" train "$TINY" "${common[@]}" --set run.threads="$th" \
     --set train.out_dir="$name" > "$name.log" 2>&1) || fail "run $name: $(tail -3 "$WORK/$name.log")"
  grep -o '"step":[0-9]*,"loss":[^,]*,"lr":[^,]*,"grad_norm":[^,]*' "$WORK/$name/metrics.jsonl" \
    > "$WORK/$name.curve"
  [[ $(wc -l < "$WORK/$name.curve") -eq 16 ]] || fail "run $name: not 16 step lines"
}
same_weights() { # A B
  local out
  out=$("$CCOE" compare "$WORK/$1/checkpoint.safetensors" "$WORK/$2/checkpoint.safetensors" 2>&1) || true
  grep -q " 0 differ, 0 only in A, 0 only in B" <<<"$out" || fail "$1 vs $2 tensors: $out"
  # only the config (its run.threads) may differ
  if grep "^metadata differs" <<<"$out" | grep -vqE "^metadata differs: config(_hash)?$"; then
    fail "$1 vs $2 metadata: $out"
  fi
}
run t1 1
run t2 2
run slow auto CCOE_TEST_THREADS_SLOW=1000
run fast auto CCOE_TEST_THREADS_SLOW=0.001
cmp -s "$WORK/t1.curve" "$WORK/t2.curve" || fail "1 and 2 threads differ: $(diff "$WORK/t1.curve" "$WORK/t2.curve" | head -4)"
same_weights t1 t2
pass "1 and 2 threads: the same losses, gradient norms and weights"

# the slowed run probes both counts, then stays on 1 thread; the other stays mostly on 2 (the
# checks allow for a loaded machine, whose step times jump and cause extra probes; the factors
# are extreme because 2 threads on a 2-core machine with a load of 20 run 10-20 times slower)
grep -q "threads auto (1..[0-9]*, measured)" "$WORK/slow.log" || fail "no auto in the start line"
grep -q '"threads":2' "$WORK/slow/metrics.jsonl" || fail "slow: never probed 2 threads"
tail -n 4 "$WORK/slow/metrics.jsonl" | grep -q '"threads":1' || fail "slow: did not end on 1 thread"
grep -qE "threads auto: [0-9]+ probes, [0-9]+ switches, ending on 1 of" "$WORK/slow.log" \
  || fail "slow: $(grep 'threads auto:' "$WORK/slow.log")"
grep -qE "step +16/16 .*\| 1 thr" "$WORK/slow.log" || fail "slow: the log line lacks the count"
on2=$(grep -c '"threads":2' "$WORK/fast/metrics.jsonl" || true)
[[ $on2 -ge 8 ]] || fail "fast: only $on2 of 16 steps on 2 threads"
for r in slow fast; do
  cmp -s "$WORK/t2.curve" "$WORK/$r.curve" || fail "auto ($r) differs from 2 threads: $(diff "$WORK/t2.curve" "$WORK/$r.curve" | head -4)"
  same_weights t2 $r
done
pass "auto switches on a slowdown and keeps the fixed runs' losses and weights"

# a fixed count writes no per-step thread field (its metrics keep their keys)
grep -q '"threads":' <(grep '"loss"' "$WORK/t2/metrics.jsonl") && fail "fixed run has per-step threads"
# the resolved config says auto and reads back
grep -q "^threads = auto$" "$WORK/slow.log" || fail "resolved config lacks threads = auto"
"$CCOE" info "$WORK/slow/checkpoint.safetensors" | grep -q "threads = auto" \
  || fail "checkpoint config lacks threads = auto"
pass "auto is recorded"

expect_fail 2 "run.threads = 0 is out of range: allowed 1..1024 or auto" -- \
  "$CCOE" train "$TINY" --set run.threads=0
expect_fail 2 "run.threads = 'automatic' is not a number or auto" -- \
  "$CCOE" train "$TINY" --set run.threads=automatic
grep -q "run.threads .*integer 1..1024 or auto" <<<"$("$CCOE" help-config)" || fail "help-config"
expect_fail 2 "thread count 1..1024 or auto" -- "$CCOE" bench --threads 0
out=$("$CCOE" bench --shape small --steps 3 --threads auto) || fail "bench --threads auto: $out"
grep -q "^threads auto (1..[0-9]*)" <<<"$out" || fail "bench header: $out"
grep -qE "^\| small .*, auto( [0-9]t:[0-9]+)+ \| [0-9]+ \| [0-9]+ \| [0-9]+ \|$" <<<"$out" || fail "bench row: $out"
pass "bad values are errors; bench --threads auto"
