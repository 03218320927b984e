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
# dependencies. Only this benchmark uses virtiofsd; the tests do not.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$repo"
"$repo/scripts/setup.sh" --tests
export PATH="$HOME/.cargo/bin:$PATH"

vfsd_root=/var/cache/xfuse/virtiofsd
vfsd=$vfsd_root/bin/virtiofsd
if [[ ! -x $vfsd ]]; then
    deps=(libcap-ng-dev libseccomp-dev pkg-config)
    missing=()
    for p in "${deps[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if ((${#missing[@]})); then
        echo "vm-bench: installing ${missing[*]} (virtiofsd's build dependencies)" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
    fi
    echo "vm-bench: building virtiofsd 1.14.0 (cargo install, about 2 minutes)" >&2
    cargo install --locked --root "$vfsd_root" virtiofsd@1.14.0
fi

cargo build --release --locked -p xfused -p vm-tests
exec "$repo/target/release/vm-bench" --xfused "$repo/target/release/xfused" --virtiofsd "$vfsd" "$@"
