# `ccoe import` / `ccoe export` on the committed tiny GPT-2 (tests/fixtures/hf-gpt2-tiny, the
# original checkpoint naming with mask buffers): import prints the derived config, copies the
# tokenizer; the derived config trains further (--init-from); train-expert trains an expert on
# the imported base with the base frozen and pushes it; eval runs on both; export writes the
# base and the expert's path as Hugging Face directories; importing the exported base gives the
# same parameters bit for bit; the same for the committed tiny Qwen2 and LLaMA fixtures; bad
# input is refused with the file named and nothing written.
source "$(dirname "$0")/lib/common.sh"
cd "$WORK"
HF="$SRC/tests/fixtures/hf-gpt2-tiny"

out=$("$CCOE" import "$HF" -o base.safetensors) || fail "import: $out"
grep -q "^imported .* (GPT2LMHeadModel, 11088 parameters, 1 file, head tied to wte)" <<<"$out" || fail "import summary: $out"
grep -q "^  vocab_size = 265$" <<<"$out" || fail "derived vocab_size: $out"
grep -q "^  tokenizer = $(realpath "$WORK")/base.tokenizer$" <<<"$out" || fail "derived tokenizer: $out"
cmp -s "$HF/vocab.json" base.tokenizer/vocab.json || fail "vocab.json not copied"
cmp -s "$HF/merges.txt" base.tokenizer/merges.txt || fail "merges.txt not copied"
pass "import: derived config printed, tokenizer copied"

# the printed [model] section is a config: train the imported base a few steps further
{ sed -n 's/^  //p' <<<"$out" | sed -n '/^\[model\]/,/^\[data\]/p' | grep -v '^\[data\]'
  printf '[data]\ntokenizer = %s/base.tokenizer\n' "$WORK"
  printf '[train]\nsteps = 3\nbatch_size = 2\nwarmup = 0\neval_every = 0\nlog_every = 1\nout_dir = tr\n'
} >base.ini
"$CCOE" train base.ini --init-from base.safetensors --quiet >train.log 2>&1 || fail "train from the import: $(cat train.log)"
[[ -f tr/checkpoint.safetensors ]] || fail "no trained checkpoint"
"$CCOE" compare base.safetensors tr/checkpoint.safetensors --params >/dev/null && fail "training changed nothing"
pass "the imported base trains (--init-from)"

"$CCOE" train-expert base.safetensors --expert arith --domain arith --layers 1 --set train.steps=3 \
  --set train.batch_size=2 --set train.eval_every=0 -o ex --push with.safetensors --quiet >te.log 2>&1 \
  || fail "train-expert on the import: $(cat te.log)"
"$CCOE" compare base.safetensors with.safetensors --only-base >/dev/null || fail "the frozen base changed"
ev=$("$CCOE" eval with.safetensors --batches 1 --no-tasks) || fail "eval: $ev"
grep -qE "^arith +[0-9.]+ " <<<"$ev" || fail "eval rows: $ev"
"$CCOE" eval base.safetensors --batches 1 --no-tasks >/dev/null || fail "eval of the import"
pass "train-expert on the imported base (base bit-identical), eval"

out=$("$CCOE" export with.safetensors -o hf-base) || fail "export base: $out"
out=$("$CCOE" export with.safetensors --path arith -o hf-arith) || fail "export arith: $out"
for d in hf-base hf-arith; do
  for f in config.json model.safetensors vocab.json merges.txt; do
    [[ -f $d/$f ]] || fail "$d/$f missing"
  done
  grep -q '"GPT2LMHeadModel"' $d/config.json || fail "$d/config.json"
done
"$CCOE" import hf-base -o again.safetensors >/dev/null || fail "import of the export"
"$CCOE" compare base.safetensors again.safetensors --params >/dev/null || fail "import(export(base)) differs"
"$CCOE" import hf-arith -o arith-path.safetensors >/dev/null || fail "import of the expert path"
"$CCOE" compare base.safetensors arith-path.safetensors --params >/dev/null \
  && fail "the expert path exported as the base"
pass "export base and expert path; import(export(base)) bit-identical"

out=$("$CCOE" export with.safetensors --dtype bf16 -o hf-bf16) || fail "export --dtype bf16: $out"
grep -q "bf16 tensors" <<<"$out" || fail "export --dtype bf16 summary: $out"
grep -q '"torch_dtype":.*"bfloat16"' hf-bf16/config.json || fail "hf-bf16/config.json: $(cat hf-bf16/config.json)"
"$CCOE" import hf-bf16 -o bf16.safetensors >/dev/null || fail "import of the bf16 export"
"$CCOE" eval bf16.safetensors --batches 1 --no-tasks >/dev/null || fail "eval of the bf16 import"
expect_fail 2 "f32, bf16 or f16" -- "$CCOE" export with.safetensors --dtype f64 -o hf-f64
[[ ! -e hf-f64 ]] || fail "a refused export left output"
pass "export --dtype bf16 imports back"

