# `ccoe study` from an imported base (study.init_from = CKPT): on the committed tiny GPT-2
# (tests/fixtures/hf-gpt2-tiny, BPE) every variant takes the checkpoint's config (model shape,
# tokenizer, data) and starts from its weights: a dense fine-tune's first loss is that of
# `ccoe train --init-from` (not of fresh weights), a CCoE variant with ccoe.train_expert keeps
# the base bit for bit, every run records the import's tokenizer; the table has bits per byte;
# a rerun reuses the runs, a newer start checkpoint retrains them without --force; the same
# study under mpirun -np 2 gives the one-process losses; a missing checkpoint exits 2, a damaged
# one 1 (a bad file, as elsewhere), naming the study line.
source "$(dirname "$0")/lib/common.sh"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
cd "$WORK"
export CCOE_CACHE_DIR=$WORK/cache
imp=$("$CCOE" import "$SRC/tests/fixtures/hf-gpt2-tiny" -o base.safetensors) || fail "import: $imp"
hash=$("$CCOE" info base.safetensors | sed -n 's/.*tokenizer *bpe .*, hash \([0-9a-f]*\),.*/\1/p')
[[ -n $hash ]] || fail "the import records no tokenizer hash"
cat >s.ini <<INI
[study]
name = imported
init_from = base.safetensors
budget = tokens:1536
out_dir = out
variants = dense tail arith
[train]
eval_every = 6
eval_batches = 2
warmup = 0
lr = 0.01
eps = 1e-6
[data]
task_examples = 0
[run]
threads = 1
[variant.dense]
[variant.tail]
ccoe.form = tail
experts_per_domain = 1
[variant.arith]
label = CCoE Eq. 4, arith expert alone on the frozen base
ccoe.form = tail
ccoe.experts = arith:1
ccoe.routes = arith:arith
ccoe.train_expert = arith
INI
out=$("$CCOE" study s.ini 2>err.txt) || fail "study from the import: $(cat err.txt)"
grep -q "^| variant | what" <<<"$out" || fail "no table: $out"
grep -q "^Bits per byte per domain" out/study.md || fail "no bits per byte table: $(cat out/study.md)"
col() { awk -F, -v name="$1" 'NR == 1 {for (i = 1; i <= NF; i++) if ($i == name) c = i; next} {print $c}' "$2"; }
paste <(col loss_code out/study.csv) <(col bpb_code out/study.csv) | awk 'NF != 2 {exit 1}
  {if (!($2 > 0 && $2 < $1 / log(2))) exit 1} END {if (NR != 3) exit 1}' ||
  fail "bpb_code not in (0, loss / ln 2): $(cat out/study.csv)"
for v in dense tail arith; do
  info=$("$CCOE" info out/$v/checkpoint.safetensors) || fail "info $v"
  grep -q "^n_embd = 16$" <<<"$info" && grep -q "^vocab_size = 265$" <<<"$info" ||
    fail "$v does not have the import's shape: $info"
  grep -q "hash $hash" <<<"$info" || fail "$v does not record the import's tokenizer"
done
"$CCOE" compare base.safetensors out/arith/checkpoint.safetensors --only-base >/dev/null ||
  fail "the isolated expert variant changed the base (or did not start from it)"
"$CCOE" compare base.safetensors out/dense/checkpoint.safetensors --params >/dev/null &&
  fail "the dense variant did not train"
# the first training loss of the dense variant is that of the imported weights
first() { grep '"loss"' "$1" | grep -v '"eval"' | head -1 | sed -E 's/.*"loss":([0-9.eE+-]+).*/\1/'; }
sed -n 's/^  //p' <<<"$imp" | sed -n '/^\[model\]/,$p' >imp.ini
x=(--set train.steps=1 --set train.eval_every=0 --set data.task_examples=0 --set run.threads=1 --quiet)
"$CCOE" train imp.ini "${x[@]}" --init-from base.safetensors --set train.out_dir=one ||
  fail "train --init-from the import"
"$CCOE" train imp.ini "${x[@]}" --set train.out_dir=fresh || fail "train from fresh weights"
[[ $(first out/dense/metrics.jsonl) == "$(first one/metrics.jsonl)" ]] ||
  fail "dense variant's first loss $(first out/dense/metrics.jsonl), --init-from's $(first one/metrics.jsonl)"
[[ $(first out/dense/metrics.jsonl) != "$(first fresh/metrics.jsonl)" ]] ||
  fail "the dense variant's first loss is that of fresh weights"
pass "study.init_from: the variants take the import's config and weights (frozen base kept bit for bit)"

"$CCOE" study s.ini >/dev/null 2>err.txt || fail "rerun: $(cat err.txt)"
[[ $(grep -c "reusing the finished run" err.txt) -eq 3 ]] || fail "finished runs not reused: $(cat err.txt)"
sleep 1
touch base.safetensors
"$CCOE" study s.ini >/dev/null 2>err.txt || fail "run after the base changed: $(cat err.txt)"
grep -q "reusing" err.txt && fail "runs older than the start checkpoint were reused: $(cat err.txt)"
pass "a rerun reuses the runs; a newer start checkpoint retrains them"

if command -v mpirun >/dev/null; then
  mpirun --allow-run-as-root --oversubscribe --bind-to none -np 2 "$CCOE" study s.ini \
    --set study.out_dir=out2 >two.txt 2>err2.txt || fail "2-rank study: $(cat err2.txt)"
  paste <(col mean_val_loss out/study.csv) <(col mean_val_loss out2/study.csv) | awk 'NF != 2 {exit 1}
    {d = $1 - $2; if (d < 0) d = -d; if (d > 1e-5 * $1) exit 1} END {if (NR != 3) exit 1}' ||
    fail "2-rank study losses differ: $(col mean_val_loss out/study.csv) vs $(col mean_val_loss out2/study.csv)"
  pass "mpirun -np 2 ccoe study from the import: the one-process losses"
fi

sed 's/^init_from = .*/init_from = nope.safetensors/' s.ini >bad.ini
expect_fail 2 "study bad.ini line 3 \(init_from = nope.safetensors\).*nope.safetensors" -- \
  "$CCOE" study bad.ini
: >empty.safetensors
sed 's/^init_from = .*/init_from = empty.safetensors/' s.ini >bad2.ini
expect_fail 1 "line 3 \(init_from = empty.safetensors\).*corrupt or truncated" -- "$CCOE" study bad2.ini
pass "a missing init_from checkpoint exits 2, a damaged one 1, naming the line"
