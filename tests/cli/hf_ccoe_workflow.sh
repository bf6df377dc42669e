# The CCoE workflow on an imported base with its BPE tokenizer, for the committed tiny GPT-2
# and LLaMA fixtures (tests/fixtures/hf-*-tiny: vocab.json + merges.txt, byte-level, so the
# embedded domains encode without unknown bytes): import -> train-expert for two domains with
# the base frozen (its tensors bit-identical, checked with `ccoe compare`) -> pop each expert
# and push both -> eval per domain with bits per byte (the experts' domains improve, the
# others' rows are the base's) and eval --text per domain -> generate decoded text -> pop one
# (--remove: the model with the other expert alone, bit for bit) -> export an expert's path
# (imported again, it scores the text as the CCoE model routes it). Under mpirun -np 2: the
# experts trained at once, one per rank (--train-experts all, expert placement), equal the
# one-process train-expert runs bit for bit; train-expert data parallel follows the
# one-process loss curve (1e-5); eval --text splits its windows and prints one process's
# figures; with the tokenizer directory gone the checkpoint's copy is used and the note about
# it is printed once.
source "$(dirname "$0")/lib/common.sh"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
export CCOE_CACHE_DIR=$WORK/cache
MPIRUN=(mpirun --allow-run-as-root --oversubscribe --bind-to none)
command -v mpirun >/dev/null || fail "mpirun not found (apt-get install openmpi-bin)"
cd "$WORK"
"$CCOE" data write-builtin data >/dev/null || fail "write-builtin"
head -c 6000 data/arith.txt >arith.txt
head -c 6000 data/code.txt >code.txt
head -c 6000 data/prose.txt >prose.txt
# the same budget for train-expert and for `train --train-experts` (one thread: bit for bit)
S=(--set train.steps=12 --set train.batch_size=8 --set train.warmup=0 --set train.lr=0.01
   --set train.eval_every=0 --set train.log_every=1 --set train.eps=1e-6
   --set data.task_examples=0 --set run.threads=1 --quiet)
R=(--set run.threads=1) # eval: one thread (BLIS threads on a shared machine only wait)
losses() { grep '"loss"' "$1" | grep -v '"eval"' | sed -E 's/.*"loss":([0-9.eE+-]+).*/\1/'; }
row() { awk -v d="$1" '$1 == d {print; exit}' "$2"; }  # the loss table's row
text_eval() { "$CCOE" eval "$@" "${R[@]}" | awk 'NR == 3 {print $1, $2, $3, $4, $5}'; }

