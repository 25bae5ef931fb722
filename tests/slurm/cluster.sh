#!/usr/bin/env bash
# A private single-node Slurm cluster on localhost for tests:
#   cluster.sh start DIR   start munged, slurmctld and slurmd with everything under DIR
#   cluster.sh stop DIR    stop the daemons that `start DIR` started (by their pid files), then remove DIR
# Clients reach it with SLURM_CONF=DIR/slurm.conf and DIR/bin first on PATH (start prints both as its last
# two lines). DIR/bin/srun sets SLURM_CONF again before the real srun: the Slurm job-step plugin of Snakemake
# removes SLURM_CONF from the environment of the srun it starts inside a job, so without the wrapper that
# srun would look for /etc/slurm/slurm.conf.
#
# Safe next to a real cluster: its own config (SLURM_CONF, never /etc/slurm), its own state, spool, pid
# and log paths, its own munge key and socket, free ports picked at start, all under DIR; it signals only
# the pids it wrote; it refuses to start where a slurmctld already answers.
# Exit 3 and a last line starting with SKIP where it cannot run: no slurm-wlm/munge, not root, a cluster
# already here, daemons that do not come up. Needs Debian's slurm-wlm and munge (`.ci/run` installs them).
set -uo pipefail

skip() {
    echo "SKIP: $*"
    exit 3
}

# The pid in FILE, if that process is still the daemon NAME (a pid file can outlive its process).
live_pid() {
    local file=$1 name=$2 pid
    [ -s "$file" ] || return 1
    pid=$(tr -dc 0-9 <"$file")
    [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ] && echo "$pid"
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start() {
    local dir=$1
    for cmd in slurmctld slurmd munged sbatch srun squeue scontrol python3; do
        command -v "$cmd" >/dev/null || skip "$cmd not found (apt-get install slurm-wlm munge)"
    done
    [ "$(id -u)" = 0 ] || skip "starting slurmd needs root"
    # A cluster this machine already belongs to (its own SLURM_CONF or /etc/slurm/slurm.conf): leave it be.
    local answer
    if answer=$(timeout 20 scontrol ping 2>/dev/null) && grep -q "is UP" <<<"$answer"; then
        skip "a slurmctld already answers here ($(grep -m1 'is UP' <<<"$answer" | xargs)): this test starts its own cluster only where none runs"
    fi
    mkdir -p "$dir"/{ctld,spool,log,munge} || skip "cannot create $dir"
    chmod 700 "$dir" "$dir/munge"
    local conf=$dir/slurm.conf sock=$dir/munge/munge.socket key=$dir/munge/munge.key
    export SLURM_CONF=$conf

    dd if=/dev/urandom bs=1 count=1024 of="$key" 2>/dev/null && chmod 400 "$key"
    munged --force --socket="$sock" --key-file="$key" --pid-file="$dir/munged.pid" \
        --log-file="$dir/log/munged.log" --seed-file="$dir/munge/munged.seed" ||
        skip "munged did not start: $(tail -2 "$dir/log/munged.log" 2>/dev/null)"

    local host mem ctld_port d_port
    host=$(hostname -s)
    mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
    ctld_port=$(free_port) && d_port=$(free_port) || skip "no free port"
    cat >"$conf" <<CONF
ClusterName=convergence-test
SlurmctldHost=$host
SlurmctldPort=$ctld_port
SlurmdPort=$d_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$sock
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=3600
ReturnToService=2
StateSaveLocation=$dir/ctld
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
NodeName=$host CPUs=$(nproc) RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
    mkdir -p "$dir/bin"
    printf '#!/bin/sh\nexport SLURM_CONF=%s\nexec %s "$@"\n' "$conf" "$(command -v srun)" >"$dir/bin/srun"
    chmod 755 "$dir/bin/srun"
    slurmctld -c -f "$conf" || skip "slurmctld did not start: $(tail -3 "$dir/log/slurmctld.log" 2>/dev/null)"
    slurmd -f "$conf" || skip "slurmd did not start: $(tail -3 "$dir/log/slurmd.log" 2>/dev/null)"
    for _ in $(seq 90); do
        if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
            echo "slurm up on $host (ports $ctld_port, $d_port) in $dir"
            echo "PATH=$dir/bin"
            echo "SLURM_CONF=$conf"
            return 0
        fi
        sleep 1
    done
    echo "sinfo:"; sinfo -N -l 2>&1
    echo "slurmctld log:"; tail -5 "$dir/log/slurmctld.log" 2>/dev/null
    echo "slurmd log:"; tail -5 "$dir/log/slurmd.log" 2>/dev/null
    stop "$dir" >/dev/null 2>&1
    skip "the node did not become idle within 90 s"
}

stop() {
    local dir=$1 pids=() pid
    [ -d "$dir" ] || return 0
    if [ -f "$dir/slurm.conf" ] && live_pid "$dir/slurmctld.pid" slurmctld >/dev/null; then
        SLURM_CONF=$dir/slurm.conf timeout 20 scancel --user "$(id -un)" >/dev/null 2>&1
    fi
    for daemon in slurmd slurmctld munged; do
        pid=$(live_pid "$dir/$daemon.pid" "$daemon") && pids+=("$pid")
    done
    [ ${#pids[@]} -gt 0 ] && kill "${pids[@]}" 2>/dev/null
    for _ in $(seq 20); do # they hold their ports and files until they have exited
        local alive=0
        for pid in "${pids[@]}"; do [ -d "/proc/$pid" ] && alive=1; done
        [ $alive = 0 ] && break
        sleep 0.5
    done
    for pid in "${pids[@]}"; do [ -d "/proc/$pid" ] && kill -9 "$pid" 2>/dev/null; done
    rm -rf "$dir"
    return 0
}

case "${1:-}" in
    start | stop)
        [ -n "${2:-}" ] || { echo "usage: $0 start|stop DIR"; exit 2; }
        "$1" "$2"
        ;;
    *) echo "usage: $0 start|stop DIR"; exit 2 ;;
esac
