#!/usr/bin/env bash
# Coverage-guided fuzzing of one target with AFL++ (through cargo-afl, on
# the stable toolchain):
#
#   scripts/fuzz.sh TARGET SECONDS      TARGET: request, ring, virtio, service, records
#
# Installs cargo-afl and builds AFL++ if missing, builds the target's
# harness (fuzz/afl), fuzzes for SECONDS starting from the committed corpus
# (fuzz/corpus/TARGET, seeded if empty), then merges what it found into the
# corpus, minimized with afl-cmin and capped (smallest first, at most
# CORPUS_FILES_MAX files and CORPUS_BYTES_MAX bytes, none over
# CORPUS_FILE_BYTES_MAX), so the repository stays small. Crashes
# are copied into fuzz/regressions/TARGET, which `cargo test` replays, and
# make the script exit 1. Prints the executions, paths and run time from
# AFL's fuzzer_stats.
#
# Output goes under $CARGO_TARGET_DIR (default: target/) in afl/: the
# harness build and afl-out/TARGET (AFL's queue, crashes and stats of the
# last run). Two targets may run at once (each takes one core).
set -euo pipefail

targets=(request ring virtio service records)
CORPUS_FILES_MAX=${CORPUS_FILES_MAX:-2000}
CORPUS_BYTES_MAX=${CORPUS_BYTES_MAX:-524288}
CORPUS_FILE_BYTES_MAX=${CORPUS_FILE_BYTES_MAX:-16384}

usage() {
    echo "usage: $0 TARGET SECONDS   (TARGET: ${targets[*]})" >&2
    exit 2
}
[[ $# -eq 2 ]] || usage
target=$1
seconds=$2
[[ " ${targets[*]} " == *" $target "* ]] || usage
[[ $seconds =~ ^[1-9][0-9]*$ ]] || usage

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
export PATH="$HOME/.cargo/bin:$PATH"
target_dir=${CARGO_TARGET_DIR:-$repo/target}
afl_dir=$target_dir/afl
out=$afl_dir/afl-out/$target
corpus=$repo/fuzz/corpus/$target
regressions=$repo/fuzz/regressions/$target

# AFL++ is built from source by cargo-afl: it needs make and a C compiler.
if ! command -v make >/dev/null || ! command -v cc >/dev/null; then
    apt-get update
    apt-get install -y --no-install-recommends build-essential
fi
if ! cargo afl --version >/dev/null 2>&1; then
    cargo install cargo-afl --locked
fi
# Builds AFL++ for this rustc once; says "already built" afterwards.
if ! config=$(cargo afl config --build 2>&1); then
    if ! grep -q "already built" <<<"$config"; then
        echo "$config" >&2
        exit 1
    fi
fi

echo "== build the $target harness"
features=()
[[ $target == service || $target == records ]] && features=(--features service)
(cd "$repo/fuzz/afl" && CARGO_TARGET_DIR=$afl_dir cargo afl build --release --locked --bin "$target" "${features[@]}")
harness=$afl_dir/release/$target

if [[ -z $(ls -A "$corpus" 2>/dev/null) ]]; then
    echo "== seed $corpus"
    (cd "$repo" && cargo run --locked -p xfuse-fuzz --bin seeds -- "$target" "$corpus")
fi

echo "== fuzz $target for $seconds s"
rm -rf "$out"
mkdir -p "$out"
# This VM: no CPU frequency governor to read, core dumps go to a handler
# (AFL wants them off; a crash is still seen by its signal), other work on
# the cores (no pinning, so two fuzzers and a build can share them).
AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_AFFINITY=1 AFL_NO_UI=1 \
    cargo afl fuzz -V "$seconds" -i "$corpus" -o "$out" -- "$harness" >"$out/fuzz.log" 2>&1 || {
    tail -40 "$out/fuzz.log" >&2
    echo "afl-fuzz failed (log: $out/fuzz.log)" >&2
    exit 1
}
stats=$out/default/fuzzer_stats
stat() { awk -F' *: *' -v k="$1" '$1 == k { print $2 }' "$stats"; }

# Crashes: into the regression directory, named by content.
crashes=0
for f in "$out"/default/crashes/id:*; do
    [[ -e $f ]] || continue
    mkdir -p "$regressions"
    cp "$f" "$regressions/crash-$(sha1sum <"$f" | cut -c1-16)"
    crashes=$((crashes + 1))
done

echo "== minimize the corpus"
merged=$out/merged
minimized=$out/minimized
mkdir -p "$merged"
cp "$corpus"/* "$merged"/
cp "$out"/default/queue/id:* "$merged"/ 2>/dev/null || true
find "$merged" -type f -size +"${CORPUS_FILE_BYTES_MAX}"c -delete
# afl-cmin.bash, not the afl-cmin that `cargo afl cmin` runs: that one
# (afl-cmin.py, AFL++ 4.40c) records no coverage from these harnesses and
# keeps nothing.
rustc_id=$(rustc -vV | awk '/^release:/ { r = $2 } /^commit-hash:/ { h = substr($2, 1, 7) } END { print r "-" h }')
afl_bin=$(dirname "$(ls -d "${XDG_DATA_HOME:-$HOME/.local/share}/afl.rs/rustc-$rustc_id"/afl.rs-*/afl/bin/afl-cmin.bash | tail -1)")
AFL_PATH=$afl_bin PATH=$afl_bin:$PATH AFL_SKIP_CPUFREQ=1 AFL_NO_AFFINITY=1 \
    "$afl_bin/afl-cmin.bash" -i "$merged" -o "$minimized" -- "$harness" >"$out/cmin.log" 2>&1 || {
    tail -20 "$out/cmin.log" >&2
    echo "afl-cmin failed (log: $out/cmin.log)" >&2
    exit 1
}
# Keep the smallest files if afl-cmin left too many or too much. (awk
# reads to the end: head would close the pipe early, and pipefail turn
# sort's SIGPIPE into a failure.)
kept=$(find "$minimized" -type f -printf '%s %p\n' | sort -n |
    awk -v files="$CORPUS_FILES_MAX" -v bytes="$CORPUS_BYTES_MAX" '
        { total += $1 }
        NR <= files && total <= bytes { sub(/^[0-9]+ /, ""); print }')
rm -rf "$corpus"
mkdir -p "$corpus"
while IFS= read -r f; do
    [[ -n $f ]] || continue
    cp "$f" "$corpus/$(sha1sum <"$f" | cut -c1-16)"
done <<<"$kept"

files=$(find "$corpus" -type f | wc -l)
bytes=$(du -sb "$corpus" | cut -f1)
echo "fuzz $target: $(stat execs_done) execs in $(stat run_time) s ($(stat execs_per_sec)/s)," \
    "$(stat corpus_count) paths, bitmap $(stat bitmap_cvg), stability $(stat stability)," \
    "$(stat saved_crashes) crashes, $(stat saved_hangs) hangs; corpus $files files, $bytes bytes"
if [[ $crashes -gt 0 ]]; then
    echo "crashes copied to $regressions: replay with cargo test -p xfuse-fuzz" >&2
    exit 1
fi
