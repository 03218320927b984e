//! A process's hold on a namespace, as `xfused mount` and `xfused virtiofs
//! --meta` take it: the metadata URL parsed, the engine or service it names
//! opened, the local chunk store, dead clients' sessions reaped, and the
//! lease renewed until the hold is closed or dropped.
//!
//! The option groups here derive `clap::Args`, so that every subcommand
//! flattens one definition, with one set of defaults.

mod auth;
mod engine;
mod lease;
mod url;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

pub use auth::{AuthArgs, DEFAULT_CREDENTIAL};
pub use engine::{open_embedded, open_etcd, DurabilityArg, EngineArgs, FSYNC_MS_DEFAULT};
pub use lease::Lease;
pub use url::{parse_meta_url, MetaUrl};

use crate::chunk::ChunkStore;
use crate::cluster::client::ClusterClient;
use crate::data::{FileData, LocalData};
use crate::fs::{MetaFs, MetaFsConfig};
use crate::meta::kv::KvEngine;
use crate::meta::{Meta, MetaConfig, Namespace, SystemClock};
use crate::storage::client::ClusterData;
use crate::storage::transport::{DataTransportArgs, ServiceTransport};

/// Chunk size of new files unless told, in KiB.
pub const CHUNK_SIZE_KIB_DEFAULT: u32 = 1024;

/// A client's lease unless told, in milliseconds.
/// Where `--data` points unless given.
pub const DATA_DIR_DEFAULT: &str = "/var/lib/xfused";

/// The default lease.
pub const LEASE_MS_DEFAULT: u64 = 30_000;

/// A namespace opened for this process: the filesystem over it, and what to
/// close when serving ends. Dropping it stops the lease thread.
pub struct OpenNamespace {
    /// The filesystem to serve.
    pub fs: Arc<MetaFs>,
    /// This client of the namespace.
    pub meta: Arc<dyn Namespace>,
    /// Where the namespace lives (the URL given, or the default).
    pub url: String,
    /// The data directory, canonical.
    pub data: PathBuf,
    /// Where file data goes, for people: the storage cluster, or the
    /// local chunk store's directory.
    pub file_data: String,
    lease: Option<Lease>,
    /// The service client, when the namespace is a tcp:// one (its
    /// deferred closes are settled at `close`).
    remote: Option<Arc<crate::net::RemoteMeta>>,
    /// How file data reaches the storage cluster, when it goes there.
    storage_transport: Option<Arc<ServiceTransport>>,
}

/// Where a namespace comes from and how this client holds it.
#[derive(Debug)]
pub struct NamespaceSpec<'a> {
    /// The metadata URL (`embedded:PATH`, `etcd://…`, `tcp://…`); `None`:
    /// the embedded store in `data/meta`.
    pub meta: Option<String>,
    /// The data directory (chunk store, default embedded store); created
    /// private if missing.
    pub data: &'a Path,
    /// Options of an embedded engine.
    pub engine: &'a EngineArgs,
    /// Chunk size of new files, in KiB (a tcp:// service chooses its own).
    pub chunk_size_kib: u32,
    /// This client's lease, in milliseconds; renewed every third of it.
    pub lease_ms: u64,
    /// The filesystem's attribute timeout, in milliseconds.
    pub attr_timeout_ms: u64,
    /// The filesystem's entry timeout, in milliseconds.
    pub entry_timeout_ms: u64,
    /// Whether the filesystem checks permissions itself.
    pub check_permissions: bool,
    /// How to authenticate to a tcp:// service.
    pub auth: &'a AuthArgs,
    /// How file data reaches storage services.
    pub data_transport: &'a DataTransportArgs,
    /// Callers are this machine's processes (their pids name their
    /// groups); not so for a guest's.
    pub host_callers: bool,
    /// When reads and listings update access times (`Noatime` for a
    /// read-only mount).
    pub atime: kmod_shim::Atime,
    /// Keep file data in the local chunk store even when the namespace's
    /// cluster has storage targets (`--data` given).
    pub local_data: bool,
}

