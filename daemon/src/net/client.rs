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
//!
//! Directories a change wrote: the service returns their records as the
//! change committed them, and the client keeps each for one `getattr`
//! within [`RemoteMeta::remember_dirs`]'s time. Every change of a
//! directory makes the kernel drop its attributes and ask again before the
//! next permission check in it, so a create or unlink would otherwise cost
//! a second call. What that answer may miss (another client's change made
//! after this one) is what the kernel's attribute cache may miss for as
//! long.
//!
//! Closes, once [`RemoteMeta::defer_releases`] is on (a mount turns it on):
//! a `release` returns at once, and the thread that sends deferred closes
//! sends them together ([`MetaRequest::Batch`]) once the oldest has waited
//! [`FLUSH_AFTER`] (within about twice that). The kernel does not wait
//! for a close either, so nothing waits longer; a mount opening and
//! closing files one after another pays one round trip per batch of
//! closes, beside its opens, rather than a close's transaction in front
//! of each open (which is what carrying it with the next request cost:
//! 4-8% of an open+close through the service, measured). Only a backlog
//! of [`RELEASES_MAX`] closes goes with the next request instead. The
//! service runs each close exactly once, numbered like any change, and
//! in no particular order with this client's other calls: a file this
//! client unlinks while a close of it waits becomes an orphan, and that
//! close deletes it. A file a close was the last holder of is deleted a
//! little later, on the thread that sends deferred closes: the sink
//! given.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use super::{MetaReply, MetaRequest, Release, FORGET_MAX, RELEASES_MAX, REOPEN_MAX, TOKEN_LEN};
use crate::meta::kv::KvError;
use crate::meta::schema::InodeRec;
use crate::meta::{Answer, Call, MetaError, Reclaim};
use crate::rpc::client::{CallError, Conn};
use crate::rpc::codec;

/// Connections a client opens at most.
pub const LANES: usize = 4;
/// Attempts per call before giving up.
pub const ATTEMPTS_MAX: u32 = 5;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);
/// A deferred close with no request to go with goes alone after this.
pub const FLUSH_AFTER: Duration = Duration::from_millis(5);
/// Deferred closes held at most; past this a close is sent at once.
const DEFERRED_MAX: usize = 4096;

/// What deletes a file's data (the mount's chunks).
type ReclaimSink = Box<dyn Fn(Reclaim) + Send + Sync>;

/// Closes not sent yet, and files they freed not deleted yet.
#[derive(Default)]
struct Deferred {
    releases: VecDeque<(Release, Instant)>,
    reclaims: Vec<Reclaim>,
    /// The closer thread sleeps until woken (no close for a while); while
    /// closes come, it wakes on its own every `flush_after` instead, so a
    /// close costs no wake-up.
    idle: bool,
    /// When the last close was deferred.
    last: Option<Instant>,
}

/// The closer thread sleeps until woken after this long without a close.
const IDLE_AFTER: Duration = Duration::from_secs(1);

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
    /// Directories changes wrote, kept for one `getattr` (module docs).
    fresh_dirs: Mutex<HashMap<u64, (InodeRec, Instant)>>,
    /// How long they are kept; zero: not at all.
    fresh_for: Duration,
    /// Deferred closes (module docs); deferred only once the sink is set.
    deferred: Mutex<Deferred>,
    /// Wakes the thread that sends closes alone and deletes files.
    deferred_changed: Condvar,
    sink: OnceLock<ReclaimSink>,
    /// Open handles (inode, handle), told again to a service that
    /// restarted and asks for them ([`MetaReply::Reclaim`]).
    open_handles: Mutex<HashSet<(u64, u64)>>,
}

/// Directories kept at most ([`RemoteMeta::remember_dirs`]); past this,
/// the expired ones go, and if none has, all.
const FRESH_DIRS_MAX: usize = 4096;

