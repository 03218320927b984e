//! The metadata engines a process opens itself: the embedded store and
//! etcd (their options, shared by every subcommand that can open one).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, ValueEnum};

use crate::meta::embedded::{Durability, EmbeddedEngine};
use crate::meta::etcd::{EtcdEngine, EtcdSecurity, EtcdTls};

/// How often a buffered embedded store fsyncs its journal unless told, in
/// milliseconds.
pub const FSYNC_MS_DEFAULT: u16 = 100;

/// When a metadata change counts as done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum DurabilityArg {
    /// A metadata change is acknowledged once written to the operating
    /// system: a crash or kill -9 of xfused loses nothing; the journal is
    /// fsynced every --fsync-ms, so a power loss loses at most that window.
    #[default]
    Buffered,
    /// A metadata change is acknowledged only after an fdatasync; changes
    /// arriving during one sync share the next (group commit).
    Sync,
}

/// Options of an embedded metadata engine.
#[derive(Debug, Clone, Args)]
pub struct EngineArgs {
    /// When a metadata change counts as done (embedded engine).
    #[arg(long, value_enum, default_value_t = DurabilityArg::default())]
    pub durability: DurabilityArg,
    /// With --durability buffered: how often the metadata journal is
    /// fsynced, in milliseconds (1 to 60000).
    #[arg(long, value_name = "MS", default_value_t = FSYNC_MS_DEFAULT,
          value_parser = clap::value_parser!(u16).range(1..=60000))]
    pub fsync_ms: u16,
    /// With etcd+tls://: the CA certificate (PEM) that signed the etcd
    /// members' certificates.
    #[arg(long, value_name = "FILE")]
    pub etcd_ca: Option<PathBuf>,
    /// With etcd+tls://: a client certificate (PEM), for members run with
    /// --client-cert-auth (needs --etcd-key).
    #[arg(long, value_name = "FILE", requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,
    /// The private key (PEM) of --etcd-cert.
    #[arg(long, value_name = "FILE", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
    /// An etcd user (etcd's auth enabled); the password is read from
    /// --etcd-password-file, never from the command line.
    #[arg(long, value_name = "NAME", requires = "etcd_password_file")]
    pub etcd_user: Option<String>,
    /// A file holding the password of --etcd-user (its first line; keep it
    /// mode 0600).
    #[arg(long, value_name = "FILE", requires = "etcd_user")]
    pub etcd_password_file: Option<PathBuf>,
}

impl Default for EngineArgs {
    /// What the flags default to.
    fn default() -> EngineArgs {
        EngineArgs {
            durability: DurabilityArg::default(),
            fsync_ms: FSYNC_MS_DEFAULT,
            etcd_ca: None,
            etcd_cert: None,
            etcd_key: None,
            etcd_user: None,
            etcd_password_file: None,
        }
    }
}

/// Opens (creating it, private: 0700) the embedded store in `store`.
pub fn open_embedded(store: &Path, args: &EngineArgs) -> anyhow::Result<EmbeddedEngine> {
    let durability = match args.durability {
        DurabilityArg::Buffered => Durability::Buffered {
            fsync_ms: args.fsync_ms,
        },
        DurabilityArg::Sync => Durability::Sync,
    };
    // 0700: fjall makes its files 0644 under the usual umask; nobody else
    // may reach them (names, xattrs) through this directory.
    crate::private_state::ensure_dir(store)
        .with_context(|| format!("creating metadata directory {}", store.display()))?;
    let engine = EmbeddedEngine::open(store, durability)
        .with_context(|| format!("opening the embedded metadata store in {}", store.display()))?;
    tracing::info!("metadata: embedded store in {} ({durability:?})", store.display());
    Ok(engine)
}

