#!/usr/bin/env bash
# A one-node Slurm cluster on localhost for the tests (tests/test_slurm.py): munged, slurmctld and slurmd from
# Debian's packages (apt-get install -y slurmctld slurmd munge slurm-client), run as root.
#
#   slurm/local/setup_local_slurm.sh start    write the config, start the daemons, wait for an idle node
#   slurm/local/setup_local_slurm.sh stop     stop the daemons this script started
#   slurm/local/setup_local_slurm.sh status   sinfo
#
# Everything (slurm.conf, state, spool, logs, pid files) lives under $SLURM_LOCAL_DIR (default
# /tmp/layoutlmv3-slurm), so /etc/slurm is never touched: clients find the config through SLURM_CONF, which
# `start` prints and tests export (`eval "$(slurm/local/setup_local_slurm.sh env)"` sets it in a shell).
set -euo pipefail

STATE_DIR=${SLURM_LOCAL_DIR:-/tmp/layoutlmv3-slurm}
CONF=$STATE_DIR/slurm.conf
NODE=localhost
# CPUs the node offers; 2 is enough for the tests' 2-rank jobs and 2-task arrays.
CPUS=${SLURM_LOCAL_CPUS:-$(nproc)}
START_TIMEOUT=${SLURM_LOCAL_START_TIMEOUT:-60}

log() { echo "setup_local_slurm: $*" >&2; }

require() {
    local tool
    for tool in munged slurmctld slurmd sinfo scontrol; do
        command -v "$tool" >/dev/null 2>&1 || {
            log "$tool not found: apt-get install -y slurmctld slurmd munge slurm-client"
            exit 1
        }
    done
    [ "$(id -u)" -eq 0 ] || { log "must run as root (slurmd starts jobs as their users)"; exit 1; }
}

write_conf() {
    mkdir -p "$STATE_DIR/ctld" "$STATE_DIR/d"
    # SlurmUser=root and no accounting keep the set-up to three daemons; MinJobAge keeps finished jobs visible
    # to `scontrol show job` (there is no sacct without accounting) long enough for the tests to read them.
    # proctrack/linuxproc and task/none need no cgroup set-up (containers often have none).
    cat >"$CONF" <<EOF
ClusterName=local
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE_DIR/ctld
SlurmdSpoolDir=$STATE_DIR/d
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd.pid
SlurmctldLogFile=$STATE_DIR/slurmctld.log
SlurmdLogFile=$STATE_DIR/slurmd.log
SlurmctldPort=${SLURM_LOCAL_CTLD_PORT:-6817}
SlurmdPort=${SLURM_LOCAL_SLURMD_PORT:-6818}
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobRequeue=1
ReturnToService=2
MinJobAge=900
KillWait=30
MpiDefault=none
NodeName=$NODE CPUs=$CPUS State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munge() {
    if munge -n </dev/null >/dev/null 2>&1; then
        return  # a munged already answers (the system's, or ours from an earlier start)
    fi
    # The Debian package creates /etc/munge/munge.key; make one if it is missing.
    if [ ! -s /etc/munge/munge.key ]; then
        mkdir -p /etc/munge
        if command -v mungekey >/dev/null 2>&1; then
            mungekey --create --keyfile=/etc/munge/munge.key
        else
            dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
        fi
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    # munged refuses to run as root with a key root does not own; run it as the package's munge user.
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 1 50); do
        munge -n </dev/null >/dev/null 2>&1 && return
        sleep 0.1
    done
    log "munged did not come up"
    exit 1
}

running() {  # pid file $1 names a live process
    [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

start() {
    require
    if running "$STATE_DIR/slurmctld.pid" && running "$STATE_DIR/slurmd.pid"; then
        log "already running"
    else
        write_conf
        start_munge
        export SLURM_CONF=$CONF
        # -c: forget jobs of an earlier cluster; -N: the node name, whatever the machine's hostname is.
        running "$STATE_DIR/slurmctld.pid" || slurmctld -c -f "$CONF"
        running "$STATE_DIR/slurmd.pid" || slurmd -c -N "$NODE" -f "$CONF"
    fi
    export SLURM_CONF=$CONF
    local deadline=$((SECONDS + START_TIMEOUT)) state=""
    while [ $SECONDS -lt $deadline ]; do
        state=$(sinfo -h -n "$NODE" -o %T 2>/dev/null || true)
        case $state in
            idle | mixed | allocated) echo "export SLURM_CONF=$CONF"; return ;;
            down* | drain*) scontrol update NodeName="$NODE" State=RESUME 2>/dev/null || true ;;
        esac
        sleep 0.5
    done
    log "node $NODE not idle after ${START_TIMEOUT}s (state: ${state:-none}); see $STATE_DIR/*.log"
    exit 1
}

stop_daemon() {  # pid file, name
    local pid
    running "$1" || return 0
    pid=$(cat "$1")
    kill "$pid"
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    log "$2 ($pid) ignored SIGTERM; killing it"
    kill -9 "$pid" 2>/dev/null || true
}

stop() {
    # Only the Slurm daemons: munged may serve others and costs nothing idle.
    stop_daemon "$STATE_DIR/slurmd.pid" slurmd
    stop_daemon "$STATE_DIR/slurmctld.pid" slurmctld
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    status) SLURM_CONF=$CONF sinfo ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *)
        echo "usage: $0 {start|stop|status|env}" >&2
        exit 2
        ;;
esac
