#!/usr/bin/env bash
# The main job: installs what is missing, builds, trains the default model on the embedded
# multi-domain data and prints the per-domain table. Extra arguments go to `ccoe train`
# (e.g. --set train.steps=100).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
"$here/scripts/setup.sh" "$here/build"
cd "$here"
exec ./build/ccoe train configs/default.ini --force "$@"
