//! [`MetaService`]: the metadata service's answers, as an
//! [`rpc::server::Handler`](crate::rpc::server::Handler).
//!
//! - A connection first binds a session: `Hello` makes a new client,
//!   `Resume` proves an existing one with its token (an HMAC of the client
//!   id under a key derived from the cluster credential, so every service
//!   of the cluster can check it and nobody else can make one). Calls then
//!   act in that session only: no request names a client, so no connection
//!   can act in another's session.
//! - Sessions are for mounts (and admins); a storage service's credential
//!   may make only the cluster calls of a storage service (registering
//!   targets, heartbeats, reading the table).
//! - Every call's permissions are checked with the caller it states
//!   ([`crate::meta::Caller`] cannot carry "do not check").
//! - Replies fit frames: a readdir answer is cut to fit, and the client
//!   continues from the last entry it got.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{MetaReply, MetaRequest, Release, FORGET_MAX, RELEASES_MAX, REOPEN_MAX, TOKEN_LEN};
use crate::cluster::{self, ClusterAnswer, ClusterCall};
use crate::meta::kv::KvEngine;
use crate::meta::{Answer, Call, Clock, Meta, MetaConfig, MetaError, Reclaim};
use crate::rpc::auth::{Credential, Role};
use crate::rpc::frame::MESSAGE_LEN_MAX;
use crate::rpc::server::{Handler, Peer};

/// The key session tokens are made with.
#[derive(Clone)]
pub struct TokenKey([u8; 32]);

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

impl TokenKey {
    /// The key of the cluster whose credential this is.
    pub fn of(credential: &Credential) -> Result<TokenKey, crate::rpc::auth::AuthError> {
        Ok(TokenKey(credential.derive_secret("metadata session tokens")?))
    }

    /// The key of a service running without authentication: fixed, so
    /// tokens prove nothing there (nor does anything else).
    pub fn insecure() -> TokenKey {
        TokenKey([0; 32])
    }

    fn mac(&self, client: u64) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(b"xfuse metadata session\0");
        mac.update(&client.to_le_bytes());
        mac
    }

    /// The token of `client`.
    pub fn token(&self, client: u64) -> [u8; TOKEN_LEN] {
        self.mac(client).finalize().into_bytes().into()
    }

    /// Whether `token` is `client`'s (in constant time).
    pub fn verify(&self, client: u64, token: &[u8; TOKEN_LEN]) -> bool {
        self.mac(client).verify_slice(token).is_ok()
    }
}

/// The service's state: the engine and what it needs to open sessions on
/// it. Sessions live in the store and on their connections; on a store of
/// its own (`MetaConfig::shared_sessions`), a table of its clients' open
/// handles lives here too ([`crate::meta::local`]), told again by the
/// clients after a restart (module docs).
pub struct MetaService {
    engine: Arc<dyn KvEngine>,
    config: MetaConfig,
    clock: Arc<dyn Clock>,
    /// The service's own client (reaping).
    own: Arc<Meta>,
    tokens: TokenKey,
    /// Bumped by every reaping pass: sessions attached before it attach
    /// again, so a client reaped meanwhile gets ESTALE.
    reaped: AtomicU64,
    /// Removes the chunks of files that are gone, when this service holds
    /// the management role ([`MetaService::set_reconciler`]).
    reconciler: std::sync::OnceLock<(crate::storage::client::ClusterData, Duration)>,
    /// Clients with a live lease when the service started that have not
    /// yet told it their open handles, and when the grace period ends
    /// regardless (their leases will have run out).
    awaiting: Mutex<(HashSet<u64>, Option<Instant>)>,
}

impl std::fmt::Debug for MetaService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaService")
            .field("engine", &self.engine)
            .finish_non_exhaustive()
    }
}

/// The session bound to one connection.
#[derive(Debug, Default)]
pub struct Session {
    bound: Mutex<Option<Bound>>,
}

