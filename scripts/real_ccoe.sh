#!/usr/bin/env bash
# real_ccoe.sh - reproduces the CCoE paper's claim at small scale on the real corpora: base vs
# CCoE experts per domain, with the improvement table.
#
# Usage: scripts/real_ccoe.sh [OUT_DIR]       (default runs/real-ccoe)
# Environment: CCOE (the binary, default build/ccoe), CORPORA (default ~/.cache/ccoe/corpora;
#   built by scripts/build_corpora.sh if its manifest is missing), BASE_STEPS (default: the
#   config's 1200), EXPERT_STEPS (300), EXPERT_LAYERS (2), DOMAINS (default: every domain of the
#   manifest), EVAL_BATCHES (0 = the whole validation split), THREADS (run.threads, default 2;
#   1 is faster when other jobs share the cores), TASKS (held-out tasks per task domain, 60).
#
# Workflow (configs/real-ccoe.ini): 1. pre-train the base on the mixed domains; 2. for each
# domain D train a new expert D (copy of the last EXPERT_LAYERS base blocks) on D only, base
# frozen; pop it; 3. push every expert into the base (routes D -> expert D); 4. evaluate base and
# CCoE model (validation loss per domain; task accuracy on math and sql); 5. print per domain:
# base loss, CCoE loss, improvement, and task accuracy of both. Writes OUT_DIR/table.md.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-runs/real-ccoe}
CCOE=${CCOE:-$here/build/ccoe}
CORPORA=${CORPORA:-$HOME/.cache/ccoe/corpora}
EXPERT_STEPS=${EXPERT_STEPS:-300}
EXPERT_LAYERS=${EXPERT_LAYERS:-2}
EVAL_BATCHES=${EVAL_BATCHES:-0}
CFG=$here/configs/real-ccoe.ini
log() { printf '[real_ccoe] %s\n' "$*" >&2; }

[[ -x "$CCOE" ]] || { log "no ccoe binary at $CCOE: run scripts/setup.sh or set CCOE"; exit 1; }
if [[ ! -s "$CORPORA/manifest.ini" ]]; then
  log "building the corpora into $CORPORA"
  bash "$here/scripts/build_corpora.sh" "$CORPORA"
fi
MANIFEST=$CORPORA/manifest.ini
DOMAINS=${DOMAINS:-$(sed -n 's/^\[domain \(.*\)\]$/\1/p' "$MANIFEST" | tr '\n' ' ')}
mkdir -p "$OUT"
S=(--set "data.manifest=$MANIFEST" --set "run.threads=${THREADS:-2}" --set "data.task_examples=${TASKS:-60}")
D=("${S[@]}" --no-progress)
t0=$(date +%s)

# 1. base
if [[ ! -s "$OUT/base/checkpoint.safetensors" ]]; then
  log "pre-training the base on: $DOMAINS"
  "$CCOE" train "$CFG" "${D[@]}" --set "train.out_dir=$OUT/base" \
    ${BASE_STEPS:+--set train.steps=$BASE_STEPS} --quiet
fi
BASE=$OUT/base/checkpoint.safetensors
t1=$(date +%s)

# 2. one isolated expert per domain, 3. pushed into the base one after the other
model=$BASE
for d in $DOMAINS; do
  if [[ ! -s "$OUT/exp-$d/checkpoint.safetensors" ]]; then
    log "training expert $d ($EXPERT_LAYERS blocks, $EXPERT_STEPS steps, base frozen)"
    "$CCOE" train "$CFG" "${D[@]}" --set "train.out_dir=$OUT/exp-$d" \
      --set train.steps="$EXPERT_STEPS" --set train.warmup=20 --set ccoe.form=tail \
      --set "ccoe.experts=$d:$EXPERT_LAYERS" --set "ccoe.routes=$d:$d" \
      --set "ccoe.train_expert=$d" --init-from "$BASE" --quiet
  fi
  "$CCOE" pop "$OUT/exp-$d/checkpoint.safetensors" --expert "$d" -o "$OUT/$d.expert" >/dev/null
  "$CCOE" push "$model" "$OUT/$d.expert" -o "$OUT/ccoe-$d.safetensors" >/dev/null
  [[ $model == "$BASE" ]] || rm -f "$model"
  model=$OUT/ccoe-$d.safetensors
done
mv "$model" "$OUT/ccoe.safetensors"
"$CCOE" compare "$BASE" "$OUT/ccoe.safetensors" --only-base >/dev/null ||
  { log "the base changed while experts were trained"; exit 1; }
t2=$(date +%s)

# 4. evaluate both
log "evaluating base and CCoE model"
"$CCOE" eval "$BASE" "${S[@]}" --batches "$EVAL_BATCHES" >"$OUT/eval-base.txt"
"$CCOE" eval "$OUT/ccoe.safetensors" "${S[@]}" --batches "$EVAL_BATCHES" >"$OUT/eval-ccoe.txt"
"$CCOE" info "$OUT/ccoe.safetensors" >"$OUT/info-ccoe.txt"
t3=$(date +%s)

# 5. the table: rows of the per-domain table are "domain loss ppl tokens [acc% (c/n)]"
awk -v domains="$DOMAINS" '
  FNR == 1 { file++ }
  /^domain +val_loss/ { intab = 1; next }
  intab && NF == 0 { intab = 0 }
  intab && $1 != "all" { loss[file, $1] = $2; acc[file, $1] = (NF >= 5 ? $5 : "-") }
  END {
    n = split(domains, ds, " ")
    print "| domain | base val loss | CCoE val loss | improvement | base task acc | CCoE task acc |"
    print "|---|---|---|---|---|---|"
    for (i = 1; i <= n; i++) {
      d = ds[i]; b = loss[1, d]; c = loss[2, d]
      printf "| %s | %.4f | %.4f | %+.1f%% | %s | %s |\n", d, b, c, 100 * (b - c) / b, acc[1, d], acc[2, d]
    }
  }' "$OUT/eval-base.txt" "$OUT/eval-ccoe.txt" | tee "$OUT/table.md"
echo
echo "task accuracy by kind (base, then CCoE):"
sed -n '/^task accuracy by kind/,/^$/p' "$OUT/eval-base.txt" | sed -n '3,$p' | grep . || true
sed -n '/^task accuracy by kind/,/^$/p' "$OUT/eval-ccoe.txt" | sed -n '3,$p' | grep . || true
log "timing: base $((t1 - t0)) s, experts $((t2 - t1)) s, evaluation $((t3 - t2)) s"
