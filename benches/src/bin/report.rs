//! `report [TARGET_DIR]`: prints the benches' markdown report to stdout,
//! from criterion's estimates under `TARGET_DIR/criterion` and the side
//! numbers in `TARGET_DIR/xfuse-bench/side.json` (default: the workspace's
//! `target/`). Run `cargo bench -p benches` first, or `scripts/bench.sh`.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use benches::side::SideFile;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let target = match args.as_slice() {
        [] => benches::target_dir(),
        [dir] if !dir.starts_with('-') => PathBuf::from(dir),
        _ => {
            eprintln!("usage: report [TARGET_DIR]");
            return ExitCode::from(2);
        }
    };
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
