#!/usr/bin/env bash
# Stop the single-node SLURM cluster of scripts/slurm/up.sh: cancel its jobs, stop its daemons by
# their PID files (slurmd, slurmctld, slurmdbd, mariadbd, munged) and remove the configuration
# up.sh wrote. Safe to run when nothing runs. Packages, SLURM state and logs stay; `--purge` also
# deletes the state and the logs (the accounting database stays in /var/lib/mysql).
#
# The configuration goes because with a slurm.conf and no controller every SLURM client call
# waits ~10 s for it, and so does every `snakemake` start while snakemake-executor-plugin-slurm is
# installed (it runs `scontrol show config` to build its --help); up.sh writes it again.
#
#   bash scripts/slurm/down.sh [--purge]
set -uo pipefail

PURGE=0
case ${1:-} in
    --purge) PURGE=1 ;;
    "") ;;
    *) echo "down.sh: unknown option $1 (only --purge)" >&2; exit 2 ;;
esac
LOGS=${LOCAL_SLURM_LOGS:-/var/log/slurm-local}
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/slurm/lib.sh
source "$HERE/lib.sh"
status=0

# running PID: the process exists and is not a zombie waiting to be reaped
running() { [[ -d /proc/$1 && "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]]; }

# stop PIDFILE:NAME...: SIGTERM them together, SIGKILL whatever still runs after 20 s
stop() {
    local daemon pid i left
    local -a pids=() names=()
    for daemon in "$@"; do
        if pid=$(alive "${daemon%%:*}" "${daemon##*:}"); then
            kill -TERM "$pid" && pids+=("$pid") && names+=("${daemon##*:}")
        fi
    done
    for ((i = 0; i < 200; i++)); do
        left=0
        for pid in "${pids[@]}"; do running "$pid" && left=1; done
        ((left)) || break
        sleep 0.1
    done
    for i in "${!pids[@]}"; do
        if running "${pids[$i]}"; then
            echo "down.sh: ${names[$i]} (${pids[$i]}) ignored SIGTERM for 20 s, killing it" >&2
            kill -KILL "${pids[$i]}" 2>/dev/null
        fi
        echo "down.sh: stopped ${names[$i]} (${pids[$i]})"
    done
    for daemon in "$@"; do rm -f "${daemon%%:*}"; done
}

if alive /run/slurmctld.pid slurmctld >/dev/null; then
    jobs=$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')
    if [[ -n ${jobs// /} ]]; then
        echo "down.sh: cancelling jobs $jobs"
        # shellcheck disable=SC2086  # one argument per job id
        scancel $jobs 2>/dev/null
        for ((i = 0; i < 60; i++)); do
            [[ -z "$(squeue -h -t PD,R,CG -o %A 2>/dev/null)" ]] && break
            sleep 0.5
        done
    fi
fi
# the step daemons of finished jobs exit on their own within a second or two
for ((i = 0; i < 30; i++)); do
    stepds=()
    for dir in /proc/[0-9]*; do
        [[ "$(cat "$dir/comm" 2>/dev/null)" == slurmstepd ]] && stepds+=("${dir#/proc/}")
    done
    ((${#stepds[@]})) || break
    ((i < 29)) && sleep 0.1 && continue
    echo "down.sh: ending leftover slurmstepd ${stepds[*]}"
    kill -TERM "${stepds[@]}" 2>/dev/null
done

stop /run/slurmd.pid:slurmd /run/slurmctld.pid:slurmctld
stop /run/slurmdbd.pid:slurmdbd
stop /run/mysqld/mysqld.pid:mariadbd /run/munge/munged.pid:munged
for daemon in "${DAEMONS[@]}"; do
    alive "${daemon%%:*}" "${daemon##*:}" >/dev/null && { echo "down.sh: ${daemon##*:} still runs" >&2; status=1; }
done

# only a configuration up.sh wrote (its first line says so), never a real cluster's
if [[ "$(head -n 1 /etc/slurm/slurm.conf 2>/dev/null)" == "# written by scripts/slurm/up.sh"* ]]; then
    rm -f /etc/slurm/slurm.conf /etc/slurm/gres.conf /etc/slurm/slurmdbd.conf
fi
if ((PURGE)); then
    rm -rf /var/spool/slurmctld /var/spool/slurmd /var/lib/slurm-local "$LOGS"
    echo "down.sh: deleted the SLURM state and logs"
fi
exit "$status"
