# The tokenizer travels with the model, and `eval --text` scores any text with it: a tiny model
# trained with a BPE from `ccoe tokenizer train` records the tokenizer (kind, path, FNV-1a hash
# checked here independently, the files embedded); eval prints bits per byte, eval --text gives
# nats/token, bpb and perplexity consistent with each other; generate decodes; an interrupted
# run resumes bit for bit; a different data.tokenizer (eval --set, train --resume, --init-from,
# train-expert) is an error naming both; with the tokenizer directory gone everything still
# runs from the copy unpacked into $CCOE_CACHE_DIR (same figures, files byte-identical;
# train --init-from with data.tokenizer naming the gone directory too); a checkpoint without
# the record (older ccoe) loads byte-level; a damaged record is refused.
source "$(dirname "$0")/lib/common.sh"
cd "$WORK"
export CCOE_CACHE_DIR=$WORK/cache
X=(--set train.eval_every=0 --set train.log_every=1000 --set data.task_examples=0 --set train.steps=30)
"$CCOE" data write-builtin data >/dev/null
head -c 20000 data/prose.txt >prose.txt
head -c 8000 data/code.txt >code.txt
"$CCOE" tokenizer train data/*.txt --vocab 400 -o tok >/dev/null || fail "tokenizer train"
"$CCOE" tokenizer train data/prose.txt --vocab 300 -o tok2 >/dev/null || fail "tokenizer train 2"
"$CCOE" train "$TINY" --set data.tokenizer=tok --set train.out_dir=run "${X[@]}" --quiet ||
  fail "train with the BPE"
CK=run/checkpoint.safetensors

# ---- the record ----
want=$(python3 - tok/tokenizer.json <<'PY'
import sys
data = open(sys.argv[1], "rb").read()
h = 0xcbf29ce484222325
for b in b"tokenizer.json\0" + len(data).to_bytes(8, "little") + data:
    h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
print("%016x" % h)
PY
)
info=$("$CCOE" info $CK)
grep -q "tokenizer *bpe tok, hash $want, files tokenizer.json (embedded)" <<<"$info" ||
  fail "info does not show the recorded tokenizer (hash $want): $(grep tokenizer <<<"$info")"
python3 - $CK tok/tokenizer.json <<'PY' || fail "the checkpoint does not embed tokenizer.json verbatim"
import json, struct, sys
raw = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
meta = json.loads(raw[8:8 + n])["__metadata__"]
assert meta["ccoe.tokenizer.kind"] == "bpe" and meta["ccoe.tokenizer.path"] == "tok"
assert meta["ccoe.tokenizer.file.tokenizer.json"] == open(sys.argv[2]).read()
PY
pass "checkpoint records the tokenizer (hash $want, independently computed) and embeds its file"

# ---- eval: bpb column; eval --text ----
out=$("$CCOE" eval $CK --batches 2 --no-tasks) || fail "eval: $out"
grep -qE "^domain +val_loss +perplexity +bpb +tokens" <<<"$out" || fail "no bpb column: $out"
read -r loss bpb <<<"$(awk '$1 == "all" {print $2, $4}' <<<"$out")"
awk -v l="$loss" -v b="$bpb" 'BEGIN {exit !(b > 0 && b < l / log(2))}' ||
  fail "bpb $bpb is not below nats/token / ln 2 ($loss): BPE tokens hold more than a byte"
text_eval() { "$CCOE" eval "$@" | awk 'NR == 3 {print $1, $2, $3, $4, $5}'; }
read -r n nats bpb ppl bytes <<<"$(text_eval $CK --text prose.txt)"
size=$(wc -c <prose.txt)
((bytes == size)) || fail "eval --text scored $bytes bytes of a $size-byte file"
awk -v n="$n" -v l="$nats" -v b="$bpb" -v p="$ppl" -v s="$size" 'BEGIN {
  e = l * n / log(2) / s; exit !(b > 0 && (b - e) ^ 2 < 1e-6 && (p - exp(l)) ^ 2 < 1e-3 * p * p) }' ||
  fail "eval --text figures disagree: $n tokens, $nats nats/token, bpb $bpb, ppl $ppl, $size bytes"
ids=$("$CCOE" tokenizer encode tok prose.txt | wc -w)
nl=$(wc -l <prose.txt)
# the ids of the whole file (one start id, newlines inside) vs those of its lines
((n >= ids / 2 && n <= ids + nl)) || fail "eval --text scored $n tokens; the file has about $ids ids"
out=$("$CCOE" eval $CK --text code.txt --domain code) || fail "eval --text --domain: $out"
grep -q "path code" <<<"$out" || fail "--domain not reported: $out"
expect_fail 2 "domain nope.*arith" -- "$CCOE" eval $CK --text code.txt --domain nope
expect_fail 2 "goes with --text" -- "$CCOE" eval $CK --domain code
expect_fail 1 "missing.txt" -- "$CCOE" eval $CK --text missing.txt
: >empty.txt
expect_fail 2 "is empty" -- "$CCOE" eval $CK --text empty.txt
# the byte tokenizer: bpb = nats/token / ln 2 exactly, over every byte
"$CCOE" train "$TINY" --set train.out_dir=byte "${X[@]}" --quiet || fail "byte run"
read -r n nats bpb ppl bytes <<<"$(text_eval byte/checkpoint.safetensors --text prose.txt)"
awk -v n="$n" -v l="$nats" -v b="$bpb" -v s="$size" 'BEGIN {
  exit !(n == s && (b - l / log(2)) ^ 2 < 1e-6) }' || fail "byte-level: $n tokens, $nats nats, bpb $bpb"
out=$("$CCOE" eval byte/checkpoint.safetensors --batches 1 --no-tasks)
grep -q bpb <<<"$out" && fail "the byte-level eval table changed (a bpb column)"
pass "eval: bpb column; eval --text: nats/token, bpb, perplexity agree (BPE and byte)"

# ---- generate, resume ----
out=$("$CCOE" generate $CK --max-new 8 --stop none "def f" "SELECT") || fail "generate: $out"
[[ $(head -1 <<<"$out") == "def f"* ]] && grep -q "^SELECT" <<<"$out" || fail "generate: $out"
mkdir r2 && ln -s ../tok r2/tok
(cd r2 && "$CCOE" train "$TINY" --set data.tokenizer=tok --set train.out_dir=run "${X[@]}" --quiet \
  --stop-at 13) || fail "first half"
(cd r2 && "$CCOE" train "$TINY" --set data.tokenizer=tok --set train.out_dir=run "${X[@]}" --quiet \
  --resume run/checkpoint.safetensors) || fail "resumed half"
cmp -s $CK r2/$CK || fail "the resumed BPE run differs from the uninterrupted one"
cp -r r2/run half
pass "generate decodes; a BPE run resumes bit for bit"

# ---- mismatches ----
expect_fail 2 "trained with the bpe tokenizer tok \(hash $want\).*data.tokenizer = byte is byte.*Fix" -- \
  "$CCOE" eval $CK --set data.tokenizer=byte --no-tasks
expect_fail 2 "tokenizer tok \(hash $want\).*data.tokenizer = tok2 is bpe \(tokenizer.json\), hash [0-9a-f]{16}" -- \
  "$CCOE" eval $CK --set data.tokenizer=tok2 --no-tasks
expect_fail 2 "data.tokenizer = tok2" -- "$CCOE" train "$TINY" --set data.tokenizer=tok2 \
  --set train.out_dir=half "${X[@]}" --quiet --resume half/checkpoint.safetensors
expect_fail 2 "trained with the bpe tokenizer tok.*data.tokenizer = byte" -- "$CCOE" train "$TINY" \
  --set train.out_dir=half "${X[@]}" --quiet --resume half/checkpoint.safetensors
expect_fail 2 "trained with the byte tokenizer, but data.tokenizer = tok is bpe" -- "$CCOE" train \
  "$TINY" --set data.tokenizer=tok --set train.out_dir=init "${X[@]}" --quiet \
  --init-from byte/checkpoint.safetensors
expect_fail 2 "data.tokenizer = tok2" -- "$CCOE" train-expert $CK --expert code --domain code \
  --set data.tokenizer=tok2 "${X[@]}" -o exp --quiet
cp -r tok tok_copy
"$CCOE" eval $CK --set data.tokenizer=tok_copy --batches 1 --no-tasks >/dev/null ||
  fail "a copy of the same tokenizer (same hash) was refused"
pass "a different tokenizer is refused naming both (eval, resume, init-from, train-expert)"

# ---- the tokenizer directory gone: the checkpoint's copy ----
before=$(text_eval $CK --text prose.txt)
mv tok tok.away
after=$(text_eval $CK --text prose.txt 2>note.txt)
[[ $before == "$after" ]] || fail "eval --text from the cached copy: $after, not $before"
grep -q "its tokenizer tok is gone; using the copy the checkpoint carries (hash $want), unpacked to $CCOE_CACHE_DIR/tokenizers/$want" note.txt ||
  fail "no note about the unpacked tokenizer: $(cat note.txt)"
cmp -s tok.away/tokenizer.json "$CCOE_CACHE_DIR/tokenizers/$want/tokenizer.json" ||
  fail "the unpacked tokenizer.json differs from the original"
"$CCOE" generate $CK --max-new 8 --stop none "def f" >/dev/null 2>&1 || fail "generate without the tokenizer dir"
"$CCOE" train "$TINY" --set data.tokenizer=tok --set train.out_dir=half2 "${X[@]}" --quiet \
  --stop-at 13 2>/dev/null && fail "a new run with a missing tokenizer dir should fail"
cp -r half half2
"$CCOE" train "$TINY" --set data.tokenizer=tok --set train.out_dir=half "${X[@]}" --quiet --force \
  --stop-at 13 2>/dev/null && fail "training from scratch with the tokenizer gone should fail"
mv tok.away tok
"$CCOE" train "$TINY" --set data.tokenizer=tok --set train.out_dir=half "${X[@]}" --quiet --force \
  --stop-at 13 || fail "first half again"
mv tok tok.away
"$CCOE" train "$TINY" --set data.tokenizer=tok --set train.out_dir=half "${X[@]}" --quiet \
  --resume half/checkpoint.safetensors 2>/dev/null || fail "resume with the tokenizer dir gone"
"$CCOE" compare $CK half/checkpoint.safetensors --params >/dev/null ||
  fail "resumed from the cached tokenizer, the weights differ"
out=$("$CCOE" train-expert $CK --expert code --domain code "${X[@]}" -o exp --quiet 2>&1) ||
  fail "train-expert with the tokenizer dir gone: $out"
"$CCOE" compare $CK exp/checkpoint.safetensors --only-base >/dev/null || fail "train-expert changed the base"
out=$("$CCOE" info exp/checkpoint.safetensors 2>/dev/null)
grep -q "hash $want" <<<"$out" || fail "the expert run lost the tokenizer record"
# train --init-from with data.tokenizer naming the recorded (gone) directory: the copy is used
# before the session opens, and the run equals one with the directory in place
"$CCOE" train "$TINY" --set data.tokenizer=tok --set train.out_dir=init_gone "${X[@]}" \
  --set train.steps=4 --quiet --init-from $CK 2>note2.txt ||
  fail "train --init-from with the tokenizer dir gone: $(cat note2.txt)"
grep -q "its tokenizer tok is gone; using the copy" note2.txt ||
  fail "train --init-from: no note about the unpacked tokenizer: $(cat note2.txt)"
grep -q "hash $want" <<<"$("$CCOE" info init_gone/checkpoint.safetensors 2>/dev/null)" ||
  fail "the --init-from run lost the tokenizer record"
mv tok.away tok
"$CCOE" train "$TINY" --set data.tokenizer=tok --set train.out_dir=init_here "${X[@]}" \
  --set train.steps=4 --quiet --init-from $CK || fail "train --init-from with the tokenizer dir"
"$CCOE" compare init_here/checkpoint.safetensors init_gone/checkpoint.safetensors --params \
  >/dev/null || fail "--init-from with the unpacked tokenizer trains differently"
pass "with the tokenizer dir gone: eval, generate, resume, train-expert, train --init-from use the unpacked copy"

# ---- older checkpoints and damaged records ----
strip() { # strip IN OUT [KEY=VALUE]: the record removed (or one key changed), then resealed
  python3 - "$@" <<'PY'
import json, struct, sys
raw = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
h = json.loads(raw[8:8 + n])
m = h["__metadata__"]
m.pop("ccoe.file_crc32", None)
if len(sys.argv) > 3:
    k, v = sys.argv[3].split("=", 1)
    m[k] = m[k].replace('"type": "BPE"', v) if k.endswith(".json") else v
else:
    for k in [k for k in m if k.startswith("ccoe.tokenizer.")]:
        del m[k]
s = json.dumps(h).encode()
open(sys.argv[2], "wb").write(struct.pack("<Q", len(s)) + s + raw[8 + n:])
PY
  "$CCOE" reseal "$2" >/dev/null || fail "reseal $2"
}
strip byte/checkpoint.safetensors old.safetensors
out=$("$CCOE" info old.safetensors)
grep -q "not recorded (an older ccoe)" <<<"$out" || fail "info of an old checkpoint"
"$CCOE" eval old.safetensors --batches 1 --no-tasks >/dev/null || fail "an old checkpoint does not load"
out=$("$CCOE" eval old.safetensors --text prose.txt)
grep -q "tokenizer byte" <<<"$out" || fail "old checkpoint not byte-level"
strip $CK damaged.safetensors 'ccoe.tokenizer.file.tokenizer.json="type":"BPE" '
expect_fail 1 "embedded tokenizer files hash to [0-9a-f]{16}, not the recorded $want" -- \
  "$CCOE" eval damaged.safetensors --no-tasks
strip $CK damaged2.safetensors 'ccoe.tokenizer.files=tokenizer.json ../../etc/passwd'
expect_fail 1 "not a tokenizer file name" -- "$CCOE" eval damaged2.safetensors --no-tasks
pass "an older checkpoint loads byte-level; damaged records are refused"
