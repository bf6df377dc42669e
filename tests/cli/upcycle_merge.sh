# `ccoe upcycle` and `ccoe merge` (papers/upcycle-merge.md): an upcycled dense model evaluates to
# the dense model's losses, carries its tokenizer, continues training with --init-from, and
# trains the same under expert parallelism on 2 ranks as in one process; a merged FFN-form CCoE
# model under the domain gate reproduces the CCoE model's per-domain losses; router-only
# training (moe.train_router_only) changes the router tensors alone; bad input stops with a
# message and writes nothing.
source "$(dirname "$0")/lib/common.sh"
cd "$WORK"
quiet=(--quiet --set train.eval_every=0 --set data.task_examples=0)
table() { "$CCOE" eval "$1" --batches 2 --no-tasks | grep -E '^(arith|strings|code|prose|sql|all) +[0-9]'; }

"$CCOE" train "$TINY" --set train.steps=20 --set train.out_dir=dense "${quiet[@]}" \
  || fail "dense run"
D=dense/checkpoint.safetensors
table "$D" > dense.txt

# ---- upcycling: the same losses at step 0 (combine weights summing to one) ----
for spec in "topk 4 2 1" "topk 4 1 2" "noisy_topk 4 2 1" "softmax 3 3 1" "hash 4 1 1"; do
  read -r gate E K every <<<"$spec"
  out=$("$CCOE" upcycle "$D" --experts "$E" --top-k "$K" --every "$every" --gate "$gate" \
        -o "up_$gate$K.st") || fail "upcycle $spec: $out"
  grep -q "continue training with: .*--set moe.gate=$gate --set moe.n_experts=$E" <<<"$out" \
    || fail "upcycle does not say how to continue: $out"
  info=$("$CCOE" info "up_$gate$K.st") || fail "info of the upcycled model"
  grep -q "blocks.$((every - 1)).moe.experts.$((E - 1)).fc.weight" <<<"$info" \
    || fail "upcycled $spec lacks its experts"
  diff dense.txt <(table "up_$gate$K.st") || fail "upcycled ($spec) losses differ from the dense model's"
done
pass "upcycled models evaluate to the dense model's losses (topk, noisy_topk, softmax, hash)"

# the tokenizer travels with the model
diff <("$CCOE" info "$D" | grep -E '^  tokenizer') <("$CCOE" info up_topk2.st | grep -E '^  tokenizer') \
  || fail "the upcycled checkpoint's tokenizer differs"
pass "upcycled checkpoint carries the tokenizer"

# ---- training continues from the upcycled model ----
MOE=(--set moe.gate=topk --set moe.n_experts=4 --set moe.top_k=2 --set moe.every=1)
common=(--set train.steps=8 --set train.eval_every=0 --set run.threads=1 --set train.eps=1e-6
        --set data.task_examples=0 --quiet)
OMP_NUM_THREADS=1 "$CCOE" train "$TINY" "${MOE[@]}" "${common[@]}" --init-from up_topk2.st \
  --set train.out_dir=cont1 || fail "training from the upcycled model"
losses() { grep '"loss"' "$1/metrics.jsonl" | grep -v '"eval"' | sed -E 's/.*"loss":([0-9.eE+-]+).*/\1/'; }
[[ $(losses cont1 | wc -l) -eq 8 ]] || fail "the continued run did not log 8 steps"
# its first step starts from the dense model's level, not from a fresh model's log(V) ~ 5.5
first=$(losses cont1 | head -1)
awk -v f="$first" 'BEGIN {exit !(f < 5.0)}' || fail "the continued run starts at $first: not the dense level"
cmp_out=$("$CCOE" compare --params up_topk2.st cont1/checkpoint.safetensors || true)
grep -q "differs: blocks.0.moe.experts.0.fc.weight" <<<"$cmp_out" \
  || fail "training did not change the experts: $cmp_out"
pass "training continues from the upcycled model (first loss $first)"

if command -v mpirun >/dev/null; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  OMP_NUM_THREADS=1 mpirun --allow-run-as-root --oversubscribe --bind-to none -np 2 \
    "$CCOE" train "$TINY" "${MOE[@]}" "${common[@]}" --init-from up_topk2.st \
    --set train.out_dir=cont2 > cont2.log 2>&1 || fail "2-rank run from the upcycled model: $(cat cont2.log)"
  paste <(losses cont1) <(losses cont2) | awk 'NF != 2 {exit 1}
    {d = $1 - $2; if (d < 0) d = -d; if (d > 1e-5 * $1) {print "step " NR ": " $1 " vs " $2; exit 1}}
    END {if (NR != 8) exit 1}' || fail "expert-parallel run from the upcycled model differs from one process"
  pass "expert parallelism over 2 ranks from the upcycled model follows one process"
