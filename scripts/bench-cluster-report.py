#!/usr/bin/env python3
"""The markdown report (and SVG charts) of scripts/bench-cluster.sh, from
the fio JSON, disk byte counts, iperf3 JSON and RSS it left in DIR.

    bench-cluster-report.py DIR SIZE_MB [PLOT]

PLOT is the benches' plot binary (target/release/plot), which draws each
chart from the JSON spec written beside it; without it only the specs are
written."""

import json
import os
import subprocess
import sys

out = sys.argv[1]
CONFIGS = ["disk", "local", "r1", "r3", "r3-kill"]
JOBS = ["seqwrite", "seqread", "randwrite", "randread"]
REPLICAS = {"disk": 1, "local": 1, "r1": 1, "r3": 3, "r3-kill": 3}


def load(config, job, nj):
    path = os.path.join(out, f"{config}.{job}.{nj}.json")
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    j = data["jobs"][0]
    side = j["write"] if "write" in job else j["read"]
    p50 = side.get("clat_ns", {}).get("percentile", {}).get("50.000000", 0) / 1000.0
    return {
        "mib": side["bw_bytes"] / 2**20,
        "iops": side["iops"],
        "p50_us": p50,
        "bytes": side["io_bytes"],
    }


def disk_bytes(config, job, nj):
    try:
        with open(os.path.join(out, f"{config}.{job}.{nj}.disk")) as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return None


def cell(r, job):
    if r is None:
        return "-"
    if job.startswith("rand"):
        return f"{r['iops']:,.0f} IOPS ({r['mib']:.1f} MiB/s), p50 {r['p50_us']:.0f} µs"
    return f"{r['mib']:.0f} MiB/s"


results = {(c, j, n): load(c, j, n) for c in CONFIGS for j in JOBS for n in (1, 4)}

print("| job | jobs | " + " | ".join(CONFIGS) + " |")
print("|---|---:|" + "---|" * len(CONFIGS))
for job in JOBS:
    for nj in (1, 4):
        row = [cell(results[(c, job, nj)], job) for c in CONFIGS]
        print(f"| {job} | {nj} | " + " | ".join(row) + " |")
print()


def ratio(a, b, job, nj, key="mib"):
    ra, rb = results[(a, job, nj)], results[(b, job, nj)]
    if not ra or not rb or not rb[key]:
        return None
    return ra[key] / rb[key]


def fmt(x):
    return "-" if x is None else f"{x:.2f}x"


print("Against the issue's targets (the better of the two, per numjobs):")
print()
print("| target | numjobs 1 | numjobs 4 |")
print("|---|---:|---:|")
lines = [
    ("R=1 sequential write ≥ 0.7× local", "r1", "local", "seqwrite", "mib"),
    ("R=1 sequential read ≥ 0.7× local", "r1", "local", "seqread", "mib"),
    ("R=3 write ≥ 0.4× R=1 (1 MiB sequential)", "r3", "r1", "seqwrite", "mib"),
    ("R=3 write ≥ 0.4× R=1 (4 KiB random)", "r3", "r1", "randwrite", "mib"),
    ("R=3 read ≥ 0.9× R=1 (1 MiB sequential)", "r3", "r1", "seqread", "mib"),
    ("R=3 read ≥ 0.9× R=1 (4 KiB random)", "r3", "r1", "randread", "mib"),
    ("4 KiB random-write p50 at R=3 ≤ 3× R=1", "r3", "r1", "randwrite", "p50_us"),
]
for label, a, b, job, key in lines:
    print(f"| {label} | {fmt(ratio(a, b, job, 1, key))} | {fmt(ratio(a, b, job, 4, key))} |")
print()

size_mb = float(sys.argv[2]) if len(sys.argv) > 2 else 128.0
print("Write amplification of 4 KiB random writes: bytes reaching the target disks")
print("over fio's bytes, divided by the replicas. fio writes each block of a file")
print("once per pass; past one pass (passes > 1) the page cache merges rewrites of a")
print("block, and the ratio drops below what one write costs.")
print()
print("| config | numjobs 1 | passes | numjobs 4 | passes |")
print("|---|---:|---:|---:|---:|")
for c in ["disk", "local", "r1", "r3"]:
    cells = []
    for nj in (1, 4):
        r, d = results[(c, "randwrite", nj)], disk_bytes(c, "randwrite", nj)
        if not r or not d or not r["bytes"]:
            cells += ["-", "-"]
            continue
        # Targets on disks 0-2; the local store and raw fio on disk 3.
        on = sum(d[:3]) if c.startswith("r") else d[3]
        cells.append(f"{on / r['bytes'] / REPLICAS[c]:.2f}x")
        cells.append(f"{r['bytes'] / (nj * size_mb * 2**20):.2f}")
    print(f"| {c} | " + " | ".join(cells) + " |")
print()

try:
    with open(os.path.join(out, "iperf3.json")) as f:
        gbit = json.load(f)["end"]["sum_received"]["bits_per_second"] / 1e9
    print(f"Network limit: iperf3 over loopback, one stream: {gbit:.1f} Gbit/s ({gbit * 1e9 / 8 / 2**20:.0f} MiB/s).")
except (OSError, ValueError, KeyError):
    print("Network limit: (iperf3 gave no result)")
print()
print("Peak RSS (VmHWM, KiB) per process:")
print()
try:
    with open(os.path.join(out, "rss.txt")) as f:
        for line in f:
            config, _, rest = line.strip().partition(" ")
            print(f"- {config}: {rest}")
except OSError:
    pass

# The charts, drawn by the benches' plot binary (plotters) from JSON specs:
# MiB/s per job and configuration at numjobs 4, and MiB/s against numjobs.
plot = sys.argv[3] if len(sys.argv) > 3 else None
charts = {
    "bench-cluster.svg": {
        "kind": "bars",
        "title": "fio through the mount, numjobs 4, direct I/O (disk: fio on a target's disk)",
        "value_label": "MiB/s (log scale: 4 KiB random I/O is two orders below 1 MiB streams)",
        "groups": JOBS,
        "log": True,
        "series": [
            {"name": c, "values": [(results[(c, job, 4)] or {}).get("mib") for job in JOBS]}
            for c in CONFIGS
        ],
    },
    "bench-cluster-jobs.svg": {
        "kind": "panels",
        "title": "MiB/s against fio numjobs (higher is better)",
        "x_label": "numjobs",
        "panels": [
            {
                "title": job,
                "y_label": "MiB/s",
                "lines": [
                    {"name": c, "points": [[nj, results[(c, job, nj)]["mib"]] for nj in (1, 4) if results[(c, job, nj)]]}
                    for c in CONFIGS
                    if any(results[(c, job, nj)] for nj in (1, 4))
                ],
            }
            for job in JOBS
        ],
    },
}
print()
for name, spec in charts.items():
    spec_path = os.path.join(out, name + ".json")
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    if plot is None:
        print(f"Chart spec: {spec_path} (no plot binary given)")
        continue
    subprocess.run([plot, spec_path, os.path.join(out, name)], check=True)
    print(f"Chart: {os.path.join(out, name)}")