#[derive(Debug, Clone)]
struct Bound {
    client: u64,
    meta: Arc<Meta>,
    reaped: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The most a readdir answer may take of a frame.
const READDIR_BUDGET_BYTES: usize = MESSAGE_LEN_MAX - 1024;
/// The most entries one readdir call asks for.
pub const READDIR_LIMIT_MAX: usize = 4096;

impl MetaService {
    /// A service over `engine` (creating the namespace if it is empty),
    /// proving sessions with `tokens`.
    pub fn new(
        engine: Arc<dyn KvEngine>,
        config: MetaConfig,
        clock: Arc<dyn Clock>,
        tokens: TokenKey,
    ) -> Result<MetaService, MetaError> {
        let own = Arc::new(Meta::connect(engine.clone(), config.clone(), clock.clone())?);
        let mut awaiting = HashSet::new();
        let mut grace_until = None;
        if let Some(table) = &config.shared_sessions {
            own.take_store()?;
            if own.store_has_linked_sessions()? {
                tracing::info!(
                    "the store has open-file sessions of linked files: unlinks will look for sessions in the store too"
                );
                table.set_overflowed();
            }
            awaiting.extend(own.live_clients()?);
            if !awaiting.is_empty() {
                tracing::info!(
                    "{} clients may hold files open: files they lose the last link of are kept until they tell their open files, or for {:?}",
                    awaiting.len(),
                    config.lease
                );
                table.begin_grace(own.client_id());
                grace_until = Some(Instant::now() + config.lease);
            }
        }
        Ok(MetaService {
            engine,
            config,
            clock,
            own,
            tokens,
            reaped: AtomicU64::new(0),
            reconciler: std::sync::OnceLock::new(),
            awaiting: Mutex::new((awaiting, grace_until)),
        })
    }

    /// Ends the grace period once no client is awaited or its time is up:
    /// files unlinked meanwhile that nobody holds are deleted.
    fn end_grace_if_due(&self) {
        {
            let awaiting = lock(&self.awaiting);
            let Some(until) = awaiting.1 else { return };
            if !awaiting.0.is_empty() && Instant::now() < until {
                return;
            }
        }
        match self.own.end_grace() {
            Ok(freed) => {
                let mut awaiting = lock(&self.awaiting);
                if !awaiting.0.is_empty() {
                    tracing::warn!(
                        "grace period over: {} clients did not tell their open files ({:?}); their files may be deleted while open",
                        awaiting.0.len(),
                        awaiting.0
                    );
                }
                *awaiting = (HashSet::new(), None);
                drop(awaiting);
                tracing::info!(
                    "grace period over: {} files unlinked during it were deleted",
                    freed.len()
                );
            }
            Err(e) => tracing::warn!("ending the grace period: {e}; trying again"),
        }
    }

    /// Open handles its table holds, if it keeps one (a store of its own).
    pub fn open_handles(&self) -> Option<usize> {
        self.config.shared_sessions.as_ref().map(|t| t.count())
    }

    /// Clients a grace period still waits for (zero outside one).
    pub fn grace_awaited(&self) -> usize {
        lock(&self.awaiting).0.len()
    }

    /// The service's own metadata handle.
    pub fn own(&self) -> &Arc<Meta> {
        &self.own
    }

    /// Renews the service's lease and reaps dead clients every `every`, on
    /// a thread of its own, for as long as the process runs.
    pub fn start_reaper(self: &Arc<Self>, every: Duration) -> std::io::Result<()> {
        let service = self.clone();
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || loop {
                std::thread::sleep(every);
                service.end_grace_if_due();
                if let Err(e) = service.own.heartbeat() {
                    tracing::warn!("renewing the service's lease: {e}");
                }
                match service.own.reap_expired() {
                    Ok(r) if !r.is_empty() => {
                        tracing::info!("reaped {} files left open by dead clients", r.len())
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!("reaping dead clients: {e}"),
                }
                service.reaped.fetch_add(1, Ordering::SeqCst);
            })?;
        Ok(())
    }

