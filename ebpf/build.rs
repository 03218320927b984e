//! Compiles the BPF programs in `src/bpf/` with clang (`-target bpf`, with
//! BTF and CO-RE relocations) into `$OUT_DIR`, where `src/lib.rs` embeds
//! them. `scripts/setup.sh` installs clang and libbpf-dev (for
//! `<bpf/bpf_helpers.h>`); `$CLANG` names another clang.

use std::path::PathBuf;
use std::process::Command;

const PROGRAMS: &[&str] = &["fuse_upcalls"];

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".to_owned());
    println!("cargo:rerun-if-env-changed=CLANG");
    for name in PROGRAMS {
        let src = format!("src/bpf/{name}.bpf.c");
        println!("cargo:rerun-if-changed={src}");
        let obj = out.join(format!("{name}.bpf.o"));
        let status = Command::new(&clang)
            .args([
                "-target", "bpf", "-O2", "-g", "-Wall", "-Werror", "-c", &src, "-o",
            ])
            .arg(&obj)
            .status();
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => panic!("{clang} failed ({s}) compiling {src}"),
            Err(e) => panic!(
                "cannot run {clang} to compile {src}: {e}; scripts/setup.sh installs clang and \
                 libbpf-dev (or set CLANG to a clang that targets bpf)"
            ),
        }
    }
}