/// Which of two records of one directory a change wrote is the later: the
/// one changed later, and of two changed in one clock tick, the one with
/// more names ever made in it. `None`: no telling, keep neither.
fn later<'a>(a: &'a InodeRec, b: &'a InodeRec) -> Option<&'a InodeRec> {
    let key = |r: &InodeRec| (r.ctime.sec, r.ctime.nsec, r.cookie_next);
    match key(a).cmp(&key(b)) {
        std::cmp::Ordering::Greater => Some(a),
        std::cmp::Ordering::Less => Some(b),
        std::cmp::Ordering::Equal => (a == b).then_some(a),
    }
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
            fresh_dirs: Mutex::new(HashMap::new()),
            fresh_for: Duration::ZERO,
            deferred: Mutex::new(Deferred::default()),
            deferred_changed: Condvar::new(),
            sink: OnceLock::new(),
            open_handles: Mutex::new(HashSet::new()),
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

    /// Keeps the directory records changes return for `ttl` (the mount's
    /// attribute timeout; zero, the default, keeps none), each answering
    /// one `getattr` (module docs).
    pub fn remember_dirs(&mut self, ttl: Duration) {
        self.fresh_for = ttl;
    }

    /// Defers closes from now on (module docs): `sink` deletes the data of
    /// files they freed, called on a thread of this client's own, which
    /// ends when the client is dropped. A close no request took along
    /// goes alone within about twice `flush_after` ([`FLUSH_AFTER`] for a
    /// mount).
    pub fn defer_releases(
        self: &Arc<Self>,
        flush_after: Duration,
        sink: impl Fn(Reclaim) + Send + Sync + 'static,
    ) -> std::io::Result<()> {
        if self.sink.set(Box::new(sink)).is_err() {
            return Ok(());
        }
        let me = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("xfused-closes".into())
            .spawn(move || closer(me, flush_after))?;
        Ok(())
    }

    /// Queues a close; `false` if closes are not deferred or too many wait.
    fn defer(&self, ino: u64, handle: u64) -> bool {
        if self.sink.get().is_none() {
            return false;
        }
        let mut deferred = lock(&self.deferred);
        if deferred.releases.len() >= DEFERRED_MAX {
            return false;
        }
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        lock(&self.unanswered).insert(seq);
        let now = Instant::now();
        deferred.last = Some(now);
        let wake = deferred.idle;
        deferred.releases.push_back((
            Release {
                seq,
                resent: false,
                ino,
                handle,
            },
            now,
        ));
        drop(deferred);
        if wake {
            self.deferred_changed.notify_one();
        }
        true
    }

    /// Sends `req`, with the deferred closes if [`RELEASES_MAX`] of them
    /// wait (module docs), and settles them.
    fn send(&self, req: MetaRequest, idempotent: bool) -> Result<MetaReply, MetaError> {
        let releases = if lock(&self.deferred).releases.len() >= RELEASES_MAX {
            self.take_releases()
        } else {
            Vec::new()
        };
        if releases.is_empty() {
            return self.request(&req, idempotent);
        }
        match self.batch(releases, Some(req), idempotent)? {
            Some(reply) => Ok(reply),
            None => Err(MetaError::Corrupt("a batch's request was not answered".into())),
        }
    }

    /// Sends `releases` with `then` (if any), settles the closes and
    /// returns `then`'s reply; closes whose fate is unknown go back in line.
    fn batch(
        &self,
        releases: Vec<Release>,
        then: Option<MetaRequest>,
        idempotent: bool,
    ) -> Result<Option<MetaReply>, MetaError> {
        let asked = then.is_some();
        let batch = MetaRequest::Batch {
            releases: releases.clone(),
            then: then.map(Box::new),
        };
        match self.request(&batch, idempotent) {
            Ok(MetaReply::Batch { released, then }) if then.is_some() == asked => {
                self.settle(released);
                then.map(|r| r.map(|r| *r).map_err(MetaError::Errno)).transpose()
            }
            Ok(other) => {
                self.requeue(releases);
                Err(MetaError::Corrupt(format!("a batch answered with {other:?}")))
            }
            Err(e) => {
                self.requeue(releases);
                Err(e)
            }
        }
    }

    fn take_releases(&self) -> Vec<Release> {
        let mut deferred = lock(&self.deferred);
        let n = deferred.releases.len().min(RELEASES_MAX);
        deferred.releases.drain(..n).map(|(r, _)| r).collect()
    }

    /// Puts closes whose fate is unknown back, first in line, to be sent
    /// again (and answered from their record if they ran).
    fn requeue(&self, releases: Vec<Release>) {
        let mut deferred = lock(&self.deferred);
        let now = Instant::now();
        for r in releases.into_iter().rev() {
            deferred.releases.push_front((Release { resent: true, ..r }, now));
        }
    }

    /// Takes the outcomes of closes sent.
    fn settle(&self, released: Vec<(u64, Result<Option<Reclaim>, i32>)>) {
        let mut freed = Vec::new();
        {
            let mut unanswered = lock(&self.unanswered);
            for (seq, outcome) in released {
                unanswered.remove(&seq);
                match outcome {
                    Ok(Some(r)) => freed.push(r),
                    Ok(None) => {}
                    Err(errno) => tracing::warn!(
                        "the metadata service failed a close: {}; the session stays until this mount ends",
                        std::io::Error::from_raw_os_error(errno)
                    ),
                }
            }
        }
        if !freed.is_empty() {
            lock(&self.deferred).reclaims.extend(freed);
            self.deferred_changed.notify_one();
        }
    }

    /// Sends every deferred close now and returns the files they (and
    /// earlier ones) freed that are not deleted yet: for a client about to
    /// end, which deletes them itself.
    pub fn settle_deferred(&self) -> Vec<Reclaim> {
        loop {
            let left = lock(&self.deferred).releases.len();
            if left == 0 {
                break;
            }
            if let Err(e) = self.flush_releases() {
                tracing::warn!("sending {left} closes to the metadata service: {e}");
                break;
            }
        }
        std::mem::take(&mut lock(&self.deferred).reclaims)
    }

    /// Sends the deferred closes alone.
    fn flush_releases(&self) -> Result<(), MetaError> {
        let releases = self.take_releases();
        if releases.is_empty() {
            return Ok(());
        }
        self.batch(releases, None, true).map(drop)
    }

    fn keep_dirs(&self, dirs: Vec<(u64, InodeRec)>) {
        if self.fresh_for.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut fresh = lock(&self.fresh_dirs);
        if fresh.len() >= FRESH_DIRS_MAX {
            fresh.retain(|_, (_, at)| now.duration_since(*at) < self.fresh_for);
            if fresh.len() >= FRESH_DIRS_MAX {
                fresh.clear();
            }
        }
        for (ino, rec) in dirs {
            match fresh.get(&ino) {
                Some((old, _)) => match later(old, &rec) {
                    Some(kept) if std::ptr::eq(kept, old) => {}
                    Some(_) => {
                        fresh.insert(ino, (rec, now));
                    }
                    None => {
                        fresh.remove(&ino);
                    }
                },
                None => {
                    fresh.insert(ino, (rec, now));
                }
            }
        }
    }

    /// A directory record a change returned within the time it is kept,
    /// taken.
    fn fresh_dir(&self, ino: u64) -> Option<InodeRec> {
        if self.fresh_for.is_zero() {
            return None;
        }
        let (rec, at) = lock(&self.fresh_dirs).remove(&ino)?;
        (at.elapsed() < self.fresh_for).then_some(rec)
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
                let resumed =
                    conn.call(&resume, &[], REPLY_TIMEOUT).and_then(|(reply, _)| {
                        match codec::decode::<MetaReply>(&reply) {
                            Ok(MetaReply::Reclaim) => self.reopen(&conn),
                            _ => Ok(()),
                        }
                    });
                match resumed {
                    Ok(()) => {
                        tracing::debug!("metadata session {} resumed at {}", self.client, self.addrs[i])
                    }
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

    /// Tells a service that asks ([`MetaReply::Reclaim`]) this client's
    /// open handles, on `conn`.
    fn reopen(&self, conn: &Conn) -> Result<(), CallError> {
        let handles: Vec<(u64, u64)> = lock(&self.open_handles).iter().copied().collect();
        let mut pages = handles.chunks(REOPEN_MAX).peekable();
        let mut kept = 0;
        loop {
            let page = pages.next().unwrap_or(&[]);
            let last = pages.peek().is_none();
            let req = codec::encode(&MetaRequest::Reopen {
                handles: page.to_vec(),
                last,
            });
            let (reply, _) = conn.call(&req, &[], REPLY_TIMEOUT)?;
            if let Ok(MetaReply::Reopened(n)) = codec::decode::<MetaReply>(&reply) {
                kept += n;
            }
            if last {
                break;
            }
        }
        tracing::info!(
            "the metadata service restarted: told it this mount's {} open files ({kept} still there)",
            handles.len()
        );
        Ok(())
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
                if let Some(again) = resent(req) {
                    message = codec::encode(&again);
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
        match call {
            Call::Getattr { ino } => {
                if let Some(rec) = self.fresh_dir(ino) {
                    return Ok(Answer::Getattr(rec));
                }
            }
            Call::Release { ino, handle } => {
                lock(&self.open_handles).remove(&(ino, handle));
                if self.defer(ino, handle) {
                    return Ok(Answer::Release(None));
                }
            }
            _ => {}
        }
        let opening = match call {
            Call::Open { ino, .. } => Some(ino),
            _ => None,
        };
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
            let reply = self.send(change, true);
            lock(&self.unanswered).remove(&seq);
            if reply.is_ok() {
                let mut forgotten_to = lock(&self.forgotten_to);
                *forgotten_to = (*forgotten_to).max(forget.1);
            }
            reply?
        } else {
            let idempotent = call.idempotent();
            self.send(MetaRequest::Call(call), idempotent)?
        };
        let answer = match reply {
            MetaReply::Answer(answer) => answer,
            MetaReply::Changed { answer, dirs } => {
                self.keep_dirs(dirs);
                answer
            }
            other => return Err(MetaError::Corrupt(format!("{name} answered with {other:?}"))),
        };
        let opened = match (&answer, opening) {
            (Answer::Open((_, handle)), Some(ino)) => Some((ino, *handle)),
            (Answer::Mknod((ino, _, Some(handle))), _) | (Answer::Tmpfile((ino, _, handle)), _) => {
                Some((*ino, *handle))
            }
            _ => None,
        };
        if let Some(opened) = opened {
            lock(&self.open_handles).insert(opened);
        }
        Ok(answer)
    }
}

/// `req` as sent again after a lost reply: its changes marked as possibly
/// done. `None`: the same bytes do.
fn resent(req: &MetaRequest) -> Option<MetaRequest> {
    match req {
        MetaRequest::Change {
            seq, forget, call, ..
        } => Some(MetaRequest::Change {
            seq: *seq,
            forget: *forget,
            resent: true,
            call: call.clone(),
        }),
        MetaRequest::Batch { releases, then } => Some(MetaRequest::Batch {
            releases: releases.iter().map(|r| Release { resent: true, ..*r }).collect(),
            then: then
                .as_deref()
                .map(|t| Box::new(resent(t).unwrap_or_else(|| t.clone()))),
        }),
        _ => None,
    }
}

/// The thread of [`RemoteMeta::defer_releases`]: deletes freed files and
/// sends closes no request took along within `flush_after`.
fn closer(me: Weak<RemoteMeta>, flush_after: Duration) {
    let mut backoff = flush_after;
    loop {
        let Some(remote) = me.upgrade() else { return };
        let (reclaims, due) = {
            let mut deferred = lock(&remote.deferred);
            if deferred.reclaims.is_empty()
                && deferred
                    .releases
                    .front()
                    .is_none_or(|(_, at)| at.elapsed() < backoff)
            {
                let quiet =
                    deferred.releases.is_empty() && deferred.last.is_none_or(|at| at.elapsed() >= IDLE_AFTER);
                deferred.idle = quiet;
                let wait = if quiet { IDLE_AFTER } else { backoff };
                deferred = remote
                    .deferred_changed
                    .wait_timeout(deferred, wait)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                deferred.idle = false;
            }
            let due = deferred
                .releases
                .front()
                .is_some_and(|(_, at)| at.elapsed() >= backoff);
            (std::mem::take(&mut deferred.reclaims), due)
        };
        if let Some(sink) = remote.sink.get() {
            for r in reclaims {
                sink(r);
            }
        }
        if due {
            match remote.flush_releases() {
                Ok(()) => backoff = flush_after,
                Err(e) => {
                    tracing::warn!("sending closes to the metadata service: {e}");
                    backoff = (backoff * 2).min(flush_after.max(Duration::from_secs(1)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::schema::Timestamp;

    /// The root directory's record with these fields.
    fn dir(sec: i64, cookie_next: u64, entries: u64) -> InodeRec {
        let engine = Arc::new(crate::meta::mem::MemEngine::new());
        let meta = crate::meta::Meta::connect(engine, Default::default(), Arc::new(crate::meta::SystemClock))
            .unwrap();
        let mut rec = meta.getattr(1).unwrap();
        rec.ctime = Timestamp { sec, nsec: 0 };
        rec.cookie_next = cookie_next;
        rec.entries = entries;
        rec
    }

    #[test]
    fn the_later_record_of_a_directory_wins_and_a_tie_keeps_neither() {
        let (old, new) = (dir(1, 5, 3), dir(2, 5, 2));
        assert_eq!(later(&old, &new), Some(&new));
        assert_eq!(later(&new, &old), Some(&new));
        // One clock tick: more names made is later.
        let (a, b) = (dir(1, 5, 3), dir(1, 6, 4));
        assert_eq!(later(&a, &b), Some(&b));
        // No telling (two unlinks in one tick).
        assert_eq!(later(&dir(1, 5, 3), &dir(1, 5, 2)), None);
        assert_eq!(later(&a, &a.clone()), Some(&a));
    }

    #[test]
    fn a_batch_sent_again_marks_every_change_in_it() {
        let release = |seq| Release {
            seq,
            resent: false,
            ino: 7,
            handle: seq,
        };
        let batch = MetaRequest::Batch {
            releases: vec![release(1), release(2)],
            then: Some(Box::new(MetaRequest::Change {
                seq: 3,
                forget: (0, 0),
                resent: false,
                call: Call::Release { ino: 7, handle: 9 },
            })),
        };
        let Some(MetaRequest::Batch { releases, then }) = resent(&batch) else {
            panic!("not a batch")
        };
        assert!(releases.iter().all(|r| r.resent));
        assert!(matches!(
            then.as_deref(),
            Some(MetaRequest::Change { resent: true, .. })
        ));
        let read = MetaRequest::Batch {
            releases: vec![release(4)],
            then: Some(Box::new(MetaRequest::Call(Call::Getattr { ino: 1 }))),
        };
        let Some(MetaRequest::Batch { then, .. }) = resent(&read) else {
            panic!("not a batch")
        };
        assert_eq!(
            then.as_deref(),
            Some(&MetaRequest::Call(Call::Getattr { ino: 1 }))
        );
        assert_eq!(resent(&MetaRequest::Hello), None);
    }
}
