#!/usr/bin/env bash
# Installs what xfuse needs on Debian 12 (run as root), builds it, and
# installs xfused as /usr/local/bin/xfused with the mount(8) helper
# /sbin/mount.fuse.xfused.
#
# Idempotent: packages already present are not reinstalled, `apt-get update`
# runs at most once per machine (a stamp under /var/lib/xfuse), and the Rust
# toolchain is expected from rustup (Debian's cargo is too old).
#
# Usage: scripts/setup.sh [--tests] [--bench]
#   --tests also installs the test tools; --bench the benchmark tools (fio,
#   iperf3 for scripts/bench-cluster.sh; the charts' font).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
want_tests=0
want_bench=0
for arg in "$@"; do
    case $arg in
    --tests) want_tests=1 ;;
    --bench) want_bench=1 ;;
    *)
        echo "setup: unknown option $arg (expected --tests, --bench)" >&2
        exit 2
        ;;
    esac
done

log() { echo "setup: $*" >&2; }

if [[ $(id -u) -ne 0 ]]; then
    log "run as root: mounting FUSE filesystems needs CAP_SYS_ADMIN"
    exit 1
fi

# Debian packages: a C compiler (the ABI test compiles against
# <linux/fuse.h>, and some crates build C), kernel headers for that test,
# clang and libbpf-dev (<bpf/bpf_helpers.h>) for the BPF programs of
# ebpf/ (compiled at build time; CO-RE, so no kernel headers at run time),
# protoc (the etcd client's build compiles etcd's .proto files), etcd
# (the metadata tests run a 3-member cluster), and the tools the
# integration tests drive (mount and umount for mount_helper.rs; setfacl
# and getfacl for the POSIX ACL cases of permissions.rs; setfattr and
# getfattr, which set a directory's replication factor as the README shows;
# chattr and lsattr for file_flags.rs).
packages=(gcc libc6-dev linux-libc-dev clang libbpf-dev protobuf-compiler etcd-server util-linux mount tar diffutils coreutils findutils passwd acl attr e2fsprogs)
# The VM tests (vm-tests/, daemon/tests/virtiofs_vm.rs) boot a guest under
# QEMU: its kernel comes from Debian's linux-image-amd64 (fetched with
# apt-get download on first use), its initramfs from busybox-static; xz
# unpacks the kernel image.
# systemd-analyze checks the units of dist/systemd (systemd_units.rs; the
# package installs without becoming PID 1).
if ((want_tests)); then
    packages+=(qemu-system-x86 busybox-static xz-utils systemd)
fi
# The cargo feature `rdma` (RDMA verbs: kmod-shim/src/verbs.rs,
# daemon/src/rpc/rdma/verbs.rs), which CI compiles and clippy-checks:
# ibverbs-sys's build script configures and compiles its bundled rdma-core
# with cmake, make and gcc (rdma-core's configuration wants python3, and
# libnl's headers through pkg-config) and runs bindgen (clang); the program
# links the system libibverbs. Its test, scripts/rdma-guest/run-probe.sh,
# boots soft-RoCE under QEMU and takes the guest's ip and rdma tools from
# iproute2.
if ((want_tests)); then
    packages+=(libibverbs-dev libnl-3-dev libnl-route-3-dev cmake make python3 pkg-config clang iproute2)
fi
# The bench reports' SVG charts (benches/src/plot.rs, and its unit tests)
# measure their text with DejaVu Sans.
if ((want_tests || want_bench)); then
    packages+=(fonts-dejavu-core)
fi
# scripts/bench-cluster.sh: fio through mounts, iperf3 for the network's
# limit, e2fsprogs for the loop-mounted target disks it measures.
if ((want_bench)); then
    packages+=(fio iperf3 e2fsprogs)
fi
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    stamp=/var/lib/xfuse/apt-updated
    if [[ ! -e $stamp ]]; then
        log "apt-get update"
        apt-get update -q
        mkdir -p "$(dirname "$stamp")" && touch "$stamp"
    fi
    log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi

# promtool (daemon/tests/metrics.rs checks the --metrics exposition with
# `promtool check metrics`) comes in Debian's prometheus package, a server
# that would start on install, with recommends (node exporter) that would
# too: installed without recommends, under a policy-rc.d that forbids
# starting services (invoke-rc.d and deb-systemd-invoke both honour it, with
# or without systemd), and disabled for boots where systemd runs.
if ((want_tests)) && ! command -v promtool >/dev/null; then
    if [[ ! -e /var/lib/xfuse/apt-updated ]]; then
        log "apt-get update"
        apt-get update -q
        mkdir -p /var/lib/xfuse && touch /var/lib/xfuse/apt-updated
    fi
    log "installing prometheus (for promtool; its server is not started)"
    # Whatever policy the host has is set aside for the install, and put back.
    policy=/usr/sbin/policy-rc.d
    [[ -e $policy ]] && mv "$policy" "$policy.xfuse-saved"
    printf '#!/bin/sh\n# scripts/setup.sh: no service starts while prometheus installs\nexit 101\n' >"$policy"
    chmod 0755 "$policy"
    status=0
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus || status=$?
    rm -f "$policy"
    [[ -e $policy.xfuse-saved ]] && mv "$policy.xfuse-saved" "$policy"
    ((status == 0)) || exit "$status"
    if [[ -d /run/systemd/system ]]; then
        systemctl disable --now prometheus.service >/dev/null 2>&1 || true
    fi
fi

export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v cargo >/dev/null; then
    log "cargo not found: install the Rust toolchain (1.95, via rustup) first"
    exit 1
fi

if [[ ! -e /dev/fuse ]]; then
    log "/dev/fuse is missing: this kernel has no FUSE"
    exit 1
fi

if ((want_tests)); then
    if ! command -v pjdfstest >/dev/null; then
        log "installing pjdfstest 0.2.2 (cargo install)"
        cargo install --locked --version 0.2.2 pjdfstest
    fi
    if ! command -v fsx >/dev/null; then
        log "installing fsx 0.3.2 (cargo install)"
        cargo install --locked --version 0.3.2 fsx
    fi
fi

log "building (release)"
cd "$repo"
cargo build --release --locked -p xfused

# xfused on the PATH, where the systemd units of dist/systemd run it, and
# the helper mount(8) runs for `mount -t fuse.xfused` (it searches /sbin).
# A copy, not a link into the clone: the units' ProtectHome=yes hides a
# clone under /home or /root, and a rebuild should not change a running
# machine's daemon until setup runs again. A file there that is not ours
# (not a link, or a link elsewhere) is left alone, with a word.
install_link() { # TARGET LINK
    if [[ -e $2 || -L $2 ]] && [[ $(readlink "$2") != "$1" ]]; then
        log "$2 exists and is not a link to $1: left alone"
    else
        ln -sfn "$1" "$2"
    fi
}
install -m 0755 "$repo/target/release/xfused" /usr/local/bin/xfused
install_link /usr/local/bin/xfused /sbin/mount.fuse.xfused

# FUSE-over-io_uring is off at every boot; the `uring` transport (and
# `--transport auto`) needs it. xfused never flips it by itself.
if [[ -e /sys/module/fuse/parameters/enable_uring ]]; then
    "$repo/target/release/xfused" kernel enable-uring
else
    log "this kernel has no FUSE-over-io_uring (Linux 6.14+): xfused will use the dev transport"
fi
