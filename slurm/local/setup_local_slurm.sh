#!/usr/bin/env bash
# A local Slurm cluster for the tests and for trying the sbatch scripts: munged, one slurmctld and N slurmd from
# Debian's packages (apt-get install -y slurmctld slurmd munge slurm-client), run as root.
#
#   slurm/local/setup_local_slurm.sh start               write the config, start the daemons, wait for idle nodes
#   slurm/local/setup_local_slurm.sh stop                stop the daemons, remove the namespaces and addresses
#   slurm/local/setup_local_slurm.sh status              sinfo, one line per node
#   slurm/local/setup_local_slurm.sh env                 the export line that points Slurm's clients here
#   slurm/local/setup_local_slurm.sh kill-node NODE      a node dies: its link goes down, then every process on
#                                                        it (slurmd, job steps, ranks) is SIGKILLed
#   slurm/local/setup_local_slurm.sh revive-node NODE    link up, slurmd started again (the node returns to
#                                                        service by itself: ReturnToService=2)
#
# Two shapes (SLURM_LOCAL_NODES):
# - N >= 2 (default 3): hosts node1..nodeN, each in its own network namespace (address 10.213.77.(10+i) on a
#   bridge, SLURM_LOCAL_SUBNET to change the /24) and UTS namespace (`hostname` says nodeI), with a hosts file
#   bind-mounted over /etc/hosts that names every node, so jobs resolve node names and ranks on different
#   nodes talk over a real network interface (eth0 inside each namespace), never loopback. The controller
#   listens on the bridge's address (.1) in the root namespace, so sbatch/squeue work from this shell. Nothing
#   leaves the machine: the bridge has no uplink and no route beyond its /24.
# - N = 1: the node `localhost`, everything on loopback (no namespaces; works without CAP_NET_ADMIN).
#
# Everything (slurm.conf, state, spool, logs, pid files, the hosts file) lives under $SLURM_LOCAL_DIR (default
# /tmp/layoutlmv3-slurm), so /etc/slurm is never touched: clients find the config through SLURM_CONF, which
# `start` prints and tests export (`eval "$(slurm/local/setup_local_slurm.sh env)"` sets it in a shell).
# SlurmdTimeout is short (SLURM_LOCAL_SLURMD_TIMEOUT, 20 s) so a killed node is marked DOWN quickly.
set -euo pipefail

STATE_DIR=${SLURM_LOCAL_DIR:-/tmp/layoutlmv3-slurm}
# slurmd makes a Unix socket per job step at $STATE_DIR/spool/NODE/NODE_JOB.STEP, and a socket path may hold 108
# bytes: past that every step fails with Slurm's "Unspecified error". Refuse a directory that leaves too little room.
if [ "${#STATE_DIR}" -gt 64 ]; then
    echo "SLURM_LOCAL_DIR $STATE_DIR is ${#STATE_DIR} characters: at most 64 (slurmd's step sockets under it must fit" \
        "108 bytes); choose a shorter directory, e.g. under /tmp" >&2
    exit 2
fi
CONF=$STATE_DIR/slurm.conf
NODES=${SLURM_LOCAL_NODES:-3}
SUBNET=${SLURM_LOCAL_SUBNET:-10.213.77}
# CPUs each node offers (more than the machine has is fine: SlurmdParameters=config_overrides); 4 fit the
# tests' 4-rank one-node job.
CPUS=${SLURM_LOCAL_CPUS:-4}
START_TIMEOUT=${SLURM_LOCAL_START_TIMEOUT:-60}
SLURMD_TIMEOUT=${SLURM_LOCAL_SLURMD_TIMEOUT:-20}
BRIDGE=lmv3-br0
CTL_NAME=lmv3-ctl

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
    if ! [[ $NODES =~ ^[0-9]+$ ]] || [ "$NODES" -lt 1 ] || [ "$NODES" -gt 200 ]; then
        log "SLURM_LOCAL_NODES must be 1..200, got $NODES"
        exit 2
    fi
}

# The shape of the running cluster is remembered, so stop/status/kill-node need no environment.
mode_file() { echo "$STATE_DIR/nodes"; }
running_nodes() { cat "$(mode_file)" 2>/dev/null || echo "$NODES"; }
node_names() {  # node1 .. nodeN, or localhost
    local count=$1 i
    if [ "$count" -eq 1 ]; then echo localhost; return; fi
    for i in $(seq 1 "$count"); do echo "node$i"; done
}
netns_of() { echo "lmv3-$1"; }            # node3 -> lmv3-node3
veth_of() { echo "lmv3-v${1#node}"; }     # node3 -> lmv3-v3 (the bridge side)
addr_of() { echo "$SUBNET.$((10 + ${1#node}))"; }

