#!/usr/bin/env bash
# Stand up a single-node SLURM cluster on this machine, for CI and for rehearsing
# `snakemake --profile profiles/slurm` before using a real cluster. Debian/Ubuntu, as root.
#
#   bash scripts/slurm/up.sh [--gpus N] [--no-accounting] [--memory-mb MB]
#
# Installs munge and SLURM from the distribution (and slurmdbd + MariaDB for accounting), writes
# /etc/slurm/{slurm,gres,slurmdbd}.conf, starts the daemons (no systemd needed) and checks that
# `srun` runs a job, with a GPU when there are any. Idempotent: when the daemons already run with
# the same configuration it returns at once; otherwise it stops them (scripts/slurm/down.sh) and
# starts them afresh. Tear down with scripts/slurm/down.sh.
#
# The one node, `localhost`, is shaped like a GPU node rather than like this machine:
#   - N fake GPUs (default 2): gres `gpu` backed by character devices cloned from /dev/null, so
#     jobs get a real GPU allocation (CUDA_VISIBLE_DEVICES, gres/gpu) but torch sees no GPU;
#   - it advertises --memory-mb (default 262144, the profile's paper-scale requests fit) whatever
#     the machine has; memory is not enforced here (no cgroups), the demo's jobs use < 1 GB.
# Accounting (slurmdbd + MariaDB, so that `sacct` works) is on by default; --no-accounting starts
# only munged, slurmctld and slurmd (sacct then fails: the profile polls with squeue anyway).
#
# Environment, same meaning as the options: LOCAL_SLURM_GPUS, LOCAL_SLURM_ACCOUNTING (1 or 0),
# LOCAL_SLURM_MEMORY_MB; LOCAL_SLURM_LOGS (default /var/log/slurm-local), LOCAL_SLURM_TIMEOUT
# (seconds to wait for each daemon, default 60).
set -euo pipefail

GPUS=${LOCAL_SLURM_GPUS:-2}
ACCOUNTING=${LOCAL_SLURM_ACCOUNTING:-1}
MEMORY_MB=${LOCAL_SLURM_MEMORY_MB:-262144}
LOGS=${LOCAL_SLURM_LOGS:-/var/log/slurm-local}
TIMEOUT=${LOCAL_SLURM_TIMEOUT:-60}
while (($#)); do
    case $1 in
        --gpus) GPUS=$2; shift 2 ;;
        --accounting) ACCOUNTING=1; shift ;;
        --no-accounting) ACCOUNTING=0; shift ;;
        --memory-mb) MEMORY_MB=$2; shift 2 ;;
        -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
        *) echo "up.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ $GPUS =~ ^[0-9]+$ && $MEMORY_MB =~ ^[0-9]+$ && $ACCOUNTING =~ ^[01]$ ]] ||
    { echo "up.sh: --gpus and --memory-mb take integers, LOCAL_SLURM_ACCOUNTING 1 or 0" >&2; exit 2; }

HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/slurm/lib.sh
source "$HERE/lib.sh"
STARTED=$SECONDS
CLUSTER=local
FAKE_GPU_DIR=/var/lib/slurm-local/gpu
DB_PASSWORD=slurm-local   # the database only listens on a Unix socket, reachable by root

