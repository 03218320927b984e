//! `report [TARGET_DIR] [--svg-dir DIR]`: prints the benches' markdown
//! report to stdout, from criterion's estimates under `TARGET_DIR/criterion`
//! and the side numbers in `TARGET_DIR/xfuse-bench/side.json` (default: the
//! workspace's `target/`), and with `--svg-dir` writes its charts there.
//! Run `cargo bench -p benches` first, or `scripts/bench.sh`.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use benches::side::SideFile;

/// Prints the benches' markdown report to stdout, from criterion's
/// estimates under TARGET_DIR/criterion and the side numbers in
/// TARGET_DIR/xfuse-bench/side.json. Run `cargo bench -p benches` first, or
/// `scripts/bench.sh`.
#[derive(Debug, clap::Parser)]
#[command(name = "report")]
struct Args {
    /// Where the benches wrote (default: the workspace's `target/`).
    target_dir: Option<PathBuf>,
    /// Also draw the report's charts as SVG files in DIR (speed relative to
    /// stock and to native, throughput against threads), linked from the
    /// top of the report.
    #[arg(long, value_name = "DIR")]
    svg_dir: Option<PathBuf>,
    /// How the report links to the charts: this prefix, then the file name
    /// (default: DIR as given). For a report kept in docs/ with the charts
    /// in docs/img/run, `--svg-dir docs/img/run --svg-href img/run`.
    #[arg(long, value_name = "PREFIX", requires = "svg_dir")]
    svg_href: Option<String>,
}

fn main() -> ExitCode {
    let args = <Args as clap::Parser>::parse();
    let target = args.target_dir.unwrap_or_else(benches::target_dir);
    let side_path = target.join("xfuse-bench").join("side.json");
    if !side_path.is_file() {
        eprintln!(
            "report: {} not found: run `cargo bench -p benches` first",
            side_path.display()
        );
        return ExitCode::FAILURE;
    }
    let side = SideFile::load(&side_path);
    let criterion = target.join("criterion");
    if let Some(dir) = &args.svg_dir {
        let href = args.svg_href.clone().unwrap_or_else(|| dir.display().to_string());
        for chart in benches::report::charts(&side, &criterion) {
            let path = dir.join(chart.file);
            if let Err(e) = chart
                .chart
                .svg()
                .and_then(|svg| benches::plot::write(&path, &svg))
            {
                eprintln!("report: {}: {e:#}", path.display());
                return ExitCode::FAILURE;
            }
            eprintln!("report: wrote {}", path.display());
            println!(
                "![{}]({}/{})\n",
                chart.alt,
                href.trim_end_matches('/'),
                chart.file
            );
        }
    }
    print!("{}", benches::report::render(&side, &criterion));
    ExitCode::SUCCESS
}
