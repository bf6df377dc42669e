# A Mixture-of-Experts model (noisy top-k, E 4, K 2) trains on the builtin data: the loss falls,
# metrics.jsonl has the aux loss and per-layer expert statistics, a resumed run equals the
# uninterrupted one bit for bit, `ccoe eval` prints the expert table; bad [moe] settings exit 2
# naming the key.
source "$(dirname "$0")/lib/common.sh"
mkdir -p "$WORK/a" "$WORK/b"
steps=40
MOE=(--set moe.gate=noisy_topk --set moe.n_experts=4 --set moe.top_k=2 --set moe.noise_eps=0.01
     --set moe.w_importance=0.01 --set moe.w_load=0.01)
(cd "$WORK/a" && "$CCOE" train "$TINY" "${MOE[@]}" --set train.steps=$steps \
   --set train.out_dir=run --set train.eval_every=20 --quiet) || fail "uninterrupted run"
(cd "$WORK/b" && "$CCOE" train "$TINY" "${MOE[@]}" --set train.steps=$steps \
   --set train.out_dir=run --set train.eval_every=20 --quiet --stop-at 17) || fail "first half"
(cd "$WORK/b" && "$CCOE" train "$TINY" "${MOE[@]}" --set train.steps=$steps \
   --set train.out_dir=run --set train.eval_every=20 --quiet \
   --resume run/checkpoint.safetensors) || fail "resumed half"
cmp "$WORK/a/run/checkpoint.safetensors" "$WORK/b/run/checkpoint.safetensors" \
  || fail "resumed MoE run differs from the uninterrupted one"
pass "MoE resume is bitwise equal"

# auxiliary-loss-free balancing: the selection bias is state in the checkpoint, so a resumed
# lossfree run equals the uninterrupted one; with moe.bias_rate = 0 the run differs (the bias
# moved)
LF=(--set moe.gate=lossfree --set moe.n_experts=4 --set moe.top_k=2 --set moe.w_switch=0
    --set moe.bias_rate=0.01 --set train.steps=12 --quiet)
mkdir -p "$WORK/lfa" "$WORK/lfb" "$WORK/lfc"
(cd "$WORK/lfa" && "$CCOE" train "$TINY" "${LF[@]}" --set train.out_dir=run) || fail "lossfree run"
(cd "$WORK/lfb" && "$CCOE" train "$TINY" "${LF[@]}" --set train.out_dir=run --stop-at 5) \
  || fail "lossfree first half"
(cd "$WORK/lfb" && "$CCOE" train "$TINY" "${LF[@]}" --set train.out_dir=run \
   --resume run/checkpoint.safetensors) || fail "lossfree resumed half"
cmp "$WORK/lfa/run/checkpoint.safetensors" "$WORK/lfb/run/checkpoint.safetensors" \
  || fail "resumed lossfree run differs from the uninterrupted one"
(cd "$WORK/lfc" && "$CCOE" train "$TINY" "${LF[@]}" --set moe.bias_rate=0 \
   --set train.out_dir=run) || fail "lossfree run with a frozen bias"
if cmp -s "$WORK/lfa/run/checkpoint.safetensors" "$WORK/lfc/run/checkpoint.safetensors"; then
  fail "moe.bias_rate has no effect"
fi
pass "lossfree resume is bitwise equal, and the bias moves"

m="$WORK/a/run/metrics.jsonl"
first=$(grep -m1 '"loss"' "$m" | sed -E 's/.*"loss":([0-9.eE+-]+).*/\1/')
last=$(grep '"loss"' "$m" | tail -n 5 | sed -E 's/.*"loss":([0-9.eE+-]+).*/\1/' |
       awk '{s+=$1} END {print s/NR}')
awk -v f="$first" -v l="$last" 'BEGIN {exit !(l < f - 1.0)}' \
  || fail "MoE loss did not fall: first $first, last-5 mean $last"
pass "MoE loss falls ($first -> $last)"

