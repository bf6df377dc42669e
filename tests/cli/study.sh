# `ccoe study`: a tiny study (dense, noisy top-k MoE, CCoE Eq. 4 with one expert per domain) on
# the tiny test model writes the Markdown table and the CSV with the documented columns and
# finite numbers; every variant gets the same token budget (or, with budget = flops:N, the same
# FLOPs up to one step); a second run reuses the finished runs; scripts/plot_study.sh draws the
# PNGs (when gnuplot is installed); every shipped configs/study-*.ini runs at one step per
# variant; bad study files exit 2 naming the problem.
source "$(dirname "$0")/lib/common.sh"
cd "$WORK"
cat > tiny-study.ini <<INI
[study]
name = tiny
base = $TINY
budget = tokens:3840
out_dir = out
variants = dense moe ccoe
[train]
eval_every = 15
eval_batches = 2
[data]
task_examples = 5
[variant.dense]
[variant.moe]
moe.gate = noisy_topk
moe.n_experts = 4
moe.top_k = 2
moe.noise_eps = 0.01
[variant.ccoe]
ccoe.form = tail
experts_per_domain = 1
INI
out=$("$CCOE" study tiny-study.ini 2>err.txt) || fail "study failed: $(cat err.txt)"
grep -q "^| variant | what | total params | active params/token | train FLOPs" <<<"$out" \
  || fail "no Markdown table on stdout: $out"
[[ -s out/study.md && -s out/study.csv ]] || fail "study.md / study.csv missing"
head -n 1 out/study.csv > header.txt
for c in variant steps tokens train_flops total_params active_params tok_per_s comm_share \
         mean_val_loss loss_arith ppl_sql acc_arith load_cv drop_rate domain_expert_mi_bits; do
  tr ',' '\n' < header.txt | grep -qx "$c" || fail "study.csv lacks column $c: $(cat header.txt)"
done
[[ $(tail -n +2 out/study.csv | wc -l) -eq 3 ]] || fail "expected 3 variant rows: $(cat out/study.csv)"
col() { awk -F, -v name="$1" 'NR == 1 {for (i = 1; i <= NF; i++) if ($i == name) c = i; next} {print $c}' "$2"; }
grep -qiE "nan|inf" <(tail -n +2 out/study.csv) && fail "non-finite numbers: $(cat out/study.csv)"
[[ $(col tokens out/study.csv | sort -u) == 3840 ]] || fail "token budgets differ: $(col tokens out/study.csv)"
[[ $(col status out/study.csv | sort -u) == ok ]] || fail "a variant did not finish"
# the CCoE model has more parameters than the dense one but the same active parameters/token
paste -d' ' <(col total_params out/study.csv) <(col active_params out/study.csv) > p.txt
awk 'NR == 1 {dt = $1; da = $2} NR == 3 {exit !($1 > dt && $2 == da)}' p.txt \
  || fail "CCoE params (total > dense, active = dense) wrong: $(cat p.txt)"
col load_cv out/study.csv | sed -n 2p | grep -qE '^[0-9.]+$' || fail "no load statistics for the MoE"
for v in dense moe ccoe; do [[ -s out/$v/checkpoint.safetensors ]] || fail "no checkpoint of $v"; done
pass "tiny study: table, CSV columns, finite numbers, equal token budgets"

"$CCOE" study tiny-study.ini > /dev/null 2>err.txt || fail "second run: $(cat err.txt)"
[[ $(grep -c "reusing the finished run" err.txt) -eq 3 ]] || fail "finished runs not reused: $(cat err.txt)"
pass "a second run reuses the finished runs"

budget=2e9
"$CCOE" study tiny-study.ini --set study.budget=flops:$budget --set study.out_dir=flops \
  --set study.variants="dense moe" > /dev/null 2>err.txt || fail "FLOPs study: $(cat err.txt)"
paste -d' ' <(col train_flops flops/study.csv) <(col steps flops/study.csv) > f.txt
awk -v b=$budget '{ if (!($1 <= b && $1 + $1 / $2 > b)) bad = 1 } END {exit bad}' f.txt \
  || fail "FLOPs budget not met to within one step: $(cat f.txt)"
[[ $(col steps flops/study.csv | sort -u | wc -l) -eq 2 ]] || fail "MoE should get fewer steps: $(cat f.txt)"
pass "FLOPs budget: every variant within one step of $budget"

