# Bad input ends with a clear message and a non-zero exit, and never touches existing files.
source "$(dirname "$0")/lib/common.sh"
cd "$WORK"
"$CCOE" train "$TINY" --set train.steps=3 --set train.out_dir=run --quiet || fail "setup run"
ck=run/checkpoint.safetensors
sum_before=$(sha256sum "$ck" run/metrics.jsonl)

# config errors: exit 2, the key named, nothing written
expect_fail 2 "model.n_layer" -- "$CCOE" train "$TINY" --set model.n_layer=0 --set train.out_dir=run --force
expect_fail 2 "model.n_layers" -- "$CCOE" train "$TINY" --set model.n_layers=2 --set train.out_dir=run --force
expect_fail 2 "train.lr" -- "$CCOE" train "$TINY" --set train.lr=abc --set train.out_dir=run --force
expect_fail 2 "model.norm" -- "$CCOE" train "$TINY" --set model.norm=batchnorm --set train.out_dir=run --force
expect_fail 2 "n_head|n_embd" -- "$CCOE" train "$TINY" --set model.n_head=3 --set train.out_dir=run --force
printf '[model]\nn_layer = 2\nbogus = 1\n' > bad.ini
expect_fail 2 "bogus" -- "$CCOE" train bad.ini --set train.out_dir=run --force
expect_fail 1 "missing.ini" -- "$CCOE" train missing.ini
expect_fail 2 "unknown command" -- "$CCOE" frobnicate
# an existing run is not overwritten by accident
expect_fail 2 "already exists" -- "$CCOE" train "$TINY" --set train.out_dir=run
[[ "$(sha256sum "$ck" run/metrics.jsonl)" == "$sum_before" ]] || fail "a failed command changed the run"
pass "config errors"

# truncated and corrupted checkpoints: clear error, exit 1, originals untouched
size=$(stat -c %s "$ck")
for cut in 4 100 $((size / 2)) $((size - 1)); do
  head -c "$cut" "$ck" > trunc.safetensors
  expect_fail 1 "trunc|corrupt|short" -- "$CCOE" eval trunc.safetensors
done
cp "$ck" flip.safetensors
printf '\xff' | dd of=flip.safetensors bs=1 seek=$((size - 100)) conv=notrunc status=none
expect_fail 1 "CRC|checksum|corrupt" -- "$CCOE" eval flip.safetensors
expect_fail 1 "CRC|checksum|corrupt" -- "$CCOE" train "$TINY" --set train.out_dir=run --resume flip.safetensors
# the header is covered too: a changed digit of the stored learning rate is caught
cp "$ck" lr.safetensors
off=$(grep -boa 'lr = [0-9]' lr.safetensors | head -1 | cut -d: -f1)
[[ -n "$off" ]] || fail "no 'lr = ' in the checkpoint header"
digit=$(dd if=lr.safetensors bs=1 skip=$((off + 5)) count=1 status=none)
printf '%s' "$(( (digit + 1) % 10 ))" | dd of=lr.safetensors bs=1 seek=$((off + 5)) conv=notrunc status=none
expect_fail 1 "checksum mismatch" -- "$CCOE" eval lr.safetensors
expect_fail 1 "checksum mismatch" -- "$CCOE" train "$TINY" --set train.out_dir=run --resume lr.safetensors
# renaming the checksum key does not switch the check off; reseal is the way to accept a file
sed 's/ccoe\.file_crc32/ccoe.file_xxxxx/' "$ck" > renamed.safetensors
expect_fail 1 "no whole-file checksum.*ccoe reseal" -- "$CCOE" eval renamed.safetensors
"$CCOE" reseal renamed.safetensors -o resealed.safetensors > reseal.txt || fail "reseal: $(cat reseal.txt)"
grep -q "no checksum" reseal.txt || fail "reseal does not say what it could verify: $(cat reseal.txt)"
"$CCOE" compare "$ck" resealed.safetensors --params > /dev/null || fail "reseal changed tensors"
info=$("$CCOE" info resealed.safetensors) || fail "info of the resealed file"
grep -q "checksum .*whole file" <<<"$info" || fail "info does not show the checksum: $info"
expect_fail 1 "nonexistent" -- "$CCOE" eval nonexistent.safetensors
[[ "$(sha256sum "$ck" run/metrics.jsonl)" == "$sum_before" ]] || fail "a failed command changed the run"
pass "checkpoint errors"

# the gate names come from the registry alone: help-config lists "none" and the gates the usage
# text lists (it once printed "one of none" when help-config ran before any other table use)
gates=$("$CCOE" help 2>&1 | sed -n 's/^GATE (moe.gate, --moe): //p')
[[ -n "$gates" ]] || fail "the usage text lists no gates"
hc=$("$CCOE" help-config) || fail "help-config failed"
grep -q "^  moe.gate .* one of none, $gates\$" <<<"$hc" \
  || fail "help-config does not list the gates ($gates): $(grep moe.gate <<<"$hc")"
pass "gate names listed from the registry"
