#!/usr/bin/env bash
# The virtio-fs comparison: the vm-tests guest workload against
# `xfused virtiofs` and against virtiofsd (the Rust one, from crates.io),
# same guest, same shared-directory contents, alternating order; prints a
# Markdown table of median phase times (docs/BENCHMARKS.md has the last one).
#
# Usage: scripts/vm-bench.sh [vm-bench flags]   e.g. --rounds 5 --files 300 --workers 4
#
# Installs what it needs (as root): the test packages via setup.sh --tests,
# and virtiofsd 1.14.0 under /var/cache/xfuse/virtiofsd with its build
# dependencies (scripts/virtiofsd.sh). Only the benchmarks use virtiofsd;
# the tests do not.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$repo"
"$repo/scripts/setup.sh" --tests
export PATH="$HOME/.cargo/bin:$PATH"

vfsd=$("$repo/scripts/virtiofsd.sh")

cargo build --release --locked -p xfused -p vm-tests
exec "$repo/target/release/vm-bench" --xfused "$repo/target/release/xfused" --virtiofsd "$vfsd" "$@"
