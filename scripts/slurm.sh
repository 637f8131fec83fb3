#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for `kdtrain sweep submit --slurm` and its
# tests: Debian's slurm-wlm 22.05 with munge, no systemd, no accounting.
#
#   scripts/slurm.sh start    install (apt, first time only) and start munged, slurmctld, slurmd
#   scripts/slurm.sh status   say what runs, and sinfo
#   scripts/slurm.sh stop     stop what `start` started, and wait until its ports are free
#
# Everything lives in one folder, $KDTRAIN_SLURM_DIR (default /tmp/kdtrain-slurm):
# slurm.conf, state, spool, logs, pid files, jobcomp.txt (one line per finished job), and
# `env`, which exports SLURM_CONF; `source "$KDTRAIN_SLURM_DIR/env"` before sbatch/sinfo.
# Nothing is written to /etc except by apt. Idempotent: `start` on a running cluster and
# `stop` on a stopped one do nothing. `stop` ends only the daemons `start` started (a
# munged that was already running is left alone).
#
# Needs Debian (apt) and root for the first install; on other machines start fails with
# a message saying why, and the Slurm tests report that instead of passing.
set -euo pipefail

DIR=${KDTRAIN_SLURM_DIR:-/tmp/kdtrain-slurm}
CONF="$DIR/slurm.conf"
NODE=$(hostname -s)
CTLD_PORT=${KDTRAIN_SLURMCTLD_PORT:-6817}
SLURMD_PORT=${KDTRAIN_SLURMD_PORT:-6818}
export SLURM_CONF="$CONF"

say() { echo "slurm.sh: $*" >&2; }
die() { say "$*"; exit 1; }

# A live process (not a zombie: a killed daemon may linger as one here, and a zombie
# holds no port, so it counts as stopped).
alive() {
  local pid=$1
  [[ -n "$pid" && -r "/proc/$pid/status" ]] || return 1
  ! grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null
}

pid_of() { [[ -f "$DIR/$1.pid" ]] && tr -dc '0-9' <"$DIR/$1.pid" || true; }

# A TCP port in LISTEN state (from /proc/net/tcp*, no ss/netstat needed).
listening() {
  local hex
  hex=$(printf '%04X' "$1")
  cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | awk -v p=":$hex" '$2 ~ p"$" && $4 == "0A" {f=1} END {exit !f}'
}

install() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null &&
    command -v sbatch >/dev/null && command -v munged >/dev/null && return 0
  command -v apt-get >/dev/null || die "Slurm is not installed and there is no apt-get (not Debian); install slurm-wlm 22.05 and munge by hand"
  [[ $(id -u) == 0 ]] || die "Slurm is not installed and installing it needs root (apt-get install slurmctld slurmd slurm-client munge)"
  say "installing slurmctld slurmd slurm-client munge (apt)"
  # Package scripts must not try to start services (no systemd here): a policy-rc.d that
  # refuses, made only for the install if the machine has none.
  local made_policy=""
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    made_policy=1
  fi
  local rc=0
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null; } || rc=$?
  [[ -n "$made_policy" ]] && rm -f /usr/sbin/policy-rc.d
  [[ $rc == 0 ]] || die "apt-get install of Slurm failed (exit $rc)"
}

munge_works() { munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
  if munge_works; then
    return 0 # ours from an earlier start, or the machine's own: either serves
  fi
  [[ -r /etc/munge/munge.key ]] || die "/etc/munge/munge.key is missing; reinstall munge"
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  chmod 0755 /run/munge
  # Stale files of a munged that died would stop a new one.
  rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock /run/munge/munged.pid
  runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid \
    --log-file=/var/log/munge/munged.log
  for _ in $(seq 50); do
    munge_works && break
    sleep 0.1
  done
  munge_works || die "munged did not start; see /var/log/munge/munged.log"
  cp /run/munge/munged.pid "$DIR/munged.pid"
}

