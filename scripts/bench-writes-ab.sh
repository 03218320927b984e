#!/usr/bin/env bash
# Small random writes through `xfused mount --meta tcp://`, two xfused
# binaries in turn in one session: 4 KiB pwrite(2)s at random 4 KiB-aligned
# offsets in a 64 MiB file, each a FUSE WRITE (xfused mounts have no
# writeback cache). Both mounts use one `xfused meta` service (built from
# NEW) on an embedded store in /dev/shm; file data goes to a local chunk
# store in /dev/shm (`local`) or to one `xfused storage` target in /dev/shm
# (`r1`). Prints writes/s per round and the medians with their ratio.
#
# Usage: scripts/bench-writes-ab.sh OLD_XFUSED NEW_XFUSED [ROUNDS] [WRITES]
#   e.g. a release build of an older commit against target/release/xfused:
#   git worktree add /tmp/old OLDCOMMIT && (cd /tmp/old && cargo build --release -p xfused)
#   scripts/bench-writes-ab.sh /tmp/old/target/release/xfused target/release/xfused
#
# Run as root (it mounts); needs python3. Ports 27312 and 27313 on
# 127.0.0.1 must be free.
set -euo pipefail

old=${1:?usage: bench-writes-ab.sh OLD_XFUSED NEW_XFUSED [ROUNDS] [WRITES]}
new=${2:?usage: bench-writes-ab.sh OLD_XFUSED NEW_XFUSED [ROUNDS] [WRITES]}
rounds=${3:-5}
writes=${4:-3000}
for bin in "$old" "$new"; do
    [[ -x $bin ]] || {
        echo "bench-writes-ab: $bin is not an executable" >&2
        exit 2
    }
done

work=$(mktemp -d /dev/shm/xfuse-writes-ab.XXXXXX)
mnt=$(mktemp -d /tmp/xfuse-writes-ab-mnt.XXXXXX)
pids=()
cleanup() {
    umount "$mnt" 2>/dev/null || true
    ((${#pids[@]})) && kill "${pids[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
    rmdir "$mnt" 2>/dev/null || true
}
trap cleanup EXIT

cat >"$work/writes.py" <<'EOF'
import os, random, sys, time
path, n = sys.argv[1], int(sys.argv[2])
fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
block = os.urandom(4096)
random.seed(1)
start = time.monotonic()
for _ in range(n):
    os.pwrite(fd, block, random.randrange(0, 64 << 20, 4096))
print(round(n / (time.monotonic() - start)))
os.close(fd)
EOF

wait_listening() {
    local log=$1 marker=$2
    for _ in $(seq 300); do
        grep -q "$marker" "$log" && return 0
        sleep 0.1
    done
    echo "bench-writes-ab: no '$marker' in $log:" >&2
    cat "$log" >&2
    exit 1
}

"$new" meta --engine "embedded:$work/meta" --listen 127.0.0.1:27312 \
    --credential "$work/cluster.pem" >"$work/meta.log" 2>&1 &
pids+=($!)
wait_listening "$work/meta.log" "metadata service on"

# One round: mount with BIN (extra mount flags after it), write, unmount.
round() {
    local bin=$1
    shift
    "$bin" mount --meta tcp://127.0.0.1:27312 --credential "$work/cluster.pem" \
        --transport dev "$@" "$mnt" >"$work/mount.log" 2>&1 &
    local pid=$!
    for _ in $(seq 300); do
        mountpoint -q "$mnt" && break
        sleep 0.1
    done
    mountpoint -q "$mnt" || {
        cat "$work/mount.log" >&2
        exit 1
    }
    python3 "$work/writes.py" "$mnt/f$RANDOM$RANDOM" "$writes"
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

compare() {
    local name=$1
    shift
    local olds=() news=()
    for r in $(seq "$rounds"); do
        rm -rf "$work/data"
        local a b
        a=$(round "$old" "$@")
        rm -rf "$work/data"
        b=$(round "$new" "$@")
        echo "$name round $r: old $a/s, new $b/s"
        olds+=("$a")
        news+=("$b")
    done
    local mo mn
    mo=$(printf '%s\n' "${olds[@]}" | median)
    mn=$(printf '%s\n' "${news[@]}" | median)
    echo "$name median: old $mo/s, new $mn/s, new/old $(awk -v a="$mn" -v b="$mo" 'BEGIN {printf "%.2f", a / b}')"
}

compare local --data "$work/data"

mkdir -p "$work/t1"
"$new" storage --meta tcp://127.0.0.1:27312 --listen 127.0.0.1:27313 --target "$work/t1" \
    --credential "$work/cluster.pem" >"$work/storage.log" 2>&1 &
pids+=($!)
wait_listening "$work/storage.log" "storage service on"
compare r1
