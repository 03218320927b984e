#!/usr/bin/env bash
# The virtio-fs backends compared without a guest: an in-process vhost-user
# frontend replays the VM workload's metadata operations against `xfused
# virtiofs` (defaults and --inode-fds) and virtiofsd, and prints per-operation
# latency and backend CPU per request as Markdown (docs/BENCHMARKS.md has the
# last table). No QEMU, no mount; sockets and directories under $TMPDIR.
#
# Usage: scripts/virtiofs-replay.sh [virtiofs-replay flags]   e.g. --rounds 9 --files 2000
#        (--help lists them)
#
# Installs virtiofsd 1.14.0 under /var/cache/xfuse/virtiofsd if missing
# (scripts/virtiofsd.sh; as root).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$repo"
export PATH="$HOME/.cargo/bin:$PATH"
vfsd=$("$repo/scripts/virtiofsd.sh")
cargo build --release --locked -p xfused -p benches --bin xfused --bin virtiofs-replay
exec "$repo/target/release/virtiofs-replay" --xfused "$repo/target/release/xfused" --virtiofsd "$vfsd" "$@"
