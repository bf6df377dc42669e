# Training on the builtin data lowers the loss; a run interrupted and resumed from its checkpoint
# equals the uninterrupted run bit for bit (checkpoint files identical).
source "$(dirname "$0")/lib/common.sh"
mkdir -p "$WORK/a" "$WORK/b"
steps=40
(cd "$WORK/a" && "$CCOE" train "$TINY" --set train.steps=$steps --set train.out_dir=run \
   --set train.eval_every=20 --quiet) || fail "uninterrupted run"
(cd "$WORK/b" && "$CCOE" train "$TINY" --set train.steps=$steps --set train.out_dir=run \
   --set train.eval_every=20 --quiet --stop-at 17) || fail "first half"
(cd "$WORK/b" && "$CCOE" train "$TINY" --set train.steps=$steps --set train.out_dir=run \
   --set train.eval_every=20 --quiet --resume run/checkpoint.safetensors) || fail "resumed half"
cmp "$WORK/a/run/checkpoint.safetensors" "$WORK/b/run/checkpoint.safetensors" \
  || fail "resumed run differs from the uninterrupted one"
pass "resume is bitwise equal"

# the loss falls: mean training loss of the last 5 steps well below the first step's
first=$(grep -m1 '"loss"' "$WORK/a/run/metrics.jsonl" | sed -E 's/.*"loss":([0-9.eE+-]+).*/\1/')
last=$(grep '"loss"' "$WORK/a/run/metrics.jsonl" | tail -n 5 |
       sed -E 's/.*"loss":([0-9.eE+-]+).*/\1/' | awk '{s+=$1} END {print s/NR}')
awk -v f="$first" -v l="$last" 'BEGIN {exit !(l < f - 1.0)}' \
  || fail "loss did not fall: first $first, last-5 mean $last"
pass "loss falls ($first -> $last)"

# eval reads the checkpoint and prints every builtin domain
out=$("$CCOE" eval "$WORK/a/run/checkpoint.safetensors" --batches 2) || fail "eval: $out"
for d in $(grep -oE '"eval":\{.*' "$WORK/a/run/metrics.jsonl" | tail -n1 | grep -oE '"[a-z_]+":\{"loss"' | cut -d'"' -f2); do
  grep -q "^$d " <<<"$out" || fail "eval output lacks domain $d: $out"
done
pass "eval prints every domain"

# info names the tensors and the config
# (captured first: `info | grep -q` fails under pipefail when grep exits before info finishes)
info=$("$CCOE" info "$WORK/a/run/checkpoint.safetensors") || fail "info exit status"
grep -q "blocks.0.attn.qkv.weight" <<<"$info" || fail "info"
pass "info"

# SIGTERM (a batch system's time limit) saves a checkpoint and exits 128 + 15, the code shells
# and batch systems report for a signal; the run then resumes
mkdir -p "$WORK/t"
(cd "$WORK/t" && exec "$CCOE" train "$TINY" --set train.steps=100000 --set train.out_dir=run \
   --set train.eval_every=0 --set train.log_every=1 > out.txt 2> err.txt) &
pid=$!
for _ in $(seq 1 600); do
  [[ -s "$WORK/t/run/metrics.jsonl" ]] && break
  sleep 0.1
done
[[ -s "$WORK/t/run/metrics.jsonl" ]] || fail "the run to stop logged no step"
kill -TERM "$pid"
rc=0
wait "$pid" || rc=$?
[[ $rc -eq 143 ]] || fail "SIGTERM: exit $rc, expected 143: $(cat "$WORK/t/err.txt")"
grep -q "stopped by signal 15" "$WORK/t/err.txt" || fail "SIGTERM message: $(cat "$WORK/t/err.txt")"
grep -q "usage error" "$WORK/t/err.txt" && fail "SIGTERM is labelled a usage error"
step=$("$CCOE" info "$WORK/t/run/checkpoint.safetensors" | awk '$1 == "step" {print $2}')
[[ "$step" -ge 1 ]] || fail "no checkpoint after SIGTERM"
(cd "$WORK/t" && "$CCOE" train "$TINY" --set train.steps=$((step + 2)) --set train.out_dir=run \
   --quiet --resume run/checkpoint.safetensors) || fail "resume after SIGTERM"
pass "SIGTERM: checkpoint, exit 143, resume"
