# `ccoe tokenizer train` learns the same merges as an independent plain Python trainer
# (tests/cli/lib/bpe_train_ref.py, python3 + the regex module) on prose, code, non-Latin text
# with emoji, an all-ties corpus, runs of one letter, long whitespace runs and special tokens in
# the text, with several files, vocabulary sizes and minimum frequencies; the result is the same
# from run to run and thread count to thread count; the trained tokenizer loads (tokenizer.json,
# and vocab.json + merges.txt alone) with the same ids, and decode(encode(x)) == x; bad
# arguments stop with a message naming the fix. Skipped (77) without python3-regex.
source "$(dirname "$0")/lib/common.sh"
python3 -c 'import regex' 2>/dev/null || { echo "skip: python3 regex module missing (apt-get install python3-regex)"; exit 77; }
REF="$SRC/tests/cli/lib/bpe_train_ref.py"
cd "$WORK"

# ---- corpora ----
cat "$SRC/README.md" "$SRC/papers/ccoe.md" >prose.txt
cat "$SRC/src/tokenizer.c" "$SRC/src/rng.c" "$SRC/tests/cli/lib/common.sh" >code.txt
python3 - <<'PY'
import random
r = random.Random(11)
lines = ["Ελληνικά: Η γρήγορη καφέ αλεπού πηδά πάνω από τον τεμπέλη σκύλο.",
         "Русский: Съешь же ещё этих мягких французских булок, да выпей чаю.",
         "中文：我能吞下玻璃而不伤身体。日本語：私はガラスを食べられます。",
         "한국어: 나는 유리를 먹을 수 있어요. العربية: أنا قادر على أكل الزجاج",
         "emoji 😀👍🏽 👨‍👩‍👧‍👦 🇩🇪 ❤️ ✓ ★ ∑∫√∞ ≠ ≤ ≥ naïve café ２０２４ ١٢٣"]
with open("unicode.txt", "w") as f:
    for i in range(300):
        f.write(r.choice(lines) + " " + str(r.randint(0, 10**r.randint(1, 6))) + "\n")
# every word once, every pair once: the tie rule alone picks the merges
with open("ties.txt", "w") as f:
    letters = "zyxwvutsrqponmlkjihgfedcba"
    f.write(" ".join(a + b for a in letters for b in letters[::3]) + "\n")
# runs of one letter (merges of a token with itself), long whitespace runs (the 256-byte cap),
# special tokens inside the text
with open("runs.txt", "w") as f:
    for i in range(2000):
        f.write("".join(r.choice("ab") * r.randint(1, 9) for _ in range(r.randint(1, 3))) + " ")
    f.write("\n" + "x" * 700 + "\n" + " " * 600 + "y\n\t\t\t\tz<|endoftext|>doc<|endoftext|><|endoftext|>x<|sep|>y\n")
PY

# check NAME VOCAB ARGS... FILES...: ccoe's merges equal the reference's
check() {
  local name=$1 vocab=$2; shift 2
  "$CCOE" tokenizer train --vocab "$vocab" -o "tok_$name" "$@" >"train_$name.log" 2>&1 ||
    fail "$name: tokenizer train failed: $(cat "train_$name.log")"
  python3 "$REF" --vocab "$vocab" "$@" >"ref_$name.txt"
  tail -n +2 "tok_$name/merges.txt" >"got_$name.txt"
  local n
  n=$(wc -l <"ref_$name.txt")
  ((n > 0)) || fail "$name: the reference learned no merges: the test is vacuous"
  cmp -s "got_$name.txt" "ref_$name.txt" ||
    fail "$name: merges differ from the reference: $(diff "got_$name.txt" "ref_$name.txt" | head -5)"
  head -1 "tok_$name/merges.txt" | grep -q '^#version' || fail "$name: merges.txt lacks its #version line"
  pass "$name: $n merges equal the reference's (vocab $vocab $*)"
}
check prose 1000 prose.txt
check code 700 --min-frequency 3 code.txt
check unicode 600 unicode.txt
check ties 400 --min-frequency 1 ties.txt
check runs 900 --min-frequency 1 runs.txt
check specials 500 --special '<|endoftext|>' --special '<|sep|>' runs.txt prose.txt
check nospecial 400 --no-special runs.txt

