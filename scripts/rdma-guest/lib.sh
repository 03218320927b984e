# shellcheck shell=sh
# Helpers shared by the soft-RoCE guest's scripts (init.sh, cluster.sh,
# bench.sh; busybox sh). initrd.sh installs it as /usr/lib/xfuse-guest.sh;
# each script sources it. W, where a script sets it, is its work
# directory.

# param NAME: the value of rdma.NAME= on the kernel command line (the last).
param() { tr ' ' '\n' </proc/cmdline | sed -n "s/^rdma\.$1=//p" | tail -n 1; }

# Seconds since boot.
uptime_s() { cut -d' ' -f1 /proc/uptime; }

# within SECONDS COMMAND...: waits up to SECONDS for COMMAND to succeed.
within() {
    n=$1; shift
    while [ "$n" -gt 0 ]; do
        "$@" >/dev/null 2>&1 && return 0
        sleep 1; n=$((n - 1))
    done
    return 1
}

# metric HOST:PORT NAME: a counter of the /metrics there, summed over its
# label sets (%.0f: busybox awk's %d stops at 2^31).
metric() {
    wget -q -O - "http://$1/metrics" 2>/dev/null | grep -E "^$2(\{| )" |
        awk '{ s += $NF } END { printf "%.0f\n", s }'
}

# The last lines of every log in $W.
tail_logs() {
    for f in "$W"/*.log; do [ -e "$f" ] && { echo "--- $f"; tail -n 15 "$f"; }; done
}
