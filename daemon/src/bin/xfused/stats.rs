//! `xfused stats MOUNTPOINT`: a live view of the requests the kernel sends
//! to the daemon of one FUSE mount, from BPF programs on the FUSE
//! tracepoints (loaded by this command, so it works for any FUSE mount and
//! whatever daemon serves it).

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Args;
use xfuse_ebpf::{connection_of, opcode_name, InodeUpcalls, OpcodeStats, UpcallTracer};

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// The FUSE mount to watch.
    mountpoint: PathBuf,
    /// Print one JSON object per interval (one per line) instead of the
    /// live table.
    #[arg(long)]
    json: bool,
    /// Time between reports, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(50..=3_600_000))]
    interval_ms: u64,
    /// Stop after this many reports (default: until Ctrl-C).
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// How many of the hottest inodes to show.
    #[arg(long, value_name = "N", default_value_t = 10)]
    top: usize,
}

/// One interval's traffic.
struct Report {
    interval: Duration,
    opcodes: Vec<OpcodeStats>,
    totals: Vec<OpcodeStats>,
    hot: Vec<InodeUpcalls>,
}

pub fn run(args: StatsArgs) -> anyhow::Result<()> {
    let mountpoint = std::fs::canonicalize(&args.mountpoint)
        .with_context(|| format!("mountpoint {}", args.mountpoint.display()))?;
    let Some(connection) = connection_of(&mountpoint) else {
        bail!(
            "{} is not a FUSE mount (no fuse entry for it in /proc/self/mountinfo)",
            mountpoint.display()
        );
    };
    let tracer = UpcallTracer::load().context(
        "loading the BPF programs on the FUSE tracepoints (needs root, kernel BTF at \
         /sys/kernel/btf/vmlinux and a kernel with the fuse_request_send/end tracepoints)",
    )?;
    tracing::info!(
        "counting requests of connection {connection} ({}) from now on",
        mountpoint.display()
    );
    let interval = Duration::from_millis(args.interval_ms);
    let live = !args.json && std::io::stdout().is_terminal();
    let mut prev_ops: HashMap<u32, OpcodeStats> = HashMap::new();
    let mut prev_inodes: HashMap<u64, InodeUpcalls> = HashMap::new();
    let mut last = Instant::now();
    let mut reports = 0u64;
    loop {
        std::thread::sleep(interval);
        let now = Instant::now();
        let totals = tracer.opcode_stats(connection)?;
        let inodes = tracer.inode_upcalls(connection)?;
        let opcodes: Vec<OpcodeStats> = totals
            .iter()
            .map(|s| match prev_ops.get(&s.opcode) {
                Some(p) => s.since(p),
                None => s.clone(),
            })
            .collect();
        let mut hot: Vec<InodeUpcalls> = inodes
            .iter()
            .map(|i| {
                let p = prev_inodes.get(&i.nodeid);
                InodeUpcalls {
                    nodeid: i.nodeid,
                    lookups: i.lookups.saturating_sub(p.map_or(0, |p| p.lookups)),
                    getattrs: i.getattrs.saturating_sub(p.map_or(0, |p| p.getattrs)),
                }
            })
            .filter(|i| i.total() > 0)
            .collect();
        hot.sort_by(|a, b| b.total().cmp(&a.total()).then(a.nodeid.cmp(&b.nodeid)));
        hot.truncate(args.top);
        let report = Report {
            interval: now - last,
            opcodes,
            totals: totals.clone(),
            hot,
        };
        let mut out = std::io::stdout().lock();
        if args.json {
            writeln!(out, "{}", report.json(&mountpoint, connection))?;
        } else {
            if live {
                // Clear the screen and home the cursor, like top.
                write!(out, "\x1b[2J\x1b[H")?;
            }
            write!(out, "{}", report.table(&mountpoint, connection))?;
        }
        out.flush()?;
        prev_ops = totals.into_iter().map(|s| (s.opcode, s)).collect();
        prev_inodes = inodes.into_iter().map(|i| (i.nodeid, i)).collect();
        last = now;
        reports += 1;
        if args.count.is_some_and(|n| reports >= n) {
            return Ok(());
        }
    }
}

