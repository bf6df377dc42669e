# Shared helpers of the command-line tests: each test script is `bash X.sh CCOE_BIN SOURCE_DIR`.
set -euo pipefail
CCOE=$1
SRC=$2
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ccoe-test.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
export OMP_NUM_THREADS=2
TINY="$SRC/configs/tiny-test.ini"

fail() { echo "FAIL: $*" >&2; exit 1; }
pass() { echo "ok: $*"; }

# expect_fail CODE PATTERN -- command...: the command must exit with CODE and print PATTERN.
expect_fail() {
  local code=$1 pattern=$2; shift 3
  local out rc=0
  out=$("$@" 2>&1) || rc=$?
  [[ $rc -eq $code ]] || fail "expected exit $code, got $rc from: $* -- output: $out"
  grep -qE -- "$pattern" <<<"$out" || fail "expected /$pattern/ in output of: $* -- got: $out"
}
