#!/usr/bin/env bash
# Installs virtiofsd 1.14.0 (the Rust one, from crates.io) under
# /var/cache/xfuse/virtiofsd with its build dependencies, if it is not there
# yet, and prints the binary's path. Used by the virtio-fs comparisons
# (vm-bench.sh, virtiofs-replay.sh); the tests do not need virtiofsd.
#
# Usage: vfsd=$(scripts/virtiofsd.sh)   (as root; progress goes to stderr)
set -euo pipefail
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
        echo "virtiofsd.sh: installing ${missing[*]} (virtiofsd's build dependencies)" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2
    fi
    echo "virtiofsd.sh: building virtiofsd 1.14.0 (cargo install, about 2 minutes)" >&2
    cargo install --locked --root "$vfsd_root" virtiofsd@1.14.0 >&2
fi
echo "$vfsd"
