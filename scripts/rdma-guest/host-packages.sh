#!/usr/bin/env bash
# Installs (as root, apt-get) what the soft-RoCE guest's scripts need on the
# host and are missing; scripts/setup.sh --tests installs the same.
set -euo pipefail
log() { echo "rdma-guest: $*" >&2; }

# Host packages: QEMU and busybox for the guest, iproute2 for its ip and
# rdma tools, xz for the kernel image; and what building the feature needs
# (scripts/setup.sh --tests installs the same).
packages=(qemu-system-x86 busybox-static xz-utils iproute2 binutils grep
    libibverbs-dev libnl-3-dev libnl-route-3-dev cmake make python3 pkg-config clang gcc)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        log "missing packages (install them as root): ${missing[*]}"
        exit 1
    fi
    stamp=/var/lib/xfuse/apt-updated
    if [[ ! -e $stamp ]]; then
        apt-get update -q
        mkdir -p "$(dirname "$stamp")" && touch "$stamp"
    fi
    log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi
