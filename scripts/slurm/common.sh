# common.sh - shared by the batch files in scripts/slurm/ (sourced, not run).
#
# Resumable training across job limits: a job trains until its time is nearly up (ccoe
# --time-limit from the job's remaining time, or the USR1 that `#SBATCH --signal=B:USR1@120`
# sends), ccoe checkpoints, and the job requeues itself (`scontrol requeue`) until the
# checkpoint's step reaches train.steps. A requeued job starts the batch script from the top
# and continues with --resume.
#
# Environment (all optional):
#   CCOE_BIN            the ccoe binary (default: CCOE_ROOT/build/ccoe, else ccoe on PATH)
#   CCOE_RANKS          processes per training run (default SLURM_NTASKS, else 1)
#   CCOE_LAUNCHER       srun (default) | mpirun | none
#   CCOE_SRUN_MPI       srun --mpi= plugin when CCOE_RANKS > 1 (default pmix)
#   CCOE_TIME_MARGIN    seconds kept free at the end of a job for the checkpoint, the final
#                       evaluation and the requeue (default 180)
#   CCOE_STEPS_PER_JOB  train at most this many steps per job (--stop-at), then requeue
#   CCOE_REQUEUE        requeue (default) | resubmit (sbatch --dependency=afterany) | no
#   CCOE_MAX_RESTARTS   give up after this many requeues (default 100)

ccoe_log() { echo "ccoe-slurm[${CCOE_JOB:-${SLURM_JOB_ID:-local}}]: $*"; }
ccoe_die() { echo "ccoe-slurm[${CCOE_JOB:-${SLURM_JOB_ID:-local}}]: error: $*" >&2; exit 1; }

if [[ -z ${CCOE_BIN:-} ]]; then
  if [[ -x $CCOE_ROOT/build/ccoe ]]; then CCOE_BIN=$CCOE_ROOT/build/ccoe
  else CCOE_BIN=$(command -v ccoe || true); fi
fi
[[ -n $CCOE_BIN && -x $CCOE_BIN ]] ||
  ccoe_die "no ccoe binary: build it (cmake --build build) or set CCOE_BIN"
CCOE_RANKS=${CCOE_RANKS:-${SLURM_NTASKS:-1}}
CCOE_LAUNCHER=${CCOE_LAUNCHER:-srun}
CCOE_TIME_MARGIN=${CCOE_TIME_MARGIN:-180}
CCOE_REQUEUE=${CCOE_REQUEUE:-requeue}
CCOE_MAX_RESTARTS=${CCOE_MAX_RESTARTS:-100}
CCOE_RESTARTS=${CCOE_RESTARTS:-${SLURM_RESTART_COUNT:-0}}
CCOE_TRAIN_ARGS=(); CCOE_FIRST_ARGS=()

# This job for squeue/scontrol: an array task's SLURM_JOB_ID may equal SLURM_ARRAY_JOB_ID, which
# names the whole array there, so address array tasks as ARRAYID_TASKID.
if [[ -n ${SLURM_ARRAY_JOB_ID:-} && -n ${SLURM_ARRAY_TASK_ID:-} ]]; then
  CCOE_JOB=${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}
else
  CCOE_JOB=${SLURM_JOB_ID:-}
fi

