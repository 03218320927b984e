#!/bin/sh
# Runs inside the soft-RoCE guest (busybox sh) for scripts/rdma-bench.sh,
# after init.sh made rxe1 on v0 (10.2.0.1, the client side) and rxe2 on v1
# (10.2.0.2, the service side). In this one boot:
#
#   1. the limit: perftest ib_write_bw and ib_read_bw, 1 MiB messages,
#      server on rxe2, client on rxe1, each device's RoCE v2 IPv4 GID;
#      before the cluster runs, between its workloads, and after it is
#      gone (the host's load drifts);
#   2. one cluster (a metadata service, ONE storage service with one
#      target: R=1, --data-transport rdma, which serves TCP callers too)
#      and two mounts of it side by side, one --data-transport tcp, one
#      --data-transport rdma; fio on each: 1 MiB sequential write, 1 MiB
#      sequential read, buffered 1 MiB writes with end_fsync, 4 KiB random
#      read latency (psync, iodepth 1), then 1 MiB sequential writes and
#      reads from 4 jobs at once (the queue deeper, as perftest's is).
#      Each workload runs tcp, rdma, rdma, tcp, so drift over the run
#      weighs on both alike;
#   3. around each run, the CPU time (utime + stime from /proc/PID/stat) of
#      the mount and of the storage service, and of the whole guest (busy
#      ticks of /proc/stat: rxe and TCP do their packet work in the kernel,
#      often in softirq, charged to no process of ours);
#   4. after the cluster is gone, perftest again with 1 to 64 transfers in
#      flight, of 4 KiB and of 1 MiB: the depth the device needs, which
#      the credit window must not cut (rpc::rdma::DEFAULT_WINDOW).
#
# Every result is one line "BENCH kind=... key=value ..." for the host to
# parse; everything else is for a person reading the console.
#
# Kernel command line: rdma.seconds=N (per workload run, default 15),
#   rdma.file_mib=N (the sequential file, default 128: a write run wraps
#   around it; a read run reads it, wrapping), rdma.buf_mib=N (most a
#   buffered-write run writes before its fsync, default 320),
#   rdma.rand_mib=N (the random-read file, default 64).
X=/usr/bin/xfused
W=/bench
# param, uptime_s, within, metric, tail_logs
# shellcheck source=scripts/rdma-guest/lib.sh
. /usr/lib/xfuse-guest.sh
META=10.2.0.2:27000
STORAGE=10.2.0.2:27100
STORAGE_METRICS=127.0.0.1:27200

RUN_S=$(param seconds)
RUN_S=${RUN_S:-15}
FILE_MIB=$(param file_mib)
FILE_MIB=${FILE_MIB:-128}
BUF_MIB=$(param buf_mib)
BUF_MIB=${BUF_MIB:-320}
RAND_MIB=$(param rand_mib)
RAND_MIB=${RAND_MIB:-64}
# The deep workloads' jobs at once, and the mounts' FUSE workers: more
# than the jobs, so that every job's request is in flight at once (the
# default is one worker per CPU: 2).
DEEP_JOBS=4
MOUNT_THREADS=8
# A fio or perftest run ends well within this, or it is stuck.
RUN_TIMEOUT_S=$((RUN_S * 4 + 120))

log() { echo "bench: $*"; }
ticks() { # ticks PID: utime + stime, in clock ticks (comm is "(xfused)": no spaces)
    awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0
}
guest_ticks() { # busy ticks of every CPU: user nice system irq softirq steal
    awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat
}
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
# Transport retries of both rxe devices: each one is a queue pair that
# waited out its ACK timeout (kmod_shim::verbs, perftest's own) for a
# packet lost or late, and resent what was not acknowledged.
rxe_retries() {
    cat /sys/class/infiniband/rxe1/ports/1/hw_counters/completer_retry_err \
        /sys/class/infiniband/rxe2/ports/1/hw_counters/completer_retry_err 2>/dev/null |
        awk '{ s += $1 } END { printf "%.0f\n", s }'
}

