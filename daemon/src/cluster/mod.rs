//! The storage cluster's state, kept in the metadata engine: the targets,
//! the chain table, and each file's layout; and the management role that
//! keeps the chains true to which targets are alive.
//!
//! | key | value | what |
//! |---|---|---|
//! | `T id` | [`TargetRec`] | a storage target: its address, its lease |
//! | `N` | [`Chains`] | the chain table, versioned (one key: it changes only when targets come and go) |
//! | `Y layout` | [`LayoutRec`] | a file's chains: chunk `i` is on `chains[i % len]` |
//! | `M` | [`ManagerLease`] | who holds the management role, until when |
//!
//! # Chains
//!
//! A layout is made when a file's data is first touched: with the `n`
//! registered targets and `R = min(3, n)` replicas (or `min(r, n)` for a
//! file made in a directory whose `xfused.replicas` is `r`), its stripe is the
//! chains of `R` consecutive targets (in id order) starting at each target
//! in turn (at most [`STRIPE_MAX`], skipping any with no target up),
//! rotated by the layout id, so every target heads some chains and data
//! spreads. Chains are found by their first membership
//! or made; a chain keeps its id for life, and only its members' order and
//! states change (each change bumps its version and the table's).
//!
//! # Management
//!
//! One `xfused meta` at a time holds the role, under a lease in the
//! engine ([`manage`], called every [`MANAGE_EVERY`] by each service). The
//! holder compares every target's lease (renewed by its heartbeats) with
//! its clock: a target whose lease ran out is moved to the end of each of
//! its chains as offline; one whose heartbeats resume is brought back as
//! syncing (it receives every update, copies the rest from a serving
//! member, and says so in its heartbeats), then serving.

pub mod client;

use std::net::SocketAddr;
use std::time::Duration;

use crate::meta::kv::{retry, KvEngine, RetryPolicy, Txn};
use crate::meta::MetaError;

/// How often each metadata service tries the management role.
pub const MANAGE_EVERY: Duration = Duration::from_millis(500);
/// How long a management lease lasts without renewal.
pub const MANAGER_LEASE: Duration = Duration::from_secs(3);
/// A storage target's lease: it is offline when silent this long.
pub const TARGET_LEASE: Duration = Duration::from_secs(4);
/// How often a storage service sends heartbeats.
pub const HEARTBEAT_EVERY: Duration = Duration::from_millis(1000);
/// Most replicas a file gets by default.
pub const REPLICAS_DEFAULT: usize = 3;
/// Most chains in one file's stripe.
pub const STRIPE_MAX: usize = 8;
/// Most targets a cluster registers (bounds the table's size).
pub const TARGETS_MAX: usize = 1024;

const FORMAT: u8 = 1;

mod key {
    pub fn target(id: u32) -> Vec<u8> {
        let mut k = vec![b'T'];
        k.extend_from_slice(&id.to_be_bytes());
        k
    }
    pub const TARGETS: (&[u8], &[u8]) = (b"T", b"U");
    pub const CHAINS: &[u8] = b"N";
    pub const MANAGER: &[u8] = b"M";
    pub fn layout(id: u64) -> Vec<u8> {
        let mut k = vec![b'Y'];
        k.extend_from_slice(&id.to_be_bytes());
        k
    }
}

fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    let mut out = vec![FORMAT];
    out.extend(crate::rpc::codec::encode(v));
    out
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, MetaError> {
    match bytes.split_first() {
        Some((&FORMAT, rest)) => {
            crate::rpc::codec::decode(rest).map_err(|e| MetaError::Corrupt(format!("a stored {what}: {e}")))
        }
        _ => Err(MetaError::Corrupt(format!(
            "a stored {what} has an unknown format"
        ))),
    }
}

/// A target's state in one chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum MemberState {
    /// Has every committed update: takes updates and reads.
    Serving,
    /// Back after being offline: takes updates, copies what it missed,
    /// answers no reads.
    Syncing,
    /// Gone: skipped.
    Offline,
}

/// A chain member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Member {
    /// The target.
    pub target: u32,
    /// Its state here.
    pub state: MemberState,
}

/// A chain.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChainRec {
    /// Its id, for life.
    pub id: u32,
    /// Bumped by every change of its members.
    pub version: u64,
    /// The members it was made with (how layouts find it).
    pub initial: Vec<u32>,
    /// Its members in order: serving, then syncing, then offline.
    pub members: Vec<Member>,
}

