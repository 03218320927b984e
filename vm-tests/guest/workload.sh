#!/bin/sh
# The guest workload: check the files the host wrote, then W worker
# processes each create, write, read back, rename, hard-link, list and
# unlink files under $M/from-guest/wK. Phases run one after the other,
# workers in parallel within a phase; each phase's time is printed.
# The host derives the expected final tree from the same rules (see
# vm-tests/src/workload.rs) and checks every file.
#
# Usage: workload.sh MOUNTPOINT N W   (N files per worker, W workers)
M=$1
N=${2:-100}
W=${3:-4}
up() { cut -d' ' -f1 /proc/uptime; }
fail() { echo "VMTEST_FAIL $*"; }

# What the host wrote, with its checksums.
if (cd "$M/from-host" && sha256sum -c -s SHA256SUMS); then
    echo "VMTEST_CHECK host-files ok"
else
    fail "host files differ from their SHA256SUMS"
fi

# 1 KiB payload appended to every third file.
P=0123456789abcdef
P=$P$P$P$P
P=$P$P$P$P
P=$P$P$P$P

create() {
    d=$M/from-guest/w$1
    mkdir -p "$d/sub" || fail "mkdir $d"
    i=0
    while [ $i -lt $N ]; do
        if [ $((i % 3)) -eq 0 ]; then
            printf 'worker %s file %s\n%s\n' "$1" "$i" "$P" >"$d/f$i" || fail "create $d/f$i"
        else
            printf 'worker %s file %s\n' "$1" "$i" >"$d/f$i" || fail "create $d/f$i"
        fi
        i=$((i + 1))
    done
    dd if=/dev/urandom of="$d/big" bs=64k count=16 2>/dev/null || fail "dd $d/big"
}
lookup() {
    d=$M/from-guest/w$1
    i=0
    while [ $i -lt $N ]; do
        [ -f "$d/f$i" ] || fail "lookup $d/f$i"
        i=$((i + 1))
    done
    ls -l "$d" >/dev/null || fail "ls -l $d"
}
readback() {
    d=$M/from-guest/w$1
    i=0
    while [ $i -lt $N ]; do
        read -r line <"$d/f$i"
        [ "$line" = "worker $1 file $i" ] || fail "read $d/f$i: $line"
        i=$((i + 1))
    done
}
rename() {
    d=$M/from-guest/w$1
    i=0
    while [ $i -lt $N ]; do
        [ $((i % 4)) -eq 0 ] && { mv "$d/f$i" "$d/sub/r$i" || fail "rename $d/f$i"; }
        i=$((i + 1))
    done
}
link() {
    d=$M/from-guest/w$1
    i=0
    while [ $i -lt $N ]; do
        [ $((i % 4)) -ne 0 ] && [ $((i % 5)) -eq 1 ] && { ln "$d/f$i" "$d/sub/l$i" || fail "link $d/f$i"; }
        i=$((i + 1))
    done
}
unlink() {
    d=$M/from-guest/w$1
    i=0
    while [ $i -lt $N ]; do
        [ $((i % 4)) -ne 0 ] && [ $((i % 7)) -eq 3 ] && { rm "$d/f$i" || fail "unlink $d/f$i"; }
        i=$((i + 1))
    done
}
listing() {
    d=$M/from-guest/w$1
    echo "VMTEST_COUNT w$1 top=$(ls "$d" | wc -l) sub=$(ls "$d/sub" | wc -l)"
    (cd "$d" && sha256sum big f* sub/*) >"$M/from-guest/w$1.sha256" || fail "sha256sum $d"
}

mkdir -p "$M/from-guest" || fail "mkdir $M/from-guest"
for phase in create lookup readback rename link unlink listing; do
    t0=$(up)
    k=0
    while [ $k -lt $W ]; do
        $phase $k &
        k=$((k + 1))
    done
    wait
    t1=$(up)
    echo "VMTEST_TIME $phase $(awk "BEGIN { printf \"%.3f\", $t1 - $t0 }")"
done
sync