# the LLaMA / Qwen2 layouts: the Qwen2 fixture (GQA, q/k/v biases, tied) through import,
# train-expert, eval, export of base and expert path, import of the export; LLaMA's round trip
Q="$SRC/tests/fixtures/hf-qwen2-tiny"
out=$("$CCOE" import "$Q" -o qbase.safetensors) || fail "import qwen2: $out"
grep -q "^imported .* (Qwen2ForCausalLM, 9504 parameters, 1 file, head tied to wte)" <<<"$out" || fail "qwen2 summary: $out"
for k in "pos = rope" "n_kv_head = 1" "qkv_bias = true" "rope_theta = 1000000" "norm_eps = 1e-06" "norm = rmsnorm" "ffn = swiglu"; do
  grep -q "^  $k$" <<<"$out" || fail "qwen2 derived config lacks '$k': $out"
done
"$CCOE" train-expert qbase.safetensors --expert arith --domain arith --layers 1 --set train.steps=3 \
  --set train.batch_size=2 --set train.eval_every=0 -o qex --push qwith.safetensors --quiet >qte.log 2>&1 \
  || fail "train-expert on the qwen2 import: $(cat qte.log)"
"$CCOE" compare qbase.safetensors qwith.safetensors --only-base >/dev/null || fail "the frozen qwen2 base changed"
"$CCOE" eval qwith.safetensors --batches 1 --no-tasks >/dev/null || fail "eval of the qwen2 base + expert"
"$CCOE" export qwith.safetensors -o hf-qbase >/dev/null || fail "export of the qwen2 base"
"$CCOE" export qwith.safetensors --path arith -o hf-qarith >/dev/null || fail "export of the qwen2 expert path"
grep -q '"Qwen2ForCausalLM"' hf-qbase/config.json || fail "hf-qbase/config.json: $(cat hf-qbase/config.json)"
"$CCOE" import hf-qarith -o qarith.safetensors >/dev/null || fail "import of the qwen2 expert path"
"$CCOE" compare qbase.safetensors qarith.safetensors --params >/dev/null \
  && fail "the qwen2 expert path exported as the base"
"$CCOE" import hf-qbase -o qagain.safetensors >/dev/null || fail "import of the qwen2 export"
"$CCOE" compare qbase.safetensors qagain.safetensors --params >/dev/null || fail "import(export(qwen2)) differs"
"$CCOE" import "$SRC/tests/fixtures/hf-llama-tiny" -o lbase.safetensors >/dev/null || fail "import llama"
"$CCOE" export lbase.safetensors -o hf-lbase >/dev/null || fail "export llama"
grep -q '"LlamaForCausalLM"' hf-lbase/config.json || fail "hf-lbase/config.json"
"$CCOE" import hf-lbase -o lagain.safetensors >/dev/null || fail "import of the llama export"
"$CCOE" compare lbase.safetensors lagain.safetensors --params >/dev/null || fail "import(export(llama)) differs"
pass "Qwen2 and LLaMA: import, train-expert, eval, export base and expert path, round trips"
mkdir mistral && cp "$SRC"/tests/fixtures/hf-llama-tiny/{model.safetensors,vocab.json,merges.txt} mistral/ \
  && sed -e 's/"llama"/"mistral"/; s/LlamaForCausalLM/MistralForCausalLM/; s/^{/{"sliding_window": 4,/' \
    "$SRC/tests/fixtures/hf-llama-tiny/config.json" >mistral/config.json
expect_fail 1 "sliding_window = 4 is smaller than the context" -- "$CCOE" import mistral -o x.safetensors
[[ ! -e x.safetensors && ! -e x.tokenizer ]] || fail "a refused mistral import left output"
pass "a Mistral sliding window shorter than the context is refused"

# bad input: nothing written
expect_fail 1 "nodir has no config.json" -- "$CCOE" import nodir -o x.safetensors
mkdir llama && echo '{"model_type": "llama", "architectures": ["LlamaForCausalLM"]}' >llama/config.json
expect_fail 1 'has no "num_hidden_layers": it is required' -- "$CCOE" import llama -o x.safetensors
mkdir trunc && cp "$HF"/*.json "$HF"/merges.txt trunc/ && head -c 30000 "$HF/model.safetensors" >trunc/model.safetensors
expect_fail 1 "trunc/model.safetensors.*(truncated|corrupt)" -- "$CCOE" import trunc -o x.safetensors
[[ ! -e x.safetensors && ! -e x.tokenizer ]] || fail "a refused import left output"
expect_fail 1 "exists: choose another -o or pass --force" -- "$CCOE" import "$HF" -o base.safetensors
expect_fail 1 "hf-base exists and is not empty" -- "$CCOE" export with.safetensors -o hf-base
expect_fail 2 "has no expert 'zz': --path takes base, all, arith" -- "$CCOE" export with.safetensors --path zz -o hf-zz
[[ ! -e hf-zz ]] || fail "a refused export left output"
expect_fail 2 "import needs HF_DIR" -- "$CCOE" import
pass "bad input refused, nothing written"
