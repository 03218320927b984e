//! Writes the seed inputs of a fuzz target into a directory:
//! `seeds TARGET DIR` (used by scripts/fuzz.sh for an empty corpus).

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [target, dir] = &args[..] else {
        eprintln!("usage: seeds TARGET DIR");
        return ExitCode::from(2);
    };
    let seeds = xfuse_fuzz::seeds::seeds(target);
    if seeds.is_empty() {
        eprintln!("no target {target}");
        return ExitCode::from(2);
    }
    let dir = PathBuf::from(dir);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("{}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    for (name, data) in &seeds {
        let path = dir.join(format!("seed-{name}"));
        if let Err(e) = std::fs::write(&path, data) {
            eprintln!("{}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    println!("{} seeds for {target} in {}", seeds.len(), dir.display());
    ExitCode::SUCCESS
}