# Clock ticks per second. busybox has no getconf: a process's start time
# (field 22 of /proc/PID/stat) is in ticks since boot, so awk's own, over
# the uptime read just before it started, is CLK_TCK; rounded to the
# nearest value Linux uses.
clk_tck() {
    awk -v up="$(uptime_s)" '{ r = $22 / up; best = 100
        n = split("100 250 300 1000", c, " ")
        for (i = 1; i <= n; i++) if ((r - c[i]) * (r - c[i]) < (r - best) * (r - best)) best = c[i]
        print best }' /proc/self/stat
}

# The index of DEV's RoCE v2 GID that holds an IPv4-mapped address; waits
# up to 10 s for the kernel to fill it in.
gid_index() {
    d=/sys/class/infiniband/$1/ports/1
    n=0
    while [ $n -lt 100 ]; do
        for f in "$d"/gids/*; do
            i=${f##*/}
            case $(cat "$f" 2>/dev/null) in
            0000:0000:0000:0000:0000:ffff:*)
                [ "$(cat "$d/gid_attrs/types/$i" 2>/dev/null)" = "RoCE v2" ] && { echo "$i"; return 0; }
                ;;
            esac
        done
        usleep 100000
        n=$((n + 1))
    done
    return 1
}
# Waits up to $2 seconds for a TCP listener on port $1.
listening() {
    hex=$(printf ':%04X ' "$1")
    n=$(($2 * 10))
    while [ $n -gt 0 ]; do
        awk -v p="$hex" '$4 == "0A" && index($2 " ", p) { found = 1 } END { exit !found }' \
            /proc/net/tcp /proc/net/tcp6 2>/dev/null && return 0
        usleep 100000
        n=$((n - 1))
    done
    return 1
}

# perftest TEST PORT WHEN: server on rxe2, client on rxe1 (the client finds
# the server's queue pair over TCP on 127.0.0.1, the payload crosses the
# veth as RoCE v2), 1 MiB messages, 16 per second of RUN_S: about RUN_S
# seconds here. Not perftest's duration mode (-D): in this guest it
# printed 0 Gb/s for a run of 266 messages. Beside perftest's figure (from
# the TSC), the client's wall time gives a second one, setup included.
#
# perftest TEST PORT WHEN DEPTH SIZE: the same with SIZE-byte messages and
# at most DEPTH in flight (-t, and -o for reads), 4 MiB per second of
# RUN_S: how many transfers the device needs in flight to reach its
# bandwidth.
perftest_pass=0
perftest() {
    t=$1 port=$2 when=$3 depth=${4:-} size=${5:-1048576}
    iters=$((RUN_S * 16))
    args="-F -s $size -n $iters --report_gbits -p $port"
    if [ -n "$depth" ]; then
        iters=$((RUN_S * 4 * 1048576 / size))
        args="-F -s $size -n $iters --report_gbits -p $port -t $depth"
        [ "$t" = ib_read_bw ] && args="$args -o $depth"
    fi
    # shellcheck disable=SC2086 # args are words
    timeout "$RUN_TIMEOUT_S" "$t" -d rxe2 -x "$gid_server" $args >"$W/$t.$when.server" 2>&1 &
    server=$!
    if ! listening "$port" 30; then
        log "$t: the server did not listen on $port"; cat "$W/$t.$when.server"
        kill "$server" 2>/dev/null
        echo "BENCH kind=perftest test=$t when=$when depth=${depth:-default} size=$size rc=1"
        return
    fi
    x0=$(rxe_retries)
    t0=$(uptime_s)
    # shellcheck disable=SC2086
    timeout "$RUN_TIMEOUT_S" "$t" -d rxe1 -x "$gid_client" $args 127.0.0.1 >"$W/$t.$when.client" 2>&1
    rc=$?
    t1=$(uptime_s)
    x1=$(rxe_retries)
    [ $rc = 0 ] || kill "$server" 2>/dev/null
    wait "$server"
    rs=$?
    sed "s/^/perftest $t $when client: /" "$W/$t.$when.client" | grep -E "bytes|^ *$size |rror|ail" | head -n 5
    # Columns: #bytes #iterations BW-peak BW-average MsgRate.
    gbit=$(awk -v size="$size" '$1 == size { print $4; exit }' "$W/$t.$when.client")
    if [ $rc = 0 ] && [ $rs = 0 ] && [ -n "$gbit" ]; then
        perftest_pass=$((perftest_pass + 1))
        rc=0
    else
        sed "s/^/perftest $t $when server: /" "$W/$t.$when.server" | tail -n 5
        rc=1
    fi
    echo "BENCH kind=perftest test=$t when=$when depth=${depth:-default} size=$size iterations=$iters gid_server=$gid_server" \
        "gid_client=$gid_client gbit_s=${gbit:-0} rxe_retries=$((x1 - x0))" \
        "mib_s=$(awk -v g="${gbit:-0}" 'BEGIN { printf "%.1f", g * 1e9 / 8 / 1048576 }')" \
        "wall_mib_s=$(awk -v n="$iters" -v s="$size" -v t0="$t0" -v t1="$t1" 'BEGIN { printf "%.1f", (t1 > t0 ? n * s / 1048576 / (t1 - t0) : 0) }')" \
        "rc=$rc"
}