    fn attach(&self, client: u64) -> Result<Bound, MetaError> {
        let reaped = self.reaped.load(Ordering::SeqCst);
        let meta = Meta::attach(
            self.engine.clone(),
            self.config.clone(),
            self.clock.clone(),
            client,
        )?;
        Ok(Bound {
            client,
            meta: Arc::new(meta),
            reaped,
        })
    }

    /// The session's handle, attached again if a reaping pass ran since.
    fn session(&self, session: &Session) -> Result<Bound, MetaError> {
        let mut bound = lock(&session.bound);
        let Some(b) = bound.as_ref() else {
            return Err(MetaError::Errno(libc::ENOTCONN));
        };
        if b.reaped != self.reaped.load(Ordering::SeqCst) {
            let client = b.client;
            *bound = None;
            *bound = Some(self.attach(client)?);
        }
        Ok(bound.clone().expect("bound above"))
    }

    /// Runs the management role's passes every
    /// [`cluster::MANAGE_EVERY`], on a thread of its own, for as long as
    /// the process runs (the role is held by one service at a time).
    pub fn start_manager(self: &Arc<Self>) -> std::io::Result<()> {
        let service = self.clone();
        // Any number unlikely to be another service's.
        let holder = std::process::id() as u64 ^ cluster::now_ms().rotate_left(32) ^ self.own.client_id();
        std::thread::Builder::new()
            .name("manager".into())
            .spawn(move || {
                let mut held = false;
                let mut reconciled = std::time::Instant::now();
                loop {
                    std::thread::sleep(cluster::MANAGE_EVERY);
                    let every = service.reconciler.get().map(|(_, every)| *every);
                    if held && every.is_some_and(|every| reconciled.elapsed() >= every) {
                        reconciled = std::time::Instant::now();
                        match service.reconcile() {
                            Ok(0) => {}
                            Ok(n) => tracing::info!("collected the chunks of {n} files that are gone"),
                            Err(e) => tracing::warn!("collecting the chunks of files that are gone: {e}"),
                        }
                    }
                    match cluster::manage(service.engine.as_ref(), holder) {
                        Ok(report) => {
                            if report.holder != held {
                                held = report.holder;
                                if held {
                                    tracing::info!("took the storage management role");
                                } else {
                                    tracing::info!("another service holds the storage management role");
                                }
                            }
                            for t in &report.offline {
                                tracing::warn!("storage target {t} missed its lease: offline in its chains");
                            }
                            for t in &report.syncing {
                                tracing::info!("storage target {t} is back: syncing");
                            }
                            for (t, c) in &report.serving {
                                tracing::info!("storage target {t} synced chain {c}: serving");
                            }
                        }
                        Err(e) => tracing::warn!("storage management: {e}"),
                    }
                }
            })?;
        Ok(())
    }

    /// Collects, every `every` while this service holds the management
    /// role, the chunks of files that no longer exist (their layouts
    /// outlived them: a crash between the metadata commit and the chunks'
    /// removal, or a file reaped with its dead client), through `data`.
    pub fn set_reconciler(&self, data: crate::storage::client::ClusterData, every: Duration) {
        let _ = self.reconciler.set((data, every));
    }

    /// One reconciling pass: the layouts of files that are gone lose their
    /// chunks, then themselves. Returns how many.
    pub fn reconcile(&self) -> Result<usize, MetaError> {
        let Some((data, _)) = self.reconciler.get() else {
            return Ok(0);
        };
        let mut after = 0;
        let mut collected = 0;
        loop {
            let page = cluster::layouts(self.engine.as_ref(), after, 256)?;
            let Some(last) = page.last() else { break };
            after = last.0;
            for (layout, rec) in page {
                // A layout's id is its file's inode number.
                match self.own.getattr(layout) {
                    Err(MetaError::Errno(libc::ENOENT)) => {}
                    Ok(_) => continue,
                    Err(e) => return Err(e),
                }
                if let Err(e) = data.remove_chunks(layout, &rec) {
                    tracing::warn!("collecting the chunks of layout {layout}: {e}");
                    continue;
                }
                cluster::forget_layout(self.engine.as_ref(), layout)?;
                collected += 1;
            }
        }
        Ok(collected)
    }

