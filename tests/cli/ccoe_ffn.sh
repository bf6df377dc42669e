# CCoE Eqs. 6-7 (ccoe.form = ffn) through `ccoe train-expert`: a post-LN base, a new FFN-level
# expert trained in isolation and pushed in one command; the base stays bit-identical, the
# expert lowers its own domain's loss and leaves the other domains' untouched; continual
# training (existing expert) goes back into the same slot; pop/push is exact; mixing an FFN
# expert into a block-expert model is refused.
source "$(dirname "$0")/lib/common.sh"
cd "$WORK"
X=(--set train.eval_every=0 --set train.log_every=1000 --set data.task_examples=0)
"$CCOE" train "$TINY" --set model.block=post_ln --set train.out_dir=base --set train.steps=80 \
  "${X[@]}" --quiet >/dev/null || fail "base"
BASE=base/checkpoint.safetensors

# 1. new FFN expert -> train -> push, in one command
out=$("$CCOE" train-expert "$BASE" --expert arith --domain arith --layers 2 --form ffn \
  --set train.steps=60 "${X[@]}" -o exp --push model.safetensors 2>&1) || fail "train-expert: $out"
grep -q "isolated training of expert 'arith'" <<<"$out" || fail "no isolated-training line: $out"
"$CCOE" compare "$BASE" exp/checkpoint.safetensors --only-base >/dev/null \
  || fail "base changed during isolated FFN expert training"
"$CCOE" compare "$BASE" model.safetensors --only-base >/dev/null || fail "push changed the base"
"$CCOE" info model.safetensors > info.txt
grep -q "form ffn (Eqs. 6-7)" info.txt || fail "form not recorded: $(cat info.txt)"
grep -qE "^arith +2,0 +base\[0:2\] \+ arith FFN\[0:2\]" info.txt || fail "matrix: $(cat info.txt)"
grep -q "experts.arith.blocks.1.mlp.fc.weight" info.txt || fail "expert tensors missing"
grep -q "experts.arith.blocks.0.attn" info.txt && fail "an FFN expert must not hold attention"
pass "train-expert --form ffn --push; base bit-identical"

loss_of() { "$CCOE" eval "$1" --batches 0 --no-tasks | awk -v d="$2" '$1 == d && !seen {print $2; seen = 1}'; }
lb=$(loss_of "$BASE" arith); le=$(loss_of model.safetensors arith)
awk -v b="$lb" -v e="$le" 'BEGIN {exit !(e < b)}' || fail "expert arith loss $le not below base $lb"
[[ "$(loss_of "$BASE" prose)" == "$(loss_of model.safetensors prose)" ]] || fail "prose changed"
pass "FFN expert lowers arith loss ($lb -> $le); other domains unchanged"

# 2. continual training of the existing expert goes back into its slot
"$CCOE" train-expert model.safetensors --expert arith --set train.steps=10 "${X[@]}" \
  -o cont --push model2.safetensors --quiet >/dev/null || fail "continual training"
"$CCOE" compare model.safetensors model2.safetensors --only-base >/dev/null || fail "base touched"
out=$("$CCOE" compare model.safetensors model2.safetensors || true)
grep -q "^differs: experts.arith" <<<"$out" || fail "expert not updated: $out"
pass "continual training in place"

# 3. pop / remove / push round trip is exact
"$CCOE" pop model2.safetensors --expert arith -o arith.expert >/dev/null || fail "pop"
"$CCOE" pop model2.safetensors --expert arith --remove -o stripped.safetensors >/dev/null || fail "remove"
"$CCOE" push stripped.safetensors arith.expert -o again.safetensors >/dev/null || fail "push"
"$CCOE" compare model2.safetensors again.safetensors >/dev/null || fail "round trip not exact"
pass "pop/push round trip bitwise"

# 4. bad inputs: clear errors, nothing written
"$CCOE" train-expert "$BASE" --expert tail1 --domain code --layers 1 --form tail \
  --set train.steps=2 "${X[@]}" -o tailx --quiet >/dev/null || fail "tail expert"
"$CCOE" pop tailx/checkpoint.safetensors --expert tail1 -o tail1.expert >/dev/null || fail "pop tail"
expect_fail 1 "whole blocks.*ccoe.form = ffn" -- "$CCOE" push model2.safetensors tail1.expert -o bad.safetensors
[[ ! -e bad.safetensors ]] || fail "a refused push wrote its output"
expect_fail 2 "needs --domain" -- "$CCOE" train-expert "$BASE" --expert nope
expect_fail 2 "only 2" -- "$CCOE" train-expert "$BASE" --expert big --domain code --layers 3 --form ffn -o big
expect_fail 2 "unknown domain 'law'" -- "$CCOE" train-expert "$BASE" --expert l --domain law --form ffn -o l
expect_fail 2 "has 2 layers, not 1" -- "$CCOE" train-expert model2.safetensors --expert arith --layers 1
# an expert name that would leave runs/ is refused before any folder is made
mkdir -p names/a && (cd names/a && expect_fail 2 "expert name '../../x'" -- \
  "$CCOE" train-expert "$WORK/$BASE" --expert ../../x --domain code --form ffn --set train.steps=1) || fail "../../x"
expect_fail 2 "expert name '..'" -- "$CCOE" train-expert "$BASE" --expert .. --domain code --form ffn
[[ -z "$(find names -mindepth 2)" && ! -e runs ]] || fail "a refused expert name created folders: $(find names runs 2>/dev/null)"
pass "bad inputs"
