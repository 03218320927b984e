//! `report [TARGET_DIR]`: prints the benches' markdown report to stdout,
//! from criterion's estimates under `TARGET_DIR/criterion` and the side
//! numbers in `TARGET_DIR/xfuse-bench/side.json` (default: the workspace's
//! `target/`). Run `cargo bench -p benches` first, or `scripts/bench.sh`.
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
    print!("{}", benches::report::render(&side, &target.join("criterion")));
    ExitCode::SUCCESS
}