/// The storage cluster of a namespace this process runs itself (on etcd,
/// shared with `xfused meta` services and their storage targets): its
/// table and layouts read from the engine, file data sent to the targets
/// with the cluster credential, and the transport it goes by. `None`
/// while the cluster has no targets.
fn cluster_on_engine(
    engine: Arc<dyn KvEngine>,
    own: Arc<Meta>,
    spec: &NamespaceSpec<'_>,
) -> anyhow::Result<Option<(ClusterData, Arc<ServiceTransport>)>> {
    let meta = ClusterClient::on_engine(engine, own.clone());
    let table = meta
        .table()
        .context("reading the storage cluster's chain table")?;
    if table.targets.is_empty() {
        return Ok(None);
    }
    let tls = match spec.auth.load().context(
        "the namespace's cluster has storage targets, which its mounts reach with the cluster \
         credential (or give --data DIR to keep this mount's file data local)",
    )? {
        Some(cred) => Some(
            cred.client_config(crate::rpc::auth::Role::Mount)
                .context("the cluster credential")?,
        ),
        None => None,
    };
    let sync = spec.engine.durability == DurabilityArg::Sync;
    let rdma = spec.data_transport.choose("mount")?;
    let transport = Arc::new(ServiceTransport::new(tls, spec.data_transport.path(&rdma)));
    let data = ClusterData::new(meta, transport.clone(), own.client_id(), sync)
        .context("fetching the storage cluster's chain table")?;
    Ok(Some((data, transport)))
}

/// Opens the namespace of `xfused mount` (and of `xfused virtiofs --meta`):
/// the engine or service named by the URL, the local chunk store, dead
/// clients' sessions reaped, and a thread renewing this client's lease.
pub fn open_namespace(spec: NamespaceSpec<'_>) -> anyhow::Result<OpenNamespace> {
    crate::private_state::ensure_dir(spec.data)
        .with_context(|| format!("creating data directory {}", spec.data.display()))?;
    let data = std::fs::canonicalize(spec.data)
        .with_context(|| format!("data directory {}", spec.data.display()))?;
    let url = spec
        .meta
        .clone()
        .unwrap_or_else(|| format!("embedded:{}", data.join("meta").display()));
    let config = MetaConfig {
        chunk_size_bytes: spec.chunk_size_kib * 1024,
        lease: Duration::from_millis(spec.lease_ms),
        ..MetaConfig::default()
    };
    let lease = config.lease;
    let mut caller_groups = false;
    // On a store of this process's alone (embedded), this client: every
    // other one is dead.
    let mut sole_client: Option<Arc<Meta>> = None;
    let cluster_wanted = !spec.local_data;
    let mut cluster = None;
    let mut remote_meta = None;
    let meta: Arc<dyn Namespace> = match parse_meta_url(&url)? {
        MetaUrl::Embedded(store) => {
            let engine = open_embedded(&store, spec.engine)?;
            // The store is this process's alone (the engine locks it), so
            // this client's open files need not be recorded in it until
            // one is unlinked while open.
            let config = MetaConfig {
                local_sessions: true,
                ..config
            };
            let own = Arc::new(
                Meta::connect(Arc::new(engine), config, Arc::new(SystemClock))
                    .context("opening the namespace")?,
            );
            sole_client = Some(own.clone());
            own
        }
        MetaUrl::Etcd { endpoints, tls } => {
            let engine: Arc<dyn KvEngine> = Arc::new(open_etcd(&endpoints, tls, spec.engine)?);
            let own = Arc::new(
                Meta::connect(engine.clone(), config, Arc::new(SystemClock))
                    .context("opening the namespace")?,
            );
            if cluster_wanted {
                cluster = cluster_on_engine(engine, own.clone(), &spec)?;
            }
            own
        }
        MetaUrl::Tcp(addr) => {
            if spec.chunk_size_kib != CHUNK_SIZE_KIB_DEFAULT {
                tracing::warn!("--chunk-size-kib is the service's choice with tcp://; ignored");
            }
            let tls = match spec.auth.load()? {
                Some(cred) => Some(
                    cred.client_config(crate::rpc::auth::Role::Mount)
                        .context("the cluster credential")?,
                ),
                None => None,
            };
            let mut remote = crate::net::RemoteMeta::connect(&addr, tls.clone())
                .with_context(|| format!("connecting to the metadata service at {addr}"))?;
            remote.remember_dirs(Duration::from_millis(spec.attr_timeout_ms));
            tracing::info!("metadata: service at {addr}");
            if cluster_wanted {
                let meta =
                    ClusterClient::new(&addr, tls.clone()).context("the metadata service's address")?;
                let rdma = spec.data_transport.choose("mount")?;
                let transport = Arc::new(ServiceTransport::new(tls, spec.data_transport.path(&rdma)));
                let sync = spec.engine.durability == DurabilityArg::Sync;
                cluster = Some((
                    ClusterData::new(meta, transport.clone(), remote.session_client(), sync)
                        .context("fetching the storage cluster's chain table")?,
                    transport,
                ));
            }
            // The service checks every caller: it needs their groups.
            caller_groups = spec.host_callers;
            let remote = Arc::new(remote);
            remote_meta = Some(remote.clone());
            remote
        }
    };
    tracing::info!("registered as metadata client {}", meta.client_id());
    let mut file_data_place = "the storage cluster".to_owned();
    let mut storage_transport = None;
    let file_data: Arc<dyn FileData> = match cluster {
        Some((cluster, transport)) if cluster.has_targets() => {
            tracing::info!("file data: in the storage cluster");
            storage_transport = Some(transport);
            Arc::new(cluster)
        }
        _ => {
            if cluster_wanted {
                tracing::warn!(
                    "the cluster has no storage targets: file data stays in the local chunk store in {}",
                    data.display()
                );
            }
            let chunks = ChunkStore::open(&data)
                .with_context(|| format!("opening the chunk store in {}", data.display()))?;
            tracing::info!("file data: local chunk store in {}", data.display());
            file_data_place = data.display().to_string();
            Arc::new(LocalData(chunks))
        }
    };
    let fs = Arc::new(MetaFs::new(
        meta.clone(),
        file_data,
        MetaFsConfig {
            attr_timeout: Duration::from_millis(spec.attr_timeout_ms),
            entry_timeout: Duration::from_millis(spec.entry_timeout_ms),
            check_permissions: spec.check_permissions,
            caller_groups,
            atime: spec.atime,
        },
    ));
    // Sessions of clients that died without closing (a crash, kill -9):
    // their unlinked-but-open files are deleted now. On a store of this
    // process's alone every other client is dead, lease or not.
    let reaped = match &sole_client {
        Some(own) => own.reap_others(),
        None => meta.reap_expired(),
    };
    match reaped {
        Ok(reclaimed) => {
            if !reclaimed.is_empty() {
                tracing::info!("reaped {} files left open by dead clients", reclaimed.len());
            }
            for r in reclaimed {
                fs.reclaim(Some(r));
            }
        }
        Err(e) => tracing::warn!("reaping dead clients' sessions: {e}"),
    }
    if let Some(remote) = &remote_meta {
        // Closes go in batches; the files they free are deleted by the
        // client's own thread.
        let freed = Arc::downgrade(&fs);
        remote
            .defer_releases(crate::net::client::FLUSH_AFTER, move |r| {
                if let Some(fs) = freed.upgrade() {
                    fs.reclaim(Some(r));
                }
            })
            .context("starting the thread that sends closes")?;
    }
    let lease = Lease::start(meta.clone(), lease / 3).context("starting the lease thread")?;
    Ok(OpenNamespace {
        fs,
        meta,
        url,
        data,
        file_data: file_data_place,
        lease: Some(lease),
        remote: remote_meta,
        storage_transport,
    })
}