/// The security `args` ask for, for an etcd URL with or without TLS.
pub fn etcd_security(tls: bool, args: &EngineArgs) -> anyhow::Result<EtcdSecurity> {
    let read = |path: &PathBuf| std::fs::read(path).with_context(|| format!("reading {}", path.display()));
    let tls = match (tls, &args.etcd_ca) {
        (true, Some(ca)) => Some(EtcdTls {
            ca_pem: read(ca)?,
            identity: match (&args.etcd_cert, &args.etcd_key) {
                (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
                _ => None,
            },
        }),
        (true, None) => {
            anyhow::bail!("etcd+tls:// needs --etcd-ca FILE, the CA of the members' certificates")
        }
        (false, _) if args.etcd_ca.is_some() || args.etcd_cert.is_some() => {
            anyhow::bail!("--etcd-ca and --etcd-cert are for etcd+tls://HOST:PORT,... URLs")
        }
        (false, _) => None,
    };
    let user = match (&args.etcd_user, &args.etcd_password_file) {
        (Some(user), Some(file)) => {
            use std::os::unix::fs::MetadataExt;
            let mode = std::fs::metadata(file)
                .with_context(|| format!("--etcd-password-file {}", file.display()))?
                .mode();
            if mode & 0o077 != 0 {
                tracing::warn!(
                    "{}: mode {:o} lets others read the etcd password",
                    file.display(),
                    mode & 0o7777
                );
            }
            let text = String::from_utf8(read(file)?).context("the etcd password is not UTF-8")?;
            let password = text.lines().next().unwrap_or("").to_string();
            Some((user.clone(), password))
        }
        _ => None,
    };
    Ok(EtcdSecurity { tls, user })
}

/// Connects to the etcd cluster at `endpoints` (keys under `xfuse/`), over
/// TLS if `tls`, with the certificates and user `args` name.
pub fn open_etcd(endpoints: &[String], tls: bool, args: &EngineArgs) -> anyhow::Result<EtcdEngine> {
    let security = etcd_security(tls, args)?;
    let secured = format!(
        "{}{}",
        if security.tls.is_some() {
            "TLS"
        } else {
            "plain HTTP"
        },
        match &security.user {
            Some((user, _)) => format!(", user {user}"),
            None => String::new(),
        }
    );
    let engine = EtcdEngine::connect_secured(endpoints, b"xfuse/", security)
        .with_context(|| format!("connecting to etcd at {}", endpoints.join(",")))?;
    tracing::info!(
        "metadata: etcd cluster at {} (keys under xfuse/, {secured})",
        endpoints.join(",")
    );
    Ok(engine)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        engine: EngineArgs,
    }

    #[test]
    fn default_is_what_the_flags_default_to() {
        let parsed = Cli::parse_from(["xfused"]).engine;
        let default = EngineArgs::default();
        assert_eq!(
            (parsed.durability, parsed.fsync_ms),
            (default.durability, default.fsync_ms)
        );
        assert!(parsed.etcd_ca.is_none() && parsed.etcd_user.is_none());
    }

    #[test]
    fn etcd_security_follows_the_url_and_the_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p.display().to_string()
        };
        let (ca, pw) = (file("ca.pem", "CA"), file("pw", "s3cret\nignored\n"));
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("xfused").chain(args.iter().copied())).map(|c| c.engine)
        };
        // Plain etcd:// with nothing: no TLS, no user.
        let plain = etcd_security(false, &parse(&[]).unwrap()).unwrap();
        assert!(plain.tls.is_none() && plain.user.is_none());
        // etcd+tls:// needs the members' CA.
        let err = etcd_security(true, &parse(&[]).unwrap()).unwrap_err();
        assert!(err.to_string().contains("--etcd-ca"), "{err}");
        let tls = etcd_security(true, &parse(&["--etcd-ca", &ca]).unwrap()).unwrap();
        assert_eq!(tls.tls.unwrap().ca_pem, b"CA");
        // A CA with a plain URL is a mistake, said so.
        assert!(etcd_security(false, &parse(&["--etcd-ca", &ca]).unwrap()).is_err());
        // A user needs its password file, read to its first line.
        assert!(parse(&["--etcd-user", "root"]).is_err());
        assert!(
            parse(&["--etcd-cert", &ca]).is_err(),
            "a certificate without its key"
        );
        let user = etcd_security(
            false,
            &parse(&["--etcd-user", "root", "--etcd-password-file", &pw]).unwrap(),
        )
        .unwrap()
        .user
        .unwrap();
        assert_eq!(user, ("root".to_string(), "s3cret".to_string()));
    }
}
