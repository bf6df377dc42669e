#!/usr/bin/env bash
# Draws the PNG plots of a finished `ccoe study` with gnuplot (Debian package gnuplot-nox):
#   OUT_DIR/loss.png     training loss (smoothed) and mean validation loss per variant
#   OUT_DIR/domains.png  held-out loss per domain, and its difference to the first variant
#   OUT_DIR/load.png     expert load per domain of every MoE variant (if any)
#   OUT_DIR/sweep.png    the expert-size sweep: loss vs parameters, performance gains (if any)
# from the data ccoe study wrote to OUT_DIR/plot/. Usage: scripts/plot_study.sh OUT_DIR
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
[[ $# -eq 1 ]] || { echo "usage: $0 OUT_DIR (the out_dir of a finished ccoe study)" >&2; exit 2; }
dir=${1%/}
[[ -f $dir/plot/meta.gp ]] || { echo "plot_study: $dir/plot/meta.gp not found: run ccoe study first" >&2; exit 2; }
command -v gnuplot >/dev/null || { echo "plot_study: gnuplot not found: apt-get install gnuplot-nox (scripts/setup.sh)" >&2; exit 1; }
plots=(loss domains)
grep -q '^nmoe = 0$' "$dir/plot/meta.gp" || plots+=(load)
grep -q '^nsweep = 0$' "$dir/plot/meta.gp" || plots+=(sweep)
for p in "${plots[@]}"; do
  gnuplot -e "dir='$dir'; here='$here'" "$here/study_$p.gp"
  echo "$dir/$p.png"
done
