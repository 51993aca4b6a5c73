# shellcheck shell=bash
# Shared by up.sh and down.sh (sourced): which of the cluster's daemons run, by PID file.

# PID file and process name of each daemon, in start order
DAEMONS=(
    /run/munge/munged.pid:munged
    /run/mysqld/mysqld.pid:mariadbd
    /run/slurmdbd.pid:slurmdbd
    /run/slurmctld.pid:slurmctld
    /run/slurmd.pid:slurmd
)

# alive PIDFILE NAME: print the PID and succeed if the process in PIDFILE runs and is NAME
alive() {
    local pid
    pid=$(tr -dc '0-9' 2>/dev/null <"$1") || return 1
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 1
    [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$2" ]] || return 1
    # a killed daemon can linger as a zombie here (PID 1 reaps slowly): that is not alive
    [[ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]] || return 1
    echo "$pid"
}

any_alive() {
    local daemon
    for daemon in "${DAEMONS[@]}"; do
        alive "${daemon%%:*}" "${daemon##*:}" >/dev/null && return 0
    done
    return 1
}
