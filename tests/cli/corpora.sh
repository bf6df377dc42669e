# The real corpora (scripts/build_corpora.sh) load with their tasks: math word problems (exact
# match) and SQL questions over datasets.sqlite (execution match); evaluation prints accuracy by
# task kind. Skipped (exit 77) when the corpora are not built: they need the network once.
source "$(dirname "$0")/lib/common.sh"
CORPORA=${CCOE_CORPORA:-$HOME/.cache/ccoe/corpora}
if [[ ! -s "$CORPORA/manifest.ini" ]]; then
  echo "skip: no corpora at $CORPORA (run scripts/build_corpora.sh)"
  exit 77
fi
cd "$WORK"
M=(--set "data.manifest=$CORPORA/manifest.ini")
"$CCOE" train "$TINY" "${M[@]}" --set train.steps=2 --set train.eval_every=0 \
  --set data.task_examples=4 --set train.out_dir=r --quiet >/dev/null || fail "train on the corpora"
out=$("$CCOE" eval r/checkpoint.safetensors "${M[@]}" --batches 1 --set data.task_examples=8) ||
  fail "eval on the corpora"
for d in code law medical math sql general; do
  grep -qE "^$d +[0-9.]+ " <<<"$out" || fail "no row for domain $d: $out"
done
grep -qE "^math +[0-9.]+ .*\(0?[0-9]+/8\)" <<<"$out" || fail "math tasks not scored: $out"
grep -qE "^sql +[0-9.]+ .*\(0?[0-9]+/8\)" <<<"$out" || fail "sql tasks not scored: $out"
grep -qE "^math +word_small " <<<"$out" || fail "no word_small kind: $out"
grep -qE "^sql +sql_(count|agg|list|group) " <<<"$out" || fail "no sql kind: $out"
pass "real corpora load; math and sql tasks scored by kind"
