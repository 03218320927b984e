//! How storage requests and their bulk payloads travel: the seam between
//! the chain protocol and the wire.
//!
//! [`DataTransport`] sends one request with its payload to a storage
//! service and returns the reply with its payload. [`ServiceTransport`]
//! does it on the service layer ([`crate::rpc`]): mutual TLS, a few
//! multiplexed connections per service, and the payloads either carried
//! in the frames after the message ([`DataPath::Tcp`]) or moved by RDMA
//! READ and WRITE between registered buffers while the message goes as
//! before ([`DataPath::Rdma`], see [`crate::rpc::rdma`]).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use crate::rpc::client::{CallError, Conn};
use crate::rpc::codec;
use crate::rpc::rdma::pool::Pool;
use crate::storage::StorageRequest;

/// Connections kept per service address.
pub const CONNS_PER_ADDR: usize = 4;
/// Time to connect and authenticate.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// See the module docs.
pub trait DataTransport: Send + Sync + std::fmt::Debug {
    /// Sends `message` and `payload` to the service at `addr`; its reply
    /// and payload (of `reply_max` bytes at most, as the request says),
    /// within `timeout`.
    fn call(
        &self,
        addr: SocketAddr,
        message: &[u8],
        payload: &[u8],
        reply_max: usize,
        timeout: Duration,
    ) -> Result<(Vec<u8>, Vec<u8>), CallError>;
}