n_aux=$(grep -c '"aux_loss":[0-9]' "$m")
[[ $n_aux -eq $steps ]] || fail "aux_loss on $n_aux of $steps step lines"
grep '"step":40,"loss"' "$m" | grep '"moe":\[{"layer":0,.*"tokens_per_expert":\[[0-9,]*\].*{"layer":1,' >/dev/null \
  || fail "last step line lacks the per-layer MoE statistics"
grep '"step":40,"loss"' "$m" | grep -E '"objective":[0-9]' >/dev/null || fail "objective missing"
pass "metrics have aux_loss and expert statistics"

out=$("$CCOE" eval "$WORK/a/run/checkpoint.safetensors" --batches 2 --no-tasks) || fail "eval: $out"
grep -q "^MoE experts (gate noisy_topk, E=4, K=2" <<<"$out" || fail "eval lacks the MoE table: $out"
# layer, tokens, drop_rate (0: evaluation is dropless by default), train_drop (what the
# training capacity would drop), gate and router entropy, load CV, tokens per expert
grep -qE "^1 +[0-9]+ +0\.0000 +[0-9.]+ +[0-9.]+ +[0-9.]+ +[0-9.]+  [0-9]+ [0-9]+ [0-9]+ [0-9]+$" <<<"$out" \
  || fail "eval MoE line for layer 1 malformed (or not dropless): $out"
grep -q "^sql " <<<"$out" || fail "eval lacks the domain table: $out"
pass "eval prints expert statistics"

# asked otherwise, evaluation runs under a capacity: the drop rate equals train_drop
out=$("$CCOE" eval "$WORK/a/run/checkpoint.safetensors" --batches 2 --no-tasks \
  --set moe.eval_capacity_factor=1.25) || fail "eval with a capacity: $out"
grep -q "eval_capacity_factor 1.25" <<<"$out" || fail "eval ignores moe.eval_capacity_factor: $out"
awk '/^MoE experts/ {t = 1; next} t && /^[0-9]+ / {n++; if ($3 != $4) bad = 1}
     END {exit !(n == 2 && !bad)}' <<<"$out" \
  || fail "eval under the training capacity: drop_rate differs from train_drop: $out"
pass "eval --set moe.eval_capacity_factor drops as training would"

cd "$WORK"
expect_fail 2 "moe.top_k" -- "$CCOE" train "$TINY" --set moe.gate=topk --set moe.n_experts=4 \
  --set moe.top_k=9 --set train.out_dir=bad
expect_fail 2 "moe.capacity_factor" -- "$CCOE" train "$TINY" --set moe.gate=topk \
  --set moe.capacity_factor=0.5 --set train.out_dir=bad
expect_fail 2 "moe.noise_eps" -- "$CCOE" train "$TINY" --set moe.gate=topk \
  --set moe.noise_eps=0.01 --set train.out_dir=bad
expect_fail 2 "moe.gate" -- "$CCOE" train "$TINY" --set moe.gate=switch --set train.out_dir=bad
expect_fail 2 "moe.n_experts" -- "$CCOE" train "$TINY" --set moe.gate=domain --set moe.top_k=1 \
  --set moe.n_experts=2 --set moe.w_switch=0 --set moe.w_z=0 --set train.out_dir=bad
expect_fail 2 "moe.eval_capacity_factor" -- "$CCOE" train "$TINY" --set moe.gate=topk \
  --set moe.eval_capacity_factor=0.5 --set train.out_dir=bad
expect_fail 2 "moe.w_switch" -- "$CCOE" train "$TINY" --set moe.gate=hash --set moe.top_k=1 \
  --set train.out_dir=bad
expect_fail 2 "moe.n_shared" -- "$CCOE" train "$TINY" --set moe.gate=topk --set moe.n_experts=4 \
  --set moe.n_shared=5 --set train.out_dir=bad
expect_fail 2 "moe.granularity" -- "$CCOE" train "$TINY" --set moe.gate=hash --set moe.top_k=1 \
  --set moe.w_switch=0 --set moe.w_z=0 --set moe.granularity=2 --set train.out_dir=bad
pass "bad [moe] settings exit 2 naming the key"

