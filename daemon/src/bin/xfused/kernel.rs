//! `xfused kernel`: what the running kernel offers a FUSE server, and
//! switching FUSE-over-io_uring on.

use anyhow::{bail, Context as _};
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum KernelCommand {
    /// Print what the running kernel offers a FUSE server.
    Probe,
    /// Switch FUSE-over-io_uring on for this boot
    /// (writes Y to /sys/module/fuse/parameters/enable_uring; root only).
    EnableUring,
}

pub fn run(command: KernelCommand) -> anyhow::Result<()> {
    match command {
        KernelCommand::Probe => {
            println!("{}", kmod_shim::probe());
            Ok(())
        }
        KernelCommand::EnableUring => enable_uring(),
    }
}

fn enable_uring() -> anyhow::Result<()> {
    let info = kmod_shim::probe();
    match info.uring_enabled {
        None => bail!(
            "kernel {} has no FUSE-over-io_uring ({} is missing; it needs Linux 6.14+ with CONFIG_FUSE_IO_URING)",
            info.release,
            kmod_shim::probe::ENABLE_URING_PARAM
        ),
        Some(true) => {
            println!("FUSE-over-io_uring is already on");
            Ok(())
        }
        Some(false) => {
            kmod_shim::probe::enable_uring()
                .with_context(|| format!("writing Y to {}", kmod_shim::probe::ENABLE_URING_PARAM))?;
            println!("FUSE-over-io_uring switched on for this boot");
            Ok(())
        }
    }
}
