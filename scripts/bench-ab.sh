#!/usr/bin/env bash
# Same-session A/B of the transport benches: an older commit against the
# working tree, run in turn (old, new, old, new, ...), so both see the same
# machine. Reports go to target/bench-ab/{old,new}-N.md.
#
#   scripts/bench-ab.sh 8bd68f5                       # 2 rounds, the filter below
#   scripts/bench-ab.sh 8bd68f5 'stat_uncached' 3     # a criterion filter, 3 rounds
#
# The old commit is checked out in a worktree with its own target
# directory (/var/tmp/xfuse-ab-COMMIT), built once. Compare the runs'
# tables row by row; stock FUSE and native did not change between the two,
# so their own ratios show how much the machine moved.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
old=${1:?usage: scripts/bench-ab.sh OLD_COMMIT [FILTER] [ROUNDS]}
filter=${2:-stat_uncached|open_close|create_unlink|seqread_128k|randread_4k_direct|randwrite_4k_direct}
rounds=${3:-2}
export PATH="$HOME/.cargo/bin:$PATH"
out=${CARGO_TARGET_DIR:-$repo/target}/bench-ab
mkdir -p "$out"
tree=/var/tmp/xfuse-ab-$old
if [[ ! -d $tree ]]; then
    git -C "$repo" worktree add --detach "$tree" "$old" >&2
fi
for round in $(seq "$rounds"); do
    for which in old new; do
        echo "== round $round $which $(date +%T) load $(cut -d' ' -f1 /proc/loadavg)" >&2
        if [[ $which == old ]]; then
            (cd "$tree" && CARGO_TARGET_DIR=$tree/target scripts/bench.sh "$filter") >"$out/old-$round.md"
        else
            (cd "$repo" && scripts/bench.sh "$filter") >"$out/new-$round.md"
        fi
    done
done
echo "== done $(date +%T); reports in $out" >&2
