#!/bin/sh
# Runs inside the soft-RoCE guest (busybox sh), after the devices are up:
# a metadata service, three storage services and a mount, every one with
# --data-transport rdma, then the checks of scripts/rdma-test.sh. Prints
# "RDMATEST ok|FAIL <what>" per check and "rdma: N passed, M failed" last.
#
# Addresses: the storage services listen on 10.2.0.2 and use rxe2, the
# mount uses rxe1 (10.2.0.1): its RDMA crosses the veth pair as RoCE v2.
# Kernel command line: rdma.fsx_ops=N (fsx operations, default 400).
X=/usr/bin/xfused
W=/tmp/cluster
# within, metric, tail_logs
# shellcheck source=scripts/rdma-guest/lib.sh
. /usr/lib/xfuse-guest.sh
MNT=/mnt/x
META=10.2.0.2:27000
FSX_OPS=$(tr ' ' '\n' </proc/cmdline | sed -n 's/^rdma\.fsx_ops=//p' | tail -n 1)
pass=0
fail=0
ok() { echo "RDMATEST ok $*"; pass=$((pass + 1)); }
bad() { echo "RDMATEST FAIL $*"; fail=$((fail + 1)); }
series() { # series PORT SERIES: one series' value, SERIES as exposed: 'name{label="v"}'
    wget -q -O - "http://127.0.0.1:$1/metrics" 2>/dev/null |
        awk -v s="$2" 'index($0, s " ") == 1 { v = $NF } END { printf "%.0f\n", v }'
}
rxe() { # rxe DEV COUNTER
    cat "/sys/class/infiniband/$1/ports/1/hw_counters/$2" 2>/dev/null || echo 0
}
finish() {
    echo "rdma: $pass passed, $fail failed"
    exit 0
}

mkdir -p "$W" "$MNT"
RDMA="--data-transport rdma --rdma-pool-mib 32"
$X meta --engine "embedded:$W/meta" --listen "$META" --credential "$W/cluster.pem" >"$W/meta.log" 2>&1 &
if ! within 60 grep -q "metadata service on" "$W/meta.log"; then
    bad "metadata service did not start"; tail_logs; finish
fi
start_storage() {
    # shellcheck disable=SC2086 # RDMA is words
    $X storage --meta "tcp://$META" --listen "10.2.0.2:2710$1" --target "$W/t$1" \
        --credential "$W/cluster.pem" $RDMA --rdma-device rxe2 \
        --metrics "127.0.0.1:2720$1" >>"$W/storage$1.log" 2>&1 &
    eval "storage_pid_$1=$!"
}
for i in 0 1 2; do start_storage $i; done
for i in 0 1 2; do
    within 60 grep -q "storage service on" "$W/storage$i.log" || { bad "storage $i did not start"; tail_logs; finish; }
done
grep -h "data transport" "$W"/storage*.log | head -n 1
# shellcheck disable=SC2086 # RDMA is words
$X mount --transport dev --meta "tcp://$META" --credential "$W/cluster.pem" $RDMA --rdma-device rxe1 \
    --metrics 127.0.0.1:27300 "$MNT" >"$W/mount.log" 2>&1 &
mount_pid=$!
if within 90 grep -q " $MNT fuse" /proc/mounts; then
    ok "mount through the cluster with --data-transport rdma"
else
    bad "mount"; tail_logs; finish
fi
grep -h "data transport" "$W/mount.log" | head -n 1

# 1. Files of several sizes, read back after the page cache is dropped.
before_read=$(metric 127.0.0.1:27200 xfuse_rpc_server_rdma_read_bytes_total)
before_pkts=$(rxe rxe1 sent_pkts)
all=1
for size in 1 4096 65537 1048576 3145728; do
    head -c "$size" /dev/urandom >"$W/src.$size"
    cp "$W/src.$size" "$MNT/f.$size" && sync || all=0
done
echo 3 >/proc/sys/vm/drop_caches
for size in 1 4096 65537 1048576 3145728; do
    cmp "$W/src.$size" "$MNT/f.$size" || { all=0; echo "f.$size differs"; }
done
if [ $all = 1 ]; then ok "files of 1 B to 3 MiB written and read back intact"; else bad "files read back differ"; fi

# 2. The bytes went over RDMA: the services' counters and the devices'.
read_total=0; written_total=0
for i in 0 1 2; do
    read_total=$((read_total + $(metric 127.0.0.1:2720$i xfuse_rpc_server_rdma_read_bytes_total)))
    written_total=$((written_total + $(metric 127.0.0.1:2720$i xfuse_rpc_server_rdma_written_bytes_total)))
