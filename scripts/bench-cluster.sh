#!/usr/bin/env bash
# The storage cluster under fio, against the local chunk store, in one run
# (issue 15's benchmark). Prints a markdown report on stdout; fio's JSON
# and an SVG plot go to target/bench-cluster/.
#
#   scripts/setup.sh --bench                 # fio, iperf3, e2fsprogs
#   scripts/bench-cluster.sh > report.md     # about 8 minutes on 2 CPUs
#   RUNTIME=5 SIZE_MB=64 scripts/bench-cluster.sh   # shorter
#
# Configurations, each on fresh state:
#   local    xfused meta + xfused mount --data (the local chunk store), one
#            disk: the same metadata path as the others, only the data
#            path differs
#   r1       xfused meta + 1 storage service (R=1), one disk
#   r3       xfused meta + 3 storage services (R=3), a disk each
#   r3-kill  as r3; one storage service is killed (SIGKILL) 3 s into the
#            first job and stays dead
# Jobs (fio, direct I/O, one file per job): 1 MiB sequential write and
# read, 4 KiB random write and read, numjobs 1 and 4.
#
# Every "disk" is an ext4 image on its own loop device, so the bytes that
# reach a target's disk are counted exactly (/sys/block/loopN/stat): the
# write amplification of 4 KiB random writes is those bytes over fio's,
# per replica. Beside the configurations: iperf3 over loopback (the
# network's limit) and fio on a disk directly (the disk's limit). Needs
# root (mounts, loop devices).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$repo"
export PATH="$HOME/.cargo/bin:$PATH"
RUNTIME=${RUNTIME:-10}
SIZE_MB=${SIZE_MB:-128}

if [[ $(id -u) -ne 0 ]]; then
    echo "bench-cluster: run as root (mounts, loop devices)" >&2
    exit 1
fi
for tool in fio iperf3 mkfs.ext4 losetup python3; do
    command -v "$tool" >/dev/null || {
        echo "bench-cluster: $tool is missing: run scripts/setup.sh --bench" >&2
        exit 1
    }
done

