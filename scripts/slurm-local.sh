#!/usr/bin/env bash
# A single-node SLURM "cluster" for etagrid's SLURM tests (crates/etagrid/tests/slurm.rs), no
# systemd needed (Debian 12, slurm-wlm 22.05). Adapted from ../shared/tools/slurm-localcluster.sh.
# Prereq (once):  apt-get install -y slurm-wlm       (scripts/test.sh does it when missing; as root)
# Usage:          scripts/slurm-local.sh up|down|status [BASE]     (idempotent; BASE default below)
# Env knobs:      NGPUS=2 (fake GPUs: char devices, so SLURM sets CUDA_VISIBLE_DEVICES)
#                 NCPUS=4 (advertised CPUs, may exceed real cores)
# Clients need:   export SLURM_CONF=$BASE/etc/slurm.conf
# `up` on a running cluster does nothing; `up` after a crash (stale pid files, leftover daemons of
# this BASE) stops the leftovers first. `down` stops every daemon it started, by PID.
set -euo pipefail
cmd=${1:?usage: $0 up|down|status [BASE]}
BASE=${2:-${ETAGRID_SLURM_BASE:-/tmp/etagrid-slurm-local}}
NGPUS=${NGPUS:-2}
NCPUS=${NCPUS:-4}
WITH_DBD=0
export SLURM_CONF=$BASE/etc/slurm.conf
now() { date +%s%N; }
since() { local d=$(( ($(now) - $1) / 1000000 )); printf "%d.%03d" $((d/1000)) $((d%1000)); }

write_conf() {
  local acct="AccountingStorageType=accounting_storage/none"
  cat > "$BASE/etc/slurm.conf" <<EOF
ClusterName=localcluster
SlurmctldHost=localhost
SlurmUser=slurm
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
# A requeued job waits cred_expire seconds before it may start again (default 120).
AuthInfo=cred_expire=5
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool
SlurmctldPidFile=$BASE/run/slurmctld.pid
SlurmdPidFile=$BASE/run/slurmd.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
GresTypes=gpu
JobCompType=jobcomp/filetxt
JobCompLoc=$BASE/log/jobcomp.txt
JobAcctGatherType=jobacct_gather/linux
$acct
MinJobAge=300
# Small, so that the tests see a sweep split into several arrays (indices must be < 4).
MaxArraySize=4
KillWait=5
SlurmdParameters=config_overrides
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
NodeName=localhost CPUs=$NCPUS RealMemory=2000 Gres=gpu:$NGPUS State=UNKNOWN
PartitionName=low Nodes=localhost Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE
PartitionName=high Nodes=localhost MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
EOF
  cat > "$BASE/etc/gres.conf" <<EOF
AutoDetect=off
NodeName=localhost Name=gpu File=$BASE/fakegpu/nvidia[0-$((NGPUS-1))]
EOF
  chmod 644 "$BASE/etc/slurm.conf" "$BASE/etc/gres.conf"
}

running() {  # this BASE's controller answers and the node is usable
  [ -s "$BASE/run/slurmctld.pid" ] && kill -0 "$(cat "$BASE/run/slurmctld.pid")" 2>/dev/null &&
    [ -s "$BASE/run/slurmd.pid" ] && kill -0 "$(cat "$BASE/run/slurmd.pid")" 2>/dev/null &&
    sinfo -h -N -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'
}

up() {
  local t0; t0=$(now)
  if running; then echo "cluster already up; export SLURM_CONF=$SLURM_CONF"; return 0; fi
  # Leftovers of a crashed run (a daemon alive without its partner, stale pid files): stop them.
  stop_pidfile "$BASE/run/slurmd.pid"
  stop_pidfile "$BASE/run/slurmctld.pid"
  mkdir -p "$BASE"/{etc,state,spool,run,log,fakegpu}
  chown slurm:slurm "$BASE/state" "$BASE/log" "$BASE/run"
  # Fake GPUs: gres File= must be a character/block device, else "is not a valid character
  # or block device" and CUDA_VISIBLE_DEVICES is NOT set. mknod with NVIDIA's major 195.
  for i in $(seq 0 $((NGPUS-1))); do
    [ -c "$BASE/fakegpu/nvidia$i" ] || { rm -f "$BASE/fakegpu/nvidia$i"; mknod "$BASE/fakegpu/nvidia$i" c 195 "$i"; }
  done
  write_conf
  if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    mkdir -p /run/munge; chown munge:munge /run/munge; chmod 0755 /run/munge
    runuser -u munge -- /usr/sbin/munged
    cp /run/munge/munged.pid "$BASE/run/munged.started-by-us.pid"
  fi
  slurmctld
  slurmd -N localhost        # NodeName=localhost != hostname, so name it explicitly
  local st=""
  for _ in $(seq 1 300); do
    st=$(sinfo -h -N -o '%T' 2>/dev/null | sort -u || true)
    [ "$st" = idle ] && break; sleep 0.1
  done
  echo "cluster up ($st) in $(since "$t0")s; export SLURM_CONF=$SLURM_CONF"
  [ "$st" = idle ]
}

stop_pidfile() {  # stop one daemon by the PID in its pid file; wait until gone
  local f=$1 pid
  [ -s "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      grep -q ') Z ' "/proc/$pid/stat" 2>/dev/null && break   # exited, awaiting reaping by init
      sleep 0.1
    done
  fi
  rm -f "$f"
}

down() {
  local t0; t0=$(now)
  scancel --full --quiet --user="$(id -un)" 2>/dev/null || true   # only jobs of this test cluster
  stop_pidfile "$BASE/run/slurmd.pid"
  stop_pidfile "$BASE/run/slurmctld.pid"
  stop_pidfile "$BASE/run/munged.started-by-us.pid"
  rm -rf "$BASE/state" "$BASE/spool"   # no job of this run comes back in the next one
  echo "cluster down in $(since "$t0")s"
}

status() { sinfo; squeue -r; }

case "$cmd" in up|down|status) ;; *) echo "usage: $0 up|down|status [BASE]" >&2; exit 2;; esac

"$cmd"