write_conf() {
    local count=$1 name ctl node_lines=""
    mkdir -p "$STATE_DIR/ctld" "$STATE_DIR/spool"
    if [ "$count" -eq 1 ]; then
        ctl=localhost
        node_lines="NodeName=localhost CPUs=$CPUS State=UNKNOWN"
    else
        ctl="$CTL_NAME($SUBNET.1)"
        for name in $(node_names "$count"); do
            node_lines+="NodeName=$name NodeAddr=$(addr_of "$name") CPUs=$CPUS State=UNKNOWN"$'\n'
        done
    fi
    # SlurmUser=root and no accounting keep the set-up to the daemons; MinJobAge keeps finished jobs visible
    # to `scontrol show job` (there is no sacct without accounting) long enough for the tests to read them.
    # proctrack/linuxproc and task/none need no cgroup set-up (containers often have none). %n gives each slurmd
    # its own spool, pid and log file.
    cat >"$CONF" <<EOF
ClusterName=local
SlurmctldHost=$ctl
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE_DIR/ctld
SlurmdSpoolDir=$STATE_DIR/spool/%n
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd-%n.pid
SlurmctldLogFile=$STATE_DIR/slurmctld.log
SlurmdLogFile=$STATE_DIR/slurmd-%n.log
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
KillWait=10
SlurmdTimeout=$SLURMD_TIMEOUT
MpiDefault=none
SlurmdParameters=config_overrides
$node_lines
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
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
    # munged refuses to run as root with a key root does not own; run it as the package's munge user. Its
    # socket is a file under /run/munge, reachable from every network namespace.
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

check_subnet_free() {
    [[ $SUBNET =~ ^(10\.[0-9]+\.[0-9]+|192\.168\.[0-9]+|172\.(1[6-9]|2[0-9]|3[01])\.[0-9]+)$ ]] \
        || { log "SLURM_LOCAL_SUBNET must be the first three octets of a private /24, got $SUBNET"; exit 2; }
    if ip -4 route show | grep -v "dev $BRIDGE" | grep -q "^$SUBNET\.0/24\|^${SUBNET%.*}\.0/16"; then
        log "$SUBNET.0/24 is already routed on this machine; choose another SLURM_LOCAL_SUBNET"
        exit 2
    fi
}

write_hosts() {  # the hosts file every namespace sees as /etc/hosts
    local count=$1 name
    {
        echo "127.0.0.1 localhost"
        echo "$SUBNET.1 $CTL_NAME"
        for name in $(node_names "$count"); do echo "$(addr_of "$name") $name"; done
    } >"$STATE_DIR/hosts"
}

make_network() {  # the bridge (.1, the controller's address) and one namespace + veth pair per node
    local count=$1 name ns veth
    check_subnet_free
    ip link show "$BRIDGE" >/dev/null 2>&1 || ip link add "$BRIDGE" type bridge
    ip addr replace "$SUBNET.1/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
    for name in $(node_names "$count"); do
        ns=$(netns_of "$name")
        veth=$(veth_of "$name")
        ip netns list | grep -qw "$ns" || ip netns add "$ns"
        if ! ip -n "$ns" link show eth0 >/dev/null 2>&1; then
            ip link del "$veth" 2>/dev/null || true  # the half of a pair whose namespace is gone
            ip link add "$veth" type veth peer name "$veth-in"
            ip link set "$veth-in" netns "$ns"
            ip -n "$ns" link set "$veth-in" name eth0
        fi
        ip link set "$veth" master "$BRIDGE"
        ip link set "$veth" up
        ip -n "$ns" addr replace "$(addr_of "$name")/24" dev eth0
        ip -n "$ns" link set eth0 up
        ip -n "$ns" link set lo up
    done
}

# Run a command as host $1: in a new UTS namespace (`hostname` says $1) and mount namespace in which /etc/hosts
# is the cluster's hosts file. Its children (job steps, ranks) inherit both.
as_host() {
    local name=$1
    shift
    # shellcheck disable=SC2016  # the inner shell expands its own arguments
    unshare --uts --mount --propagation private \
        sh -c 'mount --bind "$1" /etc/hosts && hostname "$2" && shift 2 && exec "$@"' sh \
        "$STATE_DIR/hosts" "$name" "$@"
}

# Run a daemon as node $1, in its network namespace too. nsenter rather than `ip netns exec`, which remounts /sys
# and so hides /sys/fs/cgroup from slurmd.
in_node() {
    local name=$1
    shift
    nsenter --net="/run/netns/$(netns_of "$name")" "$0" as-host "$name" "$@"
}

start_slurmd() {
    local name=$1 count=$2
    mkdir -p "$STATE_DIR/spool/$name"
    running "$STATE_DIR/slurmd-$name.pid" && return
    if [ "$count" -eq 1 ]; then
        slurmd -c -N "$name" -f "$CONF"  # -c: forget jobs of an earlier cluster; -N: the node name
    else
        in_node "$name" slurmd -c -N "$name" -f "$CONF"
    fi
}

start() {
    require
    local count=$NODES name
    if [ -s "$(mode_file)" ] && [ "$(cat "$(mode_file)")" != "$count" ] && running "$STATE_DIR/slurmctld.pid"; then
        log "a $(cat "$(mode_file)")-node cluster is running; stop it first"
        exit 2
    fi
    mkdir -p "$STATE_DIR"
    echo "$count" >"$(mode_file)"
    write_conf "$count"
    start_munge
    export SLURM_CONF=$CONF
    if [ "$count" -eq 1 ]; then
        running "$STATE_DIR/slurmctld.pid" || slurmctld -c -f "$CONF"
    else
        make_network "$count"
        write_hosts "$count"
        # The controller keeps the root network namespace (clients reach it at .1) but gets its own host name.
        running "$STATE_DIR/slurmctld.pid" || as_host "$CTL_NAME" slurmctld -c -f "$CONF"
    fi
    for name in $(node_names "$count"); do start_slurmd "$name" "$count"; done
    wait_idle "$count"
    echo "export SLURM_CONF=$CONF"
}

wait_idle() {  # every node idle (or busy), resuming any that came up DOWN
    local count=$1 deadline=$((SECONDS + START_TIMEOUT)) states="" ready name state
    while [ $SECONDS -lt $deadline ]; do
        ready=0
        states=""
        for name in $(node_names "$count"); do
            state=$(sinfo -h -n "$name" -o %T 2>/dev/null | head -n 1 || true)
            states+="$name=${state:-none} "
            case $state in
                idle | mixed | allocated | completing) ready=$((ready + 1)) ;;
                down* | drain*) scontrol update NodeName="$name" State=RESUME 2>/dev/null || true ;;
            esac
        done
        [ "$ready" -eq "$count" ] && return
        sleep 0.5
    done
    log "nodes not idle after ${START_TIMEOUT}s ($states); see $STATE_DIR/*.log"
    exit 1
}

