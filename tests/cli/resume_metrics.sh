# After --resume, metrics.jsonl holds every step exactly once and agrees with the checkpoint: a
# run killed after its last periodic checkpoint logged steps that the resumed run trains again;
# their old lines (and a partly written last line) are dropped, not duplicated.
source "$(dirname "$0")/lib/common.sh"
cd "$WORK"
steps=20
args=(--set train.steps=$steps --set train.ckpt_every=5 --set train.eval_every=5
      --set data.task_examples=0 --set train.out_dir=run --quiet)
# killed (SIGKILL) before step 13: checkpoint at step 10, steps 1-12 logged
rc=0
CCOE_TEST_FAIL_MODE=kill CCOE_TEST_FAIL_STEP=13 "$CCOE" train "$TINY" "${args[@]}" || rc=$?
[[ $rc -eq 137 ]] || fail "expected the kill hook to end the run (exit 137), got $rc"
grep -q '"step":12,"loss"' run/metrics.jsonl || fail "step 12 not logged before the kill"
printf '{"step":13,"loss":1.2' >> run/metrics.jsonl # a line cut off by the kill
"$CCOE" train "$TINY" "${args[@]}" --resume run/checkpoint.safetensors || fail "resumed run"
steps_logged=$(grep -oE '^\{"step":[0-9]+,"loss"' run/metrics.jsonl | grep -oE '[0-9]+')
[[ "$steps_logged" == "$(seq 1 $steps)" ]] \
  || fail "expected steps 1..$steps once each, in order; got: $(tr '\n' ' ' <<<"$steps_logged")"
evals=$(grep -oE '^\{"step":[0-9]+,"eval"' run/metrics.jsonl | grep -oE '[0-9]+' | tr '\n' ' ')
[[ "$evals" == "5 10 15 20 " ]] || fail "expected evaluations at 5 10 15 20 once each: $evals"
while IFS= read -r line; do
  [[ $line == \{*\} ]] || fail "a malformed line is left: $line"
done < run/metrics.jsonl
pass "resume after a kill: every step logged once, no partial line"

# the losses of the re-trained steps are the resumed run's (equal to an uninterrupted run's)
mkdir ref && (cd ref && "$CCOE" train "$TINY" "${args[@]}") || fail "uninterrupted run"
a=$(grep -oE '^\{"step":[0-9]+,"loss":[0-9.]+' run/metrics.jsonl)
b=$(grep -oE '^\{"step":[0-9]+,"loss":[0-9.]+' ref/run/metrics.jsonl)
[[ "$a" == "$b" ]] || fail "resumed losses differ from the uninterrupted run's"
pass "the resumed metrics equal the uninterrupted run's"

# --stop-at then --resume: nothing dropped, nothing repeated
rm -rf run
"$CCOE" train "$TINY" "${args[@]}" --stop-at 7 || fail "--stop-at 7"
"$CCOE" train "$TINY" "${args[@]}" --resume run/checkpoint.safetensors || fail "resume after --stop-at"
steps_logged=$(grep -oE '^\{"step":[0-9]+,"loss"' run/metrics.jsonl | grep -oE '[0-9]+')
[[ "$steps_logged" == "$(seq 1 $steps)" ]] || fail "after --stop-at: $(tr '\n' ' ' <<<"$steps_logged")"
pass "resume after --stop-at: every step logged once"
