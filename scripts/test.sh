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

# Fuzz stage: each libFuzzer harness (tests/fuzz) runs 20 s over its seeds in build-fuzz/, a
# clang build with ASan and UBSan (about 3 minutes with the build). CCOE_TEST_FUZZ=0 skips it;
# without clang/libFuzzer it is skipped with a message.
if [[ ${CCOE_TEST_FUZZ:-1} == 0 ]]; then
  echo "test.sh: fuzz stage skipped (CCOE_TEST_FUZZ=0)" >&2
else
  rc=0
  "$here/scripts/fuzz.sh" --build || rc=$?
  if ((rc == 77)); then
    echo "test.sh: fuzz stage skipped: clang with libFuzzer is not installed" >&2
  elif ((rc != 0)); then
    exit "$rc"
  else
    (cd "${CCOE_FUZZ_BUILD:-$here/build-fuzz}" && ctest -L fuzz -j 2 --output-on-failure)
  fi
fi
