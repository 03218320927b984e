#!/bin/busybox sh
# shellcheck shell=dash
# /init of the soft-RoCE guest (initrd.sh packs it): loads soft-RoCE, then
# for each setup makes its rxe devices and runs /usr/bin/rdma_probe on them.
# The guest has no network to the host: every address here is on its own
# dummy or veth interfaces.
#
# Kernel command line:
#   rdma.setups=loop,veth     which setups, in order (the default)
#   rdma.threads=N            the probe's concurrent threads (default 4)
#
#   loop: one rxe (rxe0) on a dummy netdev; both queue pairs on it. rxe
#         hands packets to itself (destination MAC is its own): the verbs
#         and the driver are exercised, no packet crosses a link.
#   veth: rxe1 and rxe2 on the two ends of a veth pair; routing rules make
#         10.2.0.1 <-> 10.2.0.2 cross the pair as RoCE v2 (UDP 4791)
#         packets instead of taking the loopback a local address would.
#   cluster: the veth devices, and /usr/bin/cluster.sh on them: a storage
#         cluster and a mount moving file data by RDMA (scripts/rdma-test.sh).
#   bench: the veth devices, and /usr/bin/bench.sh on them: perftest's
#         limit, then fio through a tcp and an rdma mount of one cluster
#         (scripts/rdma-bench.sh). rdma.bench_timeout=SECONDS bounds it
#         (default 1500).
#
# Lines for the host start with "GUEST".
/bin/busybox --install -s /bin
export PATH=/usr/bin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run

say() { echo "GUEST $*"; }
# param, uptime_s
# shellcheck source=scripts/rdma-guest/lib.sh
. /usr/lib/xfuse-guest.sh
# busybox would run its own ip applet for a bare "ip".
IP=/usr/bin/ip

say "up at $(uptime_s)s: kernel $(uname -r), $(grep -c ^processor /proc/cpuinfo) cpu(s)," \
    "clocksource $(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)"
# Registered memory is pinned: no limit on it.
ulimit -l unlimited
for m in $(cat /lib/modules/load-order); do
    insmod "/lib/modules/$m.ko" || say "insmod $m failed"
done
$IP link set lo up

setups=$(param setups | tr , " ")
threads=$(param threads)
failed=0

# probe SETUP DEV_A DEV_B: runs the probe, its lines prefixed with the setup.
probe() {
    t0=$(uptime_s)
    timeout 1200 /usr/bin/rdma_probe "$2" "$3" ${threads:-4} >/tmp/probe.out 2>&1
    rc=$?
    sed "s/^/GUEST [$1] /" /tmp/probe.out
    say "[$1] probe exit $rc after $(awk "BEGIN { print $(uptime_s) - $t0 }")s"
    [ $rc = 0 ] || failed=1
}
port() { # port DEV: what ibv_devinfo says of its port
    ibv_devinfo -d "$1" 2>&1 | grep -E 'state:|active_mtu' | tr -s ' \t' ' ' | tr '\n' ';'
}
packets() { # packets NETDEV
    echo "$(cat /sys/class/net/$1/statistics/tx_packets) sent, $(cat /sys/class/net/$1/statistics/rx_packets) received"
}
counters() { # counters DEV...: the driver's counters that are not 0
    for d in "$@"; do
        c=$(cd /sys/class/infiniband/$d/ports/1/hw_counters 2>/dev/null &&
            for f in *; do v=$(cat $f); [ "$v" != 0 ] && printf ' %s=%s' $f $v; done)
        printf '%s:%s; ' "$d" "${c:- none}"
    done
}
# Packets the kernel dropped for a full input backlog, over all CPUs
# (second column of softnet_stat, hex).
backlog_drops() {
    total=0
    for h in $(awk '{ print $2 }' /proc/net/softnet_stat); do total=$((total + 0x$h)); done
    echo $total
}