    fn cluster(&self, peer: &Peer, call: ClusterCall) -> Result<ClusterAnswer, MetaError> {
        let service_only = matches!(call, ClusterCall::Register { .. } | ClusterCall::Heartbeat { .. });
        let mount_only = matches!(
            call,
            ClusterCall::Layout { .. } | ClusterCall::GetLayout { .. } | ClusterCall::ForgetLayout { .. }
        );
        let allowed = match peer.role {
            None => true,
            Some(Role::Service) => !mount_only,
            Some(Role::Mount) => !service_only,
            Some(Role::Admin) => !service_only && !mount_only,
        };
        if !allowed {
            tracing::warn!("{}: refused {call:?} from a {:?}", peer.addr, peer.role);
            return Err(MetaError::Errno(libc::EACCES));
        }
        let engine = self.engine.as_ref();
        match call {
            ClusterCall::Register { uuid, addr } => {
                let id = cluster::register(engine, uuid, addr)?;
                tracing::info!("{}: storage target {id} registered at {addr}", peer.addr);
                Ok(ClusterAnswer::Target(id))
            }
            ClusterCall::Heartbeat { targets, synced } => {
                if targets.len() > cluster::TARGETS_MAX || synced.len() > cluster::SYNCED_MAX {
                    return Err(MetaError::Errno(libc::EINVAL));
                }
                Ok(ClusterAnswer::TableVersion(cluster::heartbeat(
                    engine, &targets, &synced,
                )?))
            }
            read => cluster::answer_read(engine, &self.own, read),
        }
    }

    /// Runs one deferred close exactly once: the file to delete, or an
    /// errno.
    fn release_once(&self, bound: &Bound, peer: &Peer, r: Release) -> Result<Option<Reclaim>, i32> {
        let call = Call::Release {
            ino: r.ino,
            handle: r.handle,
        };
        let answer = match bound
            .meta
            .exactly_once(r.seq, r.resent, 0..0, call.recorder(), |m| call.clone().run(m))
        {
            Ok(answer) => Ok(answer),
            Err(MetaError::Done(outcome)) => call.done_answer(&outcome),
            Err(e) => Err(e),
        };
        match answer {
            Ok(Answer::Release(reclaim)) => Ok(reclaim),
            Ok(other) => {
                tracing::error!("{}: a release answered {other:?}", peer.addr);
                Err(libc::EIO)
            }
            Err(e) => Err(errno_of(peer, e)),
        }
    }

