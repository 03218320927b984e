//! [`RemoteMeta`]: a mount's handle on `xfused meta` services: a few
//! multiplexed, authenticated connections ([`LANES`]) shared by every
//! thread, each moved to the next service address when it fails.
//!
//! A call goes on an idle connection if there is one (opening another, up
//! to [`LANES`], when all are busy), else on the least busy. The service
//! runs a request that arrives alone on its connection on the thread that
//! read it, with no hand-off; so a few calls at once each get that fast
//! path, and more share connections, many in flight on each.
//!
//! Retries: a call that never left, or whose reply was lost, is sent again
//! (after reconnecting and resuming the session, with backoff, up to
//! [`ATTEMPTS_MAX`] times). Reads are harmless to repeat. Changes are
//! numbered, and the service runs each number once, answering a repeat
//! with the first run's outcome, so a create whose reply was lost answers
//! success, not EEXIST. Only ending the client (`close_client`), which is
//! not one transaction, fails with EIO when its reply is lost.

use std::collections::BTreeSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{MetaReply, MetaRequest, FORGET_MAX, TOKEN_LEN};
use crate::meta::kv::KvError;
use crate::meta::{Answer, Call, MetaError};
use crate::rpc::client::{CallError, Conn};
use crate::rpc::codec;

/// Connections a client opens at most.
pub const LANES: usize = 4;
/// Attempts per call before giving up.
pub const ATTEMPTS_MAX: u32 = 5;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// See the module docs.
pub struct RemoteMeta {
    addrs: Vec<SocketAddr>,
    tls: Option<Arc<rustls::ClientConfig>>,
    lanes: Vec<Mutex<Option<Arc<Conn>>>>,
    next_addr: AtomicUsize,
    client: u64,
    token: [u8; TOKEN_LEN],
    /// The next change's number.
    next_seq: AtomicU64,
    /// Numbers of changes not yet answered.
    unanswered: Mutex<BTreeSet<u64>>,
    /// Outcomes of changes below this number were forgotten (deleted by a
    /// later change).
    forgotten_to: Mutex<u64>,
}