for fx in gpt2 llama; do
  mkdir $fx && cp arith.txt code.txt prose.txt $fx && cd $fx
  # ---- import ----
  out=$("$CCOE" import "$SRC/tests/fixtures/hf-$fx-tiny" -o base.safetensors) || fail "$fx import: $out"
  grep -q "tokenizer = $WORK/$fx/base.tokenizer" <<<"$out" || fail "$fx: derived tokenizer: $out"
  info=$("$CCOE" info base.safetensors)
  grep -q "tokenizer *bpe .*base.tokenizer, hash [0-9a-f]*, files merges.txt vocab.json (embedded)" \
    <<<"$info" || fail "$fx: the import does not carry its tokenizer: $(grep tokenizer <<<"$info")"

  # ---- two experts, each trained alone on the frozen base ----
  for d in arith code; do
    "$CCOE" train-expert base.safetensors --expert $d --domain $d --layers 1 --form tail "${S[@]}" \
      -o ex-$d >te-$d.log 2>&1 || fail "$fx train-expert $d: $(cat te-$d.log)"
    "$CCOE" compare base.safetensors ex-$d/checkpoint.safetensors --only-base >/dev/null ||
      fail "$fx: training expert $d changed the base"
    "$CCOE" pop ex-$d/checkpoint.safetensors --expert $d -o $d.expert >/dev/null || fail "$fx pop $d"
  done
  "$CCOE" push base.safetensors arith.expert -o one.safetensors >/dev/null || fail "$fx push arith"
  "$CCOE" push one.safetensors code.expert -o two.safetensors >/dev/null || fail "$fx push code"
  "$CCOE" compare base.safetensors two.safetensors --only-base >/dev/null ||
    fail "$fx: pushing the experts changed the base"
  info=$("$CCOE" info two.safetensors)
  grep -qE "^arith +.*1,0" <<<"$info" && grep -qE "^code +.*1,1" <<<"$info" ||
    fail "$fx: the task-expert matrix: $info"
  pass "$fx: imported; two experts trained alone (base bit-identical), popped and pushed"

  # ---- eval per domain: bits per byte; the experts' domains improve, the rest is the base ----
  "$CCOE" eval base.safetensors --batches 4 --no-tasks "${R[@]}" >ev-base.txt || fail "$fx eval base"
  "$CCOE" eval two.safetensors --batches 4 --no-tasks "${R[@]}" >ev-two.txt || fail "$fx eval two"
  grep -qE "^domain +val_loss +perplexity +bpb +tokens" ev-two.txt || fail "$fx: no bpb column: $(cat ev-two.txt)"
  for d in arith code; do
    read -r lb bb <<<"$(row $d ev-base.txt | awk '{print $2, $4}')"
    read -r le be <<<"$(row $d ev-two.txt | awk '{print $2, $4}')"
    awk -v lb="$lb" -v le="$le" -v bb="$bb" -v be="$be" \
      'BEGIN {exit !(le < lb && be < bb && be > 0 && be < le / log(2))}' ||
      fail "$fx: expert $d: loss $lb -> $le, bpb $bb -> $be (expected both lower; bpb < nats/ln 2)"
  done
  for d in strings prose sql; do
    [[ "$(row $d ev-base.txt)" == "$(row $d ev-two.txt)" ]] ||
      fail "$fx: domain $d (base path) changed: $(row $d ev-base.txt) vs $(row $d ev-two.txt)"
  done
  read -r n nb bb _ <<<"$(text_eval base.safetensors --text arith.txt)"
  read -r n ne be _ <<<"$(text_eval two.safetensors --text arith.txt --domain arith)"
  awk -v a="$bb" -v b="$be" 'BEGIN {exit !(b < a)}' ||
    fail "$fx: eval --text --domain arith: bpb $be, not below the base's $bb"
  [[ "$(text_eval two.safetensors --text prose.txt)" == "$(text_eval base.safetensors --text prose.txt)" ]] ||
    fail "$fx: eval --text on the base path differs from the base's"
  pass "$fx: eval per domain with bpb: the experts' domains improve, the others are the base's"

  # ---- generate: decoded text through each path ----
  out=$("$CCOE" generate two.safetensors --domain arith --max-new 8 --stop none "12+7=" "Tom has") ||
    fail "$fx generate: $out"
  [[ $(head -1 <<<"$out") == "12+7="* ]] && grep -q "^Tom has" <<<"$out" || fail "$fx generate: $out"
  grep -qE "^[0-9 ]+$" <<<"$out" && fail "$fx generate printed ids, not text: $out"
  "$CCOE" generate two.safetensors --domain code --max-new 8 --stop none "def f" >/dev/null ||
    fail "$fx generate through the code expert"
  pass "$fx: generate decodes through the experts' paths"

  # ---- pop one: the model with the other expert alone; pop a copy out bit for bit ----
  "$CCOE" pop two.safetensors --expert code --remove -o minus.safetensors >/dev/null || fail "$fx pop --remove"
  "$CCOE" info minus.safetensors | grep -q "experts\.code" && fail "$fx: removed expert still there"
  "$CCOE" compare one.safetensors minus.safetensors --params >/dev/null ||
    fail "$fx: base + arith + code - code is not base + arith"
  "$CCOE" pop two.safetensors --expert arith -o arith2.expert >/dev/null || fail "$fx pop arith"
  cmp -s arith.expert arith2.expert || fail "$fx: the expert popped from the model differs"
  pass "$fx: pop --remove leaves base + the other expert; pop copies bit for bit"

  # ---- export the arith path: an HF model that scores text as the CCoE model routes it ----
  out=$("$CCOE" export two.safetensors --path arith -o hf-arith) || fail "$fx export: $out"
  for f in config.json model.safetensors vocab.json merges.txt; do
    [[ -f hf-arith/$f ]] || fail "$fx: hf-arith/$f missing"
  done
  "$CCOE" import hf-arith -o path.safetensors >/dev/null || fail "$fx import of the exported path"
  "$CCOE" compare base.safetensors path.safetensors --params >/dev/null &&
    fail "$fx: the exported arith path is the base"
  want=$(text_eval two.safetensors --text arith.txt --domain arith)
  got=$(text_eval path.safetensors --text arith.txt)
  [[ $got == "$want" ]] || fail "$fx: the exported arith path scores $got, the model's arith route $want"
  pass "$fx: the exported arith path scores the text as the model's arith route"

  # ---- mpirun -np 2 ----
  # both experts at once, one per rank, from a config holding the import's [model] and [data]
  sed -n 's/^  //p' <<<"$("$CCOE" import "$SRC/tests/fixtures/hf-$fx-tiny" -o again.safetensors)" |
    sed -n '/^\[model\]/,$p' >te.ini
  printf '[ccoe]\nform = tail\nexperts = arith:1,code:1\nroutes = arith:arith,code:code\n' >>te.ini
  "${MPIRUN[@]}" -np 2 "$CCOE" train te.ini --init-from base.safetensors --train-experts all \
    "${S[@]}" --set train.out_dir=par >par.log 2>&1 || fail "$fx --train-experts on 2 ranks: $(cat par.log)"
  "$CCOE" compare base.safetensors par/checkpoint.safetensors --only-base >/dev/null ||
    fail "$fx: --train-experts changed the base"
  for d in arith code; do
    "$CCOE" pop par/checkpoint.safetensors --expert $d -o par-$d.expert >/dev/null || fail "$fx pop par $d"
    "$CCOE" compare $d.expert par-$d.expert --params >/dev/null ||
      fail "$fx: expert $d trained on its own rank differs from the one-process train-expert"
    head -1 par/metrics.$d.jsonl | grep -q '"ranks":1' || fail "$fx: expert $d not on one rank"
  done
  # one expert data parallel on both ranks
  "${MPIRUN[@]}" -np 2 "$CCOE" train-expert base.safetensors --expert arith --domain arith \
    --layers 1 --form tail "${S[@]}" -o dp --push dp.safetensors >dp.log 2>&1 ||
    fail "$fx train-expert on 2 ranks: $(cat dp.log)"
  paste <(losses ex-arith/metrics.jsonl) <(losses dp/metrics.jsonl) | awk 'NF != 2 {exit 1}
    {d = $1 - $2; if (d < 0) d = -d; if (d > 1e-5 * $1) {print "step " NR ": " $1 " vs " $2; exit 1}}
    END {if (NR != 12) exit 1}' || fail "$fx: train-expert on 2 ranks leaves the 1-process curve"
  grep -q '"ranks":2' dp/metrics.jsonl || fail "$fx: the data-parallel run does not record 2 ranks"
  "$CCOE" compare base.safetensors dp.safetensors --only-base >/dev/null || fail "$fx: 2-rank train-expert changed the base"
  # eval --text: windows split over the ranks, one process's figures
  for f in arith prose; do
    "$CCOE" eval two.safetensors --text $f.txt --domain $f "${R[@]}" >t1.txt || fail "$fx eval --text $f"
    "${MPIRUN[@]}" -np 2 "$CCOE" eval two.safetensors --text $f.txt --domain $f "${R[@]}" >t2.txt 2>&1 ||
      fail "$fx eval --text $f on 2 ranks: $(cat t2.txt)"
    grep -q "evaluated on 2 ranks" t2.txt || fail "$fx: the 2-rank eval --text does not say so: $(cat t2.txt)"
    diff <(grep -v "evaluated on" t2.txt) t1.txt >/dev/null ||
      fail "$fx: eval --text $f on 2 ranks: $(cat t2.txt) vs one process: $(cat t1.txt)"
  done
  # the tokenizer directory gone: every rank uses the checkpoint's copy, one note
  mv base.tokenizer tok.away
  "${MPIRUN[@]}" -np 2 "$CCOE" eval two.safetensors --text arith.txt --domain arith "${R[@]}" >t3.txt 2>note.txt ||
    fail "$fx eval on 2 ranks without the tokenizer dir: $(cat t3.txt note.txt)"
  [[ $(grep -c "note: checkpoint two.safetensors: its tokenizer .* is gone; using the copy" note.txt) == 1 ]] ||
    fail "$fx: expected one note about the unpacked tokenizer: $(cat note.txt)"
  [[ "$(grep -v "evaluated on" t3.txt | sed 1d)" == "$("$CCOE" eval two.safetensors --text arith.txt --domain arith "${R[@]}" 2>/dev/null | sed 1d)" ]] ||
    fail "$fx: eval from the unpacked tokenizer differs: $(cat t3.txt)"
  "${MPIRUN[@]}" -np 2 "$CCOE" train-expert two.safetensors --expert arith "${S[@]}" --set train.steps=2 \
    -o cont >cont.log 2>&1 || fail "$fx train-expert on 2 ranks without the tokenizer dir: $(cat cont.log)"
  [[ $(grep -c "note: checkpoint two.safetensors" cont.log) -le 1 ]] ||
    fail "$fx: the ranks each printed the note: $(cat cont.log)"
  mv tok.away base.tokenizer
  pass "$fx: mpirun -np 2: expert placement bit for bit, data parallel on the curve, eval --text split; one note"
  cd ..
done