    fn answer(&self, session: &Session, peer: &Peer, req: MetaRequest) -> Result<MetaReply, MetaError> {
        if let MetaRequest::Cluster(call) = req {
            return self.cluster(peer, call).map(MetaReply::Cluster);
        }
        if peer.role == Some(Role::Service) {
            // Storage services have no sessions: only cluster calls.
            tracing::warn!(
                "{}: a service may not use the metadata service's sessions (only cluster calls)",
                peer.addr
            );
            return Err(MetaError::Errno(libc::EACCES));
        }
        match req {
            MetaRequest::Cluster(_) => unreachable!("answered above"),
            MetaRequest::Batch { releases, then } => {
                if releases.len() > RELEASES_MAX
                    || then
                        .as_deref()
                        .is_some_and(|r| matches!(r, MetaRequest::Batch { .. }))
                {
                    return Err(MetaError::Errno(libc::EINVAL));
                }
                let bound = self.session(session)?;
                let released = releases
                    .into_iter()
                    .map(|r| (r.seq, self.release_once(&bound, peer, r)))
                    .collect();
                // The request's failure is its own: the closes' outcomes
                // still go back.
                let then = then.map(|req| {
                    self.answer(session, peer, *req)
                        .map(Box::new)
                        .map_err(|e| errno_of(peer, e))
                });
                Ok(MetaReply::Batch { released, then })
            }
            MetaRequest::Hello => {
                let mut bound = lock(&session.bound);
                if bound.is_some() {
                    return Err(MetaError::Errno(libc::EISCONN));
                }
                let meta = Meta::connect(self.engine.clone(), self.config.clone(), self.clock.clone())?;
                let client = meta.client_id();
                tracing::info!("{}: client {client} registered", peer.addr);
                *bound = Some(Bound {
                    client,
                    meta: Arc::new(meta),
                    reaped: self.reaped.load(Ordering::SeqCst),
                });
                Ok(MetaReply::Session {
                    client,
                    token: self.tokens.token(client),
                })
            }
            MetaRequest::Resume { client, token } => {
                if !self.tokens.verify(client, &token) {
                    tracing::warn!("{}: refused to resume client {client}: wrong token", peer.addr);
                    return Err(MetaError::Errno(libc::EACCES));
                }
                let mut bound = lock(&session.bound);
                if bound.as_ref().is_some_and(|b| b.client != client) {
                    return Err(MetaError::Errno(libc::EISCONN));
                }
                *bound = Some(self.attach(client)?);
                tracing::debug!("{}: client {client} resumed", peer.addr);
                if lock(&self.awaiting).0.contains(&client) {
                    return Ok(MetaReply::Reclaim);
                }
                Ok(MetaReply::Resumed)
            }
            MetaRequest::Reopen { handles, last } => {
                if handles.len() > REOPEN_MAX {
                    return Err(MetaError::Errno(libc::EINVAL));
                }
                let bound = self.session(session)?;
                // Only a client this service waits for may claim handles:
                // at any other time its handles came from its opens here,
                // and a claim could only pin files. A lane that lost the
                // race to another lane's last page is answered the same.
                if !lock(&self.awaiting).0.contains(&bound.client) {
                    tracing::debug!(
                        "{}: client {} told open files it was not asked for: ignored",
                        peer.addr,
                        bound.client
                    );
                    return Ok(MetaReply::Reopened(0));
                }
                let kept = bound.meta.reclaim_handles(&handles)?;
                if last {
                    let was = lock(&self.awaiting).0.remove(&bound.client);
                    if was {
                        tracing::info!("{}: client {} told its open files", peer.addr, bound.client);
                    }
                    self.end_grace_if_due();
                }
                Ok(MetaReply::Reopened(kept as u64))
            }
            MetaRequest::Change {
                seq,
                forget: (from, to),
                resent,
                call,
            } => {
                if !call.is_change() || from > to || to > seq || to - from > FORGET_MAX {
                    return Err(MetaError::Errno(libc::EINVAL));
                }
                let bound = self.session(session)?;
                match bound
                    .meta
                    .exactly_once(seq, resent, from..to, call.recorder(), |m| call.clone().run(m))
                {
                    Ok(answer) => {
                        let dirs = crate::meta::take_changed_dirs();
                        if dirs.is_empty() {
                            Ok(MetaReply::Answer(answer))
                        } else {
                            Ok(MetaReply::Changed { answer, dirs })
                        }
                    }
                    Err(MetaError::Done(outcome)) => {
                        tracing::debug!("{}: change {seq} ({}) was done before", peer.addr, call.name());
                        let answer = call.done_answer(&outcome)?;
                        // A handle the first run opened: held again, in
                        // case this service restarted since.
                        match &answer {
                            Answer::Mknod((ino, _, Some(handle))) | Answer::Tmpfile((ino, _, handle)) => {
                                bound.meta.reclaim_handles(&[(*ino, *handle)])?;
                            }
                            _ => {}
                        }
                        Ok(MetaReply::Answer(answer))
                    }
                    Err(e) => Err(e),
                }
            }
            MetaRequest::Call(call) => {
                if call.is_change() {
                    // Changes are numbered: unnumbered, a lost reply could
                    // not be told from a change not done.
                    return Err(MetaError::Errno(libc::EINVAL));
                }
                let bound = self.session(session)?;
                let closing = matches!(call, Call::CloseClient {});
                let limit = match &call {
                    Call::Readdir { limit, .. } => Some(*limit),
                    _ => None,
                };
                if limit.is_some_and(|l| l == 0 || l > READDIR_LIMIT_MAX) {
                    return Err(MetaError::Errno(libc::EINVAL));
                }
                let answer = call.run(&*bound.meta)?;
                if closing {
                    *lock(&session.bound) = None;
                    tracing::info!("{}: client {} left", peer.addr, bound.client);
                }
                Ok(MetaReply::Answer(match answer {
                    Answer::Readdir(mut items) => {
                        fit_readdir(&mut items);
                        Answer::Readdir(items)
                    }
                    other => other,
                }))
            }
        }
    }
}

/// The errno a failure answers, logging the service's own failures.
fn errno_of(peer: &Peer, e: MetaError) -> i32 {
    if let MetaError::Kv(_) | MetaError::Schema(_) | MetaError::Corrupt(_) = e {
        tracing::error!("{}: {e}", peer.addr);
    }
    e.errno()
}

/// Cuts a readdir answer to what fits a frame (at least one entry: one
/// always fits).
fn fit_readdir(items: &mut Vec<crate::meta::DirItem>) {
    let mut used = 16;
    let keep = items
        .iter()
        .take_while(|item| {
            // postcard: the name and its length, three varints.
            used += item.name.len() + 3 + 3 * 10;
            used <= READDIR_BUDGET_BYTES
        })
        .count()
        .max(1);
    items.truncate(keep);
}

impl Handler for MetaService {
    type Request = MetaRequest;
    type Reply = MetaReply;
    type Conn = Session;

