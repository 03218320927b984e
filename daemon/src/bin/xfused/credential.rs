//! `xfused credential`: make a cluster credential, or issue one narrowed to
//! a role (`xfused::rpc::auth` does the cryptography).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use xfused::client::DEFAULT_CREDENTIAL;

#[derive(Debug, Subcommand)]
pub enum CredentialCommand {
    /// Make a new cluster: write a fresh cluster credential (CA certificate
    /// and key) to FILE, mode 0600. Refuses to overwrite.
    New {
        /// Where to write it.
        file: PathBuf,
    },
    /// Write a credential that can be one role and nothing else (no CA
    /// key): e.g. `--role mount` for a machine that should only mount.
    Issue {
        /// mount, service or admin.
        #[arg(long, value_parser = ["mount", "service", "admin"])]
        role: String,
        /// The cluster credential to issue from.
        #[arg(long, value_name = "FILE", default_value = DEFAULT_CREDENTIAL)]
        from: PathBuf,
        /// Where to write the new credential (mode 0600; refuses to overwrite).
        out: PathBuf,
    },
}

pub fn run(command: CredentialCommand) -> anyhow::Result<()> {
    use xfused::rpc::auth::{Credential, Role};
    let (made, out) = match command {
        CredentialCommand::New { file } => (Credential::generate()?, file),
        CredentialCommand::Issue { role, from, out } => {
            let cluster = Credential::load(&from).context("loading the cluster credential")?;
            let role = Role::parse(&role).context("--role")?;
            (cluster.issue(role).context("issuing")?, out)
        }
    };
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&out)
        .with_context(|| format!("creating {}", out.display()))?;
    f.write_all(made.to_pem().as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", out.display()))?;
    eprintln!("xfused: wrote {}", out.display());
    Ok(())
}