write_conf() {
  # The node line from slurmd -C (sockets, cores, threads as slurmd will report them), its
  # memory trimmed by 5% so that slurmd's own measure never falls below it.
  local line mem
  line=$(slurmd -C | head -1)
  mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$line")
  line=$(sed -e "s/^NodeName=[^ ]*/NodeName=$NODE/" -e "s/RealMemory=[0-9]*/RealMemory=$((mem * 95 / 100))/" <<<"$line")
  cat >"$CONF.tmp" <<EOF
# Written by scripts/slurm.sh: a one-node cluster for kdtrain's sweep tests.
ClusterName=kdtrain
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
# No sacct here: each finished job and array task is a line in this file.
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/jobcomp.txt
MailProg=/bin/true
MpiDefault=none
ReturnToService=2
# Finished jobs leave the controller after 5 s, so sbatch --wait polls quickly.
MinJobAge=5
SlurmdTimeout=30
$line NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
  mv "$CONF.tmp" "$CONF"
}

running() { alive "$(pid_of slurmctld)" && alive "$(pid_of slurmd)"; }

node_state() { sinfo -h -N -n "$NODE" -o '%T' 2>/dev/null | head -1; }

start() {
  if running && [[ -f "$CONF" ]]; then
    say "already running (slurmctld $(pid_of slurmctld), slurmd $(pid_of slurmd)); SLURM_CONF=$CONF"
    return 0
  fi
  stop quietly # half-started leftovers
  install
  mkdir -p "$DIR/state" "$DIR/spool"
  start_munge
  write_conf
  for port in "$CTLD_PORT" "$SLURMD_PORT"; do
    listening "$port" && die "port $port is in use by another program; set KDTRAIN_SLURMCTLD_PORT / KDTRAIN_SLURMD_PORT"
  done
  # -c: start from a clean state (no jobs of an earlier cluster).
  slurmctld -c -f "$CONF" || die "slurmctld did not start; see $DIR/slurmctld.log"
  slurmd -N "$NODE" -f "$CONF" || die "slurmd did not start; see $DIR/slurmd.log"
  local state=""
  for _ in $(seq 150); do
    state=$(node_state)
    case "$state" in
      idle*|mixed*|allocated*) break ;;
      down*|drain*) scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    sleep 0.2
  done
  case "$state" in
    idle*|mixed*|allocated*) ;;
    *) die "node $NODE is '${state:-unknown}' after 30 s; see $DIR/slurmctld.log and $DIR/slurmd.log" ;;
  esac
  printf 'export SLURM_CONF=%q\n' "$CONF" >"$DIR/env.tmp" && mv "$DIR/env.tmp" "$DIR/env"
  say "running: node $NODE $state; source $DIR/env (SLURM_CONF=$CONF)"
}

kill_and_wait() {
  local name=$1 pid
  pid=$(pid_of "$name")
  if alive "$pid"; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
      alive "$pid" || break
      sleep 0.1
    done
    if alive "$pid"; then
      kill -9 "$pid" 2>/dev/null || true
      sleep 0.2
    fi
  fi
  rm -f "$DIR/$name.pid"
}

stop() {
  local quiet=${1:-}
  [[ -d "$DIR" ]] || { [[ -n "$quiet" ]] || say "not running"; return 0; }
  # Jobs first, so that no task outlives its slurmd.
  if alive "$(pid_of slurmctld)" && [[ -f "$CONF" ]]; then
    scancel --quiet --user="$(id -un)" 2>/dev/null || true
  fi
  kill_and_wait slurmd
  kill_and_wait slurmctld
  kill_and_wait munged # only when this script started it (its pid file is in $DIR)
  rm -f "$DIR/env"
  for port in "$CTLD_PORT" "$SLURMD_PORT"; do
    for _ in $(seq 50); do
      listening "$port" || break
      sleep 0.1
    done
    listening "$port" && say "warning: port $port is still in use after stop"
  done
  [[ -n "$quiet" ]] || say "stopped"
}

status() {
  local ok=0
  for d in slurmctld slurmd munged; do
    local pid
    pid=$(pid_of "$d")
    if alive "$pid"; then echo "$d: running (pid $pid)"; else echo "$d: not running (by this script)"; [[ $d == munged ]] || ok=1; fi
  done
  if [[ $ok == 0 ]]; then
    echo "SLURM_CONF=$CONF"
    sinfo
  fi
  return $ok
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|status|stop" >&2; exit 2 ;;
esac
