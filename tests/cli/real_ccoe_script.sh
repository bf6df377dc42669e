# scripts/real_ccoe.sh on the embedded data (`ccoe data write-builtin`, standing in for the
# real corpora) with tiny steps: TOKENIZER=bpe trains a BPE on the first 90% of each domain's
# documents, pre-trains the base and the experts with it and prints per-domain loss and bits
# per byte (below nats / ln 2: a BPE id holds more than a byte); a rerun reuses the tokenizer;
# IMPORT=HF_DIR puts the experts on an imported base (kept bit for bit); the byte-level default
# prints bpb = loss / ln 2.
source "$(dirname "$0")/lib/common.sh"
cd "$WORK"
export CCOE_CACHE_DIR=$WORK/cache
"$CCOE" data write-builtin data >/dev/null || fail "write-builtin"
export CCOE CORPORA=$WORK/data EXPERT_STEPS=2 EVAL_BATCHES=1 TASKS=2 THREADS=1 DOMAINS="arith code"
# table rows: | domain | base loss | CCoE loss | improvement | base bpb | CCoE bpb | acc | acc |
rows() { awk -F'|' '$2 ~ /^ (arith|code) $/ {gsub(/ /, ""); print $2, $3, $4, $6, $7}' "$1/table.md"; }

TOKENIZER=bpe VOCAB=320 BASE_STEPS=2 bash "$SRC/scripts/real_ccoe.sh" bpe >bpe.log 2>&1 ||
  fail "BPE run: $(cat bpe.log)"
[[ -s bpe/tokenizer/tokenizer.json ]] || fail "no tokenizer in bpe/tokenizer"
grep -q '"<|endoftext|>"' bpe/tokenizer/tokenizer.json || fail "the tokenizer lacks its end-of-text token"
for d in arith code; do
  a=$(wc -c <bpe/tokenizer-text/$d.txt) b=$(wc -c <data/$d.txt)
  ((a > b * 8 / 10 && a < b * 95 / 100)) || fail "the tokenizer text of $d is $a of $b bytes, not about 90%"
done
grep -q "tokenizer *bpe .*bpe/tokenizer, hash" <<<"$("$CCOE" info bpe/ccoe.safetensors)" ||
  fail "the CCoE model does not record the trained tokenizer"
[[ $(rows bpe | wc -l) == 2 ]] || fail "table rows: $(cat bpe/table.md)"
rows bpe | awk '{for (i = 2; i <= 3; i++) if (!($(i + 2) > 0 && $(i + 2) < $i / log(2))) exit 1}' ||
  fail "bpb not in (0, nats / ln 2): $(cat bpe/table.md)"
sum=$(sha256sum bpe/tokenizer/tokenizer.json)
TOKENIZER=bpe VOCAB=320 BASE_STEPS=2 bash "$SRC/scripts/real_ccoe.sh" bpe >bpe2.log 2>&1 ||
  fail "BPE rerun: $(cat bpe2.log)"
grep -q "training a BPE tokenizer" bpe2.log && fail "the rerun trained the tokenizer again"
[[ $(sha256sum bpe/tokenizer/tokenizer.json) == "$sum" ]] || fail "the rerun changed the tokenizer"
pass "TOKENIZER=bpe: tokenizer from the training part, per-domain loss and bits per byte; rerun reuses it"

IMPORT=$SRC/tests/fixtures/hf-gpt2-tiny EXPERT_LAYERS=1 bash "$SRC/scripts/real_ccoe.sh" imp \
  >imp.log 2>&1 || fail "IMPORT run: $(cat imp.log)"
"$CCOE" import "$SRC/tests/fixtures/hf-gpt2-tiny" -o base.safetensors >/dev/null || fail "import"
"$CCOE" compare base.safetensors imp/ccoe.safetensors --only-base >/dev/null ||
  fail "the imported base changed under the experts"
grep -qE "^(arith|code) .*1,[01]" <<<"$("$CCOE" info imp/ccoe.safetensors)" || fail "no experts in imp/ccoe.safetensors"
[[ $(rows imp | wc -l) == 2 ]] || fail "import table rows: $(cat imp/table.md)"
pass "IMPORT=HF_DIR: the experts on the imported base (bit for bit), the same table"

BASE_STEPS=2 bash "$SRC/scripts/real_ccoe.sh" byte >byte.log 2>&1 || fail "byte run: $(cat byte.log)"
rows byte | awk '{for (i = 2; i <= 3; i++) {d = $(i + 2) - $i / log(2); if (d * d > 1e-6) exit 1}}' ||
  fail "byte-level bpb is not nats / ln 2: $(cat byte/table.md)"
pass "byte-level default: bpb = nats / ln 2"