# Seconds left in this job (squeue %L: [D-][HH:]MM:SS); fails if unlimited or unknown.
ccoe_time_left() {
  [[ -n ${SLURM_JOB_ID:-} ]] || return 1
  local l d=0 h=0 m=0 s=0 rest
  l=$(squeue -h -j "$CCOE_JOB" -o %L 2>/dev/null | sed -n 1p) || return 1
  [[ $l =~ ^([0-9]+-)?[0-9:]+$ ]] || return 1     # UNLIMITED, NOT_SET, INVALID, empty
  rest=$l
  [[ $rest == *-* ]] && { d=${rest%%-*}; rest=${rest#*-}; }
  local -a p
  IFS=: read -ra p <<<"$rest"
  case ${#p[@]} in
    3) h=${p[0]} m=${p[1]} s=${p[2]} ;;
    2) m=${p[0]} s=${p[1]} ;;
    1) s=${p[0]} ;;
  esac
  echo $(( ((10#$d * 24 + 10#$h) * 60 + 10#$m) * 60 + 10#$s ))
}

# "STEP STEPS" of a checkpoint: the step it holds and the train.steps of its run.
ccoe_progress() {
  "$CCOE_BIN" info "$1" 2>/dev/null | awk '
    /^  step / { s = $2 }
    /^\[/ { sec = $1 }
    sec == "[train]" && $1 == "steps" { n = $3 }
    END { if (s == "" || n == "") exit 1; print s, n }'
}

# The launch prefix for CCOE_RANKS processes.
ccoe_launch_prefix() {
  CCOE_LAUNCH=()
  case $CCOE_LAUNCHER in
    srun)
      CCOE_LAUNCH=(srun --ntasks="$CCOE_RANKS" --nodes="${SLURM_JOB_NUM_NODES:-1}")
      # Slurm 22.05 srun does not inherit --cpus-per-task from the batch job
      [[ -n ${SLURM_CPUS_PER_TASK:-} ]] && CCOE_LAUNCH+=(--cpus-per-task="$SLURM_CPUS_PER_TASK")
      ((CCOE_RANKS > 1)) && CCOE_LAUNCH+=(--mpi="${CCOE_SRUN_MPI:-pmix}")
      ;;
    mpirun)
      # Open MPI reads the allocation from Slurm; ranks run several threads each
      CCOE_LAUNCH=(mpirun -np "$CCOE_RANKS" --bind-to none)
      [[ $(id -u) -eq 0 ]] && CCOE_LAUNCH+=(--allow-run-as-root)
      ;;
    none) ((CCOE_RANKS == 1)) || ccoe_die "CCOE_LAUNCHER=none runs one process, CCOE_RANKS=$CCOE_RANKS" ;;
    *) ccoe_die "CCOE_LAUNCHER must be srun, mpirun or none, not '$CCOE_LAUNCHER'" ;;
  esac
}

# Runs ccoe ARGS... under the launcher. USR1 (time nearly up) and TERM (cancel, preemption)
# reach ccoe as SIGTERM, on which it checkpoints and exits; CCOE_SIGNAL names the signal.
CCOE_SIGNAL=
CCOE_CHILD=
ccoe_on_signal() {
  CCOE_SIGNAL=$1
  if [[ -z $CCOE_CHILD ]]; then
    ccoe_log "got SIG$1 between runs"
    [[ $1 == TERM ]] && exit 143
    return 0
  fi
  ccoe_log "got SIG$1: asking ccoe to checkpoint and stop"
  # srun kills its step outright on SIGTERM ("forcing job termination"): signal the tasks of
  # the job's steps instead (scancel without --batch/--full spares the batch shell)
  if [[ $CCOE_LAUNCHER == srun && -n $CCOE_JOB ]] && scancel --signal=TERM "$CCOE_JOB" 2>/dev/null; then
    return 0
  fi
  kill -TERM "$CCOE_CHILD" 2>/dev/null
}
trap 'ccoe_on_signal USR1' USR1
trap 'ccoe_on_signal TERM' TERM
ccoe_run() {
  local rc
  ccoe_launch_prefix
  ccoe_log "run: ${CCOE_LAUNCH[*]} $CCOE_BIN $*"
  "${CCOE_LAUNCH[@]}" "$CCOE_BIN" "$@" &
  CCOE_CHILD=$!
  # wait returns early when a trapped signal arrives: wait again until the child is gone
  while :; do
    wait "$CCOE_CHILD"; rc=$?
    kill -0 "$CCOE_CHILD" 2>/dev/null || break
  done
  wait "$CCOE_CHILD" 2>/dev/null && rc=0 || rc=$?
  CCOE_CHILD=
  return "$rc"
}

# ccoe_train_resumable CONFIG OUT_DIR: one job's share of a training run. Uses the arrays
# CCOE_TRAIN_ARGS (every run) and CCOE_FIRST_ARGS (only when there is no checkpoint yet,
# e.g. --init-from). Returns 0 when the run is complete, 99 when it needs another job,
# 143 when cancelled (SIGTERM), anything else on an error.
ccoe_train_resumable() {
  local cfg=$1 out=$2 ckpt=$2/checkpoint.safetensors before=0 after total rc left tl
  local -a a=(train "$cfg" --set "train.out_dir=$out" "${CCOE_TRAIN_ARGS[@]}" --no-progress)
  [[ $CCOE_SIGNAL == USR1 ]] && { ccoe_log "time is up before $out: next job"; return 99; }
  if [[ -f $ckpt ]]; then
    read -r before total < <(ccoe_progress "$ckpt") ||
      { ccoe_log "error: cannot read $ckpt (ccoe info)"; return 1; }
    ccoe_log "resuming $ckpt at step $before of $total (restart $CCOE_RESTARTS)"
    a+=(--resume "$ckpt")
  else
    ccoe_log "starting $out (no checkpoint yet)"
    a+=("${CCOE_FIRST_ARGS[@]}")
  fi
  if left=$(ccoe_time_left); then
    tl=$((left - CCOE_TIME_MARGIN))
    ((tl < left / 2)) && tl=$((left / 2))
    ((tl < 1)) && tl=1
    ccoe_log "job time left ${left} s: --time-limit $tl"
    a+=(--time-limit "$tl")
  fi
  [[ -n ${CCOE_STEPS_PER_JOB:-} ]] && a+=(--stop-at "$((before + CCOE_STEPS_PER_JOB))")
  ccoe_run "${a[@]}"; rc=$?
  if [[ ! -f $ckpt ]]; then
    ccoe_log "ccoe exited with $rc and wrote no checkpoint"
    [[ $CCOE_SIGNAL == TERM ]] && return 143
    [[ $CCOE_SIGNAL == USR1 ]] && return 99   # stopped before its first step: next job
    return $((rc ? rc : 1))
  fi
  read -r after total < <(ccoe_progress "$ckpt") ||
    { ccoe_log "error: cannot read $ckpt (ccoe info)"; return 1; }
  ccoe_log "ccoe exited with $rc at step $after of $total"
  if ((after >= total && rc == 0)); then
    ccoe_log "training complete: $ckpt"
    return 0
  fi
  [[ $CCOE_SIGNAL == TERM ]] && { ccoe_log "cancelled: not requeueing"; return 143; }
  # exit 2 after our SIGTERM is ccoe's "stopped by signal, checkpoint saved"
  if ((rc != 0)) && [[ -z $CCOE_SIGNAL ]]; then
    ccoe_log "error: ccoe failed (exit $rc)"
    return "$rc"
  fi
  ((after > before)) || { ccoe_log "error: no progress in this job (step $after)"; return 1; }
  return 99
}

# Puts this job back in the queue (it restarts from the top of the batch script). With
# CCOE_REQUEUE=resubmit, submits a copy of this batch script that starts after this job
# (only #SBATCH lines, the time limit, tasks/CPUs and the environment carry over).
ccoe_requeue() {
  ((CCOE_RESTARTS < CCOE_MAX_RESTARTS)) ||
    ccoe_die "already restarted $CCOE_RESTARTS times (CCOE_MAX_RESTARTS): giving up"
  case $CCOE_REQUEUE in
    requeue)
      ccoe_log "requeueing job $CCOE_JOB (restart $((CCOE_RESTARTS + 1)))"
      # Slurm signals the job while scontrol waits for its answer; scontrol then retries and
      # may report "Job is pending execution" although the requeue took place: check the state
      trap 'CCOE_SIGNAL=TERM' TERM
      if scontrol requeue "$CCOE_JOB" ||
         [[ $(squeue -h -j "$CCOE_JOB" -o %T 2>/dev/null) =~ ^(PENDING|REQUEUED|REQUEUE_FED|REQUEUE_HOLD|COMPLETING)$ ]]; then
        sleep 120 & wait $!   # Slurm ends this job now; the requeued one starts over
        exit 0
      fi
      trap 'ccoe_on_signal TERM' TERM
      ccoe_log "scontrol requeue failed: resubmitting instead"
      ;;
    resubmit) ;;
    no) ccoe_die "CCOE_REQUEUE=no: stopping here; submit again to continue" ;;
    *) ccoe_die "CCOE_REQUEUE must be requeue, resubmit or no, not '$CCOE_REQUEUE'" ;;
  esac
  [[ -n ${SLURM_ARRAY_JOB_ID:-} ]] &&
    ccoe_die "an array task cannot resubmit itself without breaking dependencies: use CCOE_REQUEUE=requeue"
  local -a o=(--parsable --dependency="afterany:$SLURM_JOB_ID"
              --export="ALL,CCOE_RESTARTS=$((CCOE_RESTARTS + 1))" --job-name="$SLURM_JOB_NAME"
              --ntasks="${SLURM_NTASKS:-1}")
  local lim out
  lim=$(squeue -h -j "$CCOE_JOB" -o %l 2>/dev/null)
  [[ $lim =~ ^([0-9]+-)?[0-9:]+$ ]] && o+=(--time="$lim")
  [[ -n ${SLURM_CPUS_PER_TASK:-} ]] && o+=(--cpus-per-task="$SLURM_CPUS_PER_TASK")
  out=$(scontrol show job "$SLURM_JOB_ID" | sed -n 's/^ *StdOut=//p')
  [[ -n $out ]] && o+=(--output="$out" --open-mode=append)
  [[ -n ${CCOE_SCRIPT:-} && -f $CCOE_SCRIPT ]] || ccoe_die "cannot find this batch script to resubmit"
  local jid
  jid=$(sbatch "${o[@]}" "$CCOE_SCRIPT" "${CCOE_SCRIPT_ARGS[@]}") || ccoe_die "resubmission failed"
  ccoe_log "resubmitted as job $jid"
  exit 0
}
