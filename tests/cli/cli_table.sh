# The declared command line (src/cli.c): every command `ccoe help` lists has a help page,
# unknown options and bad values are refused naming the option, two-word commands dispatch.
source "$(dirname "$0")/lib/common.sh"
cd "$WORK"

"$CCOE" help > help.txt || fail "ccoe help exits non-zero"
"$CCOE" --help > help2.txt && cmp -s help2.txt help.txt || fail "ccoe --help differs from ccoe help"
grep -q "GATE (moe.gate, --moe): .*topk" help.txt || fail "help does not list the gates: $(cat help.txt)"
# the command lines of `ccoe help`: "  NAME ARGS..." followed by an indented summary line
mapfile -t cmds < <(awk '/^commands:/{on=1; next} on && /^$/{exit}
  on && /^  [a-z]/ {w=$1; if ($2 ~ /^[a-z][a-z-]*$/) w=w" "$2; print w}' help.txt)
(( ${#cmds[@]} >= 15 )) || fail "ccoe help lists only ${#cmds[@]} commands: ${cmds[*]}"
for c in "${cmds[@]}"; do
  [[ $c == help ]] && continue
  read -ra words <<<"$c"
  out=$("$CCOE" "${words[@]}" --help) || fail "ccoe $c --help exits non-zero"
  grep -q "^usage: ccoe $c" <<<"$out" || fail "ccoe $c --help prints no synopsis: $out"
  out2=$("$CCOE" help "${words[@]}") || fail "ccoe help $c exits non-zero"
  [[ $out == "$out2" ]] || fail "ccoe help $c differs from ccoe $c --help"
done
pass "every listed command (${#cmds[@]}) has a help page"

# help pages show ranges and defaults
out=$("$CCOE" help bench)
grep -qE -- "--steps N .*1\.\.100000.*default 10" <<<"$out" ||
  fail "bench help lacks the range and default of --steps: $out"
out=$("$CCOE" help train)
grep -q "every rank runs it" <<<"$out" || fail "train help does not say it is collective"

# unknown option: the usage exit code, the option named, the closest suggested, help pointed at
expect_fail 2 "unknown option of train: --forse \(did you mean --force\?\)" -- \
  "$CCOE" train "$TINY" --forse
expect_fail 2 "ccoe help train" -- "$CCOE" train "$TINY" --forse
expect_fail 2 "unknown option of compare: --bogus" -- "$CCOE" compare a b --bogus
expect_fail 2 "--force takes no value" -- "$CCOE" train "$TINY" --force=1
# out of range and not a number: the option, the value and the range named
expect_fail 2 "--steps takes a whole number 1\.\.100000, not: 0" -- "$CCOE" bench --steps 0
expect_fail 2 "--steps takes a whole number 1\.\.100000, not: ten" -- "$CCOE" bench --steps ten
expect_fail 2 "--threads takes a thread count 1\.\.1024 or auto, not: 2x" -- "$CCOE" bench --threads 2x
expect_fail 2 "--stop-at takes a step number >= 1, not: -3" -- "$CCOE" train "$TINY" --stop-at -3
expect_fail 2 "--top-p takes a number in \(0, 1\] \(1: off\), not: inf" -- \
  "$CCOE" generate x.safetensors --top-p inf p
expect_fail 2 "--ffn takes gelu or swiglu, not: relu" -- "$CCOE" bench --ffn relu
expect_fail 2 "--moe takes one of: none, softmax, topk" -- "$CCOE" bench --moe switch
# missing value, missing positional, too many positionals, a required option
expect_fail 2 "--steps needs a value \(N\)" -- "$CCOE" bench --steps
expect_fail 2 "info takes exactly one CHECKPOINT" -- "$CCOE" info
expect_fail 2 "info takes only CHECKPOINT, not also: b" -- "$CCOE" info a b
expect_fail 2 "pop needs --expert NAME" -- "$CCOE" pop m.safetensors -o x
expect_fail 2 "--resume and --init-from exclude each other" -- \
  "$CCOE" train "$TINY" --resume a --init-from b
expect_fail 2 "compare takes A B \[--params \| --only-base\]" -- "$CCOE" compare a b --params --only-base
pass "unknown options, bad values and missing arguments are refused by name"

# two-word commands: dispatched, their group explained, help per group
printf 'hello\n' > t.txt
[[ $("$CCOE" tokenizer encode byte t.txt) == "104 101 108 108 111" ]] ||
  fail "tokenizer encode byte: $("$CCOE" tokenizer encode byte t.txt)"
[[ $("$CCOE" tokenizer encode byte t.txt | "$CCOE" tokenizer decode byte -) == hello ]] ||
  fail "tokenizer decode does not invert encode"
"$CCOE" data write-builtin data > /dev/null && [[ -f data/manifest.ini ]] ||
  fail "data write-builtin wrote no manifest"
expect_fail 2 "tokenizer takes: encode TOKENIZER \[FILE\|-\] or decode TOKENIZER \[FILE\|-\]" -- \
  "$CCOE" tokenizer frobnicate byte
expect_fail 2 "data takes: write-builtin DIR" -- "$CCOE" data
expect_fail 2 "tokenizer encode needs TOKENIZER" -- "$CCOE" tokenizer encode
expect_fail 2 "unknown option of tokenizer encode: --bogus" -- "$CCOE" tokenizer encode byte --bogus
out=$("$CCOE" help tokenizer) || fail "ccoe help tokenizer exits non-zero"
grep -q "^usage: ccoe tokenizer encode" <<<"$out" && grep -q "^usage: ccoe tokenizer decode" <<<"$out" ||
  fail "ccoe help tokenizer does not show both subcommands: $out"
pass "two-word commands"

# unknown commands: the usage exit code and a suggestion; no arguments: usage on stderr, exit 2
expect_fail 2 "unknown command: trian \(did you mean train\?\)" -- "$CCOE" trian
expect_fail 2 "unknown command: nope" -- "$CCOE" help nope
expect_fail 2 "^usage: ccoe COMMAND" -- "$CCOE"
[[ $("$CCOE" --version) == "ccoe "* ]] || fail "--version"
out=$("$CCOE" --help-config)
grep -q "model.n_layer" <<<"$out" || fail "--help-config lists no keys"
pass "unknown commands"