target=${CARGO_TARGET_DIR:-$repo/target}
echo "== cargo build --release -p xfused -p benches --bin xfused --bin plot" >&2
cargo build --release -p xfused -p benches --bin xfused --bin plot >&2
X=$target/release/xfused
out=$target/bench-cluster
mkdir -p "$out"
rm -f "$out"/*.json

work=$(mktemp -d /var/tmp/xfuse-bench-cluster.XXXXXX)
pids=()
loops=()
mounts=()
cleanup() {
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    sleep 0.5
    for m in "${mounts[@]}"; do umount -l "$m" 2>/dev/null || true; done
    for l in "${loops[@]}"; do losetup -d "$l" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

# Four disks: three targets and the local store / raw fio.
for i in 0 1 2 3; do
    truncate -s 4G "$work/disk$i.img"
    mkfs.ext4 -q -F "$work/disk$i.img"
    loop=$(losetup --find --show "$work/disk$i.img")
    loops+=("$loop")
    mkdir -p "$work/disk$i"
    mount "$loop" "$work/disk$i"
    mounts+=("$work/disk$i")
done
sectors_written() { awk '{print $7}' "/sys/block/$(basename "$1")/stat"; }

cred=$work/cluster.pem
"$X" credential new "$cred" >/dev/null

start_meta() { # -> sets meta_addr
    local log=$work/meta.$1.log
    "$X" meta --engine "embedded:$work/meta.$1" --listen 127.0.0.1:0 --credential "$cred" >"$log" 2>&1 &
    pids+=($!)
    meta_pid=$!
    for _ in $(seq 100); do
        meta_addr=$(sed -n 's/.*metadata service on \([0-9.:]*\),.*/\1/p' "$log")
        [[ -n $meta_addr ]] && return
        sleep 0.1
    done
    echo "bench-cluster: xfused meta did not start:" >&2
    cat "$log" >&2
    exit 1
}
start_storage() { # config index -> appends to storage_pids
    local log=$work/storage.$1.$2.log dir=$work/disk$2/target.$1
    "$X" storage --meta "tcp://$meta_addr" --listen 127.0.0.1:0 --target "$dir" --credential "$cred" >"$log" 2>&1 &
    pids+=($!)
    storage_pids+=($!)
    for _ in $(seq 100); do
        grep -q "storage service on" "$log" && return
        sleep 0.1
    done
    echo "bench-cluster: xfused storage did not start:" >&2
    cat "$log" >&2
    exit 1
}
mount_fs() { # name args...
    local name=$1
    shift
    mnt=$work/mnt.$name
    mkdir -p "$mnt"
    "$X" mount --transport dev "$@" "$mnt" >"$work/mount.$name.log" 2>&1 &
    pids+=($!)
    mount_pid=$!
    for _ in $(seq 100); do
        grep -q " $mnt fuse" /proc/mounts && {
            mounts+=("$mnt")
            return
        }
        sleep 0.1
    done
    echo "bench-cluster: the mount did not appear:" >&2
    cat "$work/mount.$name.log" >&2
    exit 1
}
rss_kib() { awk '/VmHWM/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

jobs_for() { # dir config -> runs every job, JSON into $out
    local dir=$1 config=$2
    for nj in 1 4; do
        for job in seqwrite:write:1M seqread:read:1M randwrite:randwrite:4k randread:randread:4k; do
            IFS=: read -r name rw bs <<<"$job"
            local file=seq
            [[ $bs == 4k ]] && file=rand
            echo "== $config $name numjobs=$nj" >&2
            local before=()
            for l in "${loops[@]}"; do before+=("$(sectors_written "$l")"); done
            fio --name="$file" --directory="$dir" --rw="$rw" --bs="$bs" --direct=1 \
                --ioengine=psync --size="${SIZE_MB}M" --numjobs="$nj" --time_based \
                --runtime="$RUNTIME" --group_reporting --output-format=json \
                --output="$out/$config.$name.$nj.json" >/dev/null
            sync
            local after=()
            for l in "${loops[@]}"; do after+=("$(sectors_written "$l")"); done
            local delta=""
            for i in 0 1 2 3; do delta+="$(((${after[$i]} - ${before[$i]}) * 512)) "; done
            echo "$delta" >"$out/$config.$name.$nj.disk"
        done
    done
}

# The limits.
echo "== iperf3 over loopback" >&2
iperf3 -s -1 -p 5299 >/dev/null 2>&1 &
sleep 0.5
iperf3 -c 127.0.0.1 -p 5299 -t 5 -J >"$out/iperf3.json"
echo "== fio on a disk" >&2
mkdir -p "$work/disk3/raw"
jobs_for "$work/disk3/raw" disk
rm -rf "$work/disk3/raw"

declare -A rss
# local: the same metadata service as the cluster configurations, file
# data in the mount's local chunk store (--data), so only the data path
# differs.
start_meta local
mount_fs local --meta "tcp://$meta_addr" --credential "$cred" --data "$work/disk3/local"
grep -q "file data: local chunk store" "$work/mount.local.log"
jobs_for "$work/mnt.local" local
rss[local]="meta $(rss_kib "$meta_pid"), mount $(rss_kib "$mount_pid")"
kill "$mount_pid"
wait "$mount_pid" 2>/dev/null || true
kill -9 "$meta_pid" 2>/dev/null || true

for config in r1 r3 r3-kill; do
    storage_pids=()
    start_meta "$config"
    n=3
    [[ $config == r1 ]] && n=1
    for i in $(seq 0 $((n - 1))); do start_storage "$config" "$i"; done
    sleep 2
    mount_fs "$config" --meta "tcp://$meta_addr" --credential "$cred"
    grep -q "file data: in the storage cluster" "$work/mount.$config.log"
    if [[ $config == r3-kill ]]; then
        victim=${storage_pids[2]}
        (sleep 3 && kill -9 "$victim" && echo "== killed storage service $victim" >&2) &
    fi
    jobs_for "$work/mnt.$config" "$config"
    line="meta $(rss_kib "$meta_pid"), mount $(rss_kib "$mount_pid")"
    for p in "${storage_pids[@]}"; do line+=", storage $(rss_kib "$p")"; done
    rss[$config]=$line
    kill "$mount_pid" || true
    wait "$mount_pid" 2>/dev/null || true
    for p in "${storage_pids[@]}" "$meta_pid"; do kill -9 "$p" 2>/dev/null || true; done
    sleep 0.5
done

for c in local r1 r3 r3-kill; do echo "$c ${rss[$c]}"; done >"$out/rss.txt"
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)
echo "Linux $(uname -r), $(nproc) CPUs (${cpu:-unknown}), $(free -g | awk '/^Mem:/ {print $2}') GiB RAM;" \
    "commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . 2>/dev/null || echo ' (with uncommitted changes)');" \
    "\`RUNTIME=$RUNTIME SIZE_MB=$SIZE_MB scripts/bench-cluster.sh\`; disks are ext4 images on loop devices on the machine's disk."
echo
python3 "$repo/scripts/bench-cluster-report.py" "$out" "$SIZE_MB" "$target/release/plot"