else
  echo "skip: no mpirun (the expert-parallel comparison)"
fi

# an imported base (LLaMA layout: RMSNorm, SwiGLU, RoPE, GQA, BPE tokenizer) upcycles the same way
"$CCOE" import "$SRC/tests/fixtures/hf-llama-tiny" -o llama.st >/dev/null || fail "import"
"$CCOE" upcycle llama.st --experts 3 --top-k 2 -o llama_up.st >/dev/null || fail "upcycle the import"
all_rows() { "$CCOE" eval "$1" --batches 1 --no-tasks | grep -E '^[a-z]+ +[0-9]'; }
diff <(all_rows llama.st) <(all_rows llama_up.st) || fail "the upcycled import's losses differ"
diff <("$CCOE" info llama.st | grep -E '^  tokenizer') <("$CCOE" info llama_up.st | grep -E '^  tokenizer') \
  || fail "the upcycled import lost its BPE tokenizer"
pass "an imported LLaMA-layout base upcycles to the same losses and keeps its tokenizer"

# ---- bad input: a clear message, nothing written ----
expect_fail 1 "cannot open 'missing.st'" -- "$CCOE" upcycle missing.st --experts 4 -o bad.st
expect_fail 2 "already has MoE layers" -- "$CCOE" upcycle up_topk2.st --experts 4 -o bad.st
expect_fail 2 "--top-k 5 exceeds the 4 experts" -- "$CCOE" upcycle "$D" --experts 4 --top-k 5 -o bad.st
expect_fail 2 "--experts takes a whole number 1..512" -- "$CCOE" upcycle "$D" --experts 0 -o bad.st
expect_fail 2 "--experts takes a whole number 1..512" -- "$CCOE" upcycle "$D" --experts 513 -o bad.st
expect_fail 2 "upcycle needs -o" -- "$CCOE" upcycle "$D" --experts 4
expect_fail 2 "only moe.\* keys" -- "$CCOE" upcycle "$D" --experts 4 --set model.n_layer=3 -o bad.st
echo "not a checkpoint" > junk.st
expect_fail 1 "junk.st" -- "$CCOE" upcycle junk.st --experts 4 -o bad.st
[[ ! -e bad.st ]] || fail "a refused upcycle wrote bad.st"
pass "bad upcycle input stops with a message and writes nothing"

# ---- Branch-Train-MiX merge ----
"$CCOE" train "$TINY" --set train.steps=20 --set train.out_dir=cc "${quiet[@]}" \
  --set ccoe.form=ffn --set "ccoe.experts=a:1 b:2 c:1 d:2 e:1" \
  --set "ccoe.routes=arith:a strings:b code:c prose:d sql:e" || fail "CCoE ffn run"
CC=cc/checkpoint.safetensors
out=$("$CCOE" merge "$CC" --gate domain -o merged_dom.st) || fail "merge --gate domain: $out"
grep -q "5 experts, top-1; .* 0 averaged" <<<"$out" || fail "merge report: $out"
diff <(table "$CC") <(table merged_dom.st) \
  || fail "the merged model under the domain gate does not reproduce the CCoE paths' losses"
pass "merged FFN experts under the domain gate reproduce the CCoE per-domain losses"

out=$("$CCOE" merge "$CC" --with-base --top-k 2 -o merged.st) || fail "merge: $out"
grep -q "6 experts, top-2" <<<"$out" || fail "merge --with-base: $out"
"$CCOE" train "$TINY" --set moe.gate=topk --set moe.n_experts=6 --set moe.top_k=2 \
  --set moe.train_router_only=true --set train.steps=6 --set train.out_dir=router "${quiet[@]}" \
  --init-from merged.st || fail "router-only training"