# veth_up: the veth pair, its routing, and rxe1/rxe2 on its ends (once).
veth_up() {
    [ -e /sys/class/infiniband/rxe2 ] && return 0
    $IP link add v0 type veth peer name v1
    $IP addr add 10.2.0.1/24 dev v0
    $IP addr add 10.2.0.2/24 dev v1
    $IP link set v0 up
    $IP link set v1 up
    # Packets from one local address to another arrive on the "wrong"
    # interface: no reverse-path filter, accept local sources.
    for i in all default v0 v1; do
        echo 0 >/proc/sys/net/ipv4/conf/$i/rp_filter
        echo 1 >/proc/sys/net/ipv4/conf/$i/accept_local
    done
    # rxe sends in bursts; the default backlog of 1000 drops some.
    echo 10000 >/proc/sys/net/core/netdev_max_backlog
    # A veth delivers on the sending CPU's backlog, and rxe sends a
    # queue pair's packets from whichever CPU runs its task: with two
    # CPUs they overtake each other, the responder NAKs the gap, and
    # the requester resends everything after it (go-back-N). Steering
    # every received packet to one CPU (RPS) keeps them in order.
    for i in v0 v1; do echo 1 >/sys/class/net/$i/queues/rx-0/rps_cpus; done
    # The local table would route 10.2.0.x through lo. Look it up after
    # table 100 (which sends each address out of the other end), except
    # for packets arriving on the veth, which must be delivered locally.
    $IP rule add pref 100 lookup local
    $IP rule del pref 0
    $IP rule add pref 10 iif v0 lookup local
    $IP rule add pref 10 iif v1 lookup local
    $IP route add 10.2.0.2/32 dev v0 src 10.2.0.1 table 100
    $IP route add 10.2.0.1/32 dev v1 src 10.2.0.2 table 100
    $IP rule add pref 20 lookup 100
    # No ARP across that arrangement: static neighbours.
    $IP neigh replace 10.2.0.2 lladdr "$(cat /sys/class/net/v1/address)" dev v0 nud permanent
    $IP neigh replace 10.2.0.1 lladdr "$(cat /sys/class/net/v0/address)" dev v1 nud permanent
    rdma link add rxe1 type rxe netdev v0 && rdma link add rxe2 type rxe netdev v1
}

for setup in ${setups:-loop veth}; do
    case $setup in
    loop)
        $IP link add d0 type dummy
        $IP addr add 10.1.0.1/24 dev d0
        $IP link set d0 up
        rdma link add rxe0 type rxe netdev d0 || { say "[loop] rdma link add rxe0 failed"; failed=1; continue; }
        say "[loop] rxe0 on d0: $(port rxe0)"
        probe loop rxe0 rxe0
        say "[loop] counters: $(counters rxe0)"
        ;;
    veth)
        if ! veth_up; then
            say "[veth] rdma link add rxe1/rxe2 failed"
            failed=1
            continue
        fi
        say "[veth] rxe1 on v0: $(port rxe1) rxe2 on v1: $(port rxe2)"
        say "[veth] v0 before: $(packets v0)"
        probe veth rxe1 rxe2
        say "[veth] v0 after: $(packets v0); backlog drops: $(backlog_drops)"
        say "[veth] counters: $(counters rxe1 rxe2)"
        ;;
    cluster)
        # A metadata service, three storage services and a mount with
        # --data-transport rdma (scripts/rdma-guest/cluster.sh).
        if ! veth_up; then
            say "[cluster] rdma link add rxe1/rxe2 failed"
            failed=1
            continue
        fi
        timeout 1500 /usr/bin/cluster.sh 2>&1 | while IFS= read -r line; do echo "GUEST [cluster] $line"; done
        say "[cluster] counters: $(counters rxe1 rxe2)"
        ;;
    bench)
        if ! veth_up; then
            say "[bench] rdma link add rxe1/rxe2 failed"
            failed=1
            continue
        fi
        say "[bench] rxe1 on v0: $(port rxe1) rxe2 on v1: $(port rxe2)"
        bench_timeout=$(param bench_timeout)
        timeout "${bench_timeout:-1500}" /usr/bin/bench.sh 2>&1 | while IFS= read -r line; do echo "GUEST [bench] $line"; done
        say "[bench] v0: $(packets v0); backlog drops: $(backlog_drops)"
        say "[bench] counters: $(counters rxe1 rxe2)"
        ;;
    *)
        say "unknown setup $setup"
        failed=1
        ;;
    esac
done
# What the kernel said of soft-RoCE, and any oops or warning.
dmesg | grep -E -i 'rxe|rdma|infiniband' | grep -v -i 'command line' | tail -n 20 | sed 's/^/GUEST [dmesg] /'
dmesg | grep -E 'BUG:|WARNING:|Oops' | head -n 20 | sed 's/^/GUEST [dmesg] /'
say "done at $(uptime_s)s, failed=$failed"
poweroff -f
