#!/usr/bin/env bash
# Writes the generated seed corpora of the fuzz harnesses: OUT/<harness>/ for fuzz_safetensors
# (a checkpoint of a very small model, small hand-made files), fuzz_config (configs/*.ini),
# fuzz_study (configs/study-*.ini without comments) and fuzz_data (the builtin data set, cut
# short, in the harness's one-text format). The committed tests/fuzz/corpus/ holds the rest.
# Usage: make_seeds.sh CCOE_BIN SOURCE_DIR OUT
set -euo pipefail
ccoe=$1 src=$2 out=$3
rm -rf "$out"
mkdir -p "$out"/{fuzz_safetensors,fuzz_config,fuzz_study,fuzz_data}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# fuzz_safetensors: a real checkpoint (one step of a 1-layer, 8-wide model: ~40 KB) ...
"$ccoe" train "$src/configs/tiny-test.ini" --set model.n_layer=1 --set model.n_embd=8 \
  --set model.n_head=1 --set model.seq_len=8 --set train.steps=1 --set train.eval_batches=1 \
  --set data.task_examples=1 --set run.threads=1 --set train.out_dir="$work/run" --quiet \
  >"$work/train.log" 2>&1 || { cat "$work/train.log" >&2; exit 1; }
cp "$work/run/checkpoint.safetensors" "$out/fuzz_safetensors/checkpoint.safetensors"
# ... and small files without the whole-file checksum (read with CCOE_ST_ALLOW_UNCHECKED)
st_file() { # st_file OUT JSON DATA_BYTES: the 8-byte length, the header, the data
  local n=${#2}
  printf "$(printf '\\x%02x\\x%02x\\x%02x\\x%02x\\x00\\x00\\x00\\x00' \
    $((n & 255)) $((n >> 8 & 255)) $((n >> 16 & 255)) $((n >> 24 & 255)))" >"$1"
  printf '%s' "$2" >>"$1"
  head -c "$3" /dev/zero >>"$1"
}
st_file "$out/fuzz_safetensors/one.st" \
  '{"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}}' 24
st_file "$out/fuzz_safetensors/two_meta.st" \
  '{"__metadata__":{"k":"v"},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[],"data_offsets":[4,8]}}' 8
st_file "$out/fuzz_safetensors/empty.st" '{}' 0

# fuzz_config: the shipped configs
for f in "$src"/configs/*.ini; do
  [[ $(basename "$f") == study-* ]] || cp "$f" "$out/fuzz_config/"
done

# fuzz_study: the shipped study files, comments dropped (the harness provides default.ini)
for f in "$src"/configs/study-*.ini; do
  grep -v -E '^[[:space:]]*([#;]|$)' "$f" >"$out/fuzz_study/$(basename "$f")"
done

# fuzz_data: the builtin data set in the harness's format (manifest, then "--- NAME" parts),
# each file cut to a few lines; one seed with every domain and one per domain
"$ccoe" data write-builtin "$work/data" >/dev/null
cut_part() { # cut_part FILE: a data file cut short ("doc" dropped: those documents are gone)
  echo "--- $(basename "$1")"
  case $1 in
    *.sql) awk '/^CREATE/ || (/^INSERT INTO/ && ++n[$3] <= 3)' "$1" ;;
    *.jsonl) head -n 12 "$1" | sed -E 's/,"doc":[0-9]+//' ;;
    *) head -n 12 "$1" | head -c 1500 ;;
  esac
  echo
}
manifest=$work/data/manifest.ini
{
  cat "$manifest"
  for f in "$work"/data/*; do
    [[ $f == "$manifest" ]] || cut_part "$f"
  done
} >"$out/fuzz_data/all.txt"
awk -v dir="$out/fuzz_data" '
  /^\[domain / { n++; name = $2; sub(/\]$/, "", name) }
  n > 0 { print > (dir "/domain-" n ".manifest") }' "$manifest"
for m in "$out"/fuzz_data/domain-*.manifest; do
  {
    cat "$m"
    for f in $(awk -F= '/^(text|jsonl|tasks|sqlite_script|sqlite)[[:space:]]*=/ {
                 gsub(/[[:space:]]|;.*/, "", $2); print $2 }' "$m"); do
      [[ -f $work/data/$f ]] && cut_part "$work/data/$f"
    done
  } >"${m%.manifest}.txt"
  rm "$m"
done
echo "make_seeds: $(find "$out" -type f | wc -l) seeds in $out" >&2
