#!/usr/bin/env bash
# Runs the test suite many times to find tests that fail at random: the
# unit tests ROUNDS times (default 20) and the integration suites (every
# pass of scripts/test.sh, see scripts/passes.sh) --integration N times
# (default 3), optionally beside a CPU hog. Prints every test that failed
# at least once, with its count, and exits 1 if any did.
#
# Usage: scripts/stress-tests.sh [--hog] [--integration N] [ROUNDS]
#   --hog            keep every CPU busy (one spinning process per CPU,
#                    at normal priority) while the tests run
#   --integration N  rounds of the integration passes (0: unit tests only)
#
# Needs what scripts/test.sh needs (run it once first: it installs the
# tools). Not part of the test command: 20 unit rounds and 3 integration
# rounds take about an hour on 2 CPUs.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$repo"
export PATH="$HOME/.cargo/bin:$PATH"
# shellcheck source=scripts/passes.sh
source "$repo/scripts/passes.sh"

hog=0
unit_rounds=20
integration_rounds=3
while (($#)); do
    case $1 in
        --hog) hog=1 ;;
        --integration)
            integration_rounds=${2:?--integration needs a count}
            shift
            ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        -*)
            echo "stress-tests: unknown option $1 (see --help)" >&2
            exit 2
            ;;
        *) unit_rounds=$1 ;;
    esac
    shift
done
[[ $unit_rounds =~ ^[0-9]+$ && $integration_rounds =~ ^[0-9]+$ ]] || {
    echo "stress-tests: ROUNDS and --integration take whole numbers" >&2
    exit 2
}

export XFUSE_TEST_STRICT=1
work=$(mktemp -d "${TMPDIR:-/tmp}/xfuse-stress.XXXXXX")
export XFUSE_SKIP_LOG=$work/skipped
failures=$work/failures
: >"$failures"
: >"$XFUSE_SKIP_LOG"
hogs=()
cleanup() {
    if ((${#hogs[@]})); then
        kill "${hogs[@]}" 2>/dev/null || true
    fi
    wait 2>/dev/null || true
}
trap cleanup EXIT

echo "== building the tests"
cargo test --locked --workspace --no-run --quiet
if ((hog)); then
    for _ in $(seq "$(nproc)"); do
        (while :; do :; done) &
        hogs+=($!)
    done
    echo "== CPU hog: ${#hogs[@]} spinning processes"
fi

runs=0
# Runs one cargo test command, keeps its output, and records every failed
# test (libtest's "test NAME ... FAILED"), or the command itself when it
# failed without naming a test (a crash, a build error).
record() {
    local out=$work/run.$runs
    runs=$((runs + 1))
    echo "== [$label] $*"
    if env "$@" >"$out" 2>&1; then
        grep -h '^test result:' "$out" | sed 's/^/   /'
        return 0
    fi
    if grep -q ' \.\.\. FAILED$' "$out"; then
        sed -n 's/^test \(.*\) \.\.\. FAILED$/\1/p' "$out" | while read -r t; do
            echo "$label: $t" >>"$failures"
            echo "   FAILED: $t"
        done
    else
        echo "$label: (command failed) $*" >>"$failures"
        echo "   FAILED: the command itself"
    fi
    echo "   output kept in $out"
}

for r in $(seq "$unit_rounds"); do
    label="unit $r/$unit_rounds"
    unit_pass record
done
for r in $(seq "$integration_rounds"); do
    label="integration $r/$integration_rounds"
    integration_dev_pass record
    integration_other_passes record
done

echo "== $runs test commands; skipped tests recorded: $(wc -l <"$XFUSE_SKIP_LOG")"
if [[ -s $failures ]]; then
    echo "== tests that failed at least once (count, test)"
    sed 's/^[^:]*: //' "$failures" | sort | uniq -c | sort -rn
    echo "(outputs under $work)"
    trap - EXIT
    cleanup
    exit 1
fi
echo "== no test failed"
rm -rf "$work"