fn per_sec(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

fn micros(ns: Option<u64>) -> String {
    ns.map_or_else(|| "-".to_owned(), |ns| format!("{:.1}", ns as f64 / 1000.0))
}

impl Report {
    fn table(&self, mountpoint: &std::path::Path, connection: u32) -> String {
        let mut s = format!(
            "xfused stats {} (connection {connection}), last {:.1} s; latency is send->reply, \
             percentiles are log2-bucket upper bounds\n\n",
            mountpoint.display(),
            self.interval.as_secs_f64()
        );
        s.push_str(&format!(
            "{:<16} {:>10} {:>8} {:>10} {:>10} {:>10} {:>10} {:>12}\n",
            "opcode", "req/s", "err/s", "mean us", "p50 us", "p90 us", "p99 us", "total"
        ));
        let mut rows: Vec<(&OpcodeStats, u64)> = self
            .opcodes
            .iter()
            .map(|d| {
                let total = self
                    .totals
                    .iter()
                    .find(|t| t.opcode == d.opcode)
                    .map_or(0, |t| t.sent);
                (d, total)
            })
            .collect();
        rows.sort_by(|a, b| b.0.sent.cmp(&a.0.sent).then(b.1.cmp(&a.1)));
        for (d, total) in rows {
            let mean = (d.measured() > 0).then(|| d.latency_ns_sum / d.measured());
            s.push_str(&format!(
                "{:<16} {:>10.1} {:>8.1} {:>10} {:>10} {:>10} {:>10} {:>12}\n",
                opcode_name(d.opcode),
                per_sec(d.sent, self.interval),
                per_sec(d.errors, self.interval),
                micros(mean),
                micros(d.percentile_ns(50.0)),
                micros(d.percentile_ns(90.0)),
                micros(d.percentile_ns(99.0)),
                total
            ));
        }
        s.push_str(&format!(
            "\nhottest inodes (LOOKUP+GETATTR upcalls in the interval)\n{:>20} {:>10} {:>10}\n",
            "nodeid", "lookup/s", "getattr/s"
        ));
        for i in &self.hot {
            s.push_str(&format!(
                "{:>20} {:>10.1} {:>10.1}\n",
                i.nodeid,
                per_sec(i.lookups, self.interval),
                per_sec(i.getattrs, self.interval)
            ));
        }
        s
    }

    fn json(&self, mountpoint: &std::path::Path, connection: u32) -> serde_json::Value {
        let opcodes: Vec<serde_json::Value> = self
            .opcodes
            .iter()
            .map(|d| {
                let total = self.totals.iter().find(|t| t.opcode == d.opcode);
                serde_json::json!({
                    "opcode": d.opcode,
                    "name": opcode_name(d.opcode),
                    "sent": d.sent,
                    "ended": d.ended,
                    "errors": d.errors,
                    "per_sec": per_sec(d.sent, self.interval),
                    "latency_ns_sum": d.latency_ns_sum,
                    "latency_p50_ns": d.percentile_ns(50.0),
                    "latency_p90_ns": d.percentile_ns(90.0),
                    "latency_p99_ns": d.percentile_ns(99.0),
                    "latency_log2_hist": d.latency_log2_hist.to_vec(),
                    "total_sent": total.map_or(0, |t| t.sent),
                })
            })
            .collect();
        let hot: Vec<serde_json::Value> = self
            .hot
            .iter()
            .map(|i| serde_json::json!({"nodeid": i.nodeid, "lookups": i.lookups, "getattrs": i.getattrs}))
            .collect();
        serde_json::json!({
            "mountpoint": mountpoint.to_string_lossy(),
            "connection": connection,
            "interval_ms": self.interval.as_millis() as u64,
            "opcodes": opcodes,
            "hottest_inodes": hot,
        })
    }
}