impl ChainRec {
    /// The chain as requests name it.
    pub fn reference(&self) -> crate::storage::ChainRef {
        crate::storage::ChainRef {
            id: self.id,
            version: self.version,
        }
    }

    /// Where updates enter: the first serving member.
    pub fn head(&self) -> Option<u32> {
        self.members
            .iter()
            .find(|m| m.state == MemberState::Serving)
            .map(|m| m.target)
    }

    /// Whose committed version is the chain's: the last serving member.
    pub fn tail(&self) -> Option<u32> {
        self.members
            .iter()
            .rev()
            .find(|m| m.state == MemberState::Serving)
            .map(|m| m.target)
    }

    /// Members that answer reads.
    pub fn readers(&self) -> impl Iterator<Item = u32> + '_ {
        self.members
            .iter()
            .filter(|m| m.state == MemberState::Serving)
            .map(|m| m.target)
    }

    /// `target`'s state here, if it is a member.
    pub fn state_of(&self, target: u32) -> Option<MemberState> {
        self.members.iter().find(|m| m.target == target).map(|m| m.state)
    }

    /// Who `target` forwards updates to: the next member not offline.
    pub fn successor(&self, target: u32) -> Option<u32> {
        let at = self.members.iter().position(|m| m.target == target)?;
        self.members[at + 1..]
            .iter()
            .find(|m| m.state != MemberState::Offline)
            .map(|m| m.target)
    }

    /// Puts `target` in `state`, moving it behind the members in better
    /// states; bumps the version if anything changed.
    fn set_state(&mut self, target: u32, state: MemberState) -> bool {
        let Some(at) = self.members.iter().position(|m| m.target == target) else {
            return false;
        };
        if self.members[at].state == state {
            return false;
        }
        let mut m = self.members.remove(at);
        m.state = state;
        let rank = |s: MemberState| match s {
            MemberState::Serving => 0,
            MemberState::Syncing => 1,
            MemberState::Offline => 2,
        };
        let pos = self
            .members
            .iter()
            .position(|o| rank(o.state) > rank(state))
            .unwrap_or(self.members.len());
        self.members.insert(pos, m);
        self.version += 1;
        true
    }
}

/// The chain table.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Chains {
    /// Bumped by every change of any chain or target.
    pub version: u64,
    /// The chains by id order.
    pub chains: Vec<ChainRec>,
}

/// A storage target.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TargetRec {
    /// Its id.
    pub id: u32,
    /// The identity its directory keeps (a target is the same target
    /// whatever address it comes back with).
    pub uuid: [u8; 16],
    /// Where its service listens.
    pub addr: SocketAddr,
    /// Its lease, in ms since the epoch (renewed by heartbeats).
    pub lease_until_ms: u64,
    /// Whether management counts it alive.
    pub up: bool,
    /// Chains whose copy it finished, with the chain version then.
    pub synced: Vec<(u32, u64)>,
}

/// The table with the targets: what mounts and targets route by.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Table {
    /// The chain table.
    pub chains: Chains,
    /// The targets.
    pub targets: Vec<TargetRec>,
}

impl Table {
    /// Chain `id`.
    pub fn chain(&self, id: u32) -> Option<&ChainRec> {
        self.chains.chains.iter().find(|c| c.id == id)
    }

    /// Where target `id` listens.
    pub fn addr(&self, id: u32) -> Option<SocketAddr> {
        self.targets.iter().find(|t| t.id == id).map(|t| t.addr)
    }
}

/// A file's layout.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayoutRec {
    /// Replicas per chunk.
    pub replicas: u8,
    /// Its stripe: chunk `i` is on chain `chains[i % len]`.
    pub chains: Vec<u32>,
}

impl LayoutRec {
    /// The chain of chunk `index`.
    pub fn chain_of(&self, index: u64) -> u32 {
        self.chains[(index % self.chains.len() as u64) as usize]
    }
}

/// Who holds the management role.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ManagerLease {
    /// The holder's random id.
    pub holder: u64,
    /// Until when, in ms since the epoch.
    pub until_ms: u64,
}

/// Most chains whose sync one heartbeat reports.
pub const SYNCED_MAX: usize = 4096;

