#!/usr/bin/env bash
# real_ccoe.sh - reproduces the CCoE paper's claim at small scale on the real corpora: base vs
# CCoE experts per domain, with the improvement table.
#
# Usage: scripts/real_ccoe.sh [OUT_DIR]       (default runs/real-ccoe)
# Environment: CCOE (the binary, default build/ccoe), CORPORA (default ~/.cache/ccoe/corpora;
#   built by scripts/build_corpora.sh if its manifest is missing; any directory holding a
#   manifest.ini works, e.g. `ccoe data write-builtin DIR`), BASE_STEPS (default: the config's
#   1200), EXPERT_STEPS (300), EXPERT_LAYERS (2), DOMAINS (default: every domain of the
#   manifest), EVAL_BATCHES (0 = the whole validation split), THREADS (run.threads, default 2;
#   1 is faster when other jobs share the cores), TASKS (held-out tasks per task domain, 60).
#   Tokenizer and base:
#   TOKENIZER = byte (default) | bpe | DIR: byte-level ids; or a byte-level BPE that
#     `ccoe tokenizer train` learns from the training part of the corpora (the first
#     TOKENIZER_FRACTION, default 0.9, of each domain's documents: the validation split is the
#     end of each domain) with VOCAB ids (default 4096), written to OUT_DIR/tokenizer and
#     reused on a rerun; or an existing tokenizer directory. model.vocab_size follows it.
#   IMPORT = HF_DIR: instead of pre-training, the base is `ccoe import HF_DIR` (a Hugging Face
#     GPT-2, LLaMA, Qwen2 or Mistral directory) with its own tokenizer (TOKENIZER is ignored);
#     the experts train with `ccoe train-expert` on the import's config.
#
# Workflow (configs/real-ccoe.ini): 1. pre-train the base on the mixed domains (or import it);
# 2. for each domain D train a new expert D (copy of the last EXPERT_LAYERS base blocks) on D
# only, base frozen; pop it; 3. push every expert into the base (routes D -> expert D); 4.
# evaluate base and CCoE model (validation loss and bits per byte per domain; task accuracy on
# math and sql); 5. print per domain: base loss, CCoE loss, improvement, base and CCoE bits per
# byte (the figure that compares tokenizers; nats / ln 2 for byte-level ids) and task accuracy
# of both. Writes OUT_DIR/table.md.
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
MANIFEST=$(cd "$CORPORA" && pwd)/manifest.ini
DOMAINS=${DOMAINS:-$(sed -n 's/^\[domain \(.*\)\]$/\1/p' "$MANIFEST" | tr '\n' ' ')}
mkdir -p "$OUT"
S=(--set "data.manifest=$MANIFEST" --set "run.threads=${THREADS:-2}" --set "data.task_examples=${TASKS:-60}")
TOKENIZER=${TOKENIZER:-byte}
[[ -n ${IMPORT:-} ]] && TOKENIZER=byte # the import brings its own
T=()                                   # the tokenizer keys of pre-training and expert runs
case $TOKENIZER in
  byte) ;;
  bpe)
    TOK=$(cd "$OUT" && pwd)/tokenizer
    if [[ ! -s $TOK/tokenizer.json ]]; then
      # the training part of each domain: its first TOKENIZER_FRACTION of documents (text:
      # blank-line separated; jsonl: the "text" fields), never the validation end
      python3 - "$MANIFEST" "$OUT/tokenizer-text" "${TOKENIZER_FRACTION:-0.9}" $DOMAINS <<'PY'
import json, os, re, sys
manifest, out, frac, domains = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4:]
base = os.path.dirname(manifest)
os.makedirs(out, exist_ok=True)
cur, files = None, {}
for line in open(manifest, encoding="utf-8"):
    line = line.split(";")[0].strip()
    m = re.match(r"^\[domain (.+)\]$", line)
    if m:
        cur = m.group(1)
        continue
    m = re.match(r"^(text|jsonl)\s*=\s*(.+)$", line)
    if m and cur:
        files[cur] = (m.group(1), os.path.join(base, m.group(2).strip()))
for d in domains:
    kind, path = files[d]
    raw = open(path, encoding="utf-8", errors="replace").read()
    if kind == "text":
        docs = [x for x in re.split(r"\n\s*\n", raw) if x.strip()]
    else:
        docs = [json.loads(x)["text"] for x in raw.splitlines() if x.strip()]
    keep = docs[: max(1, int(len(docs) * frac))]
    with open(os.path.join(out, d + ".txt"), "w", encoding="utf-8") as f:
        f.write("\n\n".join(keep))
