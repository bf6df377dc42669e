# metrics.jsonl is never written through a planted symbolic link (the link's target stays
# untouched, the run fails naming the file), nor into a FIFO; a failed write of the metrics
# (here: the file size limit) fails the run with the reason instead of exiting 0.
source "$(dirname "$0")/lib/common.sh"
cd "$WORK"
T=(timeout 60)
mkdir run
echo "precious" > other
ln -s ../other run/metrics.jsonl
expect_fail 1 "metrics file 'run/metrics.jsonl' is a symbolic link" -- \
  "${T[@]}" "$CCOE" train "$TINY" --set train.steps=3 --set train.out_dir=run --quiet
[[ "$(cat other)" == precious ]] || fail "the symlink's target was written: $(cat other)"
[[ -L run/metrics.jsonl ]] || fail "the symlink was replaced"
[[ ! -e run/checkpoint.safetensors ]] || fail "a refused run wrote a checkpoint"
# the same on --resume (appending) and for a dangling link (nothing is created at its target)
rm run/metrics.jsonl
"$CCOE" train "$TINY" --set train.steps=3 --set train.out_dir=run --quiet || fail "setup run"
mv run/metrics.jsonl kept.jsonl
ln -s ../other run/metrics.jsonl
expect_fail 1 "is a symbolic link" -- "${T[@]}" "$CCOE" train "$TINY" --set train.steps=5 \
  --set train.out_dir=run --quiet --resume run/checkpoint.safetensors
[[ "$(cat other)" == precious ]] || fail "--resume appended through the symlink"
rm run/metrics.jsonl
ln -s ../nowhere run/metrics.jsonl
expect_fail 1 "is a symbolic link" -- "${T[@]}" "$CCOE" train "$TINY" --set train.steps=3 \
  --set train.out_dir=run --quiet --force
[[ ! -e nowhere ]] || fail "a dangling symlink's target was created"
rm run/metrics.jsonl
mkfifo run/metrics.jsonl
expect_fail 1 "metrics file 'run/metrics.jsonl' is not a regular file" -- \
  "${T[@]}" "$CCOE" train "$TINY" --set train.steps=3 --set train.out_dir=run --quiet --force
pass "a symlink or FIFO in place of metrics.jsonl is refused, its target untouched"

# a write error (file size limit of 4 KiB: the metrics outgrow it within a few steps; SIGXFSZ
# ignored, so write fails with EFBIG) fails the run naming the file
rm -rf run2
out=$( (ulimit -f 4; trap '' XFSZ; "${T[@]}" "$CCOE" train "$TINY" --set train.steps=40 \
        --set train.eval_every=0 --set train.out_dir=run2 --quiet) 2>&1) && rc=0 || rc=$?
[[ $rc -eq 1 ]] || fail "expected exit 1 after a metrics write error, got $rc: $out"
grep -q "cannot write the metrics file 'run2/metrics.jsonl': File too large" <<<"$out" \
  || fail "expected the write error named: $out"
pass "a failed metrics write fails the run with the reason"

# the other outputs are not written through symbolic links either: the builtin data set (atomic
# replace) and a study's report files
mkdir -p bi && echo precious > victim.txt && ln -s "$PWD/victim.txt" bi/manifest.ini
"$CCOE" data write-builtin bi > /dev/null || fail "write-builtin over a symlink"
[[ "$(cat victim.txt)" == precious && ! -L bi/manifest.ini ]] || fail "write-builtin wrote through a symlink"
printf '[study]\nbase = %s\nbudget = tokens:1024\nvariants = a\nout_dir = st\n[variant.a]\ntrain.eval_batches = 1\ndata.task_examples = 0\n' "$TINY" > s.ini
mkdir -p st && ln -s "$PWD/victim.txt" st/study.md
expect_fail 1 "symbolic link" -- "$CCOE" study s.ini
[[ "$(cat victim.txt)" == precious ]] || fail "the study report was written through a symlink"
pass "data and study outputs are not written through symbolic links"