/// A call about the cluster, to a metadata service.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ClusterCall {
    /// A storage service registers a target (services only).
    Register {
        /// The identity in the target's directory.
        uuid: [u8; 16],
        /// Where its service listens.
        addr: SocketAddr,
    },
    /// A storage service renews its targets' leases (services only).
    Heartbeat {
        /// Its targets.
        targets: Vec<u32>,
        /// (target, chain, chain version) copies finished.
        synced: Vec<(u32, u32, u64)>,
    },
    /// The table.
    Table,
    /// The layout of a regular file, made if it has none (mounts).
    Layout {
        /// The file's inode.
        ino: u64,
    },
    /// The layout of a file, if it has one; made by nobody (mounts: to
    /// remove the chunks of a file that is gone).
    GetLayout {
        /// The layout.
        layout: u64,
    },
    /// Forgets the layout of a file that is gone, once its chunks are
    /// (mounts).
    ForgetLayout {
        /// The layout.
        layout: u64,
    },
}

/// What a [`ClusterCall`] returned.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ClusterAnswer {
    /// A target's id.
    Target(u32),
    /// The table's version.
    TableVersion(u64),
    /// The table.
    Table(Table),
    /// A layout (and its id).
    Layout(u64, LayoutRec),
    /// A layout, if there is one.
    MaybeLayout(Option<LayoutRec>),
    /// Done.
    Done,
}

