# A FIFO, directory or device named as an input file (config, study, manifest and the files it
# names, prompts, checkpoint) is refused at once with a message naming it, never waited on.
source "$(dirname "$0")/lib/common.sh"
cd "$WORK"
command -v mkfifo >/dev/null || { echo "skip: no mkfifo"; exit 77; }
mkfifo fifo
mkdir adir
# every command runs under timeout: a reader blocked on the FIFO fails the test with exit 124
T=(timeout 20)
expect_fifo() { # CODE -- command...
  local code=$1; shift 2
  expect_fail "$code" "'[^']*fifo' is not a regular file \(a FIFO\): give a file" -- "${T[@]}" "$@"
}
expect_fifo 1 -- "$CCOE" train fifo --set train.out_dir=r
expect_fail 1 "config file 'adir' is not a regular file \(a directory\)" -- \
  "${T[@]}" "$CCOE" train adir --set train.out_dir=r
expect_fifo 2 -- "$CCOE" study fifo
expect_fifo 1 -- "$CCOE" train "$TINY" --set train.out_dir=r --set data.manifest=fifo
expect_fail 1 "'/dev/null' is not a regular file \(a character device\)" -- \
  "${T[@]}" "$CCOE" train "$TINY" --set train.out_dir=r --set data.manifest=/dev/null
for kind in text jsonl sqlite_script; do
  printf '[domain a]\ntext = ok.txt\n%s = %s/fifo\n' "$kind" "$WORK" > m_$kind.ini
  printf 'hello world\n' > ok.txt
  expect_fifo 1 -- "$CCOE" train "$TINY" --set train.out_dir=r --set data.manifest=m_$kind.ini
done
printf '[domain a]\ntext = ok.txt\nsqlite = %s/fifo\n' "$WORK" > m_sqlite.ini
expect_fifo 1 -- "$CCOE" train "$TINY" --set train.out_dir=r --set data.manifest=m_sqlite.ini
expect_fifo 1 -- "$CCOE" eval fifo
expect_fifo 1 -- "$CCOE" info fifo
expect_fifo 1 -- "$CCOE" train "$TINY" --set train.out_dir=r --resume fifo
[[ ! -e r/checkpoint.safetensors ]] || fail "a refused input still wrote a checkpoint"
pass "FIFO, directory and device inputs are refused at once"

"$CCOE" train "$TINY" --set train.steps=2 --set train.eval_every=0 --set data.task_examples=0 \
  --set train.out_dir=m --quiet || fail "training the model"
expect_fifo 1 -- "$CCOE" generate m/checkpoint.safetensors --prompts fifo
expect_fifo 1 -- "$CCOE" train "$TINY" --set train.out_dir=m2 --init-from fifo
pass "a FIFO as --prompts or --init-from is refused at once"