mkdir -p "$W"
# The services keep state in it: private to root (0700).
mount -t tmpfs -o size=1600m,mode=0700 bench "$W" || { log "no tmpfs for $W"; exit 1; }
CLK_TCK=$(clk_tck)
echo "BENCH kind=guest kernel=$(uname -r) cpus=$(grep -c ^processor /proc/cpuinfo)" \
    "mem_mib=$(awk '/^MemTotal/ { printf "%d", $2 / 1024 }' /proc/meminfo) clk_tck=$CLK_TCK" \
    "clk_tck_from=starttime/uptime seconds=$RUN_S file_mib=$FILE_MIB buf_mib=$BUF_MIB rand_mib=$RAND_MIB" \
    "deep_jobs=$DEEP_JOBS mount_threads=$MOUNT_THREADS" \
    "rxe_mtu=$(ibv_devinfo -d rxe1 2>/dev/null | awk '/active_mtu/ { print $2; exit }')" \
    "veth_mtu=$(cat /sys/class/net/v0/mtu)" \
    "aes_ni=$(grep -q '^flags.* aes' /proc/cpuinfo && echo yes || echo no)"

# 1. The limit, before.
gid_client=
if ! gid_server=$(gid_index rxe2) || ! gid_client=$(gid_index rxe1); then
    log "no RoCE v2 IPv4 GID on rxe1/rxe2"
    gid_client=
    echo "BENCH kind=perftest test=ib_write_bw when=before rc=1"
else
    log "RoCE v2 IPv4 GIDs: rxe2 index $gid_server, rxe1 index $gid_client"
    perftest ib_write_bw 18515 before
    perftest ib_read_bw 18516 before
fi

# 2. The cluster: meta, one storage service with one target, two mounts.
RDMA_SERVICE="--data-transport rdma --rdma-device rxe2"
$X meta --engine "embedded:$W/meta" --listen "$META" --credential "$W/cluster.pem" >"$W/meta.log" 2>&1 &
meta_pid=$!
within 60 grep -q "metadata service on" "$W/meta.log" || { log "the metadata service did not start"; tail_logs; exit 1; }
# shellcheck disable=SC2086 # RDMA_SERVICE is words
$X storage --meta "tcp://$META" --listen "$STORAGE" --target "$W/t0" --credential "$W/cluster.pem" \
    $RDMA_SERVICE --metrics "$STORAGE_METRICS" >"$W/storage.log" 2>&1 &
storage_pid=$!
within 60 grep -q "storage service on" "$W/storage.log" || { log "the storage service did not start"; tail_logs; exit 1; }
grep -h "data transport" "$W/storage.log" | head -n 1

