# `ccoe bench`: one table row per shape with positive tokens/s and utilisation and the kernel
# set; --profile adds the per-shape GEMM table whose rows name real call shapes of the model;
# CCOE_BLIS_SUP shows in the kernel set; an unknown shape, backend or CCOE_BLIS_SUP value is
# an error naming it, reported before any table is printed. Speeds are printed, never asserted.
source "$(dirname "$0")/lib/common.sh"
cd "$WORK"
out=$("$CCOE" bench --shape small --steps 2 --profile 2>&1) || fail "bench: $out"
row=$(grep -E '^\| small +\|' <<<"$out") || fail "no small row: $out"
IFS='|' read -r _ shape dims params toks gflops mfu_s mfu_p split gemm _ <<<"$row"
awk -v t="$toks" -v g="$gflops" 'BEGIN { exit !(t + 0 > 0 && g + 0 > 0) }' \
  || fail "tok/s or GFLOP/s not positive: $row"
[[ $mfu_s == *%* && $mfu_p == *%* ]] || fail "no utilisation columns: $row"
[[ $gemm == *blis:* ]] || fail "no kernel set in the row: $row"
# small: L4 C256 B8 T128 -> the QKV projection is a 1024 x 768 x 256 product, 4 per step
grep -qE '^  \| ABt \| 1024 \| 768 \| 256 \| 4\.0 \|' <<<"$out" \
  || fail "--profile has no row for the QKV projection (ABt 1024x768x256, 4 calls): $out"
grep -q 'GEMMs .*% of the step' <<<"$out" || fail "--profile has no summary line: $out"
pass "a row with tok/s, utilisation and kernel set; --profile names the model's GEMM shapes"

out=$(CCOE_BLIS_SUP=off "$CCOE" bench --shape small --steps 1 2>&1) || fail "sup off: $out"
grep -qE '^\| small .*,sup-off \|' <<<"$out" || fail "CCOE_BLIS_SUP=off not in the kernel set: $out"
pass "CCOE_BLIS_SUP=off is reported in the kernel set"

for bad in "--shape huge" "--gemm mkl"; do
  # shellcheck disable=SC2086
  out=$("$CCOE" bench $bad 2>&1) && fail "bench $bad succeeded: $out"
  grep -q "'${bad#* }'" <<<"$out" || fail "bench $bad: the message does not name it: $out"
  ! grep -q '^| shape' <<<"$out" || fail "bench $bad printed a table before failing: $out"
done
out=$(CCOE_BLIS_SUP=fast "$CCOE" bench --shape small --steps 1 2>&1) && fail "sup=fast ran: $out"
grep -q "CCOE_BLIS_SUP='fast'" <<<"$out" || fail "CCOE_BLIS_SUP=fast: not named: $out"
! grep -q '^| shape' <<<"$out" || fail "CCOE_BLIS_SUP=fast printed a table: $out"
pass "unknown shape, backend and CCOE_BLIS_SUP value: an error naming it, before any output"

# --precision both: an fp32 row, a bf16 row and their ratio per shape (on a CPU without
# AVX512-BF16: an error naming it, before any table); a bad value names itself
out=$("$CCOE" bench --shape small --steps 1 --precision both --profile 2>&1) || {
  grep -q "AVX512-BF16" <<<"$out" || fail "bench --precision both: $out"
  ! grep -q '^| shape' <<<"$out" || fail "bench without bf16 printed a table: $out"
  pass "bench --precision both without AVX512-BF16: an error before any output"
  out=""
}
if [[ -n $out ]]; then
  grep -qE '^\| small +\| .*\| xsmm:|^\| small +\| .*\| blis:' <<<"$out" || fail "no fp32 row: $out"
  grep -qE '^\| small +bf16 \| .*\| bf16:avx512bf16\+' <<<"$out" || fail "no bf16 row: $out"
  grep -qE '^\| small +bf16/fp32 \| \| \| [0-9.]+x \| [0-9.]+x \|' <<<"$out" || fail "no ratio row: $out"
  grep -qE 'bf16 dot-product peak [0-9]+ GFLOP/s' <<<"$out" || fail "no bf16 peak: $out"
  grep -qE '^  \| ABt bf16 \| 1024 \| 768 \| 256 \| 4\.0 \|' <<<"$out" \
    || fail "--profile has no bf16 row for the QKV projection: $out"
  pass "bench --precision both: fp32 and bf16 rows, their ratio, bf16 GEMMs in the profile"
fi
out=$("$CCOE" bench --precision fp16 2>&1) && fail "bench --precision fp16 succeeded: $out"
grep -q "fp16" <<<"$out" || fail "bench --precision fp16: not named: $out"
pass "bench --precision fp16: an error naming it"
