# `ccoe generate`: one line per prompt, each the prompt and its greedy continuation (at most
# --max-new bytes with --stop none, ended before the stop character otherwise); the same
# output on a rerun; the domain routes the prompt (a CCoE model's experts give different
# continuations for different domains); sampling (--temperature/--top-k/--top-p) is
# reproducible per --seed; bad arguments exit 2 naming the problem.
source "$(dirname "$0")/lib/common.sh"
cd "$WORK"
"$CCOE" train "$TINY" --set train.steps=6 --set train.eval_every=0 --set data.task_examples=0 \
  --set ccoe.form=tail --set ccoe.experts=a:1,b:1 --set ccoe.routes=arith:a,prose:b \
  --set train.out_dir=m --quiet || fail "training the model"
ck=m/checkpoint.safetensors
out=$("$CCOE" generate "$ck" --domain arith --max-new 7 --stop none "12+7=" "abc" "x y") \
  || fail "generate: $out"
[[ $(wc -l <<<"$out") -eq 3 ]] || fail "expected 3 lines: $out"
i=0
for p in "12+7=" "abc" "x y"; do
  i=$((i + 1))
  line=$(sed -n "${i}p" <<<"$out")
  [[ $line == "$p"* ]] || fail "line $i does not start with its prompt '$p': $line"
  (( ${#line} <= ${#p} + 7 )) || fail "line $i is longer than the prompt + 7 bytes: $line"
done
again=$("$CCOE" generate "$ck" --domain arith --max-new 7 --stop none "12+7=" "abc" "x y")
[[ $again == "$out" ]] || fail "generate is not deterministic: $out vs $again"
pass "one deterministic line per prompt, at most --max-new bytes"

# ended before the stop character (the default: the domain's answer end, a newline)
for c in e t a; do
  line=$("$CCOE" generate "$ck" --domain prose --max-new 40 --stop "$c" "The ") || fail "--stop $c"
  [[ ${line#The } != *"$c"* ]] || fail "--stop $c: the continuation holds '$c': $line"
done
pass "the continuation ends before the stop character"

declare -A seen
for d in arith strings prose; do
  seen[$("$CCOE" generate "$ck" --domain "$d" --max-new 24 --stop none "the ")]=1
done
[[ ${#seen[@]} -ge 2 ]] || fail "every domain gave the same continuation: the domain does not route"
pass "the domain routes the prompt (${#seen[@]} different continuations over 3 domains)"

# sampling: the same seed gives the same text, another seed another; temperature 0 is greedy
greedy=$("$CCOE" generate "$ck" --domain prose --max-new 24 --stop none "the " "a" "x y")
t0=$("$CCOE" generate "$ck" --domain prose --max-new 24 --stop none --temperature 0 "the " "a" "x y")
[[ $t0 == "$greedy" ]] || fail "--temperature 0 is not greedy: $t0 vs $greedy"
s1=$("$CCOE" generate "$ck" --domain prose --max-new 24 --stop none --temperature 1 --top-k 50 \
  --top-p 0.95 --seed 11 "the " "a" "x y") || fail "sampling: $s1"
s1b=$("$CCOE" generate "$ck" --domain prose --max-new 24 --stop none --temperature 1 --top-k 50 \
  --top-p 0.95 --seed 11 "the " "a" "x y")
s2=$("$CCOE" generate "$ck" --domain prose --max-new 24 --stop none --temperature 1 --top-k 50 \
  --top-p 0.95 --seed 12 "the " "a" "x y")
[[ $s1 == "$s1b" ]] || fail "the same seed sampled different texts: $s1 vs $s1b"
[[ $s1 != "$s2" ]] || fail "seeds 11 and 12 sampled the same texts: $s1"
[[ $s1 != "$greedy" ]] || fail "temperature 1 gave the greedy texts: $s1"
[[ $(wc -l <<<"$s1") -eq 3 ]] || fail "expected 3 sampled lines: $s1"
pass "sampling: reproducible per seed, different across seeds, temperature 0 = greedy"

# --prompts: one prompt per line of a file (CRLF too) or of standard input, after the
# command line's; the same continuations as on the command line
printf '12+7=\r\nabc\nx y' > prompts.txt
fromfile=$("$CCOE" generate "$ck" --domain arith --max-new 7 --stop none --prompts prompts.txt) \
  || fail "--prompts: $fromfile"
[[ $fromfile == "$out" ]] || fail "--prompts gave other lines than the command line: $fromfile"
fromstdin=$(printf 'abc\nx y\n' | "$CCOE" generate "$ck" --domain arith --max-new 7 --stop none \
  --prompts - "12+7=") || fail "--prompts -: $fromstdin"
[[ $fromstdin == "$out" ]] || fail "--prompts - gave other lines than the command line: $fromstdin"
expect_fail 1 "--prompts: cannot open 'nope.txt'" -- "$CCOE" generate "$ck" --prompts nope.txt
: > empty.txt
expect_fail 2 "generate needs at least one PROMPT" -- "$CCOE" generate "$ck" --prompts empty.txt
pass "--prompts FILE and --prompts - add one prompt per line"

expect_fail 2 "--temperature takes a number 0..100 \\(0: greedy\\), not: -1" -- \
  "$CCOE" generate "$ck" --temperature -1 x
expect_fail 2 "--temperature takes a number 0..100 \\(0: greedy\\), not: nan" -- \
  "$CCOE" generate "$ck" --temperature nan x
expect_fail 2 "--top-p takes a number in \\(0, 1\\] \\(1: off\\), not: 1.5" -- \
  "$CCOE" generate "$ck" --top-p 1.5 x
expect_fail 2 "--top-k takes a whole number >= 0 \\(0: off\\), not: -3" -- \
  "$CCOE" generate "$ck" --top-k -3 x
expect_fail 2 "--seed takes a whole number >= 0, not: abc" -- "$CCOE" generate "$ck" --seed abc x
expect_fail 2 "--domain nope: the model's data \(builtin\) has the domains arith, strings" -- \
  "$CCOE" generate "$ck" --domain nope "x"
expect_fail 2 "generate needs at least one PROMPT" -- "$CCOE" generate "$ck" --domain arith
expect_fail 2 "--max-new takes a whole number >= 1, not: 0" -- "$CCOE" generate "$ck" --max-new 0 x
expect_fail 2 "--stop takes one character or 'none', not: ab" -- "$CCOE" generate "$ck" --stop ab x
expect_fail 1 "cannot open 'missing.safetensors'" -- "$CCOE" generate missing.safetensors x
pass "bad arguments exit non-zero naming the problem"