impl std::fmt::Debug for OpenNamespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenNamespace")
            .field("url", &self.url)
            .field("data", &self.data)
            .finish_non_exhaustive()
    }
}

impl OpenNamespace {
    /// Counters of this client for a `--metrics` endpoint, beside the
    /// serving side's own: the file data it moves to storage services.
    pub fn metric_sources(&self) -> Vec<Arc<dyn crate::metrics::Collect>> {
        self.storage_transport
            .iter()
            .map(|t| Arc::new(crate::metrics::sources::StorageClient::new(t.clone())) as _)
            .collect()
    }

    /// Closes this client's sessions: the kernel (or guest) has released
    /// every open file by now; anything left is closed so no session
    /// outlives this client.
    pub fn close(mut self) {
        // No renewal after the client is gone.
        self.lease = None;
        if let Some(remote) = &self.remote {
            for r in remote.settle_deferred() {
                self.fs.reclaim(Some(r));
            }
        }
        match self.meta.close_client() {
            Ok(reclaimed) => {
                for r in reclaimed {
                    self.fs.reclaim(Some(r));
                }
            }
            Err(e) => tracing::warn!("closing the metadata client: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_defaults_are_the_metadata_layers_defaults() {
        let meta = MetaConfig::default();
        assert_eq!(Duration::from_millis(LEASE_MS_DEFAULT), meta.lease);
        assert_eq!(CHUNK_SIZE_KIB_DEFAULT * 1024, meta.chunk_size_bytes);
    }
}
