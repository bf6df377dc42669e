# The CCoE workflow of the paper (Section 4.3) end to end on the builtin data: pre-train the base
# on mixed data -> train a new expert separately with the base frozen -> pop/push -> evaluate the
# domain through its routed path vs the base; continual training (pop copy -> train -> push back
# into the same slot); push/pop exactness; bad inputs leave the model untouched.
source "$(dirname "$0")/lib/common.sh"
cd "$WORK"
X=(--set train.eval_every=0 --set train.log_every=1000 --quiet)
"$CCOE" train "$TINY" --set train.out_dir=base --set train.steps=80 "${X[@]}" >/dev/null || fail "base"
BASE=base/checkpoint.safetensors
EXP=(--set ccoe.form=tail --set "ccoe.experts=arith:1" --set "ccoe.routes=arith:arith")

# 1. isolated expert training: only the expert changes
"$CCOE" train "$TINY" --set train.out_dir=exp --set train.steps=80 --set train.lr=0.002 \
  "${EXP[@]}" --set ccoe.train_expert=arith --init-from "$BASE" "${X[@]}" >/dev/null || fail "expert training"
"$CCOE" compare "$BASE" exp/checkpoint.safetensors --only-base >/dev/null \
  || fail "base parameters changed during isolated expert training"
out=$("$CCOE" compare "$BASE" exp/checkpoint.safetensors || true)
grep -q "^differs: experts" <<<"$out" && fail "compare reports expert tensors the base lacks"
pass "base bit-identical after expert training"

# 2. the expert lowers its own domain's validation loss below the base
loss_of() { "$CCOE" eval "$1" --batches 0 --no-tasks | awk -v d="$2" '$1 == d && !seen {print $2; seen = 1}'; }
lb=$(loss_of "$BASE" arith); le=$(loss_of exp/checkpoint.safetensors arith)
awk -v b="$lb" -v e="$le" 'BEGIN {exit !(e < b)}' || fail "expert arith loss $le not below base $lb"
# other domains still take the base path: their loss is unchanged
[[ "$(loss_of "$BASE" prose)" == "$(loss_of exp/checkpoint.safetensors prose)" ]] || fail "prose changed"
out=$("$CCOE" eval exp/checkpoint.safetensors --batches 1 --no-tasks) || fail "eval"
grep -qE "^arith +base\[0:1\] -> arith \(1\) +[0-9]+ +[0-9.]+" <<<"$out" || fail "no path cost row: $out"
grep -qE "^prose +base\[0:2\] " <<<"$out" || fail "no base path row: $out"
pass "expert lowers arith loss ($lb -> $le); base domains unchanged; path costs printed"

# 3. pop (copy) / remove / push back: exact
"$CCOE" pop exp/checkpoint.safetensors --expert arith -o arith.expert >/dev/null || fail "pop"
"$CCOE" pop exp/checkpoint.safetensors --expert arith --remove -o stripped.safetensors >/dev/null || fail "remove"
"$CCOE" info stripped.safetensors | grep "experts\." >/dev/null && fail "removed expert still present"
"$CCOE" push stripped.safetensors arith.expert -o again.safetensors >/dev/null || fail "push"
"$CCOE" compare exp/checkpoint.safetensors again.safetensors --params >/dev/null || fail "push/pop round trip not exact"
# the full comparison sees what --params leaves out: the training run's optimizer state
out=$("$CCOE" compare exp/checkpoint.safetensors again.safetensors) && fail "files with different tensor sets compare identical"
grep -q "^only in A: optim\.m\." <<<"$out" || fail "compare does not report tensors only in A: $out"
grep -q "metadata differs: optim.state" <<<"$out" || fail "compare does not report metadata: $out"
"$CCOE" pop again.safetensors --expert arith -o arith2.expert >/dev/null || fail "pop again"
cmp arith.expert arith2.expert || fail "expert files differ after a round trip"
[[ "$(loss_of again.safetensors arith)" == "$le" ]] || fail "pushed model evaluates differently"
pass "pop/push round trip bitwise"

