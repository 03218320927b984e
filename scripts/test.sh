#!/usr/bin/env bash
# The whole test suite: installs what is missing, then formatting and lint
# checks, unit tests (including the metadata layer's operation suite and
# its seeded simulation), and the integration tests that mount for real
# (POSIX workloads, faults, scale, transports, pjdfstest, BPF counters,
# adaptive cache policy) on each transport: dev, uring, and uring with FUSE
# passthrough, and the POSIX suites again with the adaptive cache policy;
# `xfused mount` (meta_mount, meta_pjdfstest, meta_service) on dev and uring;
# a QEMU guest against `xfused virtiofs`. The metadata unit tests start a
# 3-member etcd cluster on 127.0.0.1 (ports 26000-26999).
#
# Needs root (the tests mount FUSE filesystems). Takes a few minutes.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$repo"
"$repo/scripts/setup.sh" --tests
export PATH="$HOME/.cargo/bin:$PATH"
# setup.sh installed QEMU and busybox: the VM tests must run, not skip.
export XFUSE_REQUIRE_VM=1

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --locked --workspace --all-targets -- -D warnings
log=${TMPDIR:-/tmp}/xfuse-test.$$.log
: >"$log"
run() {
    echo "== $*"
    env "$@" 2>&1 | tee -a "$log"
}
# Unit tests, the integration suite (which mounts for real) on `dev`, and
# the virtio-fs tests that boot a guest (once: they do not use the host's
# transport).
run cargo test --locked --workspace
# The integration suite and pjdfstest again on the rings, then on the rings
# with FUSE passthrough (needs enable_uring, which scripts/setup.sh turns on).
# (The VM tests, vm_*, are left out: virtio-fs does not use the host's FUSE
# transport, so they would repeat the default pass unchanged.)
run XFUSE_TEST_TRANSPORT=uring cargo test --locked -p xfused -- --skip vm_
# (transports.rs is left out there: its tests pin their own flags.)
run XFUSE_TEST_TRANSPORT=uring XFUSE_TEST_ARGS=--passthrough cargo test --locked -p xfused \
    --test posix_dev --test round_trip --test fault --test scale --test pjdfstest --test adaptive \
    --test permissions
# The POSIX suites once more with long timeouts for hot inodes (the adaptive
# cache policy, promoting every 50 ms so short tests see long timeouts).
run XFUSE_TEST_ARGS="--cache-policy adaptive --cache-refresh-ms 50" cargo test --locked -p xfused \
    --test posix_dev --test round_trip --test pjdfstest --test permissions
# One closing line with the totals over every test binary and run.
awk '/^test result:/ { p += $4; f += $6; i += $8 }
     END { printf "xfuse: %d passed, %d failed, %d skipped\n", p, f, i; exit (f > 0) }' "$log"