stop_pid() {  # pid file, name
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

kill_namespace_processes() {  # everything still running on a node: job steps, ranks, slurmd
    local ns=$1 pids
    ip netns list | grep -qw "$ns" || return 0
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    # shellcheck disable=SC2086  # one pid per word
    [ -z "$pids" ] || kill -9 $pids 2>/dev/null || true
}

stop() {
    # Only the Slurm daemons: munged may serve others and costs nothing idle.
    local count name
    count=$(running_nodes)
    export SLURM_CONF=$CONF
    for name in $(node_names "$count"); do stop_pid "$STATE_DIR/slurmd-$name.pid" "slurmd $name"; done
    stop_pid "$STATE_DIR/slurmctld.pid" slurmctld
    if [ "$count" -gt 1 ]; then
        for name in $(node_names "$count"); do
            kill_namespace_processes "$(netns_of "$name")"
            ip link del "$(veth_of "$name")" 2>/dev/null || true  # both ends of the pair
            ip netns del "$(netns_of "$name")" 2>/dev/null || true
        done
        ip link del "$BRIDGE" 2>/dev/null || true
    fi
    rm -f "$(mode_file)"
}

node_arg() {  # validates a node name of the running multi-node cluster
    local name=${1:-} count
    count=$(running_nodes)
    [ "$count" -gt 1 ] || { log "kill-node/revive-node need a multi-node cluster (SLURM_LOCAL_NODES >= 2)"; exit 2; }
    # Not `| grep -q`: under pipefail, grep leaving early fails the pipeline with SIGPIPE.
    case " $(node_names "$count" | xargs) " in *" $name "*) ;; *) false ;; esac || { log "no node '$name' (nodes: $(node_names "$count" | xargs))"; exit 2; }
    echo "$name"
}

kill_node() {
    local name
    name=$(node_arg "${1:-}")
    # The link first, so no process on the node can say goodbye (no FIN/RST): the others see a silent peer, as
    # when a machine loses power.
    ip link set "$(veth_of "$name")" down
    kill_namespace_processes "$(netns_of "$name")"
    rm -f "$STATE_DIR/slurmd-$name.pid"
    log "$name is down: link $(veth_of "$name") down, its processes killed"
}

revive_node() {
    local name
    name=$(node_arg "${1:-}")
    ip link set "$(veth_of "$name")" up
    export SLURM_CONF=$CONF
    start_slurmd "$name" "$(running_nodes)"
    log "$name: link up, slurmd started"
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    status) SLURM_CONF=$CONF sinfo -N -o "%N %T %C %O" ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    kill-node) kill_node "${2:-}" ;;
    revive-node) revive_node "${2:-}" ;;
    as-host) shift && as_host "$@" ;;  # internal: in_node runs it inside a node's network namespace
    *)
        echo "usage: $0 {start|stop|status|env|kill-node NODE|revive-node NODE}" >&2
        exit 2
        ;;
esac