cmp_out=$("$CCOE" compare --params merged.st router/checkpoint.safetensors || true)
# exactly the two router tensors differ, nothing else
only_routers() { awk '/^differs:/ {n++; if ($2 !~ /\.moe\.router\.weight$/) bad = 1}
                      END {exit !(n == 2 && !bad)}' <<<"$1"; }
only_routers "$cmp_out" || fail "router-only training changed other tensors than the 2 routers: $cmp_out"
info=$("$CCOE" info router/checkpoint.safetensors) || fail "info of the router-only run"
grep -q "^train_router_only = true" <<<"$info" || fail "the run's stored config lacks moe.train_router_only"
pass "moe.train_router_only changes the router tensors alone"
# a router-only run stopped and resumed equals the uninterrupted one bit for bit (the same
# train.out_dir, in two directories: the stored config names it)
RO=(--set moe.gate=topk --set moe.n_experts=6 --set moe.top_k=2 --set moe.train_router_only=true
    --set train.steps=6 --set train.out_dir=run "${quiet[@]}")
mkdir ro_a ro_b
(cd ro_a && "$CCOE" train "$TINY" "${RO[@]}" --init-from ../merged.st) || fail "router-only run"
(cd ro_b && "$CCOE" train "$TINY" "${RO[@]}" --init-from ../merged.st --stop-at 3) \
  || fail "router-only first half"
(cd ro_b && "$CCOE" train "$TINY" "${RO[@]}" --resume run/checkpoint.safetensors) \
  || fail "router-only resumed half"
cmp ro_a/run/checkpoint.safetensors ro_b/run/checkpoint.safetensors \
  || fail "the resumed router-only run differs from the uninterrupted one"
pass "a resumed router-only run equals the uninterrupted one"

if command -v mpirun >/dev/null; then
  OMP_NUM_THREADS=1 "$CCOE" train "$TINY" --set moe.gate=topk --set moe.n_experts=6 --set moe.top_k=2 \
    --set moe.train_router_only=true "${common[@]}" --set train.steps=6 --init-from merged.st \
    --set train.out_dir=router1 || fail "router-only, one process"
  OMP_NUM_THREADS=1 mpirun --allow-run-as-root --oversubscribe --bind-to none -np 2 \
    "$CCOE" train "$TINY" --set moe.gate=topk --set moe.n_experts=6 --set moe.top_k=2 \
    --set moe.train_router_only=true "${common[@]}" --set train.steps=6 --init-from merged.st \
    --set train.out_dir=router2 > router2.log 2>&1 || fail "router-only on 2 ranks: $(cat router2.log)"
  paste <(losses router1) <(losses router2) | awk 'NF != 2 {exit 1}
    {d = $1 - $2; if (d < 0) d = -d; if (d > 1e-5 * $1) {print "step " NR ": " $1 " vs " $2; exit 1}}
    END {if (NR != 6) exit 1}' || fail "router-only training on 2 ranks differs from one process"
  cmp_out=$("$CCOE" compare --params merged.st router2/checkpoint.safetensors || true)
  only_routers "$cmp_out" || fail "router-only training on 2 ranks changed more than the routers: $cmp_out"
  pass "router-only training under expert parallelism follows one process and changes the routers alone"
fi

# tail blocks: the experts' FFNs become MoE experts, their other tensors are averaged
"$CCOE" train "$TINY" --set train.steps=6 --set train.out_dir=ct "${quiet[@]}" \
  --set ccoe.form=tail --set "ccoe.experts=a:1 b:1" --set "ccoe.routes=arith:a code:b" \
  || fail "CCoE tail run"
out=$("$CCOE" merge ct/checkpoint.safetensors -o merged_tail.st) || fail "merge tail: $out"
grep -q "2 experts, top-2; .*, 8 averaged" <<<"$out" || fail "tail merge did not average block 1: $out"
"$CCOE" eval merged_tail.st --batches 1 --no-tasks >/dev/null || fail "eval of the merged tail model"
out=$("$CCOE" merge ct/checkpoint.safetensors --gate domain -o merged_tail_dom.st) || fail "merge tail, domain gate: $out"
grep -q "note: gate domain sends domain 1 (strings) to expert 1, but its CCoE route is the base" <<<"$out" \
  || fail "no note on routes the domain gate cannot follow: $out"
pass "tail experts merge (the FFNs as experts, the rest of their block averaged)"

expect_fail 2 "has no CCoE experts" -- "$CCOE" merge "$D" -o bad.st
expect_fail 2 "--top-k 6 exceeds the 5 experts" -- "$CCOE" merge "$CC" --top-k 6 -o bad.st
expect_fail 1 "cannot open 'missing.st'" -- "$CCOE" merge missing.st -o bad.st
expect_fail 2 "moe.train_router_only = true, but moe.gate = domain has no router" -- \
  "$CCOE" train "$TINY" --set moe.gate=domain --set moe.n_experts=5 --set moe.top_k=1 \
  --set moe.w_switch=0 --set moe.w_z=0 --set moe.train_router_only=true --set train.out_dir=bad
[[ ! -e bad.st ]] || fail "a refused merge wrote bad.st"
pass "bad merge input stops with a message and writes nothing"