impl std::fmt::Debug for RemoteMeta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteMeta")
            .field("addrs", &self.addrs)
            .field("client", &self.client)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> MetaError {
    MetaError::Kv(KvError::Unavailable(format!("{what}: {e}")))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl RemoteMeta {
    /// Connects to the service at `address` (`HOST:PORT`; several,
    /// comma-separated, are tried in turn), authenticating with `tls`
    /// (`None`: a service run with `--insecure-no-auth`), and registers as
    /// a new client.
    pub fn connect(address: &str, tls: Option<Arc<rustls::ClientConfig>>) -> Result<RemoteMeta, MetaError> {
        let mut addrs = Vec::new();
        for part in address.split(',') {
            let resolved = part
                .to_socket_addrs()
                .map_err(|e| MetaError::Corrupt(format!("metadata service address {part:?}: {e}")))?;
            addrs.extend(resolved);
        }
        if addrs.is_empty() {
            return Err(MetaError::Corrupt(format!(
                "metadata service address {address:?} names no host"
            )));
        }
        let mut remote = RemoteMeta {
            addrs,
            tls,
            lanes: (0..LANES).map(|_| Mutex::new(None)).collect(),
            next_addr: AtomicUsize::new(0),
            client: 0,
            token: [0; TOKEN_LEN],
            next_seq: AtomicU64::new(1),
            unanswered: Mutex::new(BTreeSet::new()),
            forgotten_to: Mutex::new(1),
        };
        // A Hello whose reply was lost registered a client nobody will
        // use: its lease runs out and it is reaped. Sending it again is
        // harmless.
        match remote.request(&MetaRequest::Hello, true)? {
            MetaReply::Session { client, token } => {
                remote.client = client;
                remote.token = token;
            }
            other => return Err(MetaError::Corrupt(format!("Hello answered with {other:?}"))),
        }
        Ok(remote)
    }

    /// This client's id.
    pub fn session_client(&self) -> u64 {
        self.client
    }

    /// A live connection with this client's session bound: an idle one,
    /// a new one if all are busy and a lane is free, else the least busy.
    fn connection(&self) -> Result<Arc<Conn>, CallError> {
        let mut least: Option<(usize, Arc<Conn>)> = None;
        let mut free_lane = None;
        for (i, lane) in self.lanes.iter().enumerate() {
            // A lane being opened by another thread is skipped.
            let Ok(slot) = lane.try_lock() else { continue };
            match slot.as_ref().filter(|c| !c.is_dead()) {
                Some(c) => {
                    let busy = c.in_flight();
                    if busy == 0 {
                        return Ok(c.clone());
                    }
                    if least.as_ref().is_none_or(|(b, _)| busy < *b) {
                        least = Some((busy, c.clone()));
                    }
                }
                None => {
                    free_lane.get_or_insert(i);
                }
            }
        }
        let lane = match (free_lane, least) {
            (Some(i), _) => i,
            (None, Some((_, c))) => return Ok(c),
            // Every lane is being opened right now: wait for the first.
            (None, None) => 0,
        };
        let mut slot = lock(&self.lanes[lane]);
        if let Some(c) = slot.as_ref().filter(|c| !c.is_dead()) {
            return Ok(c.clone());
        }
        *slot = None;
        let conn = self.open()?;
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Opens a connection to the next address that answers, resuming this
    /// client's session on it.
    fn open(&self) -> Result<Arc<Conn>, CallError> {
        let mut last = None;
        for _ in 0..self.addrs.len() {
            let i = self.next_addr.fetch_add(1, Ordering::Relaxed) % self.addrs.len();
            let conn = match Conn::connect(&self.addrs[i], self.tls.clone(), Instant::now() + CONNECT_TIMEOUT)
            {
                Ok(c) => Arc::new(c),
                Err(e) => {
                    tracing::warn!("connecting to the metadata service at {}: {e}", self.addrs[i]);
                    last = Some(e);
                    continue;
                }
            };
            if self.client != 0 {
                let resume = codec::encode(&MetaRequest::Resume {
                    client: self.client,
                    token: self.token,
                });
                // Resuming twice is harmless: a lost reply is resent.
                match conn.call(&resume, &[], REPLY_TIMEOUT) {
                    Ok(_) => tracing::debug!("metadata session {} resumed at {}", self.client, self.addrs[i]),
                    Err(CallError::Remote(errno)) => return Err(CallError::Remote(errno)),
                    Err(CallError::NotSent(e) | CallError::Lost(e)) => {
                        last = Some(e);
                        continue;
                    }
                }
            }
            return Ok(conn);
        }
        Err(CallError::NotSent(
            last.unwrap_or_else(|| std::io::Error::other("no address")),
        ))
    }

    fn request(&self, req: &MetaRequest, idempotent: bool) -> Result<MetaReply, MetaError> {
        use crate::metrics::counters::{self, Service};
        counters::call(Service::Meta);
        let mut message = codec::encode(req);
        let mut backoff = Duration::from_millis(20);
        let mut attempt = 1;
        loop {
            if attempt == 2 {
                // From now on a change may have been done: say so.
                if let MetaRequest::Change {
                    seq, forget, call, ..
                } = req
                {
                    message = codec::encode(&MetaRequest::Change {
                        seq: *seq,
                        forget: *forget,
                        resent: true,
                        call: call.clone(),
                    });
                }
            }
            let result = self
                .connection()
                .and_then(|conn| conn.call(&message, &[], REPLY_TIMEOUT));
            let e = match result {
                Ok((reply, _)) => {
                    return codec::decode::<MetaReply>(&reply)
                        .map_err(|e| MetaError::Corrupt(format!("reply from the metadata service: {e}")))
                }
                Err(CallError::Remote(errno)) => return Err(MetaError::Errno(errno)),
                Err(CallError::NotSent(e)) => e,
                Err(CallError::Lost(e)) if idempotent => e,
                Err(CallError::Lost(e)) => {
                    counters::failure(Service::Meta);
                    return Err(unavailable("the metadata service did not answer a change", e));
                }
            };
            if attempt >= ATTEMPTS_MAX {
                counters::failure(Service::Meta);
                return Err(unavailable("talking to the metadata service", e));
            }
            counters::retry(Service::Meta);
            tracing::warn!("talking to the metadata service: {e}; retrying");
            std::thread::sleep(backoff);
            backoff *= 2;
            attempt += 1;
        }
    }

    /// Sends one namespace call in this client's session.
    pub fn invoke(&self, call: Call) -> Result<Answer, MetaError> {
        let name = call.name();
        let reply = if call.is_change() {
            let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
            // Outcomes of answered changes below every unanswered one may
            // go: a few with each change, tracked here once per client.
            let forget = {
                let mut unanswered = lock(&self.unanswered);
                unanswered.insert(seq);
                let floor = *unanswered.first().expect("inserted above");
                let from = *lock(&self.forgotten_to);
                (from.min(floor), floor.min(from + FORGET_MAX))
            };
            let change = MetaRequest::Change {
                seq,
                forget,
                resent: false,
                call,
            };
            let reply = self.request(&change, true);
            lock(&self.unanswered).remove(&seq);
            if reply.is_ok() {
                let mut forgotten_to = lock(&self.forgotten_to);
                *forgotten_to = (*forgotten_to).max(forget.1);
            }
            reply?
        } else {
            let idempotent = call.idempotent();
            self.request(&MetaRequest::Call(call), idempotent)?
        };
        match reply {
            MetaReply::Answer(answer) => Ok(answer),
            other => Err(MetaError::Corrupt(format!("{name} answered with {other:?}"))),
        }
    }
}
