//! How this process authenticates to the cluster's services: the
//! `--credential` / `--insecure-no-auth` options every client and service
//! flattens, and loading the credential they name.

use std::path::PathBuf;

use anyhow::{bail, Context as _};
use clap::Args;

use crate::rpc::auth::Credential;

/// Where the cluster credential is, unless --credential says.
pub const DEFAULT_CREDENTIAL: &str = "/var/lib/xfused/cluster.pem";

/// How this process authenticates to the cluster's services.
#[derive(Debug, Clone, Args)]
pub struct AuthArgs {
    /// The cluster credential: a PEM file with the cluster's CA certificate
    /// and key (`xfused meta` makes one at the default path on first start;
    /// copy it to every machine of the cluster), or a narrower one from
    /// `xfused credential issue`. Must be private (mode 0600).
    #[arg(long, value_name = "FILE", default_value = DEFAULT_CREDENTIAL)]
    pub credential: PathBuf,
    /// Use no authentication: any process that can reach the service's port
    /// may act as any user, root included. Only for a network nobody else
    /// can reach; a service and its mounts must all say it.
    #[arg(long)]
    pub insecure_no_auth: bool,
}

impl AuthArgs {
    /// The credential, or `None` without authentication.
    pub fn load(&self) -> anyhow::Result<Option<Credential>> {
        if self.insecure_no_auth {
            tracing::warn!("--insecure-no-auth: connections are neither authenticated nor encrypted");
            return Ok(None);
        }
        if !self.credential.exists() {
            bail!(
                "no cluster credential at {}: start `xfused meta` on this machine first (it makes one there), \
                 or copy the cluster's credential there, or pass --credential FILE",
                self.credential.display()
            );
        }
        Ok(Some(
            Credential::load(&self.credential).context("loading the cluster credential")?,
        ))
    }
}
