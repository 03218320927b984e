#!/usr/bin/env bash
# File data by TCP against file data by RDMA, measured in ONE boot of the
# soft-RoCE guest (QEMU TCG; this machine's kernel has no RDMA), so the
# ratios are not blurred by comparing boots. On the veth pair (the mounts
# on rxe1/10.2.0.1, the services on rxe2/10.2.0.2; scripts/rdma-guest/
# bench.sh does the work):
#   - the limit: perftest ib_write_bw and ib_read_bw, 1 MiB messages,
#     before the cluster runs, between its workloads and after it is gone;
#   - a metadata service and ONE storage service (one target, R=1,
#     --data-transport rdma: it serves TCP callers too), mounted twice side
#     by side, --data-transport tcp and rdma; on each, fio: 1 MiB
#     sequential write and read (direct I/O if the mount takes it),
#     buffered 1 MiB writes with end_fsync, 4 KiB random read latency
#     (psync, iodepth 1), and 1 MiB sequential writes and reads from 4
#     jobs at once; each workload in the order tcp, rdma, rdma, tcp, the
#     medians reported;
#   - CPU seconds per GiB moved: the mount's and the storage service's
#     utime + stime (/proc/PID/stat), and the whole guest's busy time;
#   - perftest with 1 to 16 transfers in flight: the depth the device
#     needs to reach its bandwidth, against the credit window.
# Prints a Markdown report on stdout (for docs/BENCHMARKS.md), the guest's
# lines on stderr as they come. QEMU emulates the CPU: read ratios, not
# absolute numbers.
#
# Usage: scripts/rdma-bench.sh [--xfused PATH] [--seconds N] [--timeout SECONDS]
#   --xfused   an xfused built with the cargo feature rdma (default: build
#              it, release, into CARGO_TARGET_DIR or the workspace's target)
#   --seconds  per workload run (default 15; the guest runs about 30 times
#              that, plus two minutes)
#   --timeout  for the whole guest (default 30 x seconds + 600)
# Environment: XFUSE_RDMA_GUEST_CACHE (the guest kernel, rdma-core and
#   perftest, default /var/tmp/xfuse-rdma-guest), QEMU_CPU (qemu64, as
#   scripts/rdma-test.sh: no AES-NI, so TLS runs ring's slowest code; `max`
#   emulates AES-NI), QEMU_SMP (2), QEMU_MEM (3072M). The console log goes
#   to a new /tmp/xfuse-rdma-bench.*, removed after a clean run, kept
#   otherwise.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
guest=$repo/scripts/rdma-guest
log() { echo "rdma-bench: $*" >&2; }
usage() {
    echo "usage: $0 [--xfused PATH] [--seconds N] [--timeout SECONDS]" >&2
    exit 2
}

command_line="scripts/rdma-bench.sh $*"
xfused=
seconds=15
timeout_s=
while (($#)); do
    case $1 in
    --xfused) xfused=${2:?}; shift 2 ;;
    --seconds) seconds=${2:?}; shift 2 ;;
    --timeout) timeout_s=${2:?}; shift 2 ;;
    *) usage ;;
    esac
done
[[ $seconds =~ ^[1-9][0-9]*$ ]] || usage
timeout_s=${timeout_s:-$((30 * seconds + 600))}
[[ $timeout_s =~ ^[1-9][0-9]*$ ]] || usage
((timeout_s > 120)) || usage
cache=${XFUSE_RDMA_GUEST_CACHE:-/var/tmp/xfuse-rdma-guest}
smp=${QEMU_SMP:-2}
cpu=${QEMU_CPU:-qemu64}
mem=${QEMU_MEM:-3072M}

"$guest/host-packages.sh"
# fio goes into the guest as it is on the host (Debian's package).
if ! command -v fio >/dev/null; then
    [[ $(id -u) -eq 0 ]] || { log "fio is missing (install it as root: apt-get install fio)"; exit 1; }
    log "installing fio"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q fio >&2
