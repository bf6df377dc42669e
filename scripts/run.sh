#!/usr/bin/env bash
# The main job: installs what is missing, builds, runs the default variant-comparison study
# (dense, MoE Eq. 2/3, CCoE Eq. 4/5/6-7 on the embedded multi-domain data, same token budget),
# prints its table and draws its plots into runs/study-default/. Extra arguments go to
# `ccoe study` (e.g. --set study.budget=tokens:100000).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
"$here/scripts/setup.sh" "$here/build"
cd "$here"
./build/ccoe study configs/study-default.ini --force "$@"
bash scripts/plot_study.sh runs/study-default