PY
      log "training a BPE tokenizer of ${VOCAB:-4096} ids on the training part of: $DOMAINS"
      files=()
      for d in $DOMAINS; do files+=("$OUT/tokenizer-text/$d.txt"); done
      "$CCOE" tokenizer train "${files[@]}" --vocab "${VOCAB:-4096}" -o "$TOK" >&2
    fi
    T=(--set "data.tokenizer=$TOK" --set model.vocab_size=0) ;;
  *)
    [[ -d $TOKENIZER ]] || { log "TOKENIZER=$TOKENIZER: give byte, bpe or a tokenizer directory"; exit 1; }
    T=(--set "data.tokenizer=$(cd "$TOKENIZER" && pwd)" --set model.vocab_size=0) ;;
esac
D=("${S[@]}" "${T[@]}" --no-progress)
t0=$(date +%s)

# 1. base: pre-trained here, or imported
BASE=$OUT/base/checkpoint.safetensors
if [[ -n ${IMPORT:-} ]]; then
  if [[ ! -s $BASE ]]; then
    log "importing the base from $IMPORT"
    mkdir -p "$OUT/base"
    "$CCOE" import "$IMPORT" -o "$BASE" >"$OUT/base/import.txt"
  fi
elif [[ ! -s $BASE ]]; then
  log "pre-training the base on: $DOMAINS (tokenizer $TOKENIZER)"
  "$CCOE" train "$CFG" "${D[@]}" --set "train.out_dir=$OUT/base" \
    ${BASE_STEPS:+--set train.steps=$BASE_STEPS} --quiet
fi
t1=$(date +%s)

# 2. one isolated expert per domain, 3. pushed into the base one after the other
model=$BASE
for d in $DOMAINS; do
  if [[ ! -s "$OUT/exp-$d/checkpoint.safetensors" ]]; then
    log "training expert $d ($EXPERT_LAYERS blocks, $EXPERT_STEPS steps, base frozen)"
    if [[ -n ${IMPORT:-} ]]; then # the import's model and train keys, these data and steps
      "$CCOE" train-expert "$BASE" --expert "$d" --domain "$d" --layers "$EXPERT_LAYERS" \
        --form tail "${S[@]}" --no-progress --set train.steps="$EXPERT_STEPS" \
        --set train.warmup=20 --set train.eval_every=0 -o "$OUT/exp-$d" --quiet
    else
      "$CCOE" train "$CFG" "${D[@]}" --set "train.out_dir=$OUT/exp-$d" \
        --set train.steps="$EXPERT_STEPS" --set train.warmup=20 --set ccoe.form=tail \
        --set "ccoe.experts=$d:$EXPERT_LAYERS" --set "ccoe.routes=$d:$d" \
        --set "ccoe.train_expert=$d" --init-from "$BASE" --quiet
    fi
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

# 5. the table. The eval table's header names its columns: domain val_loss perplexity [bpb]
# tokens task_accuracy (bpb with a BPE tokenizer; for byte-level ids it is val_loss / ln 2)
awk -v domains="$DOMAINS" '
  FNR == 1 { file++ }
  /^domain +val_loss/ { intab = 1; cb = 0; for (i = 1; i <= NF; i++) { if ($i == "bpb") cb = i; if ($i == "tokens") ct = i }; next }
  intab && NF == 0 { intab = 0 }
  intab && $1 != "all" {
    loss[file, $1] = $2; bpb[file, $1] = cb ? $cb : $2 / log(2)
    a = ""; for (i = ct + 1; i <= NF; i++) a = a (a == "" ? "" : " ") $i
    acc[file, $1] = a == "" ? "-" : a
  }
  END {
    n = split(domains, ds, " ")
    print "| domain | base val loss | CCoE val loss | improvement | base bpb | CCoE bpb | base task acc | CCoE task acc |"
    print "|---|---|---|---|---|---|---|---|"
    for (i = 1; i <= n; i++) {
      d = ds[i]; b = loss[1, d]; c = loss[2, d]
      printf "| %s | %.4f | %.4f | %+.1f%% | %.4f | %.4f | %s | %s |\n", d, b, c, 100 * (b - c) / b, bpb[1, d], bpb[2, d], acc[1, d], acc[2, d]
    }
  }' "$OUT/eval-base.txt" "$OUT/eval-ccoe.txt" | tee "$OUT/table.md"
echo
echo "task accuracy by kind (base, then CCoE):"
sed -n '/^task accuracy by kind/,/^$/p' "$OUT/eval-base.txt" | sed -n '3,$p' | grep . || true
sed -n '/^task accuracy by kind/,/^$/p' "$OUT/eval-ccoe.txt" | sed -n '3,$p' | grep . || true
log "timing: base $((t1 - t0)) s, experts $((t2 - t1)) s, evaluation $((t3 - t2)) s"