fi
fio=$(command -v fio)
export PATH="$HOME/.cargo/bin:$PATH"
if [[ -z $xfused ]]; then
    log "building xfused (release, feature rdma)"
    (cd "$repo" && cargo build --release --locked -p xfused --features rdma) >&2
    xfused=${CARGO_TARGET_DIR:-$repo/target}/release/xfused
    [[ $xfused == /* ]] || xfused=$repo/$xfused
fi
"$xfused" storage --help | grep -q -- --rdma-device || { log "$xfused has no --rdma-device"; exit 1; }

"$guest/fetch.sh" "$cache"
perftest=()
for t in ib_write_bw ib_read_bw; do
    [[ -x $cache/rdma/usr/bin/$t ]] || { log "$cache/rdma has no $t (fetch.sh downloads perftest)"; exit 1; }
    perftest+=("$cache/rdma/usr/bin/$t")
done
work=$(mktemp -d /tmp/xfuse-rdma-bench.XXXXXX)
"$guest/initrd.sh" "$cache" "$work/initrd.cpio.gz" "$xfused" "$fio" "${perftest[@]}" "$guest/bench.sh"

tsc_khz=$(awk -F: '/^cpu MHz/ { printf "%d", $2 * 1000; exit }' /proc/cpuinfo)
append="console=ttyS0 panic=-1 reboot=t loglevel=4 tsc=reliable${tsc_khz:+ tsc_early_khz=$tsc_khz}"
append+=" rdma.setups=bench rdma.seconds=$seconds rdma.bench_timeout=$((timeout_s - 60))"
console=$work/console.log
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
started=$(date -u '+%Y-%m-%d %H:%M UTC')
log "booting (QEMU TCG, -cpu $cpu -smp $smp -m $mem, up to ${timeout_s}s; load $load_before); console in $console"
start=$(date +%s)
status=0
timeout --kill-after=10 "$timeout_s" qemu-system-x86_64 -machine microvm -accel tcg -cpu "$cpu" \
    -smp "$smp" -m "$mem" -no-reboot -display none -monitor none -serial stdio \
    -kernel "$cache/vmlinux" -initrd "$work/initrd.cpio.gz" -append "$append" </dev/null |
    tr -d '\r' | tee "$console" | grep --line-buffered '^GUEST' >&2 || status=$?
ran_s=$(($(date +%s) - start))
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
log "guest ran ${ran_s}s (status $status); load $load_after"
rm -f "$work/initrd.cpio.gz"

results=$work/bench.lines
sed -n 's/^GUEST \[bench\] BENCH //p' "$console" >"$results"
# The rxe devices' counters at the end (retries, duplicates: lost packets).
sed -n 's/^GUEST \[bench\] counters: /kind=rxe /p' "$console" | tr -s ' ' >>"$results"
if ! grep -q '^kind=end ' "$results"; then
    log "the guest did not finish the benchmark (timeout or crash: status $status); see $console"
    exit 1
fi

commit=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$repo" diff --quiet HEAD 2>/dev/null || commit+=" with uncommitted changes"

# The report: medians of each workload's runs, every run's value beside.
awk -v command="$command_line" -v commit="$commit" -v started="$started" -v cpu="$cpu" -v smp="$smp" -v mem="$mem" \
    -v nproc="$(nproc)" -v load_before="$load_before" -v load_after="$load_after" -v ran_s="$ran_s" \
    -v host_kernel="$(uname -r)" '
function kv(line, key,    n, i, f, a) {
    n = split(line, f, " ")
    for (i = 1; i <= n; i++) { split(f[i], a, "="); if (a[1] == key) return substr(f[i], length(key) + 2) }
    return ""
}
function size_name(z) { return z >= 1048576 ? (z / 1048576) " MiB" : (z / 1024) " KiB" }
function add(key, v) { n_[key]++; v_[key, n_[key]] = v }
function median(key,    n, i, j, t, s) {
    n = n_[key]
    if (!n) return ""
    for (i = 1; i <= n; i++) s[i] = v_[key, i]
    for (i = 2; i <= n; i++) for (j = i; j > 1 && s[j - 1] > s[j]; j--) { t = s[j]; s[j] = s[j - 1]; s[j - 1] = t }
    return n % 2 ? s[(n + 1) / 2] : (s[n / 2] + s[n / 2 + 1]) / 2
}
function runs(key, fmt,    i, out) {
    out = ""
    for (i = 1; i <= n_[key]; i++) out = out (i > 1 ? ", " : "") sprintf(fmt, v_[key, i])
    return out
}
function cell(key, fmt) { return n_[key] ? sprintf(fmt, median(key)) " (" runs(key, fmt) ")" : "n/a" }
function ratio(a, b) { return (a != "" && b != "" && b > 0) ? sprintf("%.2f", a / b) : "n/a" }
function row(label, key, fmt, limit, limit_name,    t, r) {
    t = median(key SUBSEP "tcp"); r = median(key SUBSEP "rdma")
    printf "| %s | %s | %s | %s | %s |\n", label, cell(key SUBSEP "tcp", fmt), cell(key SUBSEP "rdma", fmt),
        ratio(r, t), limit_name == "" ? "" : ratio(r, limit) == "n/a" ? "n/a" : ratio(r, limit) " of " limit_name
}
/^kind=guest / { guest = $0 }
/^kind=mode / { direct = kv($0, "direct") }
/^kind=perftest / && kv($0, "when") == "depth" {
    d = kv($0, "depth"); depths[d] = 1; z = kv($0, "size"); sizes[z] = 1
    ptd[kv($0, "test"), z, d] = kv($0, "rc") == 0 ? kv($0, "mib_s") " (" (kv($0, "rxe_retries") + 0) ")" : "failed"
    pt_depth_iterations[z] = kv($0, "iterations")
    next
}
/^kind=perftest / {
    if (kv($0, "rc") == 0) {
        add("pt" SUBSEP kv($0, "test"), kv($0, "mib_s"))
        pt[kv($0, "test"), kv($0, "when")] = kv($0, "mib_s") " (" kv($0, "wall_mib_s") "), " (kv($0, "rxe_retries") + 0) " retries"
        pt_iterations = kv($0, "iterations")
    }
    else pt_failed = pt_failed " " kv($0, "test") "/" kv($0, "when")
    gid = "rxe2 index " kv($0, "gid_server") ", rxe1 index " kv($0, "gid_client")
}
/^kind=fio / {
    w = kv($0, "workload"); tr = kv($0, "transport")
    if (kv($0, "rc") != 0) { fio_failed = fio_failed " " w "/" tr "/" kv($0, "run"); next }
    k = w SUBSEP tr
    add("mib" SUBSEP k, kv($0, "mib_s"))
    gib = kv($0, "kib") / 1048576; tck = kv($0, "clk_tck")
    if (gib > 0) {
        add("cpu_client" SUBSEP k, kv($0, "client_ticks") / tck / gib)
        add("cpu_service" SUBSEP k, kv($0, "service_ticks") / tck / gib)
        add("cpu_guest" SUBSEP k, kv($0, "guest_ticks") / tck / gib)
    }
    add("p50" SUBSEP k, kv($0, "p50_us")); add("p99" SUBSEP k, kv($0, "p99_us"))
    add("retries" SUBSEP k, kv($0, "rxe_retries") + 0)
    by_rdma = kv($0, "rdma_read_b") + kv($0, "rdma_written_b")
    if (tr == "tcp") tcp_rdma_bytes += by_rdma
    else { rdma_bytes += kv($0, "kib") * 1024; rdma_by_rdma += by_rdma }
}
/^kind=end / { end = $0 }
/^kind=service / { service = $0 }
/^kind=rxe / { rxe = substr($0, 10) }
END {
    wr = median("pt" SUBSEP "ib_write_bw"); rd = median("pt" SUBSEP "ib_read_bw")
    io = direct == 1 ? "direct" : "buffered + end_fsync"
    print "### File data by TCP and by RDMA, soft-RoCE in one guest boot"
    print ""
    printf "`%s` at %s, %s. One boot of QEMU TCG (`-machine microvm -cpu %s -smp %s -m %s`), ", command, commit, started, cpu, smp, mem
    printf "guest kernel %s (%s CPUs, %s MiB, AES-NI %s); soft-RoCE (rdma_rxe) on a veth pair, RoCE v2, rxe MTU %s, veth MTU %s. ",
        kv(guest, "kernel"), kv(guest, "cpus"), kv(guest, "mem_mib"), kv(guest, "aes_ni"), kv(guest, "rxe_mtu"), kv(guest, "veth_mtu")
    printf "Host: %s CPUs (`nproc`), kernel %s, load average %s before and %s after (1, 5, 15 min); the guest ran %s s.\n",
        nproc, host_kernel, load_before, load_after, ran_s
    print ""
    printf "One metadata service and one storage service (one target on tmpfs, R=1, `--data-transport rdma`), "
    printf "mounted twice side by side (`--transport dev`), `--data-transport tcp` and `--data-transport rdma`; "
    printf "the mounts on rxe1 (10.2.0.1), the services on rxe2 (10.2.0.2). fio, `ioengine=psync`, %s s per run; ", kv(guest, "seconds")
    printf "each workload ran tcp, rdma, rdma, tcp: median (each run). "
    printf "Sequential: %s, over a %s MiB file (time-based; reads after dropping caches). ", io, kv(guest, "file_mib")
    printf "Buffered writes: `direct=0 end_fsync=1`, at most %s MiB or %s s then the fsync, which fio counts in the time. ", kv(guest, "buf_mib"), kv(guest, "seconds")
    printf "Random reads: 4 KiB, iodepth 1, %s, over a %s MiB file written first.\n", direct == 1 ? "direct" : "buffered", kv(guest, "rand_mib")
    print ""
    print "| workload | tcp | rdma | rdma/tcp | rdma/perftest |"
    print "|---|---|---|---|---|"
    row("1 MiB sequential write, " io ", MiB/s", "mib" SUBSEP "seqwrite", "%.1f", rd, "ib_read_bw")
    row("1 MiB sequential read, " io ", MiB/s", "mib" SUBSEP "seqread", "%.1f", wr, "ib_write_bw")
    row("buffered 1 MiB writes + end_fsync, MiB/s", "mib" SUBSEP "bufwrite", "%.1f", rd, "ib_read_bw")
    row("1 MiB sequential write, " io ", " kv(guest, "deep_jobs") " jobs, MiB/s", "mib" SUBSEP "seqwrite_deep", "%.1f", rd, "ib_read_bw")
    row("1 MiB sequential read, " io ", " kv(guest, "deep_jobs") " jobs, MiB/s", "mib" SUBSEP "seqread_deep", "%.1f", wr, "ib_write_bw")
    row("4 KiB random read p50, µs", "p50" SUBSEP "randread", "%d", "", "")
    row("4 KiB random read p99, µs", "p99" SUBSEP "randread", "%d", "", "")
    split("seqwrite seqread bufwrite seqwrite_deep seqread_deep", ws, " ")
    split("sequential write|sequential read|buffered write|sequential write, " kv(guest, "deep_jobs") " jobs|sequential read, " kv(guest, "deep_jobs") " jobs", wn, "|")
    for (i = 1; i <= 5; i++) row("CPU s/GiB, mount (client), " wn[i], "cpu_client" SUBSEP ws[i], "%.2f", "", "")
    for (i = 1; i <= 5; i++) row("CPU s/GiB, storage service, " wn[i], "cpu_service" SUBSEP ws[i], "%.2f", "", "")
    for (i = 1; i <= 5; i++) row("CPU s/GiB, whole guest, " wn[i], "cpu_guest" SUBSEP ws[i], "%.2f", "", "")
    for (i = 1; i <= 5; i++) row("rxe retries (ACK timeouts), " wn[i], "retries" SUBSEP ws[i], "%d", "", "")
    print ""
    print "| perftest, 1 MiB messages, server rxe2, client rxe1, MiB/s (by wall time), rxe retries | before the cluster | between its workloads | after it | median, used above |"
    print "|---|---|---|---|---|"
    split("ib_write_bw ib_read_bw", pts, " ")
    for (i = 1; i <= 2; i++)
        printf "| %s | %s | %s | %s | %s |\n", pts[i], pt[pts[i], "before"], pt[pts[i], "between"], pt[pts[i], "after"],
            i == 1 ? wr : rd
    print ""
    printf "perftest: `-F -s 1048576 -n %s --report_gbits`, server on rxe2, client on rxe1, RoCE v2 IPv4 GIDs (%s); ", pt_iterations, gid
    printf "perftest'"'"'s own figure, the client'"'"'s wall time (setup included) in parentheses; the median of the runs is the limit. A mount write moves its payload by the service'"'"'s RDMA READ "
    printf "(against ib_read_bw), a read by its RDMA WRITE (against ib_write_bw). "
    printf "CPU: utime + stime of the process from /proc/PID/stat around each run, in clock ticks at %s/s (%s, busybox has no getconf), ", kv(guest, "clk_tck"), kv(guest, "clk_tck_from")
    printf "over the GiB fio moved; whole guest: the busy ticks of /proc/stat (user, nice, system, irq, softirq, steal: "
    printf "the kernel'"'"'s TCP and rxe work, fio included). "
    printf "By RDMA: the rdma runs moved %.0f%% of their bytes by RDMA (the service'"'"'s counters), the tcp runs %d B; ",
        rdma_bytes ? 100 * rdma_by_rdma / rdma_bytes : 0, tcp_rdma_bytes
    printf "the service connected %s RDMA queue pair(s). rxe counters at the end: %s\n", kv(service, "rdma_connections"), rxe
    if (length(depths)) {
        nd = 0
        for (d in depths) dl[++nd] = d + 0
        for (i = 2; i <= nd; i++) for (j = i; j > 1 && dl[j - 1] > dl[j]; j--) { t = dl[j]; dl[j] = dl[j - 1]; dl[j - 1] = t }
        nz = 0
        for (z in sizes) zl[++nz] = z + 0
        for (i = 2; i <= nz; i++) for (j = i; j > 1 && zl[j - 1] > zl[j]; j--) { t = zl[j]; zl[j] = zl[j - 1]; zl[j - 1] = t }
        print ""
        printf "| perftest, transfers in flight (`-t`, and `-o` for reads), MiB/s (rxe retries) |"
        for (k = 1; k <= nz; k++) printf " ib_write_bw, %s |", size_name(zl[k])
        for (k = 1; k <= nz; k++) printf " ib_read_bw, %s |", size_name(zl[k])
        printf "\n|---|"
        for (k = 1; k <= 2 * nz; k++) printf "---|"
        printf "\n"
        for (i = 1; i <= nd; i++) {
            printf "| %d |", dl[i]
            for (k = 1; k <= nz; k++) printf " %s |", ptd["ib_write_bw", zl[k], dl[i]]
            for (k = 1; k <= nz; k++) printf " %s |", ptd["ib_read_bw", zl[k], dl[i]]
            printf "\n"
        }
        print ""
        printf "After the cluster, `-F -s SIZE -n N --report_gbits -t D` (and `-o D` for ib_read_bw), N ="
        for (k = 1; k <= nz; k++) printf "%s %s for %s", (k > 1 ? "," : ""), pt_depth_iterations[zl[k]], size_name(zl[k])
        printf ". The mounts ran %s FUSE workers (`--threads`), the deep workloads %s fio jobs at once, each on a file of its own.\n", kv(guest, "mount_threads"), kv(guest, "deep_jobs")
    }
    if (fio_failed != "" || pt_failed != "") { print ""; print "Failed runs (left out):" fio_failed pt_failed }
    exit (fio_failed != "" || pt_failed != "" || kv(end, "fio_failures") != 0)
}' "$results" || { log "some runs failed; see $console"; exit 1; }
rm -rf "$work"
