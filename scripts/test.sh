#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole test suite (CMocka units, command-line
# tests and the MPI tests under mpirun) with CTest.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
"$here/scripts/setup.sh" "$here/build"
# Open MPI refuses root unless told; CI and containers run as root.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
cd "$here/build"
ctest --output-on-failure --timeout 900 "$@"
