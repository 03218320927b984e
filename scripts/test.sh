#!/usr/bin/env bash
# The whole test suite: installs what is missing, then formatting and lint
# checks, unit tests, integration tests that mount through each transport,
# and pjdfstest against a mount (run by the integration test pjdfstest.rs).
#
# Needs root (the tests mount FUSE filesystems). Takes a few minutes.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$repo"
"$repo/scripts/setup.sh" --tests
export PATH="$HOME/.cargo/bin:$PATH"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --locked --workspace --all-targets -- -D warnings
echo "== cargo test"
# Integration tests mount in parallel; each has its own mountpoint.
cargo test --locked --workspace 2>&1 | tee "${TMPDIR:-/tmp}/xfuse-test.log"
# One closing line with the totals over every test binary.
awk '/^test result:/ { p += $4; f += $6; i += $8 }
     END { printf "xfuse: %d passed, %d failed, %d skipped\n", p, f, i; exit (f > 0) }' \
    "${TMPDIR:-/tmp}/xfuse-test.log"
