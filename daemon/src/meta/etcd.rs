//! The etcd engine: the namespace in an etcd cluster (Debian's
//! `etcd-server`, API v3), for namespaces shared by many machines.
//!
//! Optimistic transactions map onto etcd's revision-compare transactions:
//! a key's [`Version`] is its `mod_revision`; commit sends one etcd `Txn`
//! whose compares are the transaction's reads (`mod_revision == seen`, or
//! `version == 0` for a key read as absent) and scans (every key seen still
//! at its revision, and no key in the scanned range — up to the last key
//! seen when the scan hit its limit — with a revision above the highest
//! seen, i.e. nothing inserted or changed since), and whose success branch
//! is the writes. etcd applies it atomically through Raft, or reports the
//! compare failed: a conflict. Durability is etcd's: a commit is
//! acknowledged once a majority of members has it in their Raft log on disk.
//!
//! All keys live under a prefix (`xfuse/` by default), so one etcd cluster
//! can hold several namespaces or other users' data.
//!
//! etcd limits the operations of one transaction (`--max-txn-ops`, 128 by
//! default); a transaction with many compares (a scan over many keys) needs
//! a higher limit: run etcd with `--max-txn-ops 10000`.
//!
//! A secured cluster ([`EtcdSecurity`]): TLS to the members (their CA, and
//! a client certificate if they run with `--client-cert-auth`), and etcd's
//! own users (`--etcd-user`, the password from a file). Without them the
//! engine speaks plain HTTP/2, for a cluster on a network nobody else
//! reaches.
//!
//! Reads that fail on the network are retried (with backoff) on the other
//! members; a commit that fails on the network is not (it may have been
//! applied): the operation fails with EIO and the caller decides.
//!
//! A transaction's reads are serializable reads at one revision: the
//! first is answered by the member at its latest applied revision, which
//! the others then name (`Range` with `revision`), so they all see one
//! snapshot and need no ReadIndex round to the leader. Three rules keep
//! that sound:
//! - This handle's own commits are always seen: it keeps the highest
//!   revision any answer showed it (every commit's among them), and a
//!   first read from a member behind that is made again as a linearizable
//!   read.
//! - A serializable read is taken only within [`FRESHNESS`] of the last
//!   answer that went through the cluster's quorum (a linearizable read,
//!   a commit); past it the first read is linearizable. A member cut off
//!   from the others therefore answers no more than that stale: after it,
//!   its reads fail as its commits do.
//! - A transaction that writes is validated at commit as above, so a read
//!   that was stale makes it conflict and run again; one that writes
//!   nothing read one snapshot and needs no validation (no compare-only
//!   `Txn` through Raft for a lookup).
//!
//! Other clients' commits reach a read once the member serving it has
//! applied them; requests go to the leader when it is known at connect,
//! where that is at once, and a follower in touch with the leader lags by
//! at most a heartbeat.
//! A revision the member has not reached yet (after a failover) or has
//! compacted makes the transaction run again at a new one.

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, GetResponse, Identity,
    ResponseHeader, TlsOptions, Txn, TxnOp,
};

use super::kv::{AttemptGate, CommitRequest, KvEngine, KvError, KvPair, Version};

/// How long after the last answer through the quorum a transaction may
/// start with a serializable read (see the module docs).
pub const FRESHNESS: Duration = Duration::from_millis(500);

/// Rounds over all members before a request fails.
const ROUNDS_MAX: u32 = 4;

/// How to reach a secured cluster.
#[derive(Clone, Default)]
pub struct EtcdSecurity {
    /// TLS to the members (`https://`).
    pub tls: Option<EtcdTls>,
    /// An etcd user and its password.
    pub user: Option<(String, String)>,
}

impl std::fmt::Debug for EtcdSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdSecurity")
            .field("tls", &self.tls.is_some())
            .field("user", &self.user.as_ref().map(|(u, _)| u))
            .finish()
    }
}

/// TLS to etcd members.
#[derive(Clone)]
pub struct EtcdTls {
    /// The CA that signed the members' certificates (PEM).
    pub ca_pem: Vec<u8>,
    /// A client certificate and its key (PEM), for members that require
    /// one (`--client-cert-auth`).
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdTls")
            .field("client_certificate", &self.identity.is_some())
            .finish_non_exhaustive()
    }
}

