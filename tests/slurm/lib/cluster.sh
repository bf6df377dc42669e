# A throw-away single-node Slurm cluster (slurmctld + slurmd + a private munged) in one
# directory, for tests and for trying the batch files in scripts/slurm/ on one machine.
# Works as root in containers without systemd or cgroups (proctrack/linuxproc, task/none).
#
#   source tests/slurm/lib/cluster.sh
#   cluster_install            # apt-get install slurmctld slurmd slurm-client munge if missing
#   cluster_start DIR          # writes DIR/slurm.conf, starts the daemons, exports SLURM_CONF
#   sbatch ...; squeue; ...
#   cluster_stop DIR           # stops exactly the daemons it started (pid files in DIR)
#
# Nothing outside DIR is written or started: the munge key, socket, state, spool and logs all
# live in DIR, and the ports are free ones picked at start.

cluster_log() { echo "[slurm-cluster] $*" >&2; }

cluster_have() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null &&
    command -v sbatch >/dev/null && command -v munged >/dev/null
}

# Installs Debian's Slurm (22.05 on Debian 12) and munge. Services are not started by the
# packages when policy-rc.d forbids it (containers); we start our own daemons anyway.
cluster_install() {
  cluster_have && return 0
  [[ $(id -u) -eq 0 ]] || { cluster_log "Slurm is not installed and we are not root"; return 1; }
  cluster_log "installing slurmctld slurmd slurm-client munge (apt)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    slurmctld slurmd slurm-client munge >&2 ||
    { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        --no-install-recommends slurmctld slurmd slurm-client munge >&2; } || return 1
  cluster_have
}

# A TCP port nobody listens on (the default 6817/6818 may belong to a real cluster).
cluster_free_port() {
  local p
  for _ in $(seq 1 200); do
    p=$((20000 + RANDOM % 30000))
    [[ -z $(ss -Hltn "sport = :$p" 2>/dev/null) ]] && { echo "$p"; return 0; }
  done
  return 1
}

cluster_start() {
  local d=$1 host cpus p1 p2 i
  mkdir -p "$d"/{state,spool,munge,log}
  chmod 755 "$d" "$d/munge"
  host=$(hostname -s)
  cpus=$(nproc)
  p1=$(cluster_free_port) && p2=$(cluster_free_port) || { cluster_log "no free port"; return 1; }
  [[ $p1 != "$p2" ]] || p2=$((p1 + 1))

  # munge: a private key and socket, so a system munged (if any) is neither needed nor touched
  dd if=/dev/urandom of="$d/munge/munge.key" bs=1024 count=1 status=none
  chmod 400 "$d/munge/munge.key"
  munged --force --key-file="$d/munge/munge.key" --socket="$d/munge/munge.sock" \
    --pid-file="$d/munge/munged.pid" --log-file="$d/log/munged.log" \
    --seed-file="$d/munge/munged.seed" ||
    { cluster_log "munged failed: $(tail -n 5 "$d/log/munged.log" 2>/dev/null)"; return 1; }

  cat > "$d/slurm.conf" <<EOF
# written by tests/slurm/lib/cluster.sh: a single-node cluster in $d
ClusterName=ccoetest
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$p1
SlurmdPort=$p2
AuthType=auth/munge
CredType=cred/munge
# cred_expire also delays a requeued job's restart (default 120 s)
AuthInfo=socket=$d/munge/munge.sock,cred_expire=10
StateSaveLocation=$d/state
SlurmdSpoolDir=$d/spool
SlurmctldPidFile=$d/slurmctld.pid
SlurmdPidFile=$d/slurmd.pid
SlurmctldLogFile=$d/log/slurmctld.log
SlurmdLogFile=$d/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# no systemd, maybe no usable cgroups: track processes by parent pid, no task binding
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
JobRequeue=1
KillWait=10
MinJobAge=600
MailProg=/bin/true
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  export SLURM_CONF=$d/slurm.conf
  # -i: ignore state left by an earlier run in this directory; daemonised, pid files in $d
  slurmctld -i -f "$SLURM_CONF" || { cluster_log "slurmctld failed: $(tail -n 20 "$d/log/slurmctld.log")"; return 1; }
  for i in $(seq 1 50); do scontrol ping >/dev/null 2>&1 && break; sleep 0.2; done
  scontrol ping >/dev/null 2>&1 || { cluster_log "slurmctld does not answer: $(tail -n 20 "$d/log/slurmctld.log")"; return 1; }
  slurmd -f "$SLURM_CONF" -N "$host" || { cluster_log "slurmd failed: $(tail -n 20 "$d/log/slurmd.log")"; return 1; }
  for i in $(seq 1 150); do
    [[ $(sinfo -h -n "$host" -o %t 2>/dev/null) == idle ]] && break
    sleep 0.2
  done
  [[ $(sinfo -h -n "$host" -o %t 2>/dev/null) == idle ]] ||
    { cluster_log "node $host not idle: $(sinfo 2>&1); $(tail -n 20 "$d/log/slurmd.log")"; return 1; }
  cluster_log "up: $(sinfo -h -o '%P %a %D %t %c CPUs' | sed -n 1p) (conf $SLURM_CONF)"
}

# Stops the daemons whose pid files are in DIR, waiting for each to exit (SIGKILL after 10 s).
# Idempotent: the pid files are removed.
cluster_stop() {
  local d=$1 f pid i
  [[ -d $d ]] || return 0
  # cancel leftover jobs first and let them end, so that no slurmstepd outlives the daemons
  if [[ -f $d/slurm.conf && -s $d/slurmctld.pid ]] && kill -0 "$(cat "$d/slurmctld.pid")" 2>/dev/null; then
    SLURM_CONF=$d/slurm.conf scancel --quiet --user="$(id -un)" >/dev/null 2>&1 || true
    for i in $(seq 1 75); do
      [[ -z $(SLURM_CONF=$d/slurm.conf squeue -h 2>/dev/null) ]] && break
      sleep 0.2
    done
  fi
  for f in "$d/slurmd.pid" "$d/slurmctld.pid" "$d/munge/munged.pid"; do
    [[ -s $f ]] || continue
    pid=$(cat "$f")
    [[ $pid =~ ^[0-9]+$ ]] || continue
    kill -TERM "$pid" 2>/dev/null || continue
    for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && { cluster_log "pid $pid ($f) ignores SIGTERM: SIGKILL"; kill -KILL "$pid" 2>/dev/null; }
    rm -f "$f"   # a later cluster_stop must not signal a recycled pid
  done
  return 0
}
