#!/usr/bin/env bash
# Fetches what the soft-RoCE guest boots, as Debian packages from the
# configured apt sources (apt-get download: nothing is installed), into a
# cache outside the repository:
#
#   CACHE/debs/      the .debs, kept for the next run
#   CACHE/kernel/    the kernel package linux-image-amd64 points at, unpacked
#                    (its modules: rdma_rxe, ib_core, ib_uverbs, veth, ...)
#   CACHE/vmlinux    that kernel as an ELF image: QEMU's microvm machine boots
#                    it directly (PVH entry), with no firmware or bootloader
#   CACHE/rdma/      rdma-core's user space, unpacked: libibverbs, the
#                    providers (librxe is soft-RoCE's), ibv_devinfo;
#                    perftest's ib_write_bw and ib_read_bw and their
#                    libraries (librdmacm, libpci)
#
# Usage: scripts/rdma-guest/fetch.sh [CACHE]
#   CACHE defaults to $XFUSE_RDMA_GUEST_CACHE, else /var/tmp/xfuse-rdma-guest.
# Needs apt-get, dpkg-deb, xz and GNU grep (every Debian has them).
set -euo pipefail

cache=${1:-${XFUSE_RDMA_GUEST_CACHE:-/var/tmp/xfuse-rdma-guest}}
log() { echo "rdma-guest: $*" >&2; }

mkdir -p "$cache/debs"
cd "$cache/debs"

# Downloads each package not in debs/ yet; prints the .deb of each.
download() {
    local p deb
    for p in "$@"; do
        deb=$(compgen -G "${p}_*.deb" | head -n 1 || true)
        if [[ -z $deb ]]; then
            log "downloading $p"
            # As root, apt warns that it cannot drop privileges for the
            # download; that is expected here.
            apt-get download -q "$p" 2>&1 | grep -v 'unsandboxed' >&2 || true
            deb=$(compgen -G "${p}_*.deb" | head -n 1 || true)
            [[ -n $deb ]] || { log "apt-get download $p gave no .deb (run apt-get update?)"; exit 1; }
        fi
        echo "$cache/debs/$deb"
    done
}

# Unpacks the .debs named after DIR into DIR, unless it holds exactly
# those already.
unpack() {
    local dir=$1
    shift
    if [[ $(cat "$dir/.unpacked-from" 2>/dev/null) != "$*" ]]; then
        rm -rf "$dir"
        mkdir -p "$dir"
        local deb
        for deb in "$@"; do dpkg-deb -x "$deb" "$dir"; done
        echo "$*" >"$dir/.unpacked-from"
    fi
}

# The kernel: whichever versioned package the metapackage depends on now.
kernel_pkg=$(apt-cache depends linux-image-amd64 2>/dev/null |
    awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }')
if [[ -z $kernel_pkg ]]; then
    log "apt knows no linux-image-amd64 (run apt-get update)"
    exit 1
fi
kernel_deb=$(download "$kernel_pkg")
unpack "$cache/kernel" "$kernel_deb"

# vmlinuz is a bzImage: x86 boot code, then the kernel ELF, xz-compressed.
# The ELF starts after the first xz stream header that decompresses to one.
if [[ ! -s $cache/vmlinux || $cache/vmlinux -ot $cache/kernel/.unpacked-from ]]; then
    vmlinuz=$(compgen -G "$cache/kernel/boot/vmlinuz-*" | head -n 1 || true)
    [[ -n $vmlinuz ]] || { log "$kernel_deb has no /boot/vmlinuz-*"; exit 1; }
    found=0
    for offset in $(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$vmlinuz" | cut -d: -f1); do
        tail -c +$((offset + 1)) "$vmlinuz" | xz --single-stream -dcq >"$cache/vmlinux.part" 2>/dev/null || true
        if [[ $(head -c 4 "$cache/vmlinux.part" | od -An -tx1 | tr -d ' \n') == 7f454c46 ]]; then
            mv "$cache/vmlinux.part" "$cache/vmlinux"
            found=1
            break
        fi
    done
    rm -f "$cache/vmlinux.part"
    ((found)) || { log "no xz-compressed ELF found in $vmlinuz"; exit 1; }
fi

# rdma-core's libraries and the rxe provider (libibverbs loads providers
# by name from /etc/libibverbs.d), and ibv_devinfo to show a port;
# perftest (ib_write_bw, ib_read_bw: the limit scripts/rdma-bench.sh
# measures) with the libraries it links beside libibverbs.
mapfile -t rdma_debs < <(download libibverbs1 ibverbs-providers ibverbs-utils \
    perftest librdmacm1 libpci3)
unpack "$cache/rdma" "${rdma_debs[@]}"

log "kernel $(ls "$cache/kernel/lib/modules"), rdma-core $(basename "${rdma_debs[0]}" | cut -d_ -f2), in $cache"
