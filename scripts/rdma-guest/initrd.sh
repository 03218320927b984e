#!/usr/bin/env bash
# Packs the soft-RoCE guest's initramfs: busybox, the kernel modules
# soft-RoCE needs (with their dependencies, read from each module), the
# host's ip and rdma tools (iproute2), rdma-core's libibverbs and rxe
# provider from CACHE (fetch.sh), the binaries given, and init.sh as /init
# with lib.sh, the helpers of the guest's scripts, as /usr/lib/xfuse-guest.sh.
# Every shared library those binaries need comes along (ldd).
#
# Usage: scripts/rdma-guest/initrd.sh CACHE OUT.cpio.gz BINARY...
#   Each BINARY lands in the guest's /usr/bin under its own name (programs
#   stripped, scripts as they are).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
log() { echo "rdma-guest: $*" >&2; }
if (($# < 2)); then
    echo "usage: $0 CACHE OUT.cpio.gz BINARY..." >&2
    exit 2
fi
cache=$1
out=$2
shift 2

kver=$(ls "$cache/kernel/lib/modules" 2>/dev/null | head -n 1)
[[ -n $kver && -d $cache/rdma/usr ]] || { log "$cache is not filled in: run fetch.sh first"; exit 1; }
arch=x86_64-linux-gnu

root=$(mktemp -d /tmp/xfuse-rdma-initrd.XXXXXX)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,usr/bin,lib/modules,lib64,lib/$arch,usr/lib/$arch/libibverbs,etc/libibverbs.d,proc,sys,dev,tmp,run}

cp /bin/busybox "$root/bin/busybox"

# Modules: what the setups use, each after what it depends on (the
# `depends=` of its .modinfo). crc32_generic is no dependency of rdma_rxe,
# which asks the crypto API for "crc32" at run time: loaded first, by name.
declare -A module_path=() loaded=()
while IFS= read -r ko; do
    name=$(basename "$ko" .ko)
    module_path[${name//-/_}]=$ko
done < <(find "$cache/kernel/lib/modules/$kver/kernel" -name '*.ko')
order=()
add_module() {
    local name=${1//-/_} dep
    [[ -n ${loaded[$name]-} ]] && return
    [[ -n ${module_path[$name]-} ]] || { log "kernel $kver has no module $name"; exit 1; }
    loaded[$name]=1
    for dep in $(LC_ALL=C tr '\0' '\n' <"${module_path[$name]}" | LC_ALL=C sed -n 's/^depends=//p' | head -n 1 | tr ',' ' '); do
        add_module "$dep"
    done
    cp "${module_path[$name]}" "$root/lib/modules/$name.ko"
    order+=("$name")
}
# fuse: the cluster setup mounts (scripts/rdma-test.sh).
for m in crc32_generic rdma_rxe dummy veth fuse; do add_module "$m"; done
echo "${order[*]}" >"$root/lib/modules/load-order"

# iproute2's ip (busybox's applet knows no policy routing rules) and rdma
# (`rdma link add` makes an rxe device).
cp /bin/ip "$root/usr/bin/ip"
cp /usr/bin/rdma "$root/usr/bin/rdma"
bins=("$root/usr/bin/ip" "$root/usr/bin/rdma")

# libibverbs finds its provider through /etc/libibverbs.d/rxe.driver and
# loads it from its provider directory.
rdma=$cache/rdma
cp "$rdma/etc/libibverbs.d/rxe.driver" "$root/etc/libibverbs.d/"
provider=$(compgen -G "$rdma/usr/lib/$arch/libibverbs/librxe-rdmav*.so" | head -n 1 || true)
[[ -n $provider ]] || { log "no rxe provider in $rdma"; exit 1; }
cp "$provider" "$root/usr/lib/$arch/libibverbs/"
bins+=("$root/usr/lib/$arch/libibverbs/$(basename "$provider")")
cp "$rdma/usr/bin/ibv_devinfo" "$root/usr/bin/"
bins+=("$root/usr/bin/ibv_devinfo")

for b in "$@"; do
    [[ -x $b ]] || { log "$b is not an executable"; exit 1; }
    if [[ $(head -c 4 "$b") == $'\x7fELF' ]]; then
        strip -o "$root/usr/bin/$(basename "$b")" "$b"
        bins+=("$root/usr/bin/$(basename "$b")")
    else
        install -m 0755 "$b" "$root/usr/bin/$(basename "$b")"
    fi
done

# Shared libraries, rdma-core's from the cache before the host's.
export LD_LIBRARY_PATH=$rdma/usr/lib/$arch
if ldd "${bins[@]}" 2>/dev/null | grep 'not found'; then
    log "libraries missing (above)"
    exit 1
fi
ldd "${bins[@]}" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// { print $3 }' | sort -u | while IFS= read -r lib; do
    cp -L "$lib" "$root/lib/$arch/"
done
cp -L /lib64/ld-linux-x86-64.so.2 "$root/lib64/"

cp "$here/init.sh" "$root/init"
chmod 0755 "$root/init"
# The helpers init.sh and the scripts it runs source.
install -m 0644 "$here/lib.sh" "$root/usr/lib/xfuse-guest.sh"

(cd "$root" && find . | "$root/bin/busybox" cpio -o -H newc -R 0:0 2>/dev/null | gzip -1) >"$out"
log "initramfs $out: $(du -h "$out" | cut -f1), modules: ${order[*]}"
