//! `xfused meta`: a metadata service (`xfused::net::MetaService` on the
//! `xfused::rpc` server) over an engine opened by `xfused::client`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Args;
use xfused::client::{AuthArgs, EngineArgs, LEASE_MS_DEFAULT};

#[derive(Debug, Args)]
pub struct MetaArgs {
    /// The engine holding the namespace: `embedded:PATH`, an embedded store
    /// in directory PATH (created if missing, made private: 0700; one
    /// process at a time), or
    /// `etcd://HOST:PORT[,HOST:PORT...]`, the client endpoints of an etcd
    /// cluster (keys under xfuse/; run etcd with --max-txn-ops 10000), or
    /// `etcd+tls://...` for members that speak TLS (with --etcd-ca, and
    /// --etcd-cert/--etcd-key, --etcd-user/--etcd-password-file as needed).
    #[arg(long, value_name = "ENGINE")]
    engine: String,
    /// Where to accept clients: HOST:PORT (e.g. 127.0.0.1:26000).
    #[arg(long, value_name = "HOST:PORT")]
    listen: String,
    /// Clients' lease, in milliseconds: a client that has not renewed it
    /// for this long is considered dead; its open files are closed (every
    /// third of this, the service reaps). On an embedded store, where the
    /// service keeps its clients' open files in memory, also the longest a
    /// restarted service waits for live clients to tell it theirs, keeping
    /// meanwhile every file that loses its last link.
    #[arg(long, value_name = "MS", default_value_t = LEASE_MS_DEFAULT,
          value_parser = clap::value_parser!(u64).range(300..=3_600_000))]
    lease_ms: u64,
    /// How often the management role looks for chunks of files that are
    /// gone (a crash between a file's removal and its chunks', or a file
    /// reaped with its dead client) and removes them, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    reconcile_secs: u64,
    #[command(flatten)]
    engine_args: EngineArgs,
    #[command(flatten)]
    auth: AuthArgs,
    #[command(flatten)]
    metrics: xfused::metrics::MetricsArgs,
}

pub fn run(args: MetaArgs) -> anyhow::Result<()> {
    use xfused::meta::kv::KvEngine;
    use xfused::meta::{MetaConfig, SystemClock};
    use xfused::net::service::TokenKey;
    use xfused::net::MetaService;
    use xfused::rpc::auth::Credential;
    use xfused::rpc::server::{Limits, Server};
    xfused::private_state::private_umask();
    let addr: std::net::SocketAddr = args.listen.parse().with_context(|| {
        format!(
            "--listen {:?}: expected HOST:PORT, e.g. 127.0.0.1:26000",
            args.listen
        )
    })?;
    let metrics = xfused::metrics::Endpoint::start(&args.metrics)?;
    // A store only this process can open (the embedded engine locks it)
    // lets the service keep its clients' open-file sessions in memory.
    let (engine, place, own_store): (Arc<dyn KvEngine>, String, bool) =
        match xfused::client::parse_meta_url(&args.engine)? {
            xfused::client::MetaUrl::Embedded(store) => (
                Arc::new(xfused::client::open_embedded(&store, &args.engine_args)?),
                store.display().to_string(),
                true,
            ),
            xfused::client::MetaUrl::Etcd { endpoints, tls } => (
                Arc::new(xfused::client::open_etcd(&endpoints, tls, &args.engine_args)?),
                format!("etcd {}", endpoints.join(",")),
                false,
            ),
            xfused::client::MetaUrl::Tcp(_) => bail!(
                "--engine {:?}: a service needs an engine (embedded:PATH or etcd://...), not another service",
                args.engine
            ),
        };
    let config = MetaConfig {
        lease: Duration::from_millis(args.lease_ms),
        shared_sessions: own_store.then(|| Arc::new(xfused::meta::local::LocalSessions::new())),
        ..MetaConfig::default()
    };
    let reap_every = config.lease / 3;
    let (tls, tokens, client_tls) = if args.auth.insecure_no_auth {
        tracing::warn!("--insecure-no-auth: anyone who can reach {addr} may act as any user, root included");
        (None, TokenKey::insecure(), None)
    } else {
        let cred = Credential::load_or_create(&args.auth.credential).context("the cluster credential")?;
        if !cred.is_cluster() {
            bail!(
                "{}: a service needs the cluster credential (with the CA key), not one issued for a role",
                args.auth.credential.display()
            );
        }
        (
            Some(cred.server_config().context("the cluster credential")?),
            TokenKey::of(&cred)?,
            Some(
                cred.client_config(xfused::rpc::auth::Role::Service)
                    .context("the cluster credential")?,
            ),
        )
    };
    let service = Arc::new(
        MetaService::new(engine, config, Arc::new(SystemClock), tokens).context("opening the namespace")?,
    );
    service.start_reaper(reap_every).context("starting the reaper")?;
    service
        .start_manager()
        .context("starting the storage management role")?;
    let listener = std::net::TcpListener::bind(addr).with_context(|| format!("listening on {addr}"))?;
    // The bound address, so `--listen HOST:0` says which port it got.
    let bound = listener.local_addr().context("reading the listening address")?;
    let auth = match &tls {
        Some(_) => format!(
            "mutual TLS with the credential in {}",
            args.auth.credential.display()
        ),
        None => "NO authentication".to_string(),
    };
    // The reconciler reaches the storage targets as a storage service
    // would, and the chain table through this very service.
    let table = xfused::cluster::client::ClusterClient::new(&bound.to_string(), client_tls.clone())?;
    let server = Server::new(service.clone(), tls, Limits::default());
    if let Some(endpoint) = &metrics {
        endpoint.add(Arc::new(xfused::metrics::sources::RpcServer::new(
            server.clone(),
            "meta",
        )));
        endpoint.add(Arc::new(xfused::metrics::sources::MetaSessions::new(
            service.clone(),
        )));
    }
    let serving = {
        let server = server.clone();
        std::thread::Builder::new()
            .name("accept".into())
            .spawn(move || server.serve(listener))
            .context("starting the accept thread")?
    };
    let data = xfused::storage::client::ClusterData::new(
        table,
        Arc::new(xfused::storage::transport::ServiceTransport::tcp(client_tls)),
        service.own().client_id(),
        false,
    )
    .context("reading the chain table")?;
    service.set_reconciler(data, Duration::from_secs(args.reconcile_secs));
    eprintln!("xfused: metadata service on {bound}, namespace in {place}, {auth}");
    serving
        .join()
        .map_err(|_| anyhow::anyhow!("the accept thread panicked"))?
        .context("serving")?;
    Ok(())
}