# mount_fs TRANSPORT EXTRA...: mounts /mnt/TRANSPORT; sets mount_pid.
# (MOUNT_THREADS: see the parameters above.)
mount_fs() {
    tr=$1; shift
    mkdir -p "/mnt/$tr"
    $X mount --transport dev --threads "$MOUNT_THREADS" --meta "tcp://$META" --credential "$W/cluster.pem" \
        --data-transport "$tr" "$@" "/mnt/$tr" >"$W/mount.$tr.log" 2>&1 &
    mount_pid=$!
    within 90 grep -q " /mnt/$tr fuse" /proc/mounts || { log "mount $tr did not appear"; tail_logs; exit 1; }
    grep -h "data transport" "$W/mount.$tr.log" | head -n 1
    # Both mounts share the namespace: each works in a directory of its own.
    mkdir -p "/mnt/$tr/$tr"
}
mount_fs tcp
mount_pid_tcp=$mount_pid
mount_fs rdma --rdma-device rxe1
mount_pid_rdma=$mount_pid

# O_DIRECT through the mount, or buffered I/O with end_fsync instead.
DIRECT=1
for tr in tcp rdma; do
    timeout 120 fio --name=probe --filename="/mnt/$tr/$tr/probe" --rw=write --bs=1M --size=1M \
        --direct=1 --ioengine=psync >"$W/probe.$tr.out" 2>&1 || DIRECT=0
    rm -f "/mnt/$tr/$tr/probe"
done
[ $DIRECT = 1 ] || { log "no O_DIRECT on a mount: buffered I/O with end_fsync"; cat "$W"/probe.*.out; }
echo "BENCH kind=mode direct=$DIRECT"

# run_fio WORKLOAD TRANSPORT RUN FIO-ARGS...: one fio job on /mnt/TRANSPORT
# and the counters around it.
failures=0
run_fio() {
    wl=$1 tr=$2 run=$3; shift 3
    if [ "$tr" = tcp ]; then mpid=$mount_pid_tcp; else mpid=$mount_pid_rdma; fi
    c0=$(ticks "$mpid"); s0=$(ticks "$storage_pid"); g0=$(guest_ticks)
    r0=$(metric "$STORAGE_METRICS" xfuse_rpc_server_rdma_read_bytes_total); w0=$(metric "$STORAGE_METRICS" xfuse_rpc_server_rdma_written_bytes_total)
    x0=$(rxe_retries)
    t0=$(uptime_s)
    timeout "$RUN_TIMEOUT_S" fio --name="$wl" --ioengine=psync --percentile_list=50:99 \
        --output-format=terse --terse-version=3 "$@" >"$W/fio.out" 2>"$W/fio.err"
    rc=$?
    t1=$(uptime_s)
    c1=$(ticks "$mpid"); s1=$(ticks "$storage_pid"); g1=$(guest_ticks)
    r1=$(metric "$STORAGE_METRICS" xfuse_rpc_server_rdma_read_bytes_total); w1=$(metric "$STORAGE_METRICS" xfuse_rpc_server_rdma_written_bytes_total)
    x1=$(rxe_retries)
    [ $rc = 0 ] || { failures=$((failures + 1)); log "fio $wl $tr run $run: exit $rc"; tail -n 5 "$W/fio.err"; }
    # Terse v3: 6 read KiB, 9 read ms, 18-19 read clat p50/p99 (us);
    # 47 write KiB, 50 write ms.
    awk -F';' -v wl="$wl" -v tr="$tr" -v run="$run" -v rc="$rc" -v direct="$io_direct" \
        -v wall="$t0 $t1" -v cpu="$((c1 - c0)) $((s1 - s0)) $((g1 - g0))" -v tck="$CLK_TCK" \
        -v rdma="$((r1 - r0)) $((w1 - w0))" -v retries="$((x1 - x0))" '
        NF >= 50 {
            kib = $6 + $47; ms = $9 + $50
            split(wall, t, " "); split(cpu, c, " "); split(rdma, r, " ")
            p50 = $18; sub(/.*=/, "", p50); p99 = $19; sub(/.*=/, "", p99)
            printf "BENCH kind=fio workload=%s transport=%s run=%s direct=%s rc=%s kib=%d ms=%d", wl, tr, run, direct, rc, kib, ms
            printf " mib_s=%.1f wall_s=%.2f", ms ? kib / 1024 / (ms / 1000) : 0, t[2] - t[1]
            printf " client_ticks=%d service_ticks=%d guest_ticks=%d clk_tck=%d", c[1], c[2], c[3], tck
            printf " rdma_read_b=%.0f rdma_written_b=%.0f rxe_retries=%d p50_us=%s p99_us=%s\n", r[1], r[2], retries, p50, p99
            done = 1
        }
        END { if (!done) printf "BENCH kind=fio workload=%s transport=%s run=%s rc=1\n", wl, tr, run }' "$W/fio.out"
}

