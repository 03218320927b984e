//! How storage requests and their bulk payloads travel: the seam between
//! the chain protocol and the wire.
//!
//! [`DataTransport`] sends one request with its payload to a storage
//! service and returns the reply with its payload. [`TcpTransport`] does it
//! on the service layer ([`crate::rpc`]): mutual TLS, the payload carried
//! after the message unencoded, a few multiplexed connections per service.
//! The RDMA path (next) implements the same trait, moving payloads between
//! registered buffers by RDMA READ/WRITE while the message goes as now.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::rpc::client::{CallError, Conn};
use crate::rpc::codec;

/// Connections kept per service address.
pub const CONNS_PER_ADDR: usize = 4;
/// Time to connect and authenticate.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// See the module docs.
pub trait DataTransport: Send + Sync + std::fmt::Debug {
    /// Sends `message` and `payload` to the service at `addr`; its reply
    /// and payload, within `timeout`.
    fn call(
        &self,
        addr: SocketAddr,
        message: &[u8],
        payload: &[u8],
        timeout: Duration,
    ) -> Result<(Vec<u8>, Vec<u8>), CallError>;
}

/// Sends a typed request; its typed reply and payload.
pub fn call<Q: Serialize, A: DeserializeOwned>(
    transport: &dyn DataTransport,
    addr: SocketAddr,
    request: &Q,
    payload: &[u8],
    timeout: Duration,
) -> Result<(A, Vec<u8>), CallError> {
    let message = codec::encode(request);
    let (reply, bulk) = transport.call(addr, &message, payload, timeout)?;
    let reply = codec::decode(&reply)
        .map_err(|e| CallError::Lost(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
    Ok((reply, bulk))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// See the module docs.
pub struct TcpTransport {
    tls: Option<Arc<rustls::ClientConfig>>,
    conns: Mutex<HashMap<SocketAddr, Vec<Arc<Conn>>>>,
}

impl std::fmt::Debug for TcpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpTransport")
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl TcpTransport {
    /// A transport authenticating with `tls` (`None`: no authentication,
    /// for services run with `--insecure-no-auth`).
    pub fn new(tls: Option<Arc<rustls::ClientConfig>>) -> TcpTransport {
        TcpTransport {
            tls,
            conns: Mutex::new(HashMap::new()),
        }
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
        let conn = Arc::new(
            Conn::connect(&addr, self.tls.clone(), Instant::now() + CONNECT_TIMEOUT)
                .map_err(CallError::NotSent)?,
        );
        let mut conns = lock(&self.conns);
        let list = conns.entry(addr).or_default();
        if list.len() < CONNS_PER_ADDR {
            list.push(conn.clone());
        }
        Ok(conn)
    }
}

impl DataTransport for TcpTransport {
    fn call(
        &self,
        addr: SocketAddr,
        message: &[u8],
        payload: &[u8],
        timeout: Duration,
    ) -> Result<(Vec<u8>, Vec<u8>), CallError> {
        self.conn(addr)?.call(message, payload, timeout)
    }
}