    fn open(&self, peer: &Peer) -> Result<Session, String> {
        match peer.role {
            // Storage services make only cluster calls (checked per call).
            None | Some(Role::Mount) | Some(Role::Admin) | Some(Role::Service) => Ok(Session::default()),
        }
    }

    fn handle(
        &self,
        session: &Session,
        peer: &Peer,
        req: MetaRequest,
        _bulk: Vec<u8>,
    ) -> Result<(MetaReply, Vec<u8>), i32> {
        self.answer(session, peer, req)
            .map(|r| (r, Vec::new()))
            .map_err(|e| errno_of(peer, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_the_clusters_and_the_clients() {
        let a = TokenKey::of(&Credential::generate().unwrap()).unwrap();
        let b = TokenKey::of(&Credential::generate().unwrap()).unwrap();
        let t = a.token(4);
        assert!(a.verify(4, &t));
        assert!(!a.verify(5, &t));
        assert!(!b.verify(4, &t));
    }

    #[test]
    fn readdir_answers_are_cut_to_fit_a_frame() {
        let item = |i: u64| crate::meta::DirItem {
            name: vec![b'x'; 255],
            ino: u64::MAX - i,
            kind: libc::S_IFREG,
            cookie: u64::MAX - i,
        };
        let mut items: Vec<_> = (0..READDIR_LIMIT_MAX as u64 * 2).map(item).collect();
        fit_readdir(&mut items);
        assert!(items.len() < READDIR_LIMIT_MAX * 2);
        let bytes = crate::rpc::codec::encode(&MetaReply::Answer(Answer::Readdir(items.clone())));
        assert!(bytes.len() <= MESSAGE_LEN_MAX, "{} bytes", bytes.len());
        let mut one = vec![item(0)];
        fit_readdir(&mut one);
        assert_eq!(one.len(), 1);
    }
}