/// See the module docs.
pub struct EtcdEngine {
    runtime: tokio::runtime::Runtime,
    /// One client per member, connected on first use; requests go to
    /// `current` and move on to the next member when it cannot be reached.
    clients: Vec<Mutex<Option<Client>>>,
    current: AtomicUsize,
    endpoints: Vec<String>,
    prefix: Vec<u8>,
    security: EtcdSecurity,
    gate: AttemptGate,
    /// The highest revision an answer has shown this handle: at or above
    /// every commit it made (see the module docs).
    seen: AtomicI64,
    /// When an answer last went through the quorum, in µs since `epoch`.
    confirmed_us: AtomicU64,
    epoch: Instant,
}

impl std::fmt::Debug for EtcdEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdEngine")
            .field("endpoints", &self.endpoints)
            .field("prefix", &String::from_utf8_lossy(&self.prefix))
            .finish()
    }
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> KvError {
    KvError::Unavailable(format!("etcd {what}: {e}"))
}

impl EtcdEngine {
    /// Connects to the cluster at `endpoints` (`HOST:PORT` each) with keys
    /// under `prefix`, over plain HTTP/2 without a user.
    pub fn connect(endpoints: &[String], prefix: &[u8]) -> Result<EtcdEngine, KvError> {
        EtcdEngine::connect_secured(endpoints, prefix, EtcdSecurity::default())
    }

    /// Connects to a secured cluster.
    pub fn connect_secured(
        endpoints: &[String],
        prefix: &[u8],
        security: EtcdSecurity,
    ) -> Result<EtcdEngine, KvError> {
        if endpoints.is_empty() {
            return Err(KvError::Failed("no etcd endpoint given".into()));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("etcd-client")
            .enable_all()
            .build()
            .map_err(|e| KvError::Failed(format!("starting the etcd client runtime: {e}")))?;
        let engine = EtcdEngine {
            runtime,
            clients: endpoints.iter().map(|_| Mutex::new(None)).collect(),
            current: AtomicUsize::new(0),
            endpoints: endpoints.to_vec(),
            prefix: prefix.to_vec(),
            security,
            gate: AttemptGate::default(),
            seen: AtomicI64::new(0),
            confirmed_us: AtomicU64::new(0),
            epoch: Instant::now(),
        };
        // Fail early, with a clear message, if no member answers.
        engine.get(b"")?;
        engine.prefer_leader();
        Ok(engine)
    }

    /// The client of member `i`, connecting it if needed.
    fn client(&self, i: usize) -> Result<Client, String> {
        let mut slot = self.clients[i].lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(5));
        let scheme = match &self.security.tls {
            Some(tls) => {
                let mut t = TlsOptions::new().ca_certificate(Certificate::from_pem(&tls.ca_pem));
                if let Some((cert, key)) = &tls.identity {
                    t = t.identity(Identity::from_pem(cert, key));
                }
                options = options.with_tls(t);
                "https"
            }
            None => "http",
        };
        if let Some((user, password)) = &self.security.user {
            options = options.with_user(user.clone(), password.clone());
        }
        let url = format!("{scheme}://{}", self.endpoints[i]);
        let client = self
            .runtime
            .block_on(Client::connect([url], Some(options)))
            .map_err(|e| e.to_string())?;
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Runs `f` on the current member, moving on to the next ones when a
    /// member cannot be reached (then nothing was sent, so it is safe for
    /// any request). Other failures are retried only if `repeatable` (a
    /// read): a transaction whose fate is unknown is not sent twice.
    fn request<T, Fut>(&self, what: &str, repeatable: bool, f: impl Fn(Client) -> Fut) -> Result<T, KvError>
    where
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let n = self.clients.len();
        let mut backoff = Duration::from_millis(50);
        let mut last = None;
        for _ in 0..ROUNDS_MAX {
            let first = self.current.load(Ordering::Relaxed);
            for k in 0..n {
                let i = (first + k) % n;
                let client = match self.client(i) {
                    Ok(c) => c,
                    Err(e) => {
                        last = Some(e);
                        continue;
                    }
                };
                match self.runtime.block_on(f(client)) {
                    Ok(v) => {
                        self.current.store(i, Ordering::Relaxed);
                        return Ok(v);
                    }
                    // tonic's connector failed: the request never left.
                    Err(e) if e.to_string().contains("tcp connect error") || repeatable => {
                        tracing::debug!(
                            "etcd {what} on {}: {e}; trying the next member",
                            self.endpoints[i]
                        );
                        last = Some(e.to_string());
                    }
                    Err(e) => return Err(unavailable(what, e)),
                }
            }
            std::thread::sleep(backoff);
            backoff *= 2;
        }
        Err(unavailable(
            &format!("{what} (no member of {:?} answered)", self.endpoints),
            last.unwrap_or_else(|| "no attempt".to_string()),
        ))
    }

