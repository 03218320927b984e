//! The markdown report: criterion's median estimates
//! (`target/criterion/GROUP/CONFIG/new/{estimates,benchmark}.json`) for the
//! benches listed in the side file, with ratios to `native` and `stock`,
//! then the daemons' CPU time per operation and peak RSS.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

use serde::Deserialize;

use crate::config::Config;
use crate::plot::{Bars, Chart, Line, Panel, Panels, Series};
use crate::side::{SideFile, SideRecord};

/// Below this much daemon CPU per operation, the kernel answered most
/// operations itself (caches, passthrough): the daemon, and so the
/// transport, was barely involved.
pub const CACHE_ANSWERED_CPU_US: f64 = 0.5;

/// criterion's result for one bench.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// Median time per iteration, in nanoseconds.
    pub median_ns: f64,
    /// Bytes per iteration, for throughput benches.
    pub bytes_per_iter: Option<u64>,
}

impl Estimate {
    /// Bytes per second, for throughput benches.
    pub fn bytes_per_second(&self) -> Option<f64> {
        Some(self.bytes_per_iter? as f64 * 1e9 / self.median_ns)
    }
}

#[derive(Deserialize)]
struct Estimates {
    median: PointEstimate,
}

#[derive(Deserialize)]
struct PointEstimate {
    point_estimate: f64,
}

#[derive(Deserialize)]
struct BenchmarkJson {
    throughput: Option<BTreeMap<String, u64>>,
}