done
echo "RDMATEST info services pulled $read_total B by RDMA READ, pushed $written_total B by RDMA WRITE;" \
    "rxe1 sent $(rxe rxe1 sent_pkts) rcvd $(rxe rxe1 rcvd_pkts) packets, rxe2 sent $(rxe rxe2 sent_pkts) rcvd $(rxe rxe2 rcvd_pkts)"
# Written: 4.2 MiB, three replicas (the head pulls from the mount, the
# others from their predecessors).
if [ "$read_total" -ge $((3 * 4259843)) ] && [ "$written_total" -ge 4259843 ]; then
    ok "the services moved the files' bytes by RDMA READ and WRITE"
else
    bad "RDMA byte counters too low (read $read_total, written $written_total, before $before_read)"
fi
# The mount's own counters: its payloads went by RDMA, none in frames.
client() { series 27300 "xfuse_storage_client_payload_bytes_total{path=\"$1\",direction=\"$2\"}"; }
rdma_sent=$(client rdma sent); rdma_received=$(client rdma received)
tcp_moved=$(($(client tcp sent) + $(client tcp received)))
echo "RDMATEST info the mount sent $rdma_sent B and received $rdma_received B by RDMA, $tcp_moved B in TCP frames"
if [ "$rdma_sent" -ge 4259843 ] && [ "$rdma_received" -ge 4259843 ] && [ "$tcp_moved" = 0 ]; then
    ok "the mount's counters: its file data went by RDMA, none in TCP frames"
else
    bad "the mount's counters: $rdma_sent B sent and $rdma_received B received by RDMA, $tcp_moved B by TCP"
fi
# A 1 MiB payload is ~1000 packets at MTU 1024.
if [ $(($(rxe rxe1 sent_pkts) - before_pkts)) -ge 1000 ] && [ "$(rxe rxe1 rcvd_pkts)" -ge 4000 ]; then
    ok "the mount's rxe device carried the payloads"
else
    bad "rxe1 counters: sent $(rxe rxe1 sent_pkts) rcvd $(rxe rxe1 rcvd_pkts)"
fi

# 3. fsx on the mount.
if timeout 600 fsx -N "${FSX_OPS:-400}" -S 20261205 -P "$W" "$MNT/fsx.file" >"$W/fsx.out" 2>&1; then
    ok "fsx ${FSX_OPS:-400} operations"
else
    bad "fsx"; tail -n 20 "$W/fsx.out"
fi

# 4. A target killed mid-stream: every acknowledged (fsync'd) block is
#    there afterwards. The writer appends 64 KiB blocks, fsyncs each, and
#    logs the ones acknowledged.
head -c $((64 * 1024 * 96)) /dev/urandom >"$W/stream.src"
(
    i=0
    while [ $i -lt 96 ]; do
        dd if="$W/stream.src" of="$MNT/stream" bs=65536 skip=$i seek=$i count=1 conv=notrunc,fsync 2>/dev/null || break
        echo $i >>"$W/acked"
        i=$((i + 1))
    done
) &
writer=$!
within 120 test -s "$W/acked"
within 120 sh -c "[ \$(wc -l <$W/acked) -ge 16 ]"
# shellcheck disable=SC2154 # set by start_storage's eval
kill -9 "$storage_pid_2"
echo "RDMATEST info killed storage 2 after $(wc -l <"$W/acked") acknowledged blocks"
waited=0
while kill -0 $writer 2>/dev/null && [ $waited -lt 600 ]; do sleep 1; waited=$((waited + 1)); done
kill -9 $writer 2>/dev/null
acked=$(wc -l <"$W/acked")
echo 3 >/proc/sys/vm/drop_caches
head -c $((acked * 65536)) "$W/stream.src" >"$W/stream.acked"
if dd if="$MNT/stream" bs=65536 count="$acked" 2>/dev/null | cmp - "$W/stream.acked"; then
    intact=1
else
    intact=0
fi
if [ "$intact" = 1 ] && [ "$acked" -ge 96 ]; then
    ok "no acknowledged block lost with a target killed mid-stream ($acked blocks)"
elif [ "$intact" = 1 ]; then
    bad "the writer stopped after $acked of 96 blocks (those intact)"
else
    bad "acknowledged blocks lost or wrong after the kill ($acked acknowledged)"
fi

kill "$mount_pid" 2>/dev/null
umount "$MNT" 2>/dev/null
[ "$fail" -gt 0 ] && tail_logs
finish