say() { echo "up.sh: $*"; }
fail() {
    echo "up.sh: $*" >&2
    for log in "$LOGS"/*.log; do
        [[ -f $log ]] && { echo "--- tail of $log" >&2; tail -n 15 "$log" >&2; }
    done
    exit 1
}
# wait_until WHAT COMMAND...: retry COMMAND for up to TIMEOUT seconds; give up at once when the
# daemon WHAT wrote its PID file and died (e.g. a fatal configuration error)
wait_until() {
    local what=$1 deadline=$((SECONDS + TIMEOUT)) daemon
    shift
    until "$@" >/dev/null 2>&1; do
        for daemon in "${DAEMONS[@]}"; do
            if [[ ${daemon##*:} == "$what" && -s ${daemon%%:*} ]] && ! alive "${daemon%%:*}" "$what" >/dev/null; then
                fail "$what exited"
            fi
        done
        ((SECONDS < deadline)) || fail "$what did not come up within ${TIMEOUT}s"
        sleep 0.2
    done
}

[[ $(id -u) == 0 ]] || { echo "up.sh: run as root (it installs packages and starts daemons)" >&2; exit 1; }

# ---- packages
packages=(munge slurmctld slurmd slurm-client)
((ACCOUNTING)) && packages+=(slurmdbd mariadb-server)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'ok installed' || missing+=("$package")
done
if ((${#missing[@]})); then
    say "installing ${missing[*]}"
    # no init system here: keep the packages' scripts from starting daemons, we start them below
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# ---- configuration
# CPUs, sockets, cores, threads as slurmd detects them; memory and GPUs as configured above
hardware=$(slurmd -C | head -n 1 | sed -E 's/^NodeName=[^ ]+ //; s/ RealMemory=[0-9]+//; s/ Gres=[^ ]+//')
gres_types="" node_gres=""
if ((GPUS > 0)); then
    gres_types="GresTypes=gpu"
    node_gres=" Gres=gpu:$GPUS"
fi
if ((ACCOUNTING)); then
    accounting="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageTRES=gres/gpu
JobAcctGatherType=jobacct_gather/linux"
else
    accounting="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
fi

slurm_conf="# written by scripts/slurm/up.sh: a single-node cluster on localhost
ClusterName=$CLUSTER
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MailProg=/bin/true
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
# no cgroups here: processes tracked through /proc, no CPU binding, memory not enforced
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# a job that asks for no memory must not take the whole node
DefMemPerCPU=1000
# the node advertises the memory below, not what slurmd measures
SlurmdParameters=config_overrides
$gres_types
$accounting
JobCompType=jobcomp/none
# finished jobs stay visible to squeue and scontrol for an hour (status polling, tests)
MinJobAge=3600
ReturnToService=2
NodeName=localhost NodeAddr=127.0.0.1 $hardware RealMemory=$MEMORY_MB$node_gres State=UNKNOWN
PartitionName=local Nodes=localhost Default=YES MaxTime=INFINITE State=UP"

# slurmd 22.05 drops a GPU without File= ("Removing file-less GPU"), so give each a device node
if ((GPUS > 0)); then
    gres_conf="Name=gpu File=$FAKE_GPU_DIR/gpu[0-$((GPUS - 1))]"
else
    gres_conf="# no GPUs"
fi

dbd_conf="AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
LogFile=$LOGS/slurmdbd.log
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DB_PASSWORD
StorageLoc=slurm_acct_db"

configured() {
    [[ "$(cat /etc/slurm/slurm.conf 2>/dev/null)" == "$slurm_conf" ]] &&
        [[ "$(cat /etc/slurm/gres.conf 2>/dev/null)" == "$gres_conf" ]] &&
        { ((!ACCOUNTING)) || [[ "$(cat /etc/slurm/slurmdbd.conf 2>/dev/null)" == "$dbd_conf" ]]; }
}
node_usable() { sinfo -h -n localhost -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated|completing)$'; }
running() {
    local daemon
    for daemon in "${DAEMONS[@]}"; do
        [[ $daemon == *:mariadbd || $daemon == *:slurmdbd ]] && ((!ACCOUNTING)) && continue
        alive "${daemon%%:*}" "${daemon##*:}" >/dev/null || return 1
    done
}

if configured && running && node_usable; then
    say "already up (accounting=$ACCOUNTING, gpus=$GPUS)"
    exit 0
fi
if any_alive; then
    say "restarting: the configuration changed or a daemon is missing"
    bash "$HERE/down.sh" >/dev/null || fail "could not stop the running daemons"
fi

for daemon in "${DAEMONS[@]}"; do rm -f "${daemon%%:*}"; done   # none of them runs now
mkdir -p "$LOGS" /etc/slurm /var/spool/slurmctld /var/spool/slurmd
chmod 1777 "$LOGS"   # mariadbd writes its log here as user mysql
for log in "$LOGS"/*.log; do [[ -f $log ]] && mv -f "$log" "$log.prev"; done
if ((GPUS > 0)); then
    mkdir -p "$FAKE_GPU_DIR"
    for ((i = 0; i < GPUS; i++)); do
        [[ -c $FAKE_GPU_DIR/gpu$i ]] || mknod -m 666 "$FAKE_GPU_DIR/gpu$i" c 1 3
    done
fi
printf '%s\n' "$slurm_conf" >/etc/slurm/slurm.conf
printf '%s\n' "$gres_conf" >/etc/slurm/gres.conf
if ((ACCOUNTING)); then
    (umask 077 && printf '%s\n' "$dbd_conf" >/etc/slurm/slurmdbd.conf)
fi

# ---- daemons, each daemonising itself and writing its PID file under /run
if [[ ! -s /etc/munge/munge.key ]]; then
    mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
fi
mkdir -p /run/munge
chown munge:munge /run/munge
runuser -u munge -- /usr/sbin/munged
wait_until munged bash -c 'munge -n | unmunge'

if ((ACCOUNTING)); then
    mkdir -p /run/mysqld
    chown mysql:mysql /run/mysqld
    [[ -d /var/lib/mysql/mysql ]] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
    # Unix socket only; the InnoDB settings are the ones slurmdbd asks for
    setsid /usr/sbin/mariadbd --user=mysql --skip-networking --pid-file=/run/mysqld/mysqld.pid \
        --socket=/run/mysqld/mysqld.sock --log-error="$LOGS/mariadb.log" \
        --innodb-buffer-pool-size=256M --innodb-lock-wait-timeout=900 </dev/null >/dev/null 2>&1 &
    wait_until mariadbd mariadb-admin ping
    # ALTER as well: CREATE USER IF NOT EXISTS keeps an older password
    mariadb -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
        CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASSWORD';
        ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$DB_PASSWORD';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
    /usr/sbin/slurmdbd
    wait_until slurmdbd sacctmgr -n list cluster
    sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER" || sacctmgr -i add cluster "$CLUSTER" >/dev/null
fi

/usr/sbin/slurmctld
wait_until slurmctld bash -c 'scontrol ping | grep -q UP'
/usr/sbin/slurmd -N localhost
wait_until slurmd bash -c 'sinfo -h -n localhost -o %T | grep -qvE "^(unknown|down)"'
# a node drained by an earlier bad registration stays drained across restarts
if sinfo -h -n localhost -o %T | grep -qE 'drain|down|inval|fail'; then
    scontrol update nodename=localhost state=resume
fi
wait_until "node localhost (state $(sinfo -h -n localhost -o %T 2>/dev/null))" node_usable

# ---- check: a job runs, and gets a GPU when the node has any
srun -N1 -n1 -t 1 true || fail "srun could not run a job"
if ((GPUS > 0)); then
    # shellcheck disable=SC2016  # expanded inside the job
    visible=$(srun -N1 -n1 -t 1 --gpus=1 bash -c 'echo "$CUDA_VISIBLE_DEVICES"') || fail "srun --gpus=1 failed"
    [[ $visible =~ ^[0-9]+$ ]] || fail "a --gpus=1 job saw CUDA_VISIBLE_DEVICES='$visible'"
fi
say "up in $((SECONDS - STARTED))s: node localhost, $(nproc) CPUs, ${MEMORY_MB} MB, $GPUS GPU(s), accounting=$ACCOUNTING, logs in $LOGS"
