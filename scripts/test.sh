#!/usr/bin/env bash
# The whole test suite: installs what is missing, then formatting and lint
# checks, unit tests (including the metadata layer's operation suite and
# its seeded simulation), and the integration tests that mount for real
# (POSIX workloads, faults, scale, transports, pjdfstest, BPF counters,
# adaptive cache policy) on each transport: dev, uring, and uring with FUSE
# passthrough, and the POSIX suites again with the adaptive cache policy;
# `xfused mount` (meta_mount, meta_pjdfstest, meta_service) on dev and uring;
# a QEMU guest against `xfused virtiofs`; a storage cluster moving file
# data by RDMA on soft-RoCE in a QEMU guest (daemon/tests/rdma_guest.rs,
# scripts/rdma-test.sh). The metadata unit tests start a
# 3-member etcd cluster on 127.0.0.1 (ports 26000-26999). The passes are
# listed in scripts/passes.sh.
#
# Ends with one line `xfuse: N passed, M failed, K skipped` over every test
# binary and pass. A test that cannot run here (a missing tool) is a
# failure, since setup.sh installed everything (XFUSE_TEST_STRICT=1); a test
# that does not apply to a pass records itself as skipped
# (XFUSE_SKIP_LOG) and is counted so, not as passed.
#
# Needs root (the tests mount FUSE filesystems). Takes about 20-30 minutes
# on a 2-CPU machine from a clean build (26 min for CI at a8f7157).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$repo"
"$repo/scripts/setup.sh" --tests
export PATH="$HOME/.cargo/bin:$PATH"
# shellcheck source=scripts/passes.sh
source "$repo/scripts/passes.sh"
# setup.sh installed every tool the tests use (QEMU, busybox, cc, the
# kernel headers): a test that finds one missing fails.
export XFUSE_TEST_STRICT=1

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy (with the feature rdma, as the tests build)"
cargo clippy --locked --workspace --all-targets --features xfused/rdma -- -D warnings
echo "== cargo check (the default build, without rdma)"
cargo check --locked -p xfused
work=$(mktemp -d "${TMPDIR:-/tmp}/xfuse-test.XXXXXX")
log=$work/log
export XFUSE_SKIP_LOG=$work/skipped
: >"$log"
: >"$XFUSE_SKIP_LOG"
run() {
    echo "== $*"
    env "$@" 2>&1 | tee -a "$log"
}
unit_pass run
integration_dev_pass run
# Doc tests (code in rustdoc comments).
run cargo test --locked --workspace --features xfused/rdma --doc
integration_other_passes run
if [[ -s $XFUSE_SKIP_LOG ]]; then
    echo "== skipped tests (test, reason)"
    cat "$XFUSE_SKIP_LOG"
fi
# One closing line with the totals over every test binary and pass; the
# tests that recorded a skip ran as "passed" in libtest's count.
awk -v skips="$(wc -l <"$XFUSE_SKIP_LOG")" '
     /^test result:/ { p += $4; f += $6; i += $8 }
     END { printf "xfuse: %d passed, %d failed, %d skipped\n", p - skips, f, i + skips; exit (f > 0) }' "$log"
rm -rf "$work"
