#!/usr/bin/env bash
# Run the pjdfstest POSIX conformance suite (Rust rewrite, crates.io
# `pjdfstest`) against a directory on the file system under test.
#
# Usage: scripts/pjdfstest.sh DIR
#
#   DIR   an existing directory on the file system under test.  A fresh
#         subdirectory DIR/pjdfstest.XXXXXX is created for the run and removed
#         afterwards; nothing else in DIR is touched.
#
# Uses tests/pjdfstest/pjdfstest.toml and skips (does not run) the tests
# listed in tests/pjdfstest/excluded.txt.  Ends with the line
#   pjdfstest: N passed, M failed, K skipped
# (K includes the excluded tests) and exits non-zero if M > 0 or if the run
# could not be carried out.  The full log is kept at the path it prints.
#
# Environment (all optional):
#   PJDFSTEST_VERSION        version installed if pjdfstest is missing (0.2.2)
#   PJDFSTEST_CONFIG         config file (tests/pjdfstest/pjdfstest.toml)
#   PJDFSTEST_EXCLUDED       exclusion list (tests/pjdfstest/excluded.txt)
#   PJDFSTEST_LOG            log file (${TMPDIR:-/tmp}/pjdfstest-DATE-PID.log)
#   PJDFSTEST_SECONDARY_FS   directory on another file system for the
#                            exdev_target tests (default: a scratch dir in
#                            ${TMPDIR:-/tmp}, or a private tmpfs mounted
#                            there when that is the same fs as DIR and we are
#                            root; the two tests are skipped if neither works)
#   PJDFSTEST_ALLOW_REMOUNT  1 = run the erofs tests, which remount DIR's file
#                            system read-only and back.  Only for a throwaway
#                            mount dedicated to the run.
#   PJDFSTEST_TIMEOUT        seconds before the run is killed (600)
#   PJDFSTEST_FILTER         space-separated substrings: run only the tests
#                            whose names contain one of them (e.g. "chmod
#                            rename::"), still minus the excluded ones
#   PJDFSTEST_ARGS           extra options for pjdfstest (e.g. "-v")
#   PJDFSTEST_LOCK           lock file that serializes runs on this machine
#                            (/tmp/xfuse-pjdfstest.lock)
set -euo pipefail

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
}

die() {
    echo "pjdfstest.sh: error: $*" >&2
    exit 2
}