/// Reads criterion's latest estimate of `group/function` under `criterion_dir`.
pub fn read_estimate(criterion_dir: &Path, group: &str, function: &str) -> Option<Estimate> {
    let dir = criterion_dir.join(group).join(function).join("new");
    let estimates: Estimates =
        serde_json::from_slice(&std::fs::read(dir.join("estimates.json")).ok()?).ok()?;
    let benchmark: Option<BenchmarkJson> = std::fs::read(dir.join("benchmark.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let bytes_per_iter = benchmark
        .and_then(|b| b.throughput)
        .and_then(|t| t.get("Bytes").or_else(|| t.get("BytesDecimal")).copied());
    Some(Estimate {
        median_ns: estimates.median.point_estimate,
        bytes_per_iter,
    })
}

/// One row of the tables: a workload run by some threads.
type Row = (usize, String, usize);

/// What one run measured: the rows present, the configurations, and each
/// cell's estimate with its side record.
struct Results<'a> {
    rows: BTreeSet<Row>,
    configs: Vec<Config>,
    cells: BTreeMap<(String, usize, Config), (Estimate, &'a SideRecord)>,
    /// Benches in the side file without criterion results.
    missing: Vec<String>,
}

impl<'a> Results<'a> {
    fn collect(side: &'a SideFile, criterion_dir: &Path) -> Results<'a> {
        let order = |workload: &str| {
            crate::WORKLOADS
                .iter()
                .position(|(w, _)| *w == workload)
                .unwrap_or(usize::MAX)
        };
        let mut rows: BTreeSet<Row> = BTreeSet::new();
        let mut configs: BTreeSet<Config> = BTreeSet::new();
        let mut cells: BTreeMap<(String, usize, Config), (Estimate, &SideRecord)> = BTreeMap::new();
        let mut missing = Vec::new();
        for (id, record) in &side.benches {
            let Some(config) = Config::from_name(&record.config) else {
                continue;
            };
            let group = crate::group_name(&record.workload, record.threads);
            match read_estimate(criterion_dir, &group, config.name()) {
                Some(estimate) => {
                    rows.insert((order(&record.workload), record.workload.clone(), record.threads));
                    configs.insert(config);
                    cells.insert(
                        (record.workload.clone(), record.threads, config),
                        (estimate, record),
                    );
                }
                None => missing.push(id.clone()),
            }
        }
        Results {
            rows,
            configs: configs.into_iter().collect(),
            cells,
            missing,
        }
    }

    /// The cell's median time, if it has a valid one.
    fn median_ns(&self, workload: &str, threads: usize, config: Config) -> Option<f64> {
        self.cells
            .get(&(workload.to_string(), threads, config))
            .filter(|(_, r)| r.failed_ops == 0)
            .map(|(e, _)| e.median_ns)
    }
}

/// Renders the report for every bench in `side` found under `criterion_dir`.
pub fn render(side: &SideFile, criterion_dir: &Path) -> String {
    let Results {
        rows,
        configs,
        cells,
        missing,
    } = Results::collect(side, criterion_dir);
    let mut out = String::new();
    if rows.is_empty() {
        out.push_str("No results: run `cargo bench -p benches` first.\n");
        return out;
    }

    // Times and throughputs.
    let _ = writeln!(
        out,
        "Median time per operation (throughput for sequential reads). In parentheses: speed \
         relative to native (n) and to stock (s), i.e. their median time divided by this one: \
         above 1 is faster.\n"
    );
    table_header(&mut out, &configs);
    for (_, workload, threads) in &rows {
        let _ = write!(out, "| {workload} | {threads} |");
        let reference = |c: Config| {
            cells
                .get(&(workload.clone(), *threads, c))
                .filter(|(_, r)| r.failed_ops == 0)
                .map(|(e, _)| e.median_ns)
        };
        for &config in &configs {
            let Some((estimate, record)) = cells.get(&(workload.clone(), *threads, config)) else {
                out.push_str(" – |");
                continue;
            };
            if record.failed_ops > 0 {
                let _ = write!(out, " ✗ invalid ({} failed ops) |", record.failed_ops);
                continue;
            }
            let mut cell = match estimate.bytes_per_second() {
                Some(bps) => format_bytes_per_second(bps),
                None => format_ns(estimate.median_ns),
            };
            let mut ratios = Vec::new();
            for (reference_config, tag) in [(Config::Native, "n"), (Config::Stock, "s")] {
                // Native is the reference of references: no ratios in its column.
                if config == reference_config || config == Config::Native {
                    continue;
                }
                if let Some(reference_ns) = reference(reference_config) {
                    ratios.push(format!(
                        "{} {tag}",
                        format_ratio(reference_ns / estimate.median_ns)
                    ));
                }
            }
            if !ratios.is_empty() {
                let _ = write!(cell, " ({})", ratios.join(", "));
            }
            if cache_answered(config, record) {
                cell.push_str(" †");
            }
            let _ = write!(out, " {cell} |");
        }
        out.push('\n');
    }

    // Daemon CPU and memory.
    let daemons: Vec<Config> = configs.iter().copied().filter(|c| c.is_fuse()).collect();
    if !daemons.is_empty() {
        let _ = writeln!(
            out,
            "\nDaemon CPU time (user + system, all threads, from /proc/PID/stat) per operation, and \
             the daemon's peak RSS (VmHWM) during that bench (a fresh daemon per bench).\n"
        );
        table_header(&mut out, &daemons);
        for (_, workload, threads) in &rows {
            let _ = write!(out, "| {workload} | {threads} |");
            for &config in &daemons {
                let cell = cells
                    .get(&(workload.clone(), *threads, config))
                    .map(|(_, record)| {
                        let cpu = record.daemon_cpu_us_per_op.map_or("–".to_string(), |us| {
                            if us == 0.0 {
                                "0".to_string()
                            } else {
                                format_ns(us * 1e3)
                            }
                        });
                        let hwm = record
                            .daemon_hwm_kib
                            .map_or("–".to_string(), |kib| format!("{:.1} MiB", kib as f64 / 1024.0));
                        let mark = if cache_answered(config, record) {
                            " †"
                        } else {
                            ""
                        };
                        format!("{cpu} · {hwm}{mark}")
                    });
                let _ = write!(out, " {} |", cell.unwrap_or_else(|| "–".to_string()));
            }
            out.push('\n');
        }
        let _ = writeln!(
            out,
            "\nPeak RSS per configuration (largest VmHWM over its benches):\n"
        );
        for &config in &daemons {
            let peak = cells
                .iter()
                .filter(|((_, _, c), _)| *c == config)
                .filter_map(|((w, t, _), (_, r))| Some((r.daemon_hwm_kib?, w, t)))
                .max();
            if let Some((kib, workload, threads)) = peak {
                let _ = writeln!(
                    out,
                    "- {config}: {:.1} MiB (in {})",
                    kib as f64 / 1024.0,
                    crate::group_name(workload, *threads)
                );
            }
        }
    }

    let _ = writeln!(
        out,
        "\n† the daemon spent under {CACHE_ANSWERED_CPU_US} µs of CPU per operation: the kernel \
         answered most operations itself (from its caches, or through FUSE passthrough), so this \
         cell says little about the transport."
    );
    let loads: Vec<f64> = cells.values().filter_map(|(_, r)| r.loadavg_1m).collect();
    if let (Some(low), Some(high)) = (
        loads.iter().copied().reduce(f64::min),
        loads.iter().copied().reduce(f64::max),
    ) {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        let _ = writeln!(
            out,
            "\n1-minute load average at the end of each bench: {low:.2} to {high:.2} ({cpus} CPUs; \
             the bench's own threads and daemon account for up to about threads + 1)."
        );
    }
    let _ = writeln!(out, "\nWorkloads (one operation):\n");
    for (workload, what) in crate::WORKLOADS {
        if rows.iter().any(|(_, w, _)| w == workload) {
            let _ = writeln!(out, "- `{workload}`: {what}");
        }
    }
    let mut notes: BTreeSet<String> = BTreeSet::new();
    for (workload, threads, config) in cells.keys() {
        let (_, record) = &cells[&(workload.clone(), *threads, *config)];
        for note in &record.notes {
            notes.insert(format!("{workload} / {config}: {note}"));
        }
    }
    if !notes.is_empty() {
        let _ = writeln!(out, "\nNotes:\n");
        for note in notes {
            let _ = writeln!(out, "- {note}");
        }
    }
    let invalid: Vec<_> = cells.iter().filter(|(_, (_, r))| r.failed_ops > 0).collect();
    if !invalid.is_empty() {
        let _ = writeln!(
            out,
            "\nInvalid results (operations failed or returned what the workload does not expect; \
             no time is shown for these):\n"
        );
        for ((workload, threads, config), (_, record)) in invalid {
            let _ = writeln!(
                out,
                "- {}/{config}: {} of {} operations; first: {}",
                crate::group_name(workload, *threads),
                record.failed_ops,
                record.ops,
                record.first_failure.as_deref().unwrap_or("?")
            );
        }
    }
    if !side.skipped.is_empty() {
        let _ = writeln!(out, "\nSkipped configurations:\n");
        // Each reason starts with the configuration's name.
        for why in side.skipped.values() {
            let _ = writeln!(out, "- {}", why.replace('|', "/"));
        }
    }
    if !missing.is_empty() {
        let _ = writeln!(
            out,
            "\nIn the side file but without criterion results: {}",
            missing.join(", ")
        );
    }
    out
}

/// One chart of the report: its file name, what it shows (the markdown
/// image's alt text), and the chart.
#[derive(Debug)]
pub struct ReportChart {
    /// File name, e.g. `speed-vs-stock.svg`.
    pub file: &'static str,
    /// What the chart shows.
    pub alt: &'static str,
    /// The chart.
    pub chart: Chart,
}

/// The report's charts: each configuration's speed relative to stock and
/// to native per workload (log scale, 1 = as fast), and operations (or
/// MiB) per second against threads per workload. Cells that failed are
/// left out.
pub fn charts(side: &SideFile, criterion_dir: &Path) -> Vec<ReportChart> {
    let results = Results::collect(side, criterion_dir);
    if results.rows.is_empty() {
        return Vec::new();
    }
    let mut charts = Vec::new();
    let groups: Vec<String> = results.rows.iter().map(|(_, w, t)| format!("{w} {t}t")).collect();
    for (reference, file, alt, title) in [
        (
            Config::Stock,
            "speed-vs-stock.svg",
            "Speed of each xfuse configuration relative to stock FUSE, per workload",
            "Speed relative to stock FUSE (stock's median time / this one's; right of 1 is faster)",
        ),
        (
            Config::Native,
            "speed-vs-native.svg",
            "Speed of each FUSE configuration relative to native tmpfs, per workload",
            "Speed relative to native tmpfs (native's median time / this one's; 1 is native speed)",
        ),
    ] {
        let series: Vec<Series> = results
            .configs
            .iter()
            .filter(|c| c.is_fuse() && **c != reference)
            .map(|&c| Series {
                name: c.name().to_string(),
                values: results
                    .rows
                    .iter()
                    .map(|(_, w, t)| {
                        Some(results.median_ns(w, *t, reference)? / results.median_ns(w, *t, c)?)
                    })
                    .collect(),
            })
            .collect();
        if series.iter().any(|s| s.values.iter().any(Option::is_some)) {
            charts.push(ReportChart {
                file,
                alt,
                chart: Chart::Bars(Bars {
                    title: title.to_string(),
                    value_label: format!("× {}", reference.name()),
                    groups: groups.clone(),
                    series,
                    log: true,
                    reference: Some(1.0),
                }),
            });
        }
    }
    let mut panels = Vec::new();
    let mut workloads: Vec<&(usize, String, usize)> = results.rows.iter().collect();
    workloads.dedup_by(|a, b| a.1 == b.1);
    for (_, workload, _) in workloads {
        let mut throughput = false;
        let lines: Vec<Line> = results
            .configs
            .iter()
            .map(|&c| Line {
                name: c.name().to_string(),
                points: results
                    .rows
                    .iter()
                    .filter(|(_, w, _)| w == workload)
                    .filter_map(|(_, _, t)| {
                        let (estimate, record) = results.cells.get(&(workload.clone(), *t, c))?;
                        if record.failed_ops > 0 {
                            return None;
                        }
                        let y = match estimate.bytes_per_second() {
                            Some(bps) => {
                                throughput = true;
                                bps / (1024.0 * 1024.0)
                            }
                            None => 1e9 / estimate.median_ns,
                        };
                        Some((*t as f64, y))
                    })
                    .collect(),
            })
            .filter(|l| !l.points.is_empty())
            .collect();
        if !lines.is_empty() {
            panels.push(Panel {
                title: workload.clone(),
                y_label: if throughput { "MiB/s" } else { "operations/s" }.to_string(),
                lines,
            });
        }
    }
    if !panels.is_empty() {
        charts.push(ReportChart {
            file: "threads.svg",
            alt: "Operations (or MiB) per second against threads, per workload and configuration",
            chart: Chart::Panels(Panels {
                title: "Throughput against threads (higher is better)".to_string(),
                x_label: "threads".to_string(),
                panels,
            }),
        });
    }
    charts
}

fn cache_answered(config: Config, record: &SideRecord) -> bool {
    config.is_fuse()
        && record
            .daemon_cpu_us_per_op
            .is_some_and(|us| us < CACHE_ANSWERED_CPU_US)
}

fn table_header(out: &mut String, configs: &[Config]) {
    out.push_str("| workload | threads |");
    for c in configs {
        let _ = write!(out, " {c} |");
    }
    out.push_str("\n|---|---:|");
    for _ in configs {
        out.push_str("---:|");
    }
    out.push('\n');
}

/// Three significant digits, no exponent.
fn format_sig(x: f64) -> String {
    let decimals = if x.abs() >= 100.0 {
        0
    } else if x.abs() >= 10.0 {
        1
    } else {
        2
    };
    format!("{x:.decimals$}")
}

/// A duration in nanoseconds with a fitting unit.
pub fn format_ns(ns: f64) -> String {
    if ns < 1e3 {
        format!("{} ns", format_sig(ns))
    } else if ns < 1e6 {
        format!("{} µs", format_sig(ns / 1e3))
    } else if ns < 1e9 {
        format!("{} ms", format_sig(ns / 1e6))
    } else {
        format!("{} s", format_sig(ns / 1e9))
    }
}

/// A throughput in binary units.
pub fn format_bytes_per_second(bps: f64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if bps >= 1024.0 * MIB {
        format!("{} GiB/s", format_sig(bps / (1024.0 * MIB)))
    } else {
        format!("{} MiB/s", format_sig(bps / MIB))
    }
}

fn format_ratio(r: f64) -> String {
    format!("{}×", format_sig(r))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(workload: &str, threads: usize, config: &str, cpu: Option<f64>) -> SideRecord {
        SideRecord {
            workload: workload.into(),
            threads,
            config: config.into(),
            ops: 100,
            daemon_cpu_s: cpu.map(|c| c * 1e-4),
            daemon_cpu_us_per_op: cpu,
            daemon_rss_kib: cpu.map(|_| 2048),
            daemon_hwm_kib: cpu.map(|_| 4096),
            notes: vec![],
            failed_ops: 0,
            first_failure: None,
            loadavg_1m: Some(1.5),
            recorded_unix_s: 0,
        }
    }

    fn write_estimate(dir: &Path, group: &str, function: &str, median_ns: f64, bytes: Option<u64>) {
        let d = dir.join(group).join(function).join("new");
        std::fs::create_dir_all(&d).unwrap();
        let estimates = format!(
            r#"{{"mean":{{"point_estimate":{median_ns}}},"median":{{"point_estimate":{median_ns},"standard_error":1.0}}}}"#
        );
        std::fs::write(d.join("estimates.json"), estimates).unwrap();
        let throughput = bytes.map_or("null".to_string(), |b| format!(r#"{{"Bytes":{b}}}"#));
        let benchmark =
            format!(r#"{{"group_id":"{group}","function_id":"{function}","throughput":{throughput}}}"#);
        std::fs::write(d.join("benchmark.json"), benchmark).unwrap();
    }

    #[test]
    fn renders_ratios_throughput_and_flags() {
        let dir = std::env::temp_dir().join(format!("xfuse-bench-report-test.{}", std::process::id()));
        write_estimate(&dir, "stat_cached_1t", "native", 500.0, None);
        write_estimate(&dir, "stat_cached_1t", "stock", 1000.0, None);
        write_estimate(&dir, "open_close_2t", "native", 1000.0, None);
        write_estimate(&dir, "open_close_2t", "stock", 2000.0, None);
        write_estimate(&dir, "open_close_2t", "xfuse-dev", 10.0, None);
        write_estimate(&dir, "stat_cached_1t", "xfuse-dev", 800.0, None);
        write_estimate(&dir, "seqread_1m_1t", "native", 1e5, Some(1 << 20));
        write_estimate(&dir, "seqread_1m_1t", "stock", 1e6, Some(1 << 20));
        let mut side = SideFile::default();
        for (id, r) in [
            ("stat_cached_1t/native", record("stat_cached", 1, "native", None)),
            (
                "stat_cached_1t/stock",
                record("stat_cached", 1, "stock", Some(0.1)),
            ),
            (
                "stat_cached_1t/xfuse-dev",
                record("stat_cached", 1, "xfuse-dev", Some(3.0)),
            ),
            ("seqread_1m_1t/native", record("seqread_1m", 1, "native", None)),
            (
                "seqread_1m_1t/stock",
                record("seqread_1m", 1, "stock", Some(50.0)),
            ),
            (
                "readdir_10k_1t/stock",
                record("readdir_10k", 1, "stock", Some(1.0)),
            ),
            ("open_close_2t/native", record("open_close", 2, "native", None)),
            (
                "open_close_2t/stock",
                record("open_close", 2, "stock", Some(10.0)),
            ),
        ] {
            side.benches.insert(id.into(), r);
        }
        let mut broken = record("open_close", 2, "xfuse-dev", Some(0.1));
        broken.failed_ops = 7;
        broken.first_failure = Some("open: ENOTCONN".into());
        side.benches.insert("open_close_2t/xfuse-dev".into(), broken);
        side.skipped
            .insert("xfuse-uring".into(), "xfuse-uring: refused | flags".into());
        let text = render(&side, &dir);
        let charts = charts(&side, &dir);
        std::fs::remove_dir_all(&dir).unwrap();
        let files: Vec<&str> = charts.iter().map(|c| c.file).collect();
        assert_eq!(
            files,
            ["speed-vs-stock.svg", "speed-vs-native.svg", "threads.svg"]
        );
        let Chart::Bars(vs_stock) = &charts[0].chart else {
            panic!("{charts:?}")
        };
        // xfuse-dev only (stock is the reference, native is no FUSE); its
        // failed open_close cell has no bar.
        assert_eq!(
            vs_stock.groups,
            ["stat_cached 1t", "open_close 2t", "seqread_1m 1t"]
        );
        assert_eq!(vs_stock.series.len(), 1, "{vs_stock:?}");
        assert_eq!(vs_stock.series[0].values, [Some(1000.0 / 800.0), None, None]);
        let Chart::Panels(threads) = &charts[2].chart else {
            panic!("{charts:?}")
        };
        let seqread = threads.panels.iter().find(|p| p.title == "seqread_1m").unwrap();
        assert_eq!(seqread.y_label, "MiB/s");
        let native = seqread.lines.iter().find(|l| l.name == "native").unwrap();
        assert_eq!(native.points, [(1.0, 10_000.0)]);
        for chart in &charts {
            chart.chart.svg().unwrap();
        }
        assert!(
            text.contains("| stat_cached | 1 | 500 ns | 1.00 µs (0.50× n) † | 800 ns (0.62× n, 1.25× s) |"),
            "{text}"
        );
        assert!(
            text.contains("| seqread_1m | 1 | 9.77 GiB/s | 1000 MiB/s (0.10× n) | – |"),
            "{text}"
        );
        assert!(
            text.contains("| stat_cached | 1 | 100 ns · 4.0 MiB † | 3.00 µs · 4.0 MiB |"),
            "{text}"
        );
        assert!(
            text.contains("load average at the end of each bench: 1.50 to 1.50"),
            "{text}"
        );
        assert!(text.contains("- xfuse-uring: refused / flags"), "{text}");
        assert!(
            text.contains("| open_close | 2 | 1.00 µs | 2.00 µs (0.50× n) | ✗ invalid (7 failed ops) |"),
            "{text}"
        );
        assert!(
            text.contains("- open_close_2t/xfuse-dev: 7 of 100 operations; first: open: ENOTCONN"),
            "{text}"
        );
        assert!(
            text.contains("without criterion results: readdir_10k_1t/stock"),
            "{text}"
        );
        // Rows follow WORKLOADS order: stat_cached before seqread_1m.
        assert!(text.find("| stat_cached | 1 | 500").unwrap() < text.find("| seqread_1m | 1 |").unwrap());
    }

    #[test]
    fn units() {
        assert_eq!(format_ns(12.34), "12.3 ns");
        assert_eq!(format_ns(1234.0), "1.23 µs");
        assert_eq!(format_ns(123_456_789.0), "123 ms");
        assert_eq!(
            format_bytes_per_second(3.0 * 1024.0 * 1024.0 * 1024.0),
            "3.00 GiB/s"
        );
        assert_eq!(format_bytes_per_second(512.0 * 1024.0 * 1024.0), "512 MiB/s");
    }

    #[test]
    fn empty() {
        assert!(render(&SideFile::default(), Path::new("/nonexistent")).contains("No results"));
    }
}