# a large balancing coefficient lowers the load CV during a short training run (same seed,
# top-1 dropless: without it the router collapses onto few experts)
cv_of() {
  grep '"moe"' "$1/metrics.jsonl" | tail -n 1 | grep -oE '"load_cv":[0-9.eE+-]+' | cut -d: -f2 |
    awk '{s += $1} END {print s / NR}'
}
for w in 0 1; do
  "$CCOE" train "$TINY" --set train.steps=60 --set train.log_every=60 --set train.eval_every=0 \
    --set moe.gate=topk --set moe.n_experts=4 --set moe.top_k=1 --set moe.capacity_factor=0 \
    --set moe.w_z=0 --set moe.w_switch=$w --set train.out_dir="$WORK/bal$w" --quiet || fail "balance run $w"
done
cv0=$(cv_of "$WORK/bal0"); cv1=$(cv_of "$WORK/bal1")
awk -v a="$cv0" -v b="$cv1" 'BEGIN {exit !(b < 0.5 * a)}' \
  || fail "load CV with w_switch=1 ($cv1) is not below half of w_switch=0 ($cv0)"
pass "balancing lowers load CV ($cv0 -> $cv1)"

# a top-1 gate whose weight is always 1 (renormalised topk, noisy top-1) gets a warning; the
# Switch form (renormalize = false) does not
k1=(--set moe.n_experts=4 --set moe.top_k=1 --set train.steps=1 --set train.eval_every=0
    --set data.task_examples=0 --no-progress --force)
out=$("$CCOE" train "$TINY" --set moe.gate=topk "${k1[@]}" --set train.out_dir="$WORK/k1a" 2>&1) || fail "top-1 run: $out"
grep -q "router learns only from the balancing losses" <<<"$out" || fail "no top-1 warning: $out"
out=$("$CCOE" train "$TINY" --set moe.gate=noisy_topk "${k1[@]}" --set train.out_dir="$WORK/k1b" 2>&1) || fail "noisy top-1 run: $out"
grep -q "router learns only from the balancing losses" <<<"$out" || fail "no noisy top-1 warning: $out"
out=$("$CCOE" train "$TINY" --set moe.gate=topk --set moe.renormalize=false "${k1[@]}" --set train.out_dir="$WORK/k1c" 2>&1) || fail "switch run: $out"
if grep -q "warning: moe.gate" <<<"$out"; then fail "Switch top-1 warned: $out"; fi
pass "top-1 gates with a constant weight are warned about"

# expert choice: a resumed run equals the uninterrupted one bit for bit, `ccoe eval` says how it
# routes (batch-level for val_loss, per-token top-k for decoding), a top_k of its own stops
EC=(--set moe.gate=expert_choice --set moe.n_experts=4 --set moe.capacity_factor=2
    --set train.steps=12 --set train.eval_every=0 --set data.task_examples=2 --quiet)
mkdir -p "$WORK/eca" "$WORK/ecb"
(cd "$WORK/eca" && "$CCOE" train "$TINY" "${EC[@]}" --set train.out_dir=run) || fail "ec run"
(cd "$WORK/ecb" && "$CCOE" train "$TINY" "${EC[@]}" --set train.out_dir=run --stop-at 5) \
  || fail "ec first part"
(cd "$WORK/ecb" && "$CCOE" train "$TINY" "${EC[@]}" --set train.out_dir=run \
   --resume run/checkpoint.safetensors) || fail "ec resumed part"
cmp "$WORK/eca/run/checkpoint.safetensors" "$WORK/ecb/run/checkpoint.safetensors" \
  || fail "resumed expert-choice run differs from the uninterrupted one"
out=$("$CCOE" eval "$WORK/eca/run/checkpoint.safetensors" 2>&1) || fail "ec eval: $out"
grep -q "routing: val_loss by batch-level expert choice" <<<"$out" || fail "ec eval routing: $out"
grep -q "per-token top-2" <<<"$out" || fail "ec eval decoding routing: $out"
expect_fail 2 "moe.top_k = 3 does not apply" -- "$CCOE" train "$TINY" \
  --set moe.gate=expert_choice --set moe.top_k=3 --set train.out_dir="$WORK/ecbad"
pass "expert choice: resume bitwise equal, eval names its routing, top_k rejected"