# the tie rule really decided the ties corpus: every merge there had count 1
n_ties=$(wc -l <got_ties.txt)
((n_ties >= 100)) || fail "ties: only $n_ties merges"

# ---- the trained files ----
python3 - tok_specials <<'PY' || fail "the trained files are not what the loader and Hugging Face expect"
import json, sys
d = sys.argv[1]
v = json.load(open(d + "/vocab.json"))
t = json.load(open(d + "/tokenizer.json"))
assert t["model"]["type"] == "BPE" and t["model"]["vocab"] == v, "tokenizer.json vocab differs"
assert [a["content"] for a in t["added_tokens"]] == ["<|endoftext|>", "<|sep|>"]
assert v["<|endoftext|>"] == 256 and v["<|sep|>"] == 257
assert sorted(v.values()) == list(range(len(v))), "ids are not 0..V-1"
m = open(d + "/merges.txt").read().splitlines()[1:]
assert t["model"]["merges"] == m, "tokenizer.json merges differ from merges.txt"
PY
pass "vocab.json, merges.txt and tokenizer.json agree (ids 0..V-1, specials 256..)"

# determinism: the same output twice and under another thread count
OMP_NUM_THREADS=1 "$CCOE" tokenizer train --vocab 1000 -o tok_again prose.txt >/dev/null
for f in vocab.json merges.txt tokenizer.json; do
  cmp -s "tok_prose/$f" "tok_again/$f" || fail "a second run wrote a different $f"
done
pass "deterministic: a second run (other thread count) writes the same files"

# round trip with the trained vocabulary, on its own text and on other text; the GPT-2 file
# pair alone (no tokenizer.json) gives the same ids
cat prose.txt code.txt unicode.txt runs.txt >all.txt
"$CCOE" tokenizer encode tok_specials all.txt >ids.txt
"$CCOE" tokenizer decode tok_specials ids.txt | cmp -s - all.txt || fail "decode(encode(text)) != text"
mkdir gpt2only && cp tok_specials/vocab.json tok_specials/merges.txt gpt2only/
"$CCOE" tokenizer encode gpt2only prose.txt >ids2.txt
"$CCOE" tokenizer encode tok_specials prose.txt | cmp -s - ids2.txt || fail "vocab.json + merges.txt give other ids than tokenizer.json"
grep -qw 256 ids.txt || fail "<|endoftext|> in the text was not encoded as its id 256"
ids=$("$CCOE" tokenizer encode tok_prose prose.txt | wc -w) bytes=$(wc -c <prose.txt)
((ids * 2 < bytes)) || fail "the trained vocabulary does not compress its text ($ids ids for $bytes bytes)"
pass "round trip with the trained vocabulary; prose: $ids ids for $bytes bytes"

# ---- bad arguments ----
expect_fail 2 "--vocab 257 or more" -- "$CCOE" tokenizer train --vocab 200 -o bad prose.txt
expect_fail 2 "--vocab 256 or more" -- "$CCOE" tokenizer train --vocab 255 --no-special -o bad prose.txt
expect_fail 2 "needs --vocab" -- "$CCOE" tokenizer train -o bad prose.txt
expect_fail 2 "needs -o DIR" -- "$CCOE" tokenizer train --vocab 300 prose.txt
expect_fail 2 "at least one text FILE" -- "$CCOE" tokenizer train --vocab 300 -o bad
expect_fail 2 "unknown option" -- "$CCOE" tokenizer train --vocab 300 -o bad --bogus prose.txt
expect_fail 2 "min-frequency" -- "$CCOE" tokenizer train --vocab 300 -o bad --min-frequency 0 prose.txt
expect_fail 1 "missing.txt" -- "$CCOE" tokenizer train --vocab 300 -o bad missing.txt
[[ ! -e bad ]] || fail "a failed training left an output directory"
"$CCOE" tokenizer train --help | grep -q -- "--min-frequency" || fail "tokenizer train --help lacks the options"
pass "bad arguments refused with the fix named"
