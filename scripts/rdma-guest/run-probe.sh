#!/usr/bin/env bash
# Runs daemon/examples/rdma_probe.rs on soft-RoCE (rdma_rxe) in a QEMU
# guest, from a fresh Debian 12 machine with no RDMA device: installs what
# is missing (as root), builds the probe with the feature `rdma`, fetches
# the guest's kernel and rdma-core (fetch.sh), packs its initramfs
# (initrd.sh, with init.sh as /init) and boots it. QEMU emulates the CPU
# (TCG: no KVM needed), so it is slow: a few minutes.
#
# Prints the probe's lines from each setup (init.sh: "loop", one rxe device;
# "veth", two, with packets crossing a veth pair) and exits 0 only if every
# setup printed `rdma_probe: ok`.
#
# Usage: scripts/rdma-guest/run-probe.sh [--setups "loop veth"] [--threads N]
#                                        [--timeout SECONDS]
# Environment: XFUSE_RDMA_GUEST_CACHE (the kernel and .debs, default
#   /var/tmp/xfuse-rdma-guest), CARGO_TARGET_DIR, QEMU_SMP (2), QEMU_MEM
#   (1024M). The console log and initramfs go to a new /tmp/xfuse-rdma-guest.*.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
repo=$(cd "$here/../.." && pwd -P)
log() { echo "rdma-guest: $*" >&2; }

setups="loop veth"
threads=4
timeout_s=1800
while (($#)); do
    case $1 in
    --setups) setups=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --timeout) timeout_s=$2; shift 2 ;;
    *)
        echo "usage: $0 [--setups \"loop veth\"] [--threads N] [--timeout SECONDS]" >&2
        exit 2
        ;;
    esac
done
cache=${XFUSE_RDMA_GUEST_CACHE:-/var/tmp/xfuse-rdma-guest}

"$here/host-packages.sh"
export PATH="$HOME/.cargo/bin:$PATH"
command -v cargo >/dev/null || { log "cargo not found: install the Rust toolchain (rustup) first"; exit 1; }

log "building the probe (release, feature rdma)"
(cd "$repo" && cargo build --release --locked -p xfused --features rdma --example rdma_probe)
probe=${CARGO_TARGET_DIR:-$repo/target}/release/examples/rdma_probe
[[ $probe == /* ]] || probe=$repo/$probe

"$here/fetch.sh" "$cache"

work=$(mktemp -d /tmp/xfuse-rdma-guest.XXXXXX)
"$here/initrd.sh" "$cache" "$work/initrd.cpio.gz" "$probe"

# The guest's clock: its TSC runs at the host's rate; told so, it need not
# calibrate (which an emulated CPU does badly) and keeps a fine-grained
# clocksource for the probe's timings.
tsc_khz=$(awk -F: '/^cpu MHz/ { printf "%d", $2 * 1000; exit }' /proc/cpuinfo)
append="console=ttyS0 panic=-1 reboot=t loglevel=4 tsc=reliable${tsc_khz:+ tsc_early_khz=$tsc_khz}"
append+=" rdma.setups=$(tr -s ' ' , <<<"$setups") rdma.threads=$threads"
console=$work/console.log
log "booting (QEMU TCG, up to ${timeout_s}s); console in $console"
start=$(date +%s)
status=0
timeout --kill-after=10 "$timeout_s" qemu-system-x86_64 -machine microvm -accel tcg -cpu qemu64 \
    -smp "${QEMU_SMP:-2}" -m "${QEMU_MEM:-1024M}" -no-reboot -display none -monitor none -serial stdio \
    -kernel "$cache/vmlinux" -initrd "$work/initrd.cpio.gz" -append "$append" </dev/null |
    tr -d '\r' | tee "$console" | grep --line-buffered '^GUEST' || status=$?
log "guest ran $(($(date +%s) - start))s"
rm -f "$work/initrd.cpio.gz"

failed=0
for setup in $setups; do
    if grep -q "^GUEST \[$setup\] rdma_probe: ok$" "$console"; then
        log "$setup: ok"
    else
        log "$setup: FAILED ($(grep "^GUEST \[$setup\] rdma_probe: FAILED" "$console" | head -n 1 || echo 'no verdict'))"
        failed=1
    fi
done
if ((failed)); then
    grep -q '^GUEST done' "$console" || log "the guest did not finish (timeout or crash: status $status); see $console"
    exit 1
fi
