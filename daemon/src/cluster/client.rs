//! [`ClusterClient`]: cluster calls to the metadata services, for storage
//! services, mounts and `xfused cluster status`. Every cluster call may be
//! sent again (registering is by the target's identity, the rest read or
//! are idempotent), so a call that failed on one service is sent to the
//! next. A mount that runs the metadata layer itself (`etcd://`) answers
//! its calls from the engine instead ([`ClusterClient::on_engine`]), as a
//! service would.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{ClusterAnswer, ClusterCall, LayoutRec, Table};
use crate::meta::kv::KvEngine;
use crate::meta::{Meta, MetaError};
use crate::net::{MetaReply, MetaRequest};
use crate::rpc::client::{CallError, Conn};
use crate::rpc::codec;

/// Time for one cluster call.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Time to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// See the module docs.
pub struct ClusterClient {
    addrs: Vec<SocketAddr>,
    tls: Option<Arc<rustls::ClientConfig>>,
    conn: Mutex<Option<(usize, Arc<Conn>)>>,
    /// Answers from this engine and namespace, not from services.
    engine: Option<(Arc<dyn KvEngine>, Arc<Meta>)>,
}

impl std::fmt::Debug for ClusterClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterClient")
            .field("addrs", &self.addrs)
            .field("engine", &self.engine.is_some())
            .finish_non_exhaustive()
    }
}

impl ClusterClient {
    /// A client of the services at `address` (`HOST:PORT[,HOST:PORT...]`).
    pub fn new(address: &str, tls: Option<Arc<rustls::ClientConfig>>) -> Result<ClusterClient, MetaError> {
        let mut addrs = Vec::new();
        for part in address.split(',') {
            addrs.extend(
                part.to_socket_addrs()
                    .map_err(|e| MetaError::Corrupt(format!("metadata service address {part:?}: {e}")))?,
            );
        }
        if addrs.is_empty() {
            return Err(MetaError::Corrupt(format!(
                "metadata service address {address:?} names no host"
            )));
        }
        Ok(ClusterClient {
            addrs,
            tls,
            conn: Mutex::new(None),
            engine: None,
        })
    }

    /// A client that answers from `engine`, where the namespace `ns` lives
    /// (a mount running the metadata layer itself): the table and layouts
    /// as a metadata service on that engine would give them.
    pub fn on_engine(engine: Arc<dyn KvEngine>, ns: Arc<Meta>) -> ClusterClient {
        ClusterClient {
            addrs: Vec::new(),
            tls: None,
            conn: Mutex::new(None),
            engine: Some((engine, ns)),
        }
    }

    fn conn(&self, skip: Option<usize>) -> Result<(usize, Arc<Conn>), CallError> {
        let mut slot = lock(&self.conn);
        if let Some((i, c)) = slot.as_ref() {
            if !c.is_dead() && Some(*i) != skip {
                return Ok((*i, c.clone()));
            }
        }
        *slot = None;
        let start = skip.map_or(0, |s| s + 1);
        let mut last = None;
        for k in 0..self.addrs.len() {
            let i = (start + k) % self.addrs.len();
            match Conn::connect(&self.addrs[i], self.tls.clone(), Instant::now() + CONNECT_TIMEOUT) {
                Ok(c) => {
                    let c = Arc::new(c);
                    *slot = Some((i, c.clone()));
                    return Ok((i, c));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(CallError::NotSent(last.expect("at least one address")))
    }

    /// Makes a cluster call, on another service if one fails.
    pub fn call(&self, call: &ClusterCall) -> Result<ClusterAnswer, MetaError> {
        use crate::metrics::counters::{self, Service};
        if let Some((engine, ns)) = &self.engine {
            // No service is called: nothing to count.
            return super::answer_read(engine.as_ref(), ns, call.clone());
        }
        counters::call(Service::Cluster);
        let message = codec::encode(&MetaRequest::Cluster(call.clone()));
        let mut skip = None;
        let mut last = String::new();
        for attempt in 0..self.addrs.len().max(2) {
            if attempt > 0 {
                counters::retry(Service::Cluster);
            }
            let (i, conn) = match self.conn(skip) {
                Ok(c) => c,
                Err(e) => {
                    last = e.to_string();
                    break;
                }
            };
            match conn.call(&message, &[], CALL_TIMEOUT) {
                Ok((reply, _)) => {
                    return match codec::decode::<MetaReply>(&reply) {
                        Ok(MetaReply::Cluster(answer)) => Ok(answer),
                        Ok(other) => Err(MetaError::Corrupt(format!(
                            "a cluster call answered with {other:?}"
                        ))),
                        Err(e) => Err(MetaError::Corrupt(e.to_string())),
                    };
                }
                Err(CallError::Remote(errno)) => return Err(MetaError::Errno(errno)),
                Err(e) => {
                    last = e.to_string();
                    skip = Some(i);
                }
            }
        }
        counters::failure(Service::Cluster);
        Err(MetaError::Kv(crate::meta::kv::KvError::Unavailable(format!(
            "no metadata service answered: {last}"
        ))))
    }

    /// The table.
    pub fn table(&self) -> Result<Table, MetaError> {
        match self.call(&ClusterCall::Table)? {
            ClusterAnswer::Table(t) => Ok(t),
            other => Err(MetaError::Corrupt(format!("Table answered with {other:?}"))),
        }
    }

    /// A file's layout (and its id).
    pub fn layout(&self, ino: u64) -> Result<(u64, LayoutRec), MetaError> {
        match self.call(&ClusterCall::Layout { ino })? {
            ClusterAnswer::Layout(id, l) if !l.chains.is_empty() => Ok((id, l)),
            other => Err(MetaError::Corrupt(format!("Layout answered with {other:?}"))),
        }
    }
}