if [[ $# -eq 1 && ($1 == -h || $1 == --help) ]]; then
    usage
    exit 0
fi
if [[ $# -ne 1 ]]; then
    usage >&2
    exit 2
fi

[[ -d $1 ]] || die "not a directory: $1"
target_dir=$(cd "$1" && pwd -P)

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
config=${PJDFSTEST_CONFIG:-$repo_root/tests/pjdfstest/pjdfstest.toml}
excluded_file=${PJDFSTEST_EXCLUDED:-$repo_root/tests/pjdfstest/excluded.txt}
pjd_version=${PJDFSTEST_VERSION:-0.2.2}
timeout_s=${PJDFSTEST_TIMEOUT:-600}
tmp_root=${TMPDIR:-/tmp}
log=${PJDFSTEST_LOG:-$tmp_root/pjdfstest-$(date +%Y%m%d-%H%M%S)-$$.log}
[[ -f $config ]] || die "config not found: $config"
[[ $timeout_s =~ ^[0-9]+$ ]] || die "PJDFSTEST_TIMEOUT must be a number of seconds"

# No colours, no pager, no prompts: this runs in CI without a TTY or stdin.
export NO_COLOR=1 CLICOLOR=0 TERM=dumb
exec </dev/null

# pjdfstest creates and uses the same dummy users and groups in every run, so
# two runs on one machine (two test binaries, two checkouts) would trip over
# each other: take a machine-wide lock and wait for it.
lock_file=${PJDFSTEST_LOCK:-/tmp/xfuse-pjdfstest.lock}
exec 9>>"$lock_file"
if ! flock -n 9; then
    echo "pjdfstest.sh: waiting for another pjdfstest run ($lock_file)" >&2
    flock 9
fi

is_root=false
[[ $(id -u) -eq 0 ]] && is_root=true

# --- tools -------------------------------------------------------------------
# pjdfstest itself runs `which sleep` (etxtbsy tests) and `mount`/`umount`
# (rmdir EBUSY test, erofs tests).
for tool in which sleep mount umount timeout mktemp; do
    command -v "$tool" >/dev/null || die "required command not found: $tool"
done

cargo_bin=${CARGO_HOME:-${HOME:-/root}/.cargo}/bin
case ":$PATH:" in
*":$cargo_bin:"*) ;;
*) PATH=$PATH:$cargo_bin ;;
esac
export PATH

if ! command -v pjdfstest >/dev/null; then
    command -v cargo >/dev/null || die "pjdfstest is not installed and cargo is not on PATH"
    echo "pjdfstest.sh: installing pjdfstest $pjd_version with cargo install (takes ~1 min)"
    cargo install --locked --version "$pjd_version" pjdfstest >&2 ||
        die "cargo install --locked --version $pjd_version pjdfstest failed"
    command -v pjdfstest >/dev/null || die "pjdfstest still not on PATH after cargo install"
fi
pjd=$(command -v pjdfstest)
installed_version=$("$pjd" --version 2>/dev/null | awk '{print $2}')
if [[ $installed_version != "$pjd_version" ]]; then
    echo "pjdfstest.sh: warning: $pjd is version ${installed_version:-unknown}," \
        "expected $pjd_version; test names in $excluded_file may not match" >&2
fi

# --- dummy users ---------------------------------------------------------------
# pjdfstest needs the two [user, group] pairs of [dummy_auth] to exist (the
# group being the user's primary group), or it refuses to start.
dummy_pairs=$(sed -e 's/#.*//' "$config" | tr -d ' \t' |
    grep -oE '\["[^"]+","[^"]+"\]' | tr -d '[]"' | tr ',' ' ' || true)
while read -r user group; do
    [[ -n $user ]] || continue
    if ! getent group "$group" >/dev/null; then
        $is_root || die "group '$group' (config [dummy_auth]) does not exist; run as root to create it"
        groupadd --system "$group" 2>/dev/null || getent group "$group" >/dev/null ||
            die "cannot create group $group"
    fi
    if ! getent passwd "$user" >/dev/null; then
        $is_root || die "user '$user' (config [dummy_auth]) does not exist; run as root to create it"
        useradd --system --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin --gid "$group" "$user" 2>/dev/null ||
            getent passwd "$user" >/dev/null || die "cannot create user $user"
    fi
    user_gid=$(getent passwd "$user" | cut -d: -f4)
    group_gid=$(getent group "$group" | cut -d: -f3)
    [[ $user_gid == "$group_gid" ]] ||
        die "user $user's primary group is gid $user_gid, not $group ($group_gid)"
done <<<"$dummy_pairs"

# --- scratch state and cleanup -----------------------------------------------
work_dir=""
list_dir=""
list_mounted=false
secondary_dir=""
secondary_mounted=false
run_config=""

umount_below() { # unmount anything left mounted below $1 (deepest first)
    local dir=$1 m
    [[ -n $dir && -d $dir ]] || return 0
    while read -r m; do
        if [[ -n $m ]]; then umount -l "$m" 2>/dev/null || true; fi
    done < <(findmnt -rn -o TARGET 2>/dev/null | awk -v d="$dir/" 'index($0, d) == 1' | sort -r)
}

cleanup() {
    local rc=$?
    set +e
    if [[ -n $work_dir ]]; then
        # The suite's temporary directories are removed by pjdfstest itself on
        # a normal exit; this covers crashes, timeouts and interrupts.
        umount_below "$work_dir"
        # The suite leaves 0000/sticky/etc. modes behind if it was killed;
        # root ignores them, a non-root user needs them reset first.
        $is_root || chmod -R u+rwx "$work_dir" 2>/dev/null
        rm -rf --one-file-system "$work_dir"
    fi
    if [[ -n $list_dir ]]; then
        umount_below "$list_dir"
        $list_mounted && umount "$list_dir"
        rm -rf --one-file-system "$list_dir"
    fi
    if [[ -n $secondary_dir ]]; then
        $secondary_mounted && umount "$secondary_dir"
        rm -rf --one-file-system "$secondary_dir"
    fi
    [[ -n $run_config ]] && rm -f "$run_config"
    exit "$rc"
}
pjd_pid=""
stop_run() { # on SIGINT/SIGTERM: stop a running pjdfstest, then clean up
    if [[ -n $pjd_pid ]]; then
        kill -TERM "$pjd_pid" 2>/dev/null || true
        wait "$pjd_pid" 2>/dev/null || true
    fi
    exit "$1"
}
trap cleanup EXIT
trap 'stop_run 130' INT
trap 'stop_run 143' TERM

same_fs() { [[ $(stat -c %d "$1") == "$(stat -c %d "$2")" ]]; }

# The test directory.  It must be searchable by the dummy users, and so must
# every ancestor of DIR (the suite does not change DIR's own mode).
work_dir=$(mktemp -d "$target_dir/pjdfstest.XXXXXX")
chmod 0755 "$work_dir"
if $is_root && command -v setpriv >/dev/null; then
    first_user=$(awk 'NR == 1 {print $1}' <<<"$dummy_pairs")
    if [[ -n $first_user ]] &&
        ! setpriv --reuid="$first_user" --regid="$(id -g "$first_user")" --clear-groups \
            test -x "$work_dir" 2>/dev/null; then
        echo "pjdfstest.sh: warning: $work_dir is not searchable by user $first_user" \
            "(check the modes of DIR's ancestors); permission tests will fail" >&2
    fi
fi

# Effective config: the committed one, plus allow_remount if asked for.
run_config=$(mktemp "$tmp_root/pjdfstest-config.XXXXXX.toml")
if [[ ${PJDFSTEST_ALLOW_REMOUNT:-0} == 1 ]]; then
    sed -E 's/^([[:space:]]*allow_remount[[:space:]]*=[[:space:]]*)false/\1true/' "$config" >"$run_config"
    grep -qE '^[[:space:]]*allow_remount[[:space:]]*=[[:space:]]*true' "$run_config" ||
        die "could not enable allow_remount in $config"
else
    cp "$config" "$run_config"
fi

# Secondary file system for the exdev_target tests.
secondary_args=()
secondary_desc=none
if [[ -n ${PJDFSTEST_SECONDARY_FS:-} ]]; then
    [[ -d $PJDFSTEST_SECONDARY_FS ]] || die "PJDFSTEST_SECONDARY_FS is not a directory"
    same_fs "$PJDFSTEST_SECONDARY_FS" "$work_dir" &&
        die "PJDFSTEST_SECONDARY_FS is on the same file system as $target_dir"
    secondary_args=(-s "$PJDFSTEST_SECONDARY_FS")
    secondary_desc=$PJDFSTEST_SECONDARY_FS
else
    secondary_dir=$(mktemp -d "$tmp_root/pjdfstest-secondary.XXXXXX")
    if same_fs "$secondary_dir" "$work_dir" && $is_root; then
        mount -t tmpfs -o size=16m,mode=0755 pjdfstest-secondary "$secondary_dir" &&
            secondary_mounted=true
    fi
    if $secondary_mounted; then secondary_desc="$secondary_dir (private tmpfs)"; else secondary_desc=$secondary_dir; fi
    if same_fs "$secondary_dir" "$work_dir"; then
        echo "pjdfstest.sh: note: no second file system available; the exdev_target tests will be skipped" >&2
        secondary_desc=none
    else
        secondary_args=(-s "$secondary_dir")
    fi
fi

# --- exclusions ----------------------------------------------------------------
# pjdfstest has no "exclude" option: it only runs the tests whose names
# contain one of the given patterns (or equal one, with -e, where names carry
# a `pjdfstest::tests::` prefix that the output omits).  To leave tests out we
# therefore list every test and pass the complement with -e.  There is no
# list option either, so the list comes from a throwaway run in a scratch
# directory (a private tmpfs when root): about one second.
mapfile -t excluded < <(sed -e 's/[[:space:]]*$//' -e 's/^[[:space:]]*//' "$excluded_file" 2>/dev/null |
    grep -vE '^(#|$)' || true)
if [[ -f $excluded_file ]]; then
    # Every name needs its reason: the line above it must be a `# reason`
    # comment (or another name, so that one reason can cover a group).
    unexplained=$(awk '
        { sub(/^[ \t]+/, ""); sub(/[ \t]+$/, "") }
        $0 != "" && $0 !~ /^#/ && prev == "" { print FILENAME ":" NR ": " $0 }
        { prev = $0 }
    ' "$excluded_file")
    [[ -z $unexplained ]] ||
        die "test names in the exclusion list without a '# reason' line right above them:"$'\n'"$unexplained"
else
    echo "pjdfstest.sh: note: $excluded_file not found; nothing excluded" >&2
fi

# Lines pjdfstest prints per test: "<name>   <status>".
status_re='^([a-z0-9_]+(::[a-z0-9_]+)+)[[:space:]]+(ok|FAILED|skipped|PASSED UNEXPECTEDLY|failed as expected)$'

read -r -a filters <<<"${PJDFSTEST_FILTER:-}"
select_args=()
n_excluded=0  # excluded tests that would otherwise have run
if ((${#excluded[@]} > 0 || ${#filters[@]} > 0)); then
    list_dir=$(mktemp -d "$tmp_root/pjdfstest-list.XXXXXX")
    if $is_root; then
        mount -t tmpfs -o size=256m,mode=0755 pjdfstest-list "$list_dir" && list_mounted=true
    fi
    chmod 0755 "$list_dir"
    list_log=$(mktemp "$tmp_root/pjdfstest-list.XXXXXX.log")
    timeout --kill-after=10 "$timeout_s" "$pjd" -c "$config" -p "$list_dir" >"$list_log" 2>&1 || true
    mapfile -t all_tests < <(sed -E 's/\x1b\[[0-9;]*m//g' "$list_log" | sed -nE "s/$status_re/\\1/p" | sort -u)
    if ((${#all_tests[@]} == 0)); then
        cat "$list_log" >&2
        rm -f "$list_log"
        die "could not list the pjdfstest test cases (listing run above)"
    fi
    rm -f "$list_log"
    declare -A is_known=() is_excluded=()
    for t in "${all_tests[@]}"; do is_known[$t]=1; done
    for t in "${excluded[@]}"; do
        t=${t#pjdfstest::tests::}
        [[ -n ${is_known[$t]:-} ]] || die "$excluded_file: unknown test name '$t'"
        is_excluded[$t]=1
    done
    select_args=(-e)
    n_excluded=0
    for t in "${all_tests[@]}"; do
        if ((${#filters[@]} > 0)); then
            wanted=false
            for f in "${filters[@]}"; do
                [[ $t == *"$f"* ]] && wanted=true && break
            done
            $wanted || continue
        fi
        if [[ -n ${is_excluded[$t]:-} ]]; then
            n_excluded=$((n_excluded + 1))
            continue
        fi
        select_args+=("pjdfstest::tests::$t")
    done
    # `-e` with no name would run everything.
    ((${#select_args[@]} > 1)) || die "no test left to run (PJDFSTEST_FILTER='${PJDFSTEST_FILTER:-}')"
fi

# --- run -----------------------------------------------------------------------
read -r -a extra_args <<<"${PJDFSTEST_ARGS:-}"
{
    echo "# pjdfstest run: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "# binary: $pjd ($("$pjd" --version 2>&1))"
    echo "# kernel: $(uname -sr); uid: $(id -u)"
    echo "# target: $target_dir ($(findmnt -n -o FSTYPE,SOURCE -T "$target_dir" 2>/dev/null | tr -s ' ')); work dir: $work_dir"
    echo "# config: $config (effective copy: $run_config)"
    echo "# secondary fs: $secondary_desc"
    echo "# excluded ($n_excluded): ${excluded[*]:-none}"
    echo
} >"$log"

echo "pjdfstest.sh: running pjdfstest in $work_dir (log: $log)"
start=$(date +%s)
# Run in the background and `wait`, so that a SIGINT/SIGTERM sent to this
# script is acted on (and forwarded) at once instead of after the run.
(cd "$work_dir" && exec timeout --kill-after=10 "$timeout_s" \
    "$pjd" -c "$run_config" -p "$work_dir" "${secondary_args[@]}" "${extra_args[@]}" "${select_args[@]}") \
    >>"$log" 2>&1 &
pjd_pid=$!
rc=0
wait "$pjd_pid" || rc=$?
pjd_pid=""
elapsed=$(($(date +%s) - start))
echo "# pjdfstest exit status $rc after ${elapsed}s" >>"$log"

# --- report ----------------------------------------------------------------------
clean_log=$(sed -E 's/\x1b\[[0-9;]*m//g' "$log")
# Failed tests with their panic messages (indented lines after the name).
awk -v re="$status_re" '
    /^[^ \t#]/ { show = 0 }
    $0 ~ re && ($NF == "FAILED" || $0 ~ /PASSED UNEXPECTEDLY$/) { show = 1 }
    show { print }
' <<<"$clean_log" | sed 's/^/  /'

summary=$(grep -E '^Summary: [0-9]+ failed, [0-9]+ skipped, [0-9]+ passed, [0-9]+ expected failures' <<<"$clean_log" | tail -n 1 || true)
incomplete=0
if [[ -n $summary ]]; then
    read -r failed skipped passed xfail < <(sed -E \
        's/^Summary: ([0-9]+) failed, ([0-9]+) skipped, ([0-9]+) passed, ([0-9]+) expected.*/\1 \2 \3 \4/' <<<"$summary")
    # Unexpected passes are already counted in `failed`; expected failures
    # (config expected_failures, unused by us) count as passes.
    passed=$((passed + xfail))
else
    # pjdfstest died (crash, abort, timeout): count what it printed.
    passed=$(grep -cE ' (ok|failed as expected)$' <<<"$clean_log" || true)
    failed=$(grep -cE ' (FAILED|PASSED UNEXPECTEDLY)$' <<<"$clean_log" || true)
    skipped=$(grep -cE ' skipped$' <<<"$clean_log" || true)
    incomplete=1
fi
if ((incomplete || (rc != 0 && failed == 0))); then
    if ((rc == 124 || rc == 137)); then
        echo "pjdfstest.sh: pjdfstest timed out after ${timeout_s}s (PJDFSTEST_TIMEOUT); counted as 1 failure" >&2
    else
        echo "pjdfstest.sh: pjdfstest did not complete normally (exit status $rc); counted as 1 failure" >&2
    fi
    echo "pjdfstest.sh: last lines of the log:" >&2
    tail -n 20 "$log" | sed 's/^/  /' >&2
    failed=$((failed + 1))
fi
skipped=$((skipped + n_excluded))

echo "pjdfstest.sh: took ${elapsed}s; $n_excluded excluded by $(basename "$excluded_file") (counted as skipped); full log: $log"
echo "pjdfstest: $passed passed, $failed failed, $skipped skipped"
((failed == 0))