/// Answers the calls that read the table or a file's layout, or forget a
/// gone file's layout, from `engine` and the namespace `ns` on it: the
/// metadata service's answer to them, and an `etcd://` mount's own.
/// Registering and heartbeats are a service's alone: `EINVAL` here.
pub fn answer_read(
    engine: &dyn KvEngine,
    ns: &crate::meta::Meta,
    call: ClusterCall,
) -> Result<ClusterAnswer, MetaError> {
    match call {
        ClusterCall::Register { .. } | ClusterCall::Heartbeat { .. } => Err(MetaError::Errno(libc::EINVAL)),
        ClusterCall::Table => Ok(ClusterAnswer::Table(table(engine)?)),
        ClusterCall::Layout { ino } => {
            let rec = ns.getattr(ino)?;
            if rec.kind() != libc::S_IFREG {
                return Err(MetaError::Errno(libc::EINVAL));
            }
            // The replicas of the directory the file was made in, or the
            // cluster's default.
            let replicas = (rec.replicas > 0).then_some(usize::from(rec.replicas));
            Ok(ClusterAnswer::Layout(
                rec.layout_id,
                layout(engine, rec.layout_id, replicas)?,
            ))
        }
        ClusterCall::GetLayout { layout } => Ok(ClusterAnswer::MaybeLayout(get_layout(engine, layout)?)),
        ClusterCall::ForgetLayout { layout } => {
            // A layout's id is its file's inode number: only a file that
            // is gone may lose its layout.
            match ns.getattr(layout) {
                Err(MetaError::Errno(libc::ENOENT)) => {}
                Ok(_) => return Err(MetaError::Errno(libc::EBUSY)),
                Err(e) => return Err(e),
            }
            forget_layout(engine, layout)?;
            Ok(ClusterAnswer::Done)
        }
    }
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn read_chains(txn: &mut Txn<'_>) -> Result<Chains, MetaError> {
    match txn.get(key::CHAINS)? {
        Some(bytes) => decode("chain table", &bytes),
        None => Ok(Chains::default()),
    }
}

fn read_targets(txn: &mut Txn<'_>) -> Result<Vec<TargetRec>, MetaError> {
    let (start, end) = key::TARGETS;
    txn.scan(start, end, TARGETS_MAX + 1)?
        .iter()
        .map(|kv| decode("target", &kv.value))
        .collect()
}

/// The whole table.
pub fn table(engine: &dyn KvEngine) -> Result<Table, MetaError> {
    retry(engine, &RetryPolicy::default(), |txn| {
        Ok(Table {
            chains: read_chains(txn)?,
            targets: read_targets(txn)?,
        })
    })
}

/// Registers the target with `uuid` at `addr` (again: same id): its id.
pub fn register(engine: &dyn KvEngine, uuid: [u8; 16], addr: SocketAddr) -> Result<u32, MetaError> {
    let now = now_ms();
    retry(engine, &RetryPolicy::default(), |txn| {
        let targets = read_targets(txn)?;
        let (id, mut rec) = match targets.iter().find(|t| t.uuid == uuid) {
            Some(t) => (t.id, t.clone()),
            None => {
                if targets.len() >= TARGETS_MAX {
                    return Err(MetaError::Errno(libc::ENOSPC));
                }
                let id = targets.iter().map(|t| t.id).max().unwrap_or(0) + 1;
                let rec = TargetRec {
                    id,
                    uuid,
                    addr,
                    lease_until_ms: 0,
                    up: true,
                    synced: Vec::new(),
                };
                (id, rec)
            }
        };
        rec.addr = addr;
        rec.lease_until_ms = now + TARGET_LEASE.as_millis() as u64;
        txn.put(key::target(id), encode(&rec));
        // The table changed (a new target, or a new address).
        let mut chains = read_chains(txn)?;
        chains.version += 1;
        txn.put(key::CHAINS.to_vec(), encode(&chains));
        Ok(id)
    })
}

/// Renews the leases of `ids` and records the chains they finished
/// syncing; the table's version (fetch it again when it moved).
pub fn heartbeat(engine: &dyn KvEngine, ids: &[u32], synced: &[(u32, u32, u64)]) -> Result<u64, MetaError> {
    let until = now_ms() + TARGET_LEASE.as_millis() as u64;
    retry(engine, &RetryPolicy::default(), |txn| {
        for id in ids {
            let Some(bytes) = txn.get(&key::target(*id))? else {
                return Err(MetaError::Errno(libc::ENOENT));
            };
            let mut rec: TargetRec = decode("target", &bytes)?;
            rec.lease_until_ms = until;
            rec.synced = synced
                .iter()
                .filter(|(t, _, _)| t == id)
                .map(|(_, c, v)| (*c, *v))
                .collect();
            txn.put(key::target(*id), encode(&rec));
        }
        Ok(read_chains(txn)?.version)
    })
}

/// The layout of `layout`, made now if it has none (with `replicas`, or
/// the default).
pub fn layout(engine: &dyn KvEngine, layout: u64, replicas: Option<usize>) -> Result<LayoutRec, MetaError> {
    retry(engine, &RetryPolicy::default(), |txn| {
        if let Some(bytes) = txn.get(&key::layout(layout))? {
            return decode("layout", &bytes);
        }
        let targets = read_targets(txn)?;
        let up = |id: u32| targets.iter().any(|t| t.id == id && t.up);
        let mut all: Vec<u32> = targets.iter().map(|t| t.id).collect();
        all.sort_unstable();
        let n = all.len();
        if targets.is_empty() {
            return Err(MetaError::Errno(libc::ENOSPC));
        }
        if !targets.iter().any(|t| t.up) {
            // Every target is offline now (restarting, or its heartbeats
            // late): a client tries again, as for a chain with no member.
            return Err(MetaError::Errno(libc::EAGAIN));
        }
        let r = replicas.unwrap_or(REPLICAS_DEFAULT).clamp(1, n);
        let mut chains = read_chains(txn)?;
        let mut made = false;
        let mut stripe = Vec::new();
        let start = (layout % n as u64) as usize;
        for j in 0..n {
            if stripe.len() >= STRIPE_MAX {
                break;
            }
            let initial: Vec<u32> = (0..r).map(|k| all[(start + j + k) % n]).collect();
            if !initial.iter().any(|&t| up(t)) {
                // Nobody there to take the data now.
                continue;
            }
            let id = match chains.chains.iter().find(|c| c.initial == initial) {
                Some(c) => c.id,
                None => {
                    // Chains are made of every registered target, down
                    // ones too (offline, at the end): a file made during an
                    // outage gets its replicas back when the target does.
                    let id = chains.chains.iter().map(|c| c.id).max().unwrap_or(0) + 1;
                    let mut rec = ChainRec {
                        id,
                        version: 1,
                        members: initial
                            .iter()
                            .map(|&target| Member {
                                target,
                                state: MemberState::Serving,
                            })
                            .collect(),
                        initial,
                    };
                    for t in rec.initial.clone() {
                        if !up(t) {
                            rec.set_state(t, MemberState::Offline);
                        }
                    }
                    chains.chains.push(rec);
                    made = true;
                    id
                }
            };
            stripe.push(id);
        }
        if made {
            chains.version += 1;
            txn.put(key::CHAINS.to_vec(), encode(&chains));
        }
        let rec = LayoutRec {
            replicas: r as u8,
            chains: stripe,
        };
        txn.put(key::layout(layout), encode(&rec));
        Ok(rec)
    })
}

/// The layout of `layout`, if made.
pub fn get_layout(engine: &dyn KvEngine, layout: u64) -> Result<Option<LayoutRec>, MetaError> {
    retry(engine, &RetryPolicy::default(), |txn| {
        txn.get(&key::layout(layout))?
            .map(|bytes| decode("layout", &bytes))
            .transpose()
    })
}

/// Forgets a layout whose chunks are gone.
pub fn forget_layout(engine: &dyn KvEngine, layout: u64) -> Result<(), MetaError> {
    retry(engine, &RetryPolicy::default(), |txn| {
        txn.delete(key::layout(layout));
        Ok(())
    })
}

/// Layouts after `after` (up to `limit`): for the reconciler.
pub fn layouts(engine: &dyn KvEngine, after: u64, limit: usize) -> Result<Vec<(u64, LayoutRec)>, MetaError> {
    let start = key::layout(after.saturating_add(1));
    retry(engine, &RetryPolicy::default(), |txn| {
        txn.scan(&start, b"Z", limit)?
            .iter()
            .map(|kv| {
                let id = kv.key[1..]
                    .try_into()
                    .map(u64::from_be_bytes)
                    .map_err(|_| MetaError::Corrupt("a layout key".into()))?;
                Ok((id, decode("layout", &kv.value)?))
            })
            .collect()
    })
}

/// What one management pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ManageReport {
    /// Whether this caller holds the role.
    pub holder: bool,
    /// Targets found silent and taken offline.
    pub offline: Vec<u32>,
    /// Targets back, now syncing.
    pub syncing: Vec<u32>,
    /// (target, chain) now serving again.
    pub serving: Vec<(u32, u32)>,
}