    /// Sends requests to the leader, if the current member says which
    /// one it is and it is among the endpoints: serializable reads there
    /// see every commit once applied. Best effort: on any failure the
    /// current member stays.
    fn prefer_leader(&self) {
        let i = self.current.load(Ordering::Relaxed);
        let Ok(client) = self.client(i) else { return };
        let found = self.runtime.block_on(async move {
            let mut c = client;
            let leader = c.status().await?.leader();
            let members = c.member_list().await?;
            Ok::<_, etcd_client::Error>(
                members
                    .members()
                    .iter()
                    .find(|m| m.id() == leader)
                    .map(|m| m.client_urls().to_vec()),
            )
        });
        let Ok(Some(urls)) = found else { return };
        if let Some(at) = self.endpoints.iter().position(|e| {
            urls.iter()
                .any(|u| u.trim_end_matches('/').ends_with(&format!("//{e}")))
        }) {
            tracing::debug!("etcd: requests go to the leader, {}", self.endpoints[at]);
            self.current.store(at, Ordering::Relaxed);
        }
    }

    /// Sends requests to member `i` from now on (tests: a read on a
    /// member other than the one that took a commit).
    #[cfg(test)]
    pub(crate) fn use_member(&self, i: usize) {
        self.current.store(i, Ordering::Relaxed);
    }

    /// Notes that an answer to a request sent at `sent` went through the
    /// quorum: the member was in touch with it then.
    fn confirm(&self, sent: Instant) {
        let at = sent.saturating_duration_since(self.epoch).as_micros() as u64;
        self.confirmed_us.fetch_max(at.max(1), Ordering::SeqCst);
    }

    /// Whether a serializable read may start a transaction now.
    fn fresh(&self) -> bool {
        let confirmed = self.confirmed_us.load(Ordering::SeqCst);
        confirmed != 0 && self.epoch.elapsed().as_micros() as u64 <= confirmed + FRESHNESS.as_micros() as u64
    }

    /// Notes the revision an answer showed; returns it.
    fn note(&self, header: Option<&ResponseHeader>) -> i64 {
        let revision = header.map_or(0, |h| h.revision());
        self.seen.fetch_max(revision, Ordering::SeqCst);
        revision
    }

    /// A range read for a transaction at its read point `at` (see the
    /// module docs); a revision the member cannot serve is a conflict.
    fn range_at(
        &self,
        what: &str,
        key: Vec<u8>,
        options: GetOptions,
        at: &mut Option<u64>,
    ) -> Result<GetResponse, KvError> {
        let read = |options: GetOptions| {
            self.request(what, true, |mut c| {
                let (key, options) = (key.clone(), options.clone());
                async move {
                    match c.get(key, Some(options)).await {
                        Ok(resp) => Ok(Ok(resp)),
                        Err(e) if revision_unavailable(&e) => Ok(Err(KvError::Conflict)),
                        Err(e) => Err(e),
                    }
                }
            })?
        };
        if let Some(revision) = *at {
            return read(options.with_serializable().with_revision(revision as i64));
        }
        let floor = self.seen.load(Ordering::SeqCst);
        let serializable = if self.fresh() {
            Some(read(options.clone().with_serializable())?)
        } else {
            None
        };
        let resp = match serializable {
            // Unless the member has not applied this handle's last commit.
            Some(resp) if resp.header().map_or(0, |h| h.revision()) >= floor => resp,
            _ => {
                let sent = Instant::now();
                let resp = read(options)?;
                self.confirm(sent);
                resp
            }
        };
        let revision = self.note(resp.header());
        if revision <= 0 {
            // Revision 0 would mean "the latest" to later reads.
            return Err(KvError::Failed("etcd answered a read without a revision".into()));
        }
        *at = Some(revision as u64);
        Ok(resp)
    }

    /// The options of a scan up to `end` of at most `limit` keys (etcd's
    /// 0: no limit, for a limit past i64).
    fn range_options(&self, end: &[u8], limit: usize) -> GetOptions {
        GetOptions::new()
            .with_range(self.key(end))
            .with_limit(i64::try_from(limit).unwrap_or(0))
    }

    /// The first key's value and version in `resp`.
    fn first(resp: &GetResponse) -> Option<(Vec<u8>, Version)> {
        resp.kvs()
            .first()
            .map(|kv| (kv.value().to_vec(), kv.mod_revision() as Version))
    }