# Each workload: tcp, rdma, rdma, tcp. io_direct: what run_fio reports.
ORDER="tcp:1 rdma:1 rdma:2 tcp:2"
io_direct=$DIRECT
if [ $DIRECT = 1 ]; then
    seq_mode="--direct=1"
else
    seq_mode="--direct=0 --end_fsync=1"
fi
log "1 MiB sequential writes ($seq_mode, ${RUN_S}s over a ${FILE_MIB} MiB file) at $(uptime_s)s"
for o in $ORDER; do
    tr=${o%:*}
    # shellcheck disable=SC2086 # seq_mode is words
    run_fio seqwrite "$tr" "${o#*:}" --filename="/mnt/$tr/$tr/seq" --rw=write --bs=1M \
        --size="${FILE_MIB}M" --fallocate=none $seq_mode --time_based --runtime="$RUN_S"
done
log "1 MiB sequential reads at $(uptime_s)s"
for o in $ORDER; do
    tr=${o%:*}
    size=$(stat -c %s "/mnt/$tr/$tr/seq")
    drop_caches
    if [ $DIRECT = 1 ]; then
        run_fio seqread "$tr" "${o#*:}" --filename="/mnt/$tr/$tr/seq" --rw=read --bs=1M --size="$size" \
            --direct=1 --time_based --runtime="$RUN_S"
    else
        # Buffered: one pass (a second would come from the page cache).
        run_fio seqread "$tr" "${o#*:}" --filename="/mnt/$tr/$tr/seq" --rw=read --bs=1M --size="$size" \
            --direct=0 --runtime="$RUN_S"
    fi
done
# 1. The limit, between workloads: the cluster idles.
if [ -n "$gid_client" ]; then
    perftest ib_write_bw 18517 between
    perftest ib_read_bw 18518 between
fi
log "buffered 1 MiB writes with end_fsync (at most ${BUF_MIB} MiB or ${RUN_S}s, then fsync) at $(uptime_s)s"
io_direct=0
for o in $ORDER; do
    tr=${o%:*}
    run_fio bufwrite "$tr" "${o#*:}" --filename="/mnt/$tr/$tr/buf" --rw=write --bs=1M --size="${BUF_MIB}M" \
        --fallocate=none --direct=0 --end_fsync=1 --runtime="$RUN_S"
    rm -f "/mnt/$tr/$tr/buf"
done
log "4 KiB random reads (psync, iodepth 1) at $(uptime_s)s; target holds $(du -sm "$W/t0" | cut -f1) MiB"
io_direct=$DIRECT
for tr in tcp rdma; do
    timeout "$RUN_TIMEOUT_S" fio --name=layout --filename="/mnt/$tr/$tr/rand" --rw=write --bs=1M \
        --size="${RAND_MIB}M" --fallocate=none --direct=0 --end_fsync=1 --ioengine=psync >/dev/null 2>&1 ||
        log "writing the random-read file on $tr failed"
done
for o in $ORDER; do
    tr=${o%:*}
    drop_caches
    run_fio randread "$tr" "${o#*:}" --filename="/mnt/$tr/$tr/rand" --rw=randread --bs=4k \
        --size="${RAND_MIB}M" --direct="$DIRECT" --iodepth=1 --time_based --runtime="$RUN_S"
