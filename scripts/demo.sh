#!/usr/bin/env bash
# Quick start: installs what is missing, builds, and mounts a demo directory
# through xfuse until Ctrl-C.
#
#   source (a plain directory):  ${XFUSE_DEMO_DIR:-/tmp/xfuse-demo}/source
#   mountpoint:                  ${XFUSE_DEMO_DIR:-/tmp/xfuse-demo}/mnt
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
"$repo/scripts/setup.sh"

demo=${XFUSE_DEMO_DIR:-/tmp/xfuse-demo}
mkdir -p "$demo/source" "$demo/mnt"
if mountpoint -q "$demo/mnt"; then
    echo "demo: $demo/mnt is already mounted; unmount it first (umount $demo/mnt)" >&2
    exit 1
fi
if [[ ! -e $demo/source/README.txt ]]; then
    echo "Files here are served by xfused through xfuse; edit them through $demo/mnt." \
        >"$demo/source/README.txt"
fi
echo "demo: mounting $demo/source at $demo/mnt through xfuse (Ctrl-C unmounts)"
exec "$repo/target/release/xfused" passthrough "$demo/source" "$demo/mnt"