/// One management pass by `holder` (a random id per process): takes or
/// renews the role if free, then brings the chains in line with the
/// targets' leases.
pub fn manage(engine: &dyn KvEngine, holder: u64) -> Result<ManageReport, MetaError> {
    let now = now_ms();
    retry(engine, &RetryPolicy::default(), |txn| {
        let mut report = ManageReport::default();
        if let Some(bytes) = txn.get(key::MANAGER)? {
            let lease: ManagerLease = decode("management lease", &bytes)?;
            if lease.holder != holder && lease.until_ms > now {
                return Ok(report);
            }
        }
        report.holder = true;
        txn.put(
            key::MANAGER.to_vec(),
            encode(&ManagerLease {
                holder,
                until_ms: now + MANAGER_LEASE.as_millis() as u64,
            }),
        );
        let mut chains = read_chains(txn)?;
        let mut changed = false;
        for mut t in read_targets(txn)? {
            let alive = t.lease_until_ms > now;
            if t.up && !alive {
                t.up = false;
                report.offline.push(t.id);
                for c in &mut chains.chains {
                    // A chain's last serving member stays: it has every
                    // committed update, and a chain without one could
                    // never be synced again.
                    let last = c.state_of(t.id) == Some(MemberState::Serving) && c.readers().count() == 1;
                    if !last {
                        changed |= c.set_state(t.id, MemberState::Offline);
                    }
                }
                txn.put(key::target(t.id), encode(&t));
            } else if !t.up && alive {
                t.up = true;
                report.syncing.push(t.id);
                for c in &mut chains.chains {
                    if c.state_of(t.id) == Some(MemberState::Offline) {
                        changed |= c.set_state(t.id, MemberState::Syncing);
                    }
                }
                txn.put(key::target(t.id), encode(&t));
            }
            if t.up {
                for c in &mut chains.chains {
                    let done = t.synced.iter().any(|&(id, v)| id == c.id && v == c.version);
                    if done && c.state_of(t.id) == Some(MemberState::Syncing) {
                        changed |= c.set_state(t.id, MemberState::Serving);
                        report.serving.push((t.id, c.id));
                    }
                }
            }
        }
        if changed {
            chains.version += 1;
            txn.put(key::CHAINS.to_vec(), encode(&chains));
        }
        Ok(report)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::mem::MemEngine;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn layouts_spread_over_chains_of_three_and_reuse_them() {
        let e = MemEngine::new();
        for i in 1..=4u8 {
            assert_eq!(
                register(&e, [i; 16], addr(1000 + u16::from(i))).unwrap(),
                u32::from(i)
            );
        }
        // Registering again keeps the id.
        assert_eq!(register(&e, [2; 16], addr(2002)).unwrap(), 2);
        let a = layout(&e, 10, None).unwrap();
        assert_eq!(a.replicas, 3);
        assert_eq!(a.chains.len(), 4);
        let t = table(&e).unwrap();
        assert_eq!(t.chains.chains.len(), 4);
        assert_eq!(t.addr(2), Some(addr(2002)));
        for c in &t.chains.chains {
            assert_eq!(c.members.len(), 3);
        }
        // Another layout reuses the same four chains, in another order.
        let b = layout(&e, 11, None).unwrap();
        assert_eq!(table(&e).unwrap().chains.chains.len(), 4);
        assert_ne!(a.chains, b.chains);
        // Asked again: the same.
        assert_eq!(layout(&e, 10, None).unwrap(), a);
        assert_eq!(layout(&e, 12, Some(1)).unwrap().replicas, 1);
        // Listed in order, in pages; forgotten ones gone.
        let all: Vec<u64> = layouts(&e, 0, 100).unwrap().iter().map(|(l, _)| *l).collect();
        assert_eq!(all, vec![10, 11, 12]);
        assert_eq!(layouts(&e, 10, 1).unwrap()[0].0, 11);
        forget_layout(&e, 11).unwrap();
        assert_eq!(get_layout(&e, 11).unwrap(), None);
        assert_eq!(layouts(&e, 0, 100).unwrap().len(), 2);
    }

    #[test]
    fn a_layout_waits_while_every_target_is_offline_and_fails_without_targets() {
        let e = MemEngine::new();
        let errno = |r: Result<LayoutRec, MetaError>| match r {
            Err(MetaError::Errno(n)) => n,
            other => panic!("{other:?}"),
        };
        assert_eq!(errno(layout(&e, 5, None)), libc::ENOSPC, "no target at all");
        register(&e, [1; 16], addr(1001)).unwrap();
        assert!(manage(&e, 1).unwrap().holder);
        retry(&e, &RetryPolicy::default(), |txn| {
            let mut t: TargetRec = decode("target", &txn.get(&key::target(1))?.unwrap())?;
            t.lease_until_ms = 1;
            txn.put(key::target(1), encode(&t));
            Ok::<_, MetaError>(())
        })
        .unwrap();
        assert_eq!(manage(&e, 1).unwrap().offline, vec![1]);
        assert_eq!(
            errno(layout(&e, 5, None)),
            libc::EAGAIN,
            "its only target is offline"
        );
        heartbeat(&e, &[1], &[]).unwrap();
        manage(&e, 1).unwrap();
        assert_eq!(layout(&e, 5, None).unwrap().replicas, 1);
    }

    #[test]
    fn a_silent_target_goes_offline_and_comes_back_through_syncing() {
        let e = MemEngine::new();
        for i in 1..=3u8 {
            register(&e, [i; 16], addr(1000 + u16::from(i))).unwrap();
        }
        let l = layout(&e, 7, None).unwrap();
        let chain = |t: &Table| t.chain(l.chains[0]).unwrap().clone();
        let before = chain(&table(&e).unwrap());
        assert!(manage(&e, 1).unwrap().holder);
        // Another holder is refused while the lease lasts.
        assert!(!manage(&e, 2).unwrap().holder);
        // Target 2's lease runs out.
        retry(&e, &RetryPolicy::default(), |txn| {
            let mut t: TargetRec = decode("target", &txn.get(&key::target(2))?.unwrap())?;
            t.lease_until_ms = 1;
            txn.put(key::target(2), encode(&t));
            Ok::<_, MetaError>(())
        })
        .unwrap();
        let r = manage(&e, 1).unwrap();
        assert_eq!(r.offline, vec![2]);
        let after = chain(&table(&e).unwrap());
        assert!(after.version > before.version);
        assert_eq!(after.members.last().unwrap().target, 2);
        assert_eq!(after.state_of(2), Some(MemberState::Offline));
        assert_ne!(after.head(), Some(2));
        assert_ne!(after.tail(), Some(2));
        // It comes back: syncing, then serving once it says it synced.
        heartbeat(&e, &[2], &[]).unwrap();
        assert_eq!(manage(&e, 1).unwrap().syncing, vec![2]);
        let syncing = chain(&table(&e).unwrap());
        assert_eq!(syncing.state_of(2), Some(MemberState::Syncing));
        assert_eq!(syncing.readers().count(), 2);
        heartbeat(&e, &[2], &[(2, syncing.id, syncing.version)]).unwrap();
        let r = manage(&e, 1).unwrap();
        assert!(r.serving.contains(&(2, syncing.id)));
        assert_eq!(chain(&table(&e).unwrap()).state_of(2), Some(MemberState::Serving));
    }
}
