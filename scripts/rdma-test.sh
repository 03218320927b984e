#!/usr/bin/env bash
# The RDMA data path, tested for real on soft-RoCE (rdma_rxe) in a QEMU
# guest (this machine's kernel has no RDMA): a metadata service, three
# storage services and a mount, all `--data-transport rdma`, the mount on
# rxe1 and the services on rxe2 at the two ends of a veth pair, so the
# payloads cross it as RoCE v2 packets. In the guest
# (scripts/rdma-guest/cluster.sh):
#   - files of 1 B to 3 MiB written and read back byte for byte;
#   - the services' RDMA byte counters and the rxe devices' packet counters
#     show the bytes went by RDMA;
#   - fsx on the mount;
#   - a storage service killed mid-stream loses no acknowledged write.
# Ends with one line `rdma: N passed, M failed`; exits non-zero unless every
# check passed. QEMU emulates the CPU (TCG): minutes, not seconds.
#
# Usage: scripts/rdma-test.sh [--xfused PATH] [--fsx-ops N] [--timeout SECONDS]
#   --xfused  an xfused built with the cargo feature rdma (default: build it,
#             release, into the workspace's target directory)
# Environment: XFUSE_RDMA_GUEST_CACHE (the guest kernel and rdma-core,
#   default /var/tmp/xfuse-rdma-guest), QEMU_SMP (2), QEMU_MEM (2048M).
#   The console log goes to a new /tmp/xfuse-rdma-test.*; it is kept when
#   a check fails.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
guest=$repo/scripts/rdma-guest
log() { echo "rdma-test: $*" >&2; }

xfused=
fsx_ops=400
timeout_s=1800
while (($#)); do
    case $1 in
    --xfused) xfused=$2; shift 2 ;;
    --fsx-ops) fsx_ops=$2; shift 2 ;;
    --timeout) timeout_s=$2; shift 2 ;;
    *)
        echo "usage: $0 [--xfused PATH] [--fsx-ops N] [--timeout SECONDS]" >&2
        exit 2
        ;;
    esac
done
cache=${XFUSE_RDMA_GUEST_CACHE:-/var/tmp/xfuse-rdma-guest}

"$guest/host-packages.sh"
export PATH="$HOME/.cargo/bin:$PATH"
if [[ -z $xfused ]]; then
    log "building xfused (release, feature rdma)"
    (cd "$repo" && cargo build --release --locked -p xfused --features rdma)
    xfused=${CARGO_TARGET_DIR:-$repo/target}/release/xfused
    [[ $xfused == /* ]] || xfused=$repo/$xfused
fi
"$xfused" storage --help | grep -q -- --rdma-device || { log "$xfused has no --rdma-device"; exit 1; }
fsx=$(command -v fsx) || { log "fsx not found (scripts/setup.sh --tests installs it)"; exit 1; }

"$guest/fetch.sh" "$cache"
work=$(mktemp -d /tmp/xfuse-rdma-test.XXXXXX)
"$guest/initrd.sh" "$cache" "$work/initrd.cpio.gz" "$xfused" "$fsx" "$guest/cluster.sh"

tsc_khz=$(awk -F: '/^cpu MHz/ { printf "%d", $2 * 1000; exit }' /proc/cpuinfo)
append="console=ttyS0 panic=-1 reboot=t loglevel=4 tsc=reliable${tsc_khz:+ tsc_early_khz=$tsc_khz}"
append+=" rdma.setups=cluster rdma.fsx_ops=$fsx_ops"
console=$work/console.log
log "booting (QEMU TCG, up to ${timeout_s}s); console in $console"
start=$(date +%s)
status=0
timeout --kill-after=10 "$timeout_s" qemu-system-x86_64 -machine microvm -accel tcg -cpu qemu64 \
    -smp "${QEMU_SMP:-2}" -m "${QEMU_MEM:-2048M}" -no-reboot -display none -monitor none -serial stdio \
    -kernel "$cache/vmlinux" -initrd "$work/initrd.cpio.gz" -append "$append" </dev/null |
    tr -d '\r' | tee "$console" | grep --line-buffered '^GUEST' || status=$?
log "guest ran $(($(date +%s) - start))s"
rm -f "$work/initrd.cpio.gz"

verdict=$(sed -n 's/^GUEST \[cluster\] \(rdma: [0-9]* passed, [0-9]* failed\)$/\1/p' "$console" | tail -n 1)
if [[ -z $verdict ]]; then
    log "no verdict from the guest (timeout or crash: status $status); see $console"
    echo "rdma: 0 passed, 1 failed"
    exit 1
fi
echo "$verdict"
if [[ $verdict != *" 0 failed" ]] || [[ $verdict == "rdma: 0 passed"* ]]; then
    log "see $console"
    exit 1
fi
rm -rf "$work"
