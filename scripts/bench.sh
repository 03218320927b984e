#!/usr/bin/env bash
# Runs the transport benches (benches/benches/transports.rs) and prints the
# markdown report on stdout; criterion's own output goes to stderr.
#
#   scripts/bench.sh > report.md           # the whole suite, about 10 minutes on 2 CPUs
#   scripts/bench.sh stat_cached           # arguments go to criterion (a filter, flags)
#
# A run without arguments starts a fresh side file (daemon CPU and RSS per
# bench); a filtered run merges into the previous one. Needs root (mounts).
# XFUSED_ARGS adds arguments to every `xfused passthrough`.
#
# The report opens with SVG charts (speed relative to stock and to native,
# throughput against threads), written to $BENCH_SVG_DIR (default
# target/xfuse-bench/svg) and linked as $BENCH_SVG_HREF/FILE (default: the
# directory as given). For docs/BENCHMARKS.md:
#   BENCH_SVG_DIR=docs/img/transports BENCH_SVG_HREF=img/transports scripts/bench.sh
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$repo"
export PATH="$HOME/.cargo/bin:$PATH"

if [[ $(id -u) -ne 0 ]]; then
    echo "bench: run as root: the benches mount tmpfs and FUSE filesystems" >&2
    exit 1
fi

target=${CARGO_TARGET_DIR:-$repo/target}
echo "== cargo build --release -p xfused" >&2
cargo build --release -p xfused >&2
if (($# == 0)); then
    rm -f "$target/xfuse-bench/side.json"
fi

start=$(date +%s)
echo "== cargo bench -p benches -- $*" >&2
cargo bench -p benches -- "$@" >&2
elapsed=$(($(date +%s) - start))
echo "== benches took ${elapsed} s" >&2

cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)
echo "Linux $(uname -r), $(nproc) CPUs (${cpu:-unknown}), $(free -g | awk '/^Mem:/ {print $2}') GiB RAM;" \
    "commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . 2>/dev/null || echo ' (with uncommitted changes)');" \
    "\`scripts/bench.sh${*:+ $*}\`, ${elapsed} s."
echo
svg_dir=${BENCH_SVG_DIR:-$target/xfuse-bench/svg}
cargo run --release -q -p benches --bin report -- --svg-dir "$svg_dir" --svg-href "${BENCH_SVG_HREF:-$svg_dir}"