    fn pairs(&self, resp: &GetResponse) -> Result<Vec<KvPair>, KvError> {
        let mut out = Vec::with_capacity(resp.kvs().len());
        for kv in resp.kvs() {
            out.push(KvPair {
                key: self.strip(kv.key())?.to_vec(),
                value: kv.value().to_vec(),
                version: kv.mod_revision() as Version,
            });
        }
        Ok(out)
    }

    fn key(&self, key: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.prefix.len() + key.len());
        k.extend_from_slice(&self.prefix);
        k.extend_from_slice(key);
        k
    }

    fn strip<'a>(&self, key: &'a [u8]) -> Result<&'a [u8], KvError> {
        key.strip_prefix(self.prefix.as_slice())
            .ok_or_else(|| KvError::Failed("etcd returned a key outside the namespace prefix".into()))
    }
}

impl KvEngine for EtcdEngine {
    fn get(&self, key: &[u8]) -> Result<Option<(Vec<u8>, Version)>, KvError> {
        let k = self.key(key);
        let sent = Instant::now();
        let resp = self.request("get", true, |mut c| {
            let k = k.clone();
            async move { c.get(k, None).await }
        })?;
        self.note(resp.header());
        self.confirm(sent);
        Ok(Self::first(&resp))
    }

    fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<KvPair>, KvError> {
        if start >= end || limit == 0 {
            return Ok(Vec::new());
        }
        let (s, options) = (self.key(start), self.range_options(end, limit));
        let sent = Instant::now();
        let resp = self.request("range", true, |mut c| {
            let (s, options) = (s.clone(), options.clone());
            async move { c.get(s, Some(options)).await }
        })?;
        self.note(resp.header());
        self.confirm(sent);
        self.pairs(&resp)
    }

    fn get_at(&self, key: &[u8], at: &mut Option<u64>) -> Result<Option<(Vec<u8>, Version)>, KvError> {
        let resp = self.range_at("get", self.key(key), GetOptions::new(), at)?;
        Ok(Self::first(&resp))
    }

    fn scan_at(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        at: &mut Option<u64>,
    ) -> Result<Vec<KvPair>, KvError> {
        if start >= end || limit == 0 {
            return Ok(Vec::new());
        }
        let options = self.range_options(end, limit);
        let resp = self.range_at("range", self.key(start), options, at)?;
        self.pairs(&resp)
    }

    fn reads_at_snapshot(&self) -> bool {
        true
    }

    fn gate(&self) -> &AttemptGate {
        &self.gate
    }

    fn commit(&self, request: CommitRequest) -> Result<(), KvError> {
        let mut compares = Vec::new();
        for (key, seen) in &request.reads {
            compares.push(match seen {
                Some(v) => Compare::mod_revision(self.key(key), CompareOp::Equal, *v as i64),
                None => Compare::version(self.key(key), CompareOp::Equal, 0),
            });
        }
        for scan in &request.scans {
            let mut highest = 0;
            for (key, v) in &scan.seen {
                compares.push(Compare::mod_revision(self.key(key), CompareOp::Equal, *v as i64));
                highest = highest.max(*v as i64);
            }
            // Up to where the scan looked: all of the range, or (limit hit)
            // through the last key it returned.
            let end = match scan.seen.last() {
                Some((last, _)) if scan.seen.len() >= scan.limit => {
                    let mut e = self.key(last);
                    e.push(0);
                    e
                }
                _ => self.key(&scan.end),
            };
            compares.push(
                Compare::mod_revision(self.key(&scan.start), CompareOp::Less, highest + 1).with_range(end),
            );
        }
        let ops: Vec<TxnOp> = request
            .writes
            .iter()
            .map(|(key, value)| match value {
                Some(v) => TxnOp::put(self.key(key), v.clone(), None),
                None => TxnOp::delete(self.key(key), None),
            })
            .collect();
        let txn = Txn::new().when(compares).and_then(ops);
        let sent = Instant::now();
        let resp = self.request("txn", false, |mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })?;
        self.note(resp.header());
        self.confirm(sent);
        if resp.succeeded() {
            Ok(())
        } else {
            Err(KvError::Conflict)
        }
    }
}

/// Whether `e` says a read at a revision cannot be served: compacted away,
/// or not yet reached by the member that got it.
fn revision_unavailable(e: &etcd_client::Error) -> bool {
    let text = e.to_string();
    text.contains("required revision has been compacted")
        || text.contains("required revision is a future revision")
}
