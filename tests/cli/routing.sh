# Routing without a domain label (src/route.h, papers/routing.md): `eval --routing rule` gives
# the plain evaluation's losses; posterior and classifier tables report routing accuracy;
# `train-router` adds only the router to the checkpoint (every model tensor bit-identical);
# `generate --routing` runs; ccoe.routing is left out of the config at its default and, set,
# picks the mode of eval and generate; bad modes and a missing router stop with a message naming the fix;
# a model trained with CCoE expert placement on 2 ranks evaluates under every mode on 2 ranks
# exactly as on 1.
source "$(dirname "$0")/lib/common.sh"
cd "$WORK"
exp=(--set ccoe.form=tail --set "ccoe.experts=arith:1 code:1" --set "ccoe.routes=arith:arith code:code"
     --set train.eval_every=0 --set data.task_examples=0 --set run.threads=1 --set train.batch_size=6)
"$CCOE" train "$TINY" "${exp[@]}" --set train.steps=20 --set train.out_dir=m --quiet >/dev/null \
  || fail "training the CCoE model"
M=m/checkpoint.safetensors

# rule mode through the routed evaluation: the plain evaluation's losses
"$CCOE" eval "$M" --no-tasks > plain.txt || fail "plain eval"
"$CCOE" eval "$M" --routing rule > rule.txt || fail "eval --routing rule"
diff <(awk 'NR > 2 && NF >= 4 {print $1, $2}' plain.txt | head -6) \
     <(awk '/^routing rule/ {on = 1; getline; next} on && NF >= 4 {print $1, $2}' rule.txt) \
  || fail "rule mode's losses differ from the plain evaluation: $(cat plain.txt rule.txt)"
grep -A7 '^routing rule' rule.txt | awk 'NF == 5 && $1 != "domain" && $5 != "1.0000" {exit 1}' \
  || fail "rule mode's routing accuracy is not 1: $(cat rule.txt)"
pass "eval --routing rule equals the plain evaluation, routing accuracy 1"

"$CCOE" eval "$M" --routing posterior --posterior argmax > post.txt || fail "eval posterior"
grep -q '^routing posterior, argmax path (no domain label)' post.txt || fail "$(cat post.txt)"
awk '/^all/ {if ($5 < 0.2 || $5 > 1) exit 1; found = 1} END {exit !found}' post.txt \
  || fail "posterior routing accuracy out of range: $(cat post.txt)"
pass "eval --routing posterior reports loss and routing accuracy"

expect_fail 2 'train one with `ccoe train-router CHECKPOINT -o OUT`' -- \
  "$CCOE" eval "$M" --routing classifier
expect_fail 2 "--routing rule,bogus: 'bogus' is not a routing mode; give rule, posterior, classifier" -- \
  "$CCOE" eval "$M" --routing rule,bogus
expect_fail 2 'eval --routing evaluates the validation data, not --text' -- \
  "$CCOE" eval "$M" --routing posterior --text plain.txt
expect_fail 2 'generate --domain routes by the label' -- \
  "$CCOE" generate "$M" --routing posterior --domain arith "1+1="
pass "a missing router, a bad mode and conflicting options are refused naming the fix"

"$CCOE" train-router "$M" -o routed.safetensors --steps 40 --hidden 16 > tr.txt \
  || fail "train-router: $(cat tr.txt)"
grep -q '^domain router (layer 1, 16 hidden, 5 domains): validation domain accuracy' tr.txt \
  || fail "$(cat tr.txt)"
out=$("$CCOE" compare "$M" routed.safetensors || true)
grep -q ' 0 differ, 0 only in A, 6 only in B; metadata: 14 keys identical, 3 differ' <<<"$out" \
  || fail "train-router changed the model: $out"
"$CCOE" eval routed.safetensors --routing all > all.txt || fail "eval --routing all"
[[ $(grep -c '^routing ' all.txt) -eq 3 ]] || fail "not three tables: $(cat all.txt)"
grep -q 'domain_acc' all.txt || fail "$(cat all.txt)"
pass "train-router adds only the router; eval --routing all prints rule, posterior, classifier"

"$CCOE" generate routed.safetensors --routing classifier --max-new 8 "12+" > g1.txt || fail "generate classifier"
"$CCOE" generate routed.safetensors --routing posterior --max-new 8 "12+" "def " > g2.txt \
  || fail "generate posterior"
[[ $(wc -l < g2.txt) -eq 2 ]] || fail "two prompts, not two lines: $(cat g2.txt)"
pass "generate --routing posterior / classifier"

# ccoe.routing: left out of the stored config at its default (old hashes kept); set, it is the
# mode eval and generate use without --routing
"$CCOE" info "$M" | grep -q 'routing' && fail "ccoe.routing = rule is written into the config"
"$CCOE" eval "$M" --set ccoe.routing=posterior > set.txt || fail "eval --set ccoe.routing"
grep -q '^routing posterior, mixture' set.txt || fail "--set ccoe.routing=posterior: $(cat set.txt)"
"$CCOE" train "$TINY" "${exp[@]}" --set train.steps=2 --set ccoe.routing=posterior \
  --set train.out_dir=mp --quiet >/dev/null || fail "training with ccoe.routing = posterior"
"$CCOE" info mp/checkpoint.safetensors | grep -q '^routing = posterior' \
  || fail "ccoe.routing = posterior is not stored: $("$CCOE" info mp/checkpoint.safetensors)"
"$CCOE" eval mp/checkpoint.safetensors | grep -q '^routing posterior, mixture' \
  || fail "eval does not follow the stored ccoe.routing"
"$CCOE" generate mp/checkpoint.safetensors --max-new 4 "12+" > g3.txt || fail "generate, stored mode"
"$CCOE" generate mp/checkpoint.safetensors --domain arith --max-new 4 "12+" > g4.txt \
  || fail "generate --domain with a stored posterior mode takes the rule"
pass "ccoe.routing: omitted at its default, stored when set, followed by eval and generate"

# CCoE expert placement over 2 ranks: train placed, then evaluate on 2 ranks = on 1
if command -v mpirun >/dev/null; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
  MPIRUN=(mpirun --allow-run-as-root --oversubscribe --bind-to none)
  "${MPIRUN[@]}" -np 2 "$CCOE" train "$TINY" "${exp[@]}" --set train.steps=6 --no-progress \
    --ccoe-placement experts --set train.out_dir=pl > pl.log 2>&1 || fail "placed run: $(cat pl.log)"
  "${MPIRUN[@]}" -np 2 "$CCOE" train-router pl/checkpoint.safetensors -o pl/r.safetensors \
    --steps 20 > plr.log 2>&1 || fail "train-router under mpirun: $(cat plr.log)"
  "$CCOE" eval pl/r.safetensors --routing all > one.txt || fail "1-rank eval"
  "${MPIRUN[@]}" -np 2 "$CCOE" eval pl/r.safetensors --routing all > two.txt 2>&1 \
    || fail "2-rank eval: $(cat two.txt)"
  diff <(grep -v '^checkpoint' one.txt) <(grep -v '^checkpoint' two.txt) \
    || fail "2-rank routed evaluation differs from 1 rank"
  pass "a model placed on 2 ranks: routed evaluation on 2 ranks equals 1 rank"
else
  echo "skip: mpirun not found (the 2-rank check)"
fi
