# run.precision = bf16 (papers/bf16.md) on the tiny config: the loss curve of 30 steps stays
# within 0.02 of fp32's at every step (measured: under 0.001) without being bit-identical to it,
# a resumed bf16 run equals the uninterrupted one bit for bit, MoE (noisy top-k) and a CCoE form
# (tail expert) train in bf16 within the same tolerance; on a CPU without AVX512-BF16 (simulated
# with CCOE_GEMM_NO_BF16=1) the run stops with exit 1 naming the instructions and the fix. The
# rest skips (exit 77) on a CPU without AVX512-BF16.
source "$(dirname "$0")/lib/common.sh"
cd "$WORK"
X=(--set train.eval_every=0 --set data.task_examples=0 --quiet)
B=(--set run.precision=bf16)

# a CPU without the instructions: a clear error, never a silent slow path
expect_fail 1 "avx512_bf16.*run.precision = fp32" -- env CCOE_GEMM_NO_BF16=1 \
  "$CCOE" train "$TINY" "${X[@]}" "${B[@]}" --set train.steps=1 --set train.out_dir=nobf16
expect_fail 2 "run.precision" -- "$CCOE" train "$TINY" "${X[@]}" --set run.precision=fp16 \
  --set train.out_dir=bad
pass "no AVX512-BF16: exit 1 naming avx512_bf16 and run.precision = fp32; bad value: exit 2"

if ! out=$("$CCOE" train "$TINY" "${X[@]}" "${B[@]}" --set train.steps=1 \
             --set train.out_dir=probe 2>&1); then
  grep -q "AVX512-BF16" <<<"$out" || fail "bf16 probe run: $out"
  echo "skip: this CPU has no AVX512-BF16 ($out)"
  exit 77
fi

# losses of the step lines of a run's metrics
losses() { grep -oE '"step":[0-9]+,"loss":[0-9.eE+-]+' "$1/metrics.jsonl" | cut -d: -f3; }
# compare_runs A B TOL WHAT: every step's loss within TOL, and not all of them equal
compare_runs() {
  local n
  n=$(paste <(losses "$1") <(losses "$2") | awk -v t="$3" '
      {d = $1 - $2; if (d < 0) d = -d; if (d > m) m = d; if ($1 != $2) diff++; n++}
      END {if (n < 30 || m > t || !diff) {print "FAIL " n " " m " " diff; exit} print m}')
  [[ $n != FAIL* ]] || fail "$4: bf16 vs fp32 loss curves (steps, max |diff|, differing): $n"
  pass "$4: bf16 loss within $3 of fp32 at every step (max |diff| $n)"
}

"$CCOE" train "$TINY" "${X[@]}" --set train.out_dir=f32 || fail "fp32 run"
"$CCOE" train "$TINY" "${X[@]}" "${B[@]}" --set train.out_dir=b16 || fail "bf16 run"
compare_runs f32 b16 0.02 "dense"

# resume in bf16: 13 steps, then the rest, equals 30 steps at once
mkdir -p whole half
(cd whole && "$CCOE" train "$TINY" "${X[@]}" "${B[@]}" --set train.out_dir=run) || fail "whole run"
(cd half && "$CCOE" train "$TINY" "${X[@]}" "${B[@]}" --set train.out_dir=run --stop-at 13) \
  || fail "first part"
(cd half && "$CCOE" train "$TINY" "${X[@]}" "${B[@]}" --set train.out_dir=run \
   --resume run/checkpoint.safetensors) || fail "resumed part"
cmp whole/run/checkpoint.safetensors half/run/checkpoint.safetensors \
  || fail "resumed bf16 run differs from the uninterrupted one"
pass "bf16 resume is bitwise equal"

MOE=(--set moe.gate=noisy_topk --set moe.n_experts=4 --set moe.top_k=2 --set moe.noise_eps=0.01
     --set moe.w_importance=0.01 --set moe.w_load=0.01)
"$CCOE" train "$TINY" "${X[@]}" "${MOE[@]}" --set train.out_dir=moe32 || fail "MoE fp32 run"
"$CCOE" train "$TINY" "${X[@]}" "${MOE[@]}" "${B[@]}" --set train.out_dir=moe16 || fail "MoE bf16 run"
compare_runs moe32 moe16 0.02 "MoE noisy top-2"

CC=(--set ccoe.form=tail --set "ccoe.experts=arith:1" --set "ccoe.routes=arith:arith")
"$CCOE" train "$TINY" "${X[@]}" "${CC[@]}" --set train.out_dir=cc32 || fail "CCoE fp32 run"
"$CCOE" train "$TINY" "${X[@]}" "${CC[@]}" "${B[@]}" --set train.out_dir=cc16 || fail "CCoE bf16 run"
compare_runs cc32 cc16 0.02 "CCoE tail expert"

# the checkpoint records the precision; evaluation runs in it too
grep -q "precision = bf16" <("$CCOE" info b16/checkpoint.safetensors) || fail "info lacks the precision"
"$CCOE" eval b16/checkpoint.safetensors --batches 1 --no-tasks >/dev/null || fail "eval in bf16"
pass "checkpoint records run.precision = bf16; eval runs"