/// Sends a request; its typed reply and payload.
pub fn call<A: DeserializeOwned>(
    transport: &dyn DataTransport,
    addr: SocketAddr,
    request: &StorageRequest,
    payload: &[u8],
    timeout: Duration,
) -> Result<(A, Vec<u8>), CallError> {
    let message = codec::encode(request);
    let (reply, bulk) = transport.call(addr, &message, payload, request.reply_bulk(), timeout)?;
    let reply = codec::decode(&reply)
        .map_err(|e| CallError::Lost(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
    Ok((reply, bulk))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `--data-transport`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DataTransportMode {
    /// File data in the frames of the (TLS) service connection.
    Tcp,
    /// File data by RDMA READ and WRITE; fails without an RDMA device, or
    /// with a storage service that serves none.
    Rdma,
    /// RDMA when this machine has a device and a service serves it, else
    /// TCP; the choice is logged.
    Auto,
}

/// How file data moves between mounts and storage services, and along
/// chains.
#[derive(Debug, Clone, clap::Args)]
pub struct DataTransportArgs {
    /// How file data moves between mounts and storage services and along
    /// chains: tcp (in the frames of the authenticated, encrypted
    /// connection), rdma (RDMA READ/WRITE between registered buffers, the
    /// requests still on the connection; an error without an RDMA device
    /// or with a storage service that has none), or auto (rdma where both
    /// ends have it, else tcp; the choice is logged). RDMA payloads are
    /// NOT encrypted, and RoCE packets can be forged by anyone on the
    /// network: use rdma or auto only on a fabric you trust.
    #[arg(long, value_enum, value_name = "HOW", default_value = "tcp")]
    pub data_transport: DataTransportMode,
    /// The RDMA device, as `ibv_devices` names it (rxe0, mlx5_0); the
    /// first one if not given.
    #[arg(long, value_name = "NAME")]
    pub rdma_device: Option<String>,
    /// MiB of memory registered for RDMA buffers, at most (pinned: it
    /// counts against RLIMIT_MEMLOCK). Requests wait when all are in use.
    #[arg(long, value_name = "MIB", default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(8..=1 << 16))]
    pub rdma_pool_mib: u64,
}

/// The device a [`DataTransportArgs`] chose, if any.
pub type Chosen = Option<Arc<dyn crate::rpc::rdma::Fabric>>;

impl DataTransportArgs {
    /// The device to use, or `None` for TCP, as the flags say; the choice
    /// and its reason in one log line. `who` names this process's role
    /// in it ("mount", "storage service").
    pub fn choose(&self, who: &str) -> std::io::Result<Chosen> {
        use crate::rpc::rdma;
        let devices = rdma::devices();
        let why_not = if !rdma::BUILT_WITH_RDMA {
            "this build has no RDMA (cargo feature rdma)".to_string()
        } else if devices.is_empty() {
            "no RDMA device on this machine".to_string()
        } else {
            String::new()
        };
        match self.data_transport {
            DataTransportMode::Tcp => {
                tracing::info!("{who}: data transport tcp (--data-transport tcp)");
                Ok(None)
            }
            DataTransportMode::Auto if !why_not.is_empty() => {
                tracing::info!("{who}: data transport tcp (auto: {why_not})");
                Ok(None)
            }
            mode => {
                let fabric = rdma::open(self.rdma_device.as_deref()).map_err(|e| {
                    std::io::Error::new(
                        e.kind(),
                        format!(
                            "--data-transport {}: RDMA device {}: {e}",
                            if mode == DataTransportMode::Rdma {
                                "rdma"
                            } else {
                                "auto"
                            },
                            self.rdma_device.as_deref().unwrap_or("(the first)")
                        ),
                    )
                })?;
                tracing::info!(
                    "{who}: data transport rdma on {} ({}; devices here: {})",
                    fabric.device(),
                    if mode == DataTransportMode::Rdma {
                        "--data-transport rdma"
                    } else {
                        "auto: this machine has an RDMA device"
                    },
                    devices.join(", ")
                );
                Ok(Some(fabric))
            }
        }
    }

    /// The path of a transport calling storage services from a process
    /// that chose `chosen`: its registered buffers, open to the services.
    pub fn path(&self, chosen: &Chosen) -> DataPath {
        match chosen {
            None => DataPath::Tcp,
            Some(fabric) => DataPath::Rdma {
                pool: Pool::new(fabric.clone(), self.pool_bytes(), true),
                required: self.data_transport == DataTransportMode::Rdma,
            },
        }
    }

    /// `--rdma-pool-mib` in bytes.
    pub fn pool_bytes(&self) -> usize {
        usize::try_from(self.rdma_pool_mib << 20).unwrap_or(usize::MAX)
    }
}

/// How payloads travel.
#[derive(Debug, Clone)]
pub enum DataPath {
    /// In the frames, on the (TLS) stream.
    Tcp,
    /// By RDMA through `pool`'s buffers. A service that serves no RDMA is
    /// an error if `required`, else it is reached over TCP (said once per
    /// service in the log).
    Rdma {
        /// Registered buffers, open to the services called.
        pool: Arc<Pool>,
        /// Whether a service without RDMA is refused.
        required: bool,
    },
}

/// Payload bytes a transport moved, by path.
#[derive(Debug, Default)]
pub struct Moved {
    /// Sent in frames.
    pub tcp_sent: AtomicU64,
    /// Received in frames.
    pub tcp_received: AtomicU64,
    /// Pulled by services from this process's buffers by RDMA READ.
    pub rdma_sent: AtomicU64,
    /// Pushed by services into this process's buffers by RDMA WRITE.
    pub rdma_received: AtomicU64,
}

/// See the module docs.
pub struct ServiceTransport {
    tls: Option<Arc<rustls::ClientConfig>>,
    path: DataPath,
    conns: Mutex<HashMap<SocketAddr, Vec<Arc<Conn>>>>,
    /// Services found without RDMA (with [`DataPath::Rdma`], not
    /// required): reached over TCP, said once.
    tcp_only: Mutex<HashSet<SocketAddr>>,
    /// See [`ServiceTransport::rdma_connections`].
    rdma_connections: AtomicU64,
    /// What moved how.
    pub moved: Moved,
}

impl std::fmt::Debug for ServiceTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceTransport")
            .field("tls", &self.tls.is_some())
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl ServiceTransport {
    /// A transport authenticating with `tls` (`None`: no authentication,
    /// for services run with `--insecure-no-auth`), payloads over TCP.
    pub fn tcp(tls: Option<Arc<rustls::ClientConfig>>) -> ServiceTransport {
        ServiceTransport::new(tls, DataPath::Tcp)
    }

    /// A transport authenticating with `tls`, payloads by `path`.
    pub fn new(tls: Option<Arc<rustls::ClientConfig>>, path: DataPath) -> ServiceTransport {
        ServiceTransport {
            tls,
            path,
            conns: Mutex::new(HashMap::new()),
            tcp_only: Mutex::new(HashSet::new()),
            rdma_connections: AtomicU64::new(0),
            moved: Moved::default(),
        }
    }

    /// Services this `auto` transport reaches over TCP because they offer
    /// no RDMA (`rdma` refuses them instead).
    pub fn tcp_only_services(&self) -> usize {
        lock(&self.tcp_only).len()
    }

    /// Connections whose queue pairs were set up (each connection to a
    /// service that offers RDMA, reconnections included).
    pub fn rdma_connections(&self) -> u64 {
        self.rdma_connections.load(Ordering::Relaxed)
    }

    /// Whether payloads go by RDMA where services offer it.
    pub fn uses_rdma(&self) -> bool {
        matches!(self.path, DataPath::Rdma { .. })
    }

    /// A live connection to `addr`: an idle one, a new one while there are
    /// fewer than [`CONNS_PER_ADDR`], else the least busy.
    fn conn(&self, addr: SocketAddr) -> Result<Arc<Conn>, CallError> {
        {
            let mut conns = lock(&self.conns);
            let list = conns.entry(addr).or_default();
            list.retain(|c| !c.is_dead());
            if let Some(idle) = list.iter().find(|c| c.in_flight() == 0) {
                return Ok(idle.clone());
            }
            if list.len() >= CONNS_PER_ADDR {
                let least = list.iter().min_by_key(|c| c.in_flight()).expect("not empty");
                return Ok(least.clone());
            }
        }
        let conn = Conn::connect(&addr, self.tls.clone(), Instant::now() + CONNECT_TIMEOUT)
            .map_err(CallError::NotSent)?;
        if let DataPath::Rdma { pool, required } = &self.path {
            if !lock(&self.tcp_only).contains(&addr) {
                match conn.connect_rdma(pool.clone(), CONNECT_TIMEOUT) {
                    Ok(()) => {
                        self.rdma_connections.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) if *required => {
                        return Err(CallError::NotSent(std::io::Error::other(format!(
                            "no RDMA with the storage service at {addr} (the data transport is rdma): {e}"
                        ))))
                    }
                    Err(e) => {
                        tracing::warn!("storage service at {addr}: no RDMA ({e}); its payloads go over TCP");
                        lock(&self.tcp_only).insert(addr);
                    }
                }
            }
        }
        let conn = Arc::new(conn);
        let mut conns = lock(&self.conns);
        let list = conns.entry(addr).or_default();
        if list.len() < CONNS_PER_ADDR {
            list.push(conn.clone());
        }
        Ok(conn)
    }
}

impl DataTransport for ServiceTransport {
    fn call(
        &self,
        addr: SocketAddr,
        message: &[u8],
        payload: &[u8],
        reply_max: usize,
        timeout: Duration,
    ) -> Result<(Vec<u8>, Vec<u8>), CallError> {
        let conn = self.conn(addr)?;
        let rdma = conn.has_rdma();
        let (reply, bulk) = conn.call_rdma(message, payload, reply_max, timeout)?;
        let (sent, received) = if rdma {
            (&self.moved.rdma_sent, &self.moved.rdma_received)
        } else {
            (&self.moved.tcp_sent, &self.moved.tcp_received)
        };
        sent.fetch_add(payload.len() as u64, Ordering::Relaxed);
        received.fetch_add(bulk.len() as u64, Ordering::Relaxed);
        Ok((reply, bulk))
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;
    use crate::rpc::rdma::fake::{FakeFabric, FakeNet};
    use crate::rpc::rdma::Fabric;
    use crate::rpc::server::{Handler, Limits, Peer, Server};
    use crate::storage::engine::ChunkId;
    use crate::storage::{ChainRef, ChunkOp, StorageReply, UpdateId};

    /// Keeps the last payload written; reads answer with it.
    #[derive(Default)]
    struct OneChunk {
        bytes: Mutex<Vec<u8>>,
    }

    impl Handler for OneChunk {
        type Request = StorageRequest;
        type Reply = StorageReply;
        type Conn = ();
        fn open(&self, _: &Peer) -> Result<(), String> {
            Ok(())
        }
        fn handle(
            &self,
            _: &(),
            _: &Peer,
            req: StorageRequest,
            bulk: Vec<u8>,
        ) -> Result<(StorageReply, Vec<u8>), i32> {
            match req {
                StorageRequest::Update { .. } => {
                    *lock(&self.bytes) = bulk;
                    Ok((StorageReply::Done { version: 1 }, Vec::new()))
                }
                StorageRequest::Read { len, .. } => {
                    let mut bytes = lock(&self.bytes).clone();
                    bytes.truncate(len as usize);
                    Ok((
                        StorageReply::Data {
                            version: 1,
                            recent: Vec::new(),
                        },
                        bytes,
                    ))
                }
                _ => Err(libc::ENOSYS),
            }
        }
    }

    fn serve(rdma: Option<Arc<dyn Fabric>>) -> (Arc<Server<OneChunk>>, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = Limits {
            bulk_max: crate::rpc::frame::BULK_LEN_MAX,
            ..Limits::default()
        };
        let server = Server::new(Arc::new(OneChunk::default()), None, limits);
        if let Some(fabric) = rdma {
            server.offer_rdma(fabric, 16 << 20);
        }
        let s = server.clone();
        std::thread::spawn(move || s.serve(listener));
        (server, addr)
    }

    const CHAIN: ChainRef = ChainRef { id: 1, version: 1 };
    const CHUNK: ChunkId = ChunkId { layout: 9, index: 0 };

    fn write(t: &ServiceTransport, addr: SocketAddr, data: &[u8]) -> Result<StorageReply, CallError> {
        let request = StorageRequest::Update {
            target: 1,
            chain: CHAIN,
            chunk: CHUNK,
            op: ChunkOp::Write { offset: 0 },
            id: UpdateId { client: 1, seq: 1 },
            sync: false,
        };
        call(t, addr, &request, data, Duration::from_secs(10)).map(|(reply, _)| reply)
    }

    fn read(t: &ServiceTransport, addr: SocketAddr, len: u32) -> Result<Vec<u8>, CallError> {
        let request = StorageRequest::Read {
            target: 1,
            chain: CHAIN,
            chunk: CHUNK,
            offset: 0,
            len,
        };
        call::<StorageReply>(t, addr, &request, &[], Duration::from_secs(10)).map(|(_, data)| data)
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn with_rdma_writes_are_pulled_and_reads_pushed_sized_by_the_request() {
        let net = Arc::new(FakeNet::default());
        let service = Arc::new(FakeFabric::on(&net));
        let (server, addr) = serve(Some(service.clone()));
        let pool = Pool::new(Arc::new(FakeFabric::on(&net)), 16 << 20, true);
        let t = ServiceTransport::new(None, DataPath::Rdma { pool, required: true });
        let bytes = data(1 << 20);
        assert_eq!(
            write(&t, addr, &bytes).unwrap(),
            StorageReply::Done { version: 1 }
        );
        assert_eq!(read(&t, addr, 1 << 20).unwrap(), bytes);
        assert_eq!(read(&t, addr, 4096).unwrap(), bytes[..4096]);
        assert_eq!(server.stats.rdma_read.load(Ordering::SeqCst), 1 << 20);
        assert_eq!(server.stats.rdma_written.load(Ordering::SeqCst), (1 << 20) + 4096);
        assert_eq!(t.moved.rdma_sent.load(Ordering::SeqCst), 1 << 20);
        assert_eq!(t.moved.rdma_received.load(Ordering::SeqCst), (1 << 20) + 4096);
        assert_eq!(t.moved.tcp_sent.load(Ordering::SeqCst), 0);
        assert_eq!(t.moved.tcp_received.load(Ordering::SeqCst), 0);
        assert!(t.uses_rdma());
        assert_eq!(t.rdma_connections(), 1);
        assert_eq!(t.tcp_only_services(), 0);
    }

    #[test]
    fn a_service_without_rdma_is_refused_when_required_and_reached_over_tcp_on_auto() {
        let (_server, addr) = serve(None);
        let pool = Pool::new(Arc::new(FakeFabric::new()), 16 << 20, true);
        let required = ServiceTransport::new(
            None,
            DataPath::Rdma {
                pool: pool.clone(),
                required: true,
            },
        );
        match write(&required, addr, b"abc") {
            Err(CallError::NotSent(e)) => assert!(e.to_string().contains("no RDMA"), "{e}"),
            other => panic!("{other:?}"),
        }
        let auto = ServiceTransport::new(
            None,
            DataPath::Rdma {
                pool,
                required: false,
            },
        );
        write(&auto, addr, b"abc").unwrap();
        assert_eq!(read(&auto, addr, 3).unwrap(), b"abc");
        assert_eq!(auto.moved.tcp_sent.load(Ordering::SeqCst), 3);
        assert_eq!(auto.moved.rdma_sent.load(Ordering::SeqCst), 0);
        assert_eq!(auto.tcp_only_services(), 1);
        assert_eq!(auto.rdma_connections(), 0);
    }

    #[test]
    fn after_a_failed_transfer_the_next_call_connects_afresh() {
        let net = Arc::new(FakeNet::default());
        let service = Arc::new(FakeFabric::on(&net));
        let (server, addr) = serve(Some(service.clone()));
        let pool = Pool::new(Arc::new(FakeFabric::on(&net)), 16 << 20, true);
        let t = ServiceTransport::new(None, DataPath::Rdma { pool, required: true });
        write(&t, addr, &data(8192)).unwrap();
        service.cut(true);
        assert!(matches!(write(&t, addr, &data(8192)), Err(CallError::Lost(_))));
        service.cut(false);
        // The broken connection is dropped; a new one gets a new queue pair.
        write(&t, addr, &data(100)).unwrap();
        assert_eq!(read(&t, addr, 100).unwrap(), data(100));
        assert_eq!(server.stats.rdma_connected.load(Ordering::SeqCst), 2);
        assert_eq!(t.rdma_connections(), 2);
    }
}
