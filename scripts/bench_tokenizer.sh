#!/usr/bin/env bash
# Tokenizer throughput: times `ccoe tokenizer encode` (and decode of its output) over a text and
# prints MB/s of text; with -t V, also `ccoe tokenizer train --vocab V` on the same text. Usage:
#   scripts/bench_tokenizer.sh [-b CCOE_BIN] [-n REPEATS] [-t VOCAB] TOKENIZER [FILE...]
# TOKENIZER is byte or a tokenizer directory (scripts/fetch_gpt2_tokenizer.sh prints GPT-2's), or
# "trained" with -t: the tokenizer just trained (encode then measures the trained vocabulary).
# Without FILEs the text is /usr/share/common-licenses/* and the Python standard library's .py
# files, about 8 MB. The best of REPEATS (default 3) runs is reported; the times include reading
# the input and printing the ids, as a user of the command sees them.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin=$here/build/ccoe
reps=3
train_vocab=
while getopts "b:n:t:" o; do
  case $o in
    b) bin=$OPTARG ;;
    n) reps=$OPTARG ;;
    t) train_vocab=$OPTARG ;;
    *) sed -n '2,9p' "$0" >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
(($# >= 1)) || { sed -n '2,9p' "$0" >&2; exit 2; }
tok=$1
shift
work=$(mktemp -d "${TMPDIR:-/tmp}/ccoe-bench-tok.XXXXXX")
trap 'rm -rf "$work"' EXIT
if (($#)); then
  cat "$@" >"$work/text"
else
  { cat /usr/share/common-licenses/* 2>/dev/null || true
    find /usr/lib/python3* -name '*.py' -size -200k 2>/dev/null | sort | xargs cat 2>/dev/null || true # (head ends the pipe early)
  } | head -c 8000000 >"$work/text"
fi
[[ -z $(tail -c 1 "$work/text") ]] || echo >>"$work/text" # lines end in a newline: decode restores them
bytes=$(wc -c <"$work/text")
((bytes > 0)) || { echo "bench_tokenizer: no text to encode" >&2; exit 1; }
best() { # best wall time of $reps runs of "$@" (seconds)
  local b=
  for ((i = 0; i < reps; i++)); do
    local t0 t1
    t0=$(date +%s.%N)
    "$@"
    t1=$(date +%s.%N)
    b=$(awk -v a="$t0" -v z="$t1" -v b="$b" 'BEGIN { d = z - a; print (b == "" || d < b) ? d : b }')
  done
  echo "$b"
}
if [[ -n $train_vocab ]]; then
  # shellcheck disable=SC2016
  tt=$(best sh -c '"$0" tokenizer train --vocab "$1" -o "$2" "$3" >"$2.log"' "$bin" "$train_vocab" "$work/trained" "$work/text")
  awk -v b="$bytes" -v t="$tt" -v v="$train_vocab" 'BEGIN {
    printf "train --vocab %d: %.3f s, %.1f MB/s of text\n", v, t, b / 1e6 / t }'
  sed 's/^/  /' "$work/trained.log"
fi
label=$tok
[[ $tok != trained || -z $train_vocab ]] || tok=$work/trained
"$bin" tokenizer encode "$tok" "$work/text" >"$work/ids"
ids=$(wc -w <"$work/ids")
# shellcheck disable=SC2016 # $0..$2 are the inner shell's
te=$(best sh -c '"$0" tokenizer encode "$1" "$2" >/dev/null' "$bin" "$tok" "$work/text")
# shellcheck disable=SC2016
td=$(best sh -c '"$0" tokenizer decode "$1" "$2" >/dev/null' "$bin" "$tok" "$work/ids")
"$bin" tokenizer decode "$tok" "$work/ids" | cmp -s - "$work/text" || echo "warning: decode(encode(text)) != text" >&2
cpu=$(grep -m1 "model name" /proc/cpuinfo | sed 's/.*: //')
awk -v b="$bytes" -v n="$ids" -v te="$te" -v td="$td" -v cpu="$cpu" -v tok="$label" 'BEGIN {
  printf "tokenizer %s: %.2f MB of text, %d ids (%.2f bytes/id) on %s\n", tok, b / 1e6, n, b / n, cpu
  printf "encode: %.3f s, %.1f MB/s, %.2f M ids/s\n", te, b / 1e6 / te, n / 1e6 / te
  printf "decode: %.3f s, %.1f MB/s\n", td, b / 1e6 / td
}'
