#!/bin/bash
# submit_experts.sh - submit experts.sbatch as a job array (one task per expert) and the push
# job that depends on it. Prints the two job ids.
#
#   CCOE_EXPERTS="arith:2 code:1" scripts/slurm/submit_experts.sh CONFIG BASE_CKPT OUT_ROOT [ccoe train options...]
#
# CCOE_AFTER=JOBID   start the array only after that job succeeded (e.g. the base's train.sbatch)
# CCOE_SBATCH_ARGS   extra sbatch options for both jobs (e.g. "--time=02:00:00 -p long")
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
[[ $# -ge 3 ]] || { echo "usage: CCOE_EXPERTS=\"NAME:LAYERS ...\" $0 CONFIG BASE_CKPT OUT_ROOT [ccoe train options...]" >&2; exit 2; }
read -ra experts <<<"${CCOE_EXPERTS:-}"
((${#experts[@]} > 0)) || { echo "$0: set CCOE_EXPERTS, e.g. CCOE_EXPERTS=\"arith:2 code:1\"" >&2; exit 2; }
export CCOE_EXPERTS CCOE_ROOT=${CCOE_ROOT:-$(cd "$here/../.." && pwd)}
read -ra extra <<<"${CCOE_SBATCH_ARGS:-}"
dep=()
[[ -n ${CCOE_AFTER:-} ]] && dep=(--dependency="afterok:$CCOE_AFTER")
array=$(sbatch --parsable "${extra[@]}" "${dep[@]}" --array="0-$((${#experts[@]} - 1))" \
  "$here/experts.sbatch" "$@")
array=${array%%;*}
push=$(sbatch --parsable "${extra[@]}" --dependency="afterok:$array" --kill-on-invalid-dep=yes \
  --job-name=ccoe-push --output="ccoe-push-%j.log" "$here/experts.sbatch" --push "$1" "$2" "$3")
push=${push%%;*}
echo "experts array job $array (${#experts[@]} tasks), push job $push"