done
# Deeper queues: DEEP_JOBS jobs at once, each on a file of its own (FUSE
# serializes direct writes to one file), so the service has as many
# transfers in flight on the queue pair as perftest keeps in its window.
deep_mib=$((FILE_MIB / DEEP_JOBS))
# shellcheck disable=SC2016 # fio expands $jobnum
DEEP_FILES='deep.$jobnum'

log "1 MiB sequential writes and reads, $DEEP_JOBS jobs ($seq_mode, ${deep_mib} MiB each) at $(uptime_s)s"
# Each job's file at its full size first, untimed: a short write run
# leaves it shorter, and fio would lay it out inside a read run.
for tr in tcp rdma; do
    timeout "$RUN_TIMEOUT_S" fio --name=layout --directory="/mnt/$tr/$tr" --filename_format="$DEEP_FILES" \
        --numjobs="$DEEP_JOBS" --rw=write --bs=1M --size="${deep_mib}M" --fallocate=none --direct=0 \
        --end_fsync=1 --ioengine=psync >/dev/null 2>&1 || log "writing the $DEEP_JOBS-job files on $tr failed"
done
io_direct=$DIRECT
for o in $ORDER; do
    tr=${o%:*}
    # shellcheck disable=SC2086 # seq_mode is words
    run_fio seqwrite_deep "$tr" "${o#*:}" --directory="/mnt/$tr/$tr" --filename_format="$DEEP_FILES" \
        --numjobs="$DEEP_JOBS" --group_reporting --rw=write --bs=1M --size="${deep_mib}M" --fallocate=none \
        $seq_mode --time_based --runtime="$RUN_S"
done
for o in $ORDER; do
    tr=${o%:*}
    drop_caches
    if [ $DIRECT = 1 ]; then
        run_fio seqread_deep "$tr" "${o#*:}" --directory="/mnt/$tr/$tr" --filename_format="$DEEP_FILES" \
            --numjobs="$DEEP_JOBS" --group_reporting --rw=read --bs=1M --size="${deep_mib}M" \
            --direct=1 --time_based --runtime="$RUN_S"
    else
        run_fio seqread_deep "$tr" "${o#*:}" --directory="/mnt/$tr/$tr" --filename_format="$DEEP_FILES" \
            --numjobs="$DEEP_JOBS" --group_reporting --rw=read --bs=1M --size="${deep_mib}M" \
            --direct=0 --runtime="$RUN_S"
    fi
done
log "workloads done at $(uptime_s)s"
echo "BENCH kind=service rdma_connections=$(metric "$STORAGE_METRICS" xfuse_rpc_server_rdma_connections_total)" \
    "rdma_read_b=$(metric "$STORAGE_METRICS" xfuse_rpc_server_rdma_read_bytes_total)" \
    "rdma_written_b=$(metric "$STORAGE_METRICS" xfuse_rpc_server_rdma_written_bytes_total)"

for tr in tcp rdma; do
    if [ "$tr" = tcp ]; then kill "$mount_pid_tcp"; else kill "$mount_pid_rdma"; fi 2>/dev/null
    within 30 sh -c "! grep -q ' /mnt/$tr fuse' /proc/mounts" || umount -l "/mnt/$tr"
done
kill "$storage_pid" "$meta_pid" 2>/dev/null
within 30 sh -c "! kill -0 $storage_pid 2>/dev/null"

# 1. The limit, after: the cluster is gone; did the machine drift?
if [ -n "$gid_client" ]; then
    perftest ib_write_bw 18519 after
    perftest ib_read_bw 18520 after
    # The window: bandwidth against transfers in flight, for the largest
    # transfer (a chunk, 1 MiB) and the smallest (a 4 KiB block).
    port=18521
    for size in 4096 1048576; do
        for depth in 1 4 16 64; do
            perftest ib_write_bw $port depth "$depth" "$size"
            perftest ib_read_bw $((port + 1)) depth "$depth" "$size"
            port=$((port + 2))
        done
    done
fi
[ $failures -gt 0 ] && tail_logs
echo "BENCH kind=end fio_failures=$failures perftest_ok=$perftest_pass at_s=$(uptime_s)"