# 4. a second expert is appended at the last position of its CoE layer; existing entries keep
"$CCOE" train "$TINY" --set train.out_dir=exp2 --set train.steps=10 --set ccoe.form=tail \
  --set "ccoe.experts=strings:1" --set "ccoe.routes=strings:strings" --set ccoe.train_expert=strings \
  --init-from "$BASE" "${X[@]}" >/dev/null || fail "second expert"
"$CCOE" pop exp2/checkpoint.safetensors --expert strings -o strings.expert >/dev/null || fail "pop strings"
"$CCOE" push again.safetensors strings.expert -o both.safetensors >/dev/null || fail "push second"
"$CCOE" info both.safetensors > both.txt
grep -E "^arith " both.txt | grep "1,0" >/dev/null || fail "arith entry changed: $(cat both.txt)"
grep -E "^strings " both.txt | grep "1,1" >/dev/null || fail "strings not appended at position 1: $(cat both.txt)"
"$CCOE" compare again.safetensors both.safetensors --params >/dev/null || fail "push changed existing tensors"
pass "push appends; existing gating entries and weights unchanged"

# 5. continual training: pop copy -> train the copy -> push back into the same slot
"$CCOE" train "$TINY" --set train.out_dir=cont --set train.steps=10 "${EXP[@]}" \
  --set ccoe.train_expert=arith --init-from again.safetensors "${X[@]}" >/dev/null || fail "continual"
"$CCOE" pop cont/checkpoint.safetensors --expert arith -o arith3.expert >/dev/null || fail "pop 3"
"$CCOE" push both.safetensors arith3.expert -o both2.safetensors >/dev/null || fail "push back"
"$CCOE" compare both.safetensors both2.safetensors --only-base >/dev/null || fail "push back touched the base"
out=$("$CCOE" compare both.safetensors both2.safetensors || true)
grep -q "^differs: experts.arith" <<<"$out" || fail "expert not replaced: $out"
grep -q "^differs: experts.strings" <<<"$out" && fail "other expert changed: $out"
"$CCOE" info both2.safetensors | grep -E "^strings " | grep "1,1" >/dev/null || fail "gating changed"
pass "continual training round trip"

# 6. bad inputs: clear errors, model untouched
sum=$(sha256sum both.safetensors)
"$CCOE" train "$TINY" --set model.n_embd=48 --set model.n_head=2 --set train.out_dir=wide \
  --set train.steps=2 "${X[@]}" --set ccoe.form=tail --set "ccoe.experts=arith:1" \
  --set "ccoe.routes=arith:arith" >/dev/null || fail "wide"
"$CCOE" pop wide/checkpoint.safetensors --expert arith -o wide.expert >/dev/null || fail "pop wide"
expect_fail 1 "does not fit|n_embd" -- "$CCOE" push both.safetensors wide.expert
head -c 300 arith.expert > trunc.expert
expect_fail 1 "trunc|corrupt" -- "$CCOE" push both.safetensors trunc.expert
expect_fail 2 "unknown domain 'law'" -- "$CCOE" push both.safetensors strings.expert --domain law -o x.safetensors
expect_fail 2 "no expert 'nope'" -- "$CCOE" pop both.safetensors --expert nope -o n.expert
expect_fail 2 "only 2" -- "$CCOE" train "$TINY" --set ccoe.form=tail --set "ccoe.experts=arith:3" \
  --set ccoe.max_expert_layers=3 --set train.out_dir=bad
expect_fail 2 "unknown domain" -- "$CCOE" train "$TINY" --set ccoe.form=tail --set "ccoe.experts=arith:1" \
  --set "ccoe.routes=law:arith" --set train.out_dir=bad
[[ "$(sha256sum both.safetensors)" == "$sum" ]] || fail "a failed push changed the model"
[[ ! -e x.safetensors ]] || fail "a failed push wrote its output"
pass "bad inputs"
