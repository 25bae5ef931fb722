#!/usr/bin/env bash
# A single-node Slurm cluster on localhost for tests: `cluster.sh start` / `cluster.sh stop`.
# Exit 3 (and a line starting with SKIP) where it cannot run: no slurm-wlm/munge, not root, daemons
# that do not come up. Needs Debian's slurm-wlm and munge (`.ci/run` installs them where it can).
set -uo pipefail
STATE=${SLURM_TEST_STATE:-/tmp/convergence-slurm}
# The config goes where every client finds it (job steps too) and is removed on stop: while it exists,
# Slurm clients, including the Snakemake Slurm plugin when imported (`scontrol show config`), wait ~10 s
# for a controller that is down.
CONF=/etc/slurm/slurm.conf

skip() { echo "SKIP: $*"; exit 3; }

start() {
    for cmd in slurmctld slurmd munged sbatch squeue; do
        command -v "$cmd" >/dev/null || skip "$cmd not found (apt-get install slurm-wlm munge)"
    done
    [ "$(id -u)" = 0 ] || skip "starting munged and slurmd needs root"
    stop >/dev/null 2>&1
    rm -rf "$STATE"  # a clean cluster: no node or job state from an earlier run
    mkdir -p "$STATE"/{ctld,d,log} /etc/munge /run/munge /var/log/munge /var/lib/munge "$(dirname "$CONF")"
    if [ ! -s /etc/munge/munge.key ]; then
        dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
    fi
    chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge
    chmod 700 /etc/munge && chmod 400 /etc/munge/munge.key
    pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged || skip "munged did not start"
    local host mem
    host=$(hostname -s)
    mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
    cat > "$CONF" <<CONF
ClusterName=convergence-test
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=3600
ReturnToService=2
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
NodeName=$host CPUs=$(nproc) RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
    slurmctld -c || skip "slurmctld did not start: $(tail -3 "$STATE/log/slurmctld.log" 2>/dev/null)"
    slurmd || skip "slurmd did not start: $(tail -3 "$STATE/log/slurmd.log" 2>/dev/null)"
    for _ in $(seq 90); do
        if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
            echo "slurm up on $host"
            return 0
        fi
        sleep 1
    done
    echo "sinfo:"; sinfo -N -l 2>&1
    echo "slurmctld log:"; tail -5 "$STATE/log/slurmctld.log" 2>/dev/null
    echo "slurmd log:"; tail -5 "$STATE/log/slurmd.log" 2>/dev/null
    stop >/dev/null 2>&1
    skip "the node did not become idle within 90 s"
}

stop() {
    [ -f "$CONF" ] && scancel --user "$(id -un)" >/dev/null 2>&1
    pkill -x slurmd; pkill -x slurmctld; pkill -x munged
    for _ in $(seq 20); do  # the daemons hold their ports until they have exited
        pgrep -x slurmd >/dev/null || pgrep -x slurmctld >/dev/null || pgrep -x munged >/dev/null || break
        sleep 0.5
    done
    pkill -9 -x slurmd; pkill -9 -x slurmctld; pkill -9 -x munged
    rm -f "$CONF"
    return 0
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop"; exit 2 ;;
esac