if command -v gnuplot > /dev/null; then
  bash "$SRC/scripts/plot_study.sh" out > /dev/null 2>&1 || fail "plot_study.sh failed"
  for p in loss domains load; do [[ -s out/$p.png ]] || fail "no $p.png"; done
  pass "plots drawn"
else
  echo "skip: gnuplot not installed (scripts/setup.sh installs gnuplot-nox)"
fi

# every shipped study file (configs/study-*.ini) is valid and runs: one step per variant, no
# task decoding, one evaluation batch
for f in "$SRC"/configs/study-*.ini; do
  n=$(basename "$f" .ini)
  "$CCOE" study "$f" --set study.budget=tokens:1024 --set study.out_dir="shipped-$n" \
    --set train.eval_every=0 --set train.eval_batches=1 --set data.task_examples=0 \
    > "shipped-$n.txt" 2>&1 || fail "$n: $(tail -5 "shipped-$n.txt")"
  rows=$(tail -n +2 "shipped-$n/study.csv" | wc -l)
  want=$(grep -c '^\[variant\.' "$f")
  [[ $rows -ge $want ]] || fail "$n: $rows rows in study.csv for $want variants"
done
pass "every shipped study file runs (one step per variant)"

bad() { # bad NAME PATTERN: study file bad-NAME.ini must exit 2 with PATTERN
  expect_fail 2 "$2" -- "$CCOE" study "bad-$1.ini"
}
printf '[study]\nbudget = tokens:100\nvariants = a\n' > bad-nosection.ini
bad nosection "variant 'a' has no \[variant.a\] section"
printf '[study]\nbudget = tokens\nvariants = a\n[variant.a]\n' > bad-budget.ini
bad budget "budget = 'tokens'"
printf '[study]\nbudget = tokens:100\nvariants = a\nfoo = 1\n[variant.a]\n' > bad-key.ini
bad key "unknown key study.foo"
printf '[study]\nbase = %s\nbudget = tokens:1000\nvariants = a\n[variant.a]\nmoe.n_expert = 4\n' "$TINY" > bad-cfg.ini
bad cfg "line 6.*moe.n_expert"
printf '[study]\nbudget = tokens:100\nvariants = a\n[variant.a]\n[extra]\nx = 1\n' > bad-section.ini
bad section "unknown section \[extra\]"
printf '[study]\nbudget = tokens:100\nvariants = a\n[variant.a]\n[variant.b]\n' > bad-unlisted.ini
bad unlisted "\[variant.b\] is not listed"
printf '[study]\nbase = %s\nbudget = tokens:10\nvariants = a\n[variant.a]\n' "$TINY" > bad-small.ini
bad small "less than one step"
# study files follow the config reader's rules: no silently split long line, no repeated key,
# the right line in messages, a name that stays inside runs/
long=$(printf 'x%.0s' $(seq 1 260))
printf '[study]\ndescription = %s\nout_dir = elsewhere\nbudget = tokens:100\nvariants = a\n[variant.a]\n' "$long" > bad-long.ini
bad long "line too long.*line 2"
[[ ! -e elsewhere ]] || fail "a long line moved the study's out_dir"
printf '[study]\nbudget = tokens:100\nbudget = tokens:200\nvariants = a\n[variant.a]\n' > bad-twice.ini
bad twice "study.budget is set twice \(lines 2 and 3\)"
printf '[study]\nbudget = tokens:100\nvariants = a\n[variant.a]\nmoe.gate = topk\nmoe.gate = softmax\n' > bad-twice2.ini
bad twice2 "variant.a.moe.gate is set twice \(lines 5 and 6\)"
printf '[study]\n  description = one\n\n; comment\nbogus = 1\n' > bad-line.ini
bad line "line 5: unknown key study.bogus"
printf '[study]\nname = ../../escaped\nbudget = tokens:100\nvariants = a\n[variant.a]\n' > bad-name.ini
bad name "study.name = '../../escaped'"
printf '[study]\nbudget = tokens:100\nvariants = a\n[variant.a]\n' > named.ini
expect_fail 2 "study.name = '../x'" -- "$CCOE" study named.ini --set study.name=../x
[[ ! -e ../../escaped && ! -e runs ]] || fail "a bad study name created a folder"
expect_fail 2 "cannot open study file" -- "$CCOE" study missing.ini
expect_fail 2 "study needs a STUDY_FILE" -- "$CCOE" study
pass "bad study files exit 2 naming the problem"
