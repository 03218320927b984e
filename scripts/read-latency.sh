#!/usr/bin/env bash
# Latency of single 4 KiB O_DIRECT reads, one thread, through stock FUSE and
# xfused's transports (p50/p90/p99, ratio to stock within each round):
#
#   scripts/read-latency.sh                       # 5 rounds, 20,000 reads each
#   scripts/read-latency.sh --rounds 7 --configs stock,xfuse-uring,native
#
# Arguments go to the read-latency binary (--help). Needs root (mounts).
# XFUSED_ARGS adds arguments to every xfused, e.g. XFUSED_ARGS='--spin-us 20'.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$repo"
export PATH="$HOME/.cargo/bin:$PATH"

if [[ $(id -u) -ne 0 ]]; then
    echo "read-latency: run as root: it mounts tmpfs and FUSE filesystems" >&2
    exit 1
fi
cargo build --release -q -p xfused -p benches --bin xfused --bin stock-fuse --bin read-latency >&2
echo "Linux $(uname -r), $(nproc) CPUs, commit $(git rev-parse --short HEAD); \`scripts/read-latency.sh${*:+ $*}\`" >&2
exec "${CARGO_TARGET_DIR:-$repo/target}/release/read-latency" "$@"
