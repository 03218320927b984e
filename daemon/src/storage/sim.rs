//! A seeded, deterministic simulation of the chain protocol, on the real
//! [`Target`] code: four targets on their own chunk engines, two chains of
//! three, one client, and a simulated network that loses requests, loses
//! replies after delivering them, delivers twice, and, while a request is
//! in flight down a chain, runs another client operation (a read of any
//! chunk, or a write of another one) so reads meet updates half-way down.
//! Between operations, targets crash and restart (losing what they held
//! in memory), go offline (moved to the end of their chains), come back
//! (syncing from the tail, then serving), and learn of the new chain table
//! late.
//!
//! Each chunk holds one number. Every operation is recorded with the
//! simulated times it was invoked and answered (or never, if the client
//! gave up: a write that may or may not have happened), and each chunk's
//! history is checked for linearizability (a Wing–Gong search: some order
//! of the operations, consistent with their times, in which every read
//! returns the last write before it). At the end, every serving member of
//! a chain holds the same version and bytes of every chunk.
//!
//! Everything runs on one thread, every choice comes from one seeded
//! generator: a failure prints its seed and
//! `XFUSE_CHAIN_SEED=<seed> cargo test -p xfused --lib storage::sim` replays it
//! (`XFUSE_CHAIN_SEEDS=N` runs seeds 1 to N instead of the usual 40).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use super::engine::{ChunkEngine, ChunkId};
use super::target::Target;
use super::transport::{self, DataTransport};
use super::{ChunkOp, StorageReply, StorageRequest, UpdateId};
use crate::cluster::{ChainRec, Chains, Member, MemberState, Table, TargetRec};
use crate::rpc::client::CallError;
use crate::rpc::codec;

const TARGETS: u32 = 4;
const CHUNKS: u64 = 4;
const LAYOUT: u64 = 1;
const TRIES: usize = 12;

use crate::sim_rng::Rng;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn addr(target: u32) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 10_000 + target as u16))
}

fn chain_of(index: u64) -> u32 {
    (index % 2) as u32 + 1
}

/// Numbers a chunk holds (8 bytes each, at 8 * slot): writes set one,
/// so an update lost under a later one shows.
const SLOTS: usize = 4;

/// A write the client has not yet heard back about.
#[derive(Debug)]
struct Deferred {
    index: u64,
    /// Its place in the chunk's history.
    at: usize,
    id: UpdateId,
    op: ChunkOp,
    payload: Vec<u8>,
    label: String,
}

/// One client operation on a chunk.
#[derive(Debug, Clone)]
struct Op {
    write: bool,
    /// A write's slot (`None`: the chunk is cut to nothing).
    slot: Option<usize>,
    /// A write's number, or what a read saw.
    value: [u64; SLOTS],
    invoked: u64,
    /// `None`: never answered (a write that may have happened).
    answered: Option<u64>,
}

struct Sim {
    rng: Mutex<Rng>,
    engines: HashMap<u32, PathBuf>,
    targets: Mutex<HashMap<u32, Arc<Target>>>,
    down: Mutex<HashSet<u32>>,
    /// Management's table.
    truth: Mutex<Arc<Table>>,
    /// Targets that have not yet heard of the current table.
    late: Mutex<HashSet<u32>>,
    client_table: Mutex<Arc<Table>>,
    deferred: Mutex<Vec<Deferred>>,
    history: Mutex<HashMap<u64, Vec<Op>>>,
    clock: AtomicU64,
    depth: AtomicU32,
    seq: AtomicU64,
    value: AtomicU64,
    trace: Mutex<Vec<String>>,
    /// What happened, counted (so a run that did nothing shows).
    counts: Mutex<HashMap<&'static str, u64>>,
    me: Weak<Sim>,
}

/// The network as the targets see it.
struct Net(Weak<Sim>);

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Net")
    }
}

impl DataTransport for Net {
    fn call(
        &self,
        addr: SocketAddr,
        message: &[u8],
        payload: &[u8],
        _reply_max: usize,
        _timeout: Duration,
    ) -> Result<(Vec<u8>, Vec<u8>), CallError> {
        self.0
            .upgrade()
            .expect("the simulation")
            .deliver(addr, message, payload)
    }
}

fn lost(what: &str) -> CallError {
    CallError::Lost(std::io::Error::other(what.to_string()))
}

fn not_sent(what: &str) -> CallError {
    CallError::NotSent(std::io::Error::other(what.to_string()))
}

impl Sim {
    fn new(seed: u64, dir: &std::path::Path) -> Arc<Sim> {
        let mut engines = HashMap::new();
        for t in 1..=TARGETS {
            let d = dir.join(format!("t{t}"));
            std::fs::create_dir_all(&d).unwrap();
            engines.insert(t, d);
        }
        let member = |target| Member {
            target,
            state: MemberState::Serving,
        };
        let chains = Chains {
            version: 1,
            chains: vec![
                ChainRec {
                    id: 1,
                    version: 1,
                    initial: vec![1, 2, 3],
                    members: vec![member(1), member(2), member(3)],
                },
                ChainRec {
                    id: 2,
                    version: 1,
                    initial: vec![2, 3, 4],
                    members: vec![member(2), member(3), member(4)],
                },
            ],
        };
        let table = Arc::new(Table {
            chains,
            targets: (1..=TARGETS)
                .map(|id| TargetRec {
                    id,
                    uuid: [id as u8; 16],
                    addr: addr(id),
                    lease_until_ms: u64::MAX,
                    up: true,
                    synced: Vec::new(),
                })
                .collect(),
        });
        let sim = Arc::new_cyclic(|me: &Weak<Sim>| Sim {
            rng: Mutex::new(Rng(seed)),
            engines,
            targets: Mutex::new(HashMap::new()),
            down: Mutex::new(HashSet::new()),
            truth: Mutex::new(table.clone()),
            late: Mutex::new(HashSet::new()),
            client_table: Mutex::new(table),
            deferred: Mutex::new(Vec::new()),
            history: Mutex::new(HashMap::new()),
            clock: AtomicU64::new(0),
            depth: AtomicU32::new(0),
            seq: AtomicU64::new(1),
            value: AtomicU64::new(1),
            trace: Mutex::new(Vec::new()),
            counts: Mutex::new(HashMap::new()),
            me: me.clone(),
        });
        for t in 1..=TARGETS {
            sim.boot(t);
        }
        sim
    }

    fn note(&self, line: String) {
        lock(&self.trace).push(line);
    }

    fn count(&self, what: &'static str) {
        *lock(&self.counts).entry(what).or_default() += 1;
    }

    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::SeqCst)
    }

    fn rand(&self, n: u64) -> u64 {
        lock(&self.rng).below(n as usize) as u64
    }

    fn chance(&self, percent: u64) -> bool {
        lock(&self.rng).chance(percent)
    }

    /// A target (re)starts: nothing of what it held in memory survives.
    fn boot(&self, t: u32) {
        let engine = ChunkEngine::open(&self.engines[&t], 3).unwrap();
        let target = Arc::new(Target::new(t, engine, Arc::new(Net(self.me.clone()))).without_pauses());
        target.set_table(lock(&self.truth).clone());
        lock(&self.targets).insert(t, target);
        lock(&self.late).remove(&t);
    }

    fn target(&self, t: u32) -> Arc<Target> {
        lock(&self.targets)[&t].clone()
    }

    fn deliver(
        &self,
        to: SocketAddr,
        message: &[u8],
        payload: &[u8],
    ) -> Result<(Vec<u8>, Vec<u8>), CallError> {
        let t = u32::from(to.port() - 10_000);
        let req: StorageRequest = codec::decode(message).expect("requests decode");
        if lock(&self.down).contains(&t) {
            return Err(not_sent("target down"));
        }
        if self.chance(4) {
            self.note(format!("lost before delivery: {req:?} to {t}"));
            return Err(not_sent("lost"));
        }
        // While it travels, another operation runs (not another update of
        // the same chunk: the head holds it).
        if self.depth.load(Ordering::SeqCst) == 0 && self.chance(25) {
            self.depth.fetch_add(1, Ordering::SeqCst);
            self.count("operations run while a request travels");
            let busy = match &req {
                StorageRequest::Update { chunk, .. } | StorageRequest::Forward { chunk, .. } => {
                    Some(chunk.index)
                }
                _ => None,
            };
            let index = match busy {
                // Reads of the chunk in flight are the interesting ones.
                Some(b) if self.chance(70) => b,
                _ => self.rand(CHUNKS),
            };
            if self.chance(60) || busy == Some(index) || busy.is_none() {
                self.read(index);
            } else {
                self.write(index);
            }
            self.depth.fetch_sub(1, Ordering::SeqCst);
        }
        let target = self.target(t);
        let answer = target.handle(req.clone(), payload.to_vec());
        if self.chance(3) {
            // Delivered twice: the second answer is the one that returns.
            self.note(format!("duplicated: {req:?} to {t}"));
            let again = target.handle(req.clone(), payload.to_vec());
            return Self::reply(again);
        }
        if self.chance(4) {
            self.note(format!("reply lost: {req:?} to {t} -> {answer:?}"));
            return Err(lost("reply lost"));
        }
        Self::reply(answer)
    }

    fn reply(answer: Result<(StorageReply, Vec<u8>), i32>) -> Result<(Vec<u8>, Vec<u8>), CallError> {
        match answer {
            Ok((reply, bulk)) => Ok((codec::encode(&reply), bulk)),
            Err(errno) => Err(CallError::Remote(errno)),
        }
    }

    fn refresh_client(&self) {
        *lock(&self.client_table) = lock(&self.truth).clone();
    }

    fn record(&self, index: u64, op: Op) -> usize {
        let mut h = lock(&self.history);
        let ops = h.entry(index).or_default();
        ops.push(op);
        ops.len() - 1
    }

    fn answer(&self, index: u64, at: usize, value: Option<[u64; SLOTS]>) {
        let now = self.tick();
        let mut h = lock(&self.history);
        let op = &mut h.get_mut(&index).unwrap()[at];
        op.answered = Some(now);
        if let Some(v) = value {
            op.value = v;
        }
    }

    fn chunk(index: u64) -> ChunkId {
        ChunkId {
            layout: LAYOUT,
            index,
        }
    }

    /// A client write of a fresh value (or a cut to nothing: value 0).
    fn write(&self, index: u64) {
        let remove = self.chance(10);
        let value = if remove {
            0
        } else {
            self.value.fetch_add(1, Ordering::SeqCst)
        };
        let slot = (!remove).then(|| self.rand(SLOTS as u64) as usize);
        let id = UpdateId {
            client: 1,
            seq: self.seq.fetch_add(1, Ordering::SeqCst),
        };
        let at = self.record(
            index,
            Op {
                write: true,
                slot,
                value: [value; SLOTS],
                invoked: self.tick(),
                answered: None,
            },
        );
        let (op, payload) = match slot {
            None => (ChunkOp::Truncate { len: 0 }, Vec::new()),
            Some(slot) => (
                ChunkOp::Write {
                    offset: (slot * 8) as u32,
                },
                value.to_le_bytes().to_vec(),
            ),
        };
        self.drive(Deferred {
            index,
            at,
            id,
            op,
            payload,
            label: format!("write {index} [{slot:?}] = {value}"),
        });
    }

    /// Sends a write until it is done; after a failure the client may
    /// come back to it later (other operations run meanwhile), under the
    /// same update id.
    fn drive(&self, w: Deferred) {
        for _ in 0..TRIES {
            let table = lock(&self.client_table).clone();
            let chain = table.chain(chain_of(w.index)).unwrap().clone();
            let Some(head) = chain.head() else {
                self.refresh_client();
                continue;
            };
            let request = StorageRequest::Update {
                target: head,
                chain: chain.reference(),
                chunk: Self::chunk(w.index),
                op: w.op,
                id: w.id,
                sync: false,
            };
            match transport::call::<StorageReply>(
                &Net(self.me.clone()),
                addr(head),
                &request,
                &w.payload,
                Duration::ZERO,
            ) {
                Ok((StorageReply::Done { .. }, _)) => {
                    self.answer(w.index, w.at, None);
                    self.count("writes done");
                    self.note(format!("{}: done", w.label));
                    return;
                }
                Ok(other) => panic!("an update answered {other:?}"),
                Err(CallError::Remote(libc::ESTALE | libc::EAGAIN))
                | Err(CallError::NotSent(_))
                | Err(CallError::Lost(_)) => {
                    self.refresh_client();
                    if self.depth.load(Ordering::SeqCst) == 0 && self.chance(40) {
                        self.count("writes resumed later");
                        self.note(format!("{}: failed, resumed later", w.label));
                        lock(&self.deferred).push(w);
                        return;
                    }
                }
                Err(CallError::Remote(e)) => panic!("an update failed with errno {e}"),
            }
        }
        self.count("writes given up");
        self.note(format!("{}: gave up", w.label));
    }

    /// A client read from a serving member.
    fn read(&self, index: u64) {
        let invoked = self.tick();
        for _ in 0..TRIES {
            let table = lock(&self.client_table).clone();
            let chain = table.chain(chain_of(index)).unwrap().clone();
            let readers: Vec<u32> = chain.readers().collect();
            if readers.is_empty() {
                self.refresh_client();
                continue;
            }
            let member = readers[self.rand(readers.len() as u64) as usize];
            let request = StorageRequest::Read {
                target: member,
                chain: chain.reference(),
                chunk: Self::chunk(index),
                offset: 0,
                len: (SLOTS * 8) as u32,
            };
            match transport::call::<StorageReply>(
                &Net(self.me.clone()),
                addr(member),
                &request,
                &[],
                Duration::ZERO,
            ) {
                Ok((StorageReply::Data { .. }, bytes)) => {
                    if bytes.len() % 8 != 0 || bytes.len() > SLOTS * 8 {
                        panic!("a read of chunk {index} returned {} bytes", bytes.len());
                    }
                    let mut value = [0u64; SLOTS];
                    for (i, b) in bytes.chunks(8).enumerate() {
                        value[i] = u64::from_le_bytes(b.try_into().unwrap());
                    }
                    let at = self.record(
                        index,
                        Op {
                            write: false,
                            slot: None,
                            value,
                            invoked,
                            answered: None,
                        },
                    );
                    self.answer(index, at, Some(value));
                    self.count("reads done");
                    self.note(format!("read {index} at {member} = {value:?}"));
                    return;
                }
                Ok(other) => panic!("a read answered {other:?}"),
                Err(CallError::Remote(libc::ESTALE | libc::EAGAIN))
                | Err(CallError::NotSent(_))
                | Err(CallError::Lost(_)) => {
                    self.refresh_client();
                }
                Err(CallError::Remote(e)) => panic!("a read failed with errno {e}"),
            }
        }
    }

    /// Management changed the table: targets hear of it now, or (some of
    /// them) at the next step.
    fn publish(&self, table: Table) {
        let table = Arc::new(Table {
            chains: Chains {
                version: table.chains.version + 1,
                chains: table.chains.chains,
            },
            targets: table.targets,
        });
        *lock(&self.truth) = table.clone();
        for t in 1..=TARGETS {
            if self.chance(30) {
                lock(&self.late).insert(t);
            } else {
                self.target(t).set_table(table.clone());
            }
        }
    }

    fn catch_up(&self) {
        let truth = lock(&self.truth).clone();
        for t in lock(&self.late).drain().collect::<Vec<_>>() {
            self.target(t).set_table(truth.clone());
        }
    }

    fn set_state(&self, t: u32, state: MemberState) {
        let mut table = (**lock(&self.truth)).clone();
        for c in &mut table.chains.chains {
            if c.state_of(t).is_some() {
                let mut members: Vec<Member> = c.members.iter().filter(|m| m.target != t).copied().collect();
                let rank = |s: MemberState| match s {
                    MemberState::Serving => 0,
                    MemberState::Syncing => 1,
                    MemberState::Offline => 2,
                };
                let pos = members
                    .iter()
                    .position(|m| rank(m.state) > rank(state))
                    .unwrap_or(members.len());
                members.insert(pos, Member { target: t, state });
                c.members = members;
                c.version += 1;
            }
        }
        self.publish(table);
    }

    fn step(&self) {
        self.catch_up();
        let waiting = lock(&self.deferred).len() as u64;
        if waiting > 0 && self.chance(20) {
            let w = lock(&self.deferred).remove(self.rand(waiting) as usize);
            self.drive(w);
            return;
        }
        let roll = self.rand(100);
        let t = self.rand(u64::from(TARGETS)) as u32 + 1;
        let down = lock(&self.down).contains(&t);
        if roll < 45 {
            self.write(self.rand(CHUNKS));
        } else if roll < 80 {
            self.read(self.rand(CHUNKS));
        } else if roll < 88 {
            if !down {
                self.count("crashes");
                self.note(format!("target {t} crashes and restarts"));
                self.boot(t);
            }
        } else if roll < 94 {
            // Offline, if every chain keeps a serving member.
            let truth = lock(&self.truth).clone();
            let keeps = truth
                .chains
                .chains
                .iter()
                .all(|c| c.state_of(t) != Some(MemberState::Serving) || c.readers().count() > 1);
            if !down && keeps {
                self.count("targets offline");
                self.note(format!("target {t} goes offline"));
                lock(&self.down).insert(t);
                self.set_state(t, MemberState::Offline);
            }
        } else if down {
            self.count("targets back");
            self.note(format!("target {t} comes back"));
            lock(&self.down).remove(&t);
            self.boot(t);
            self.set_state(t, MemberState::Syncing);
            self.catch_up();
            let truth = lock(&self.truth).clone();
            let target = self.target(t);
            let mut synced = true;
            for c in truth.chains.chains.iter().filter(|c| c.state_of(t).is_some()) {
                if let Err(e) = target.sync_chain(c) {
                    self.note(format!("target {t}: sync of chain {}: {e}", c.id));
                    synced = false;
                }
            }
            if synced && *lock(&self.truth) == truth {
                self.set_state(t, MemberState::Serving);
            }
        }
    }

    /// Brings every target back and synced, with no faults.
    fn settle(&self) {
        for t in 1..=TARGETS {
            if lock(&self.down).remove(&t) {
                self.boot(t);
                self.set_state(t, MemberState::Syncing);
            }
        }
        self.catch_up();
        for _ in 0..4 {
            let truth = lock(&self.truth).clone();
            let mut all = true;
            for t in 1..=TARGETS {
                for c in truth
                    .chains
                    .chains
                    .iter()
                    .filter(|c| c.state_of(t) == Some(MemberState::Syncing))
                {
                    all &= self.target(t).sync_chain(c).is_ok();
                }
            }
            if all {
                for t in 1..=TARGETS {
                    if truth
                        .chains
                        .chains
                        .iter()
                        .any(|c| c.state_of(t) == Some(MemberState::Syncing))
                    {
                        self.set_state(t, MemberState::Serving);
                    }
                }
                self.catch_up();
                return;
            }
        }
    }
}

/// Whether `ops` (one chunk's) can be ordered as a sequence of reads and
/// writes of one register that respects their times. Unanswered writes may
/// be left out.
fn linearizable(ops: &[Op]) -> bool {
    assert!(
        ops.len() <= 128,
        "a history of {} operations is too long to check",
        ops.len()
    );
    type State = [u64; SLOTS];
    fn search(ops: &[Op], left: u128, value: State, seen: &mut HashSet<(u128, State)>) -> bool {
        // Done when only unanswered writes are left.
        if (0..ops.len()).all(|i| left & (1 << i) == 0 || ops[i].answered.is_none()) {
            return true;
        }
        if !seen.insert((left, value)) {
            return false;
        }
        // The earliest answer among the remaining: nothing invoked after it
        // can come first.
        let horizon = (0..ops.len())
            .filter(|i| left & (1 << i) != 0)
            .filter_map(|i| ops[i].answered)
            .min()
            .unwrap_or(u64::MAX);
        for i in 0..ops.len() {
            if left & (1 << i) == 0 || ops[i].invoked > horizon {
                continue;
            }
            let op = &ops[i];
            let next = if op.write {
                match op.slot {
                    None => [0; SLOTS],
                    Some(slot) => {
                        let mut next = value;
                        next[slot] = op.value[slot];
                        next
                    }
                }
            } else if op.value == value {
                value
            } else {
                continue;
            };
            if search(ops, left & !(1 << i), next, seen) {
                return true;
            }
        }
        false
    }
    let all = if ops.len() == 128 {
        u128::MAX
    } else {
        (1u128 << ops.len()) - 1
    };
    search(ops, all, [0; SLOTS], &mut HashSet::new())
}

fn run_seed(seed: u64, steps: usize) -> HashMap<&'static str, u64> {
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::new(seed, dir.path());
    let fail = |what: String| -> ! {
        let trace = lock(&sim.trace);
        let tail: Vec<&String> = trace
            .iter()
            .rev()
            .take(60)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        panic!(
            "seed {seed}: {what}\nlast events:\n{}\nreplay: XFUSE_CHAIN_SEED={seed} cargo test -p xfused --lib storage::sim",
            tail.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n")
        )
    };
    for _ in 0..steps {
        sim.step();
        // Keep histories within the checker's reach.
        if lock(&sim.history).values().any(|h| h.len() >= 120) {
            break;
        }
    }
    for (index, ops) in lock(&sim.history).iter() {
        if !linearizable(ops) {
            fail(format!(
                "chunk {index}: the history is not linearizable: {ops:#?}"
            ));
        }
    }
    // Quiet, every member back: the replicas agree.
    sim.settle();
    let truth = lock(&sim.truth).clone();
    for index in 0..CHUNKS {
        let chain = truth.chain(chain_of(index)).unwrap();
        let copies: Vec<(u32, u64, Vec<u8>)> = chain
            .readers()
            .map(|t| {
                let (bytes, meta) = sim.target(t).engine().read_all(Sim::chunk(index)).unwrap();
                (t, meta.version, bytes)
            })
            .collect();
        if copies.windows(2).any(|w| (w[0].1, &w[0].2) != (w[1].1, &w[1].2)) {
            fail(format!(
                "chunk {index}: serving members disagree: {copies:?} ({chain:?})"
            ));
        }
    }
    let counts = lock(&sim.counts).clone();
    counts
}

#[test]
fn the_chain_protocol_is_linearizable_under_faults() {
    if let Some(seed) = std::env::var("XFUSE_CHAIN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        run_seed(seed, 300);
        return;
    }
    let mut total: HashMap<&str, u64> = HashMap::new();
    // XFUSE_CHAIN_SEEDS=N runs seeds 1..=N (default 40).
    let seeds = std::env::var("XFUSE_CHAIN_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40u64);
    for seed in 1..=seeds {
        for (what, n) in run_seed(seed, 300) {
            *total.entry(what).or_default() += n;
        }
    }
    eprintln!("{total:?}");
    // The runs did what they are for.
    for what in [
        "writes done",
        "reads done",
        "crashes",
        "targets offline",
        "targets back",
        "operations run while a request travels",
    ] {
        assert!(total.get(what).copied().unwrap_or(0) >= 40, "{what}: {total:?}");
    }
}

#[test]
fn the_checker_refuses_a_stale_read() {
    let write = |slot, value, invoked, answered| Op {
        write: true,
        slot: Some(slot),
        value: [value; SLOTS],
        invoked,
        answered,
    };
    let read = |value: [u64; SLOTS], invoked, answered| Op {
        write: false,
        slot: None,
        value,
        invoked,
        answered: Some(answered),
    };
    // w1 done, then a read without it: stale.
    assert!(!linearizable(&[
        write(0, 1, 0, Some(1)),
        read([0, 0, 0, 0], 2, 3)
    ]));
    assert!(linearizable(&[write(0, 1, 0, Some(1)), read([1, 0, 0, 0], 2, 3)]));
    // Concurrent: either.
    assert!(linearizable(&[write(0, 1, 0, Some(5)), read([0, 0, 0, 0], 1, 2)]));
    assert!(linearizable(&[write(0, 1, 0, Some(5)), read([1, 0, 0, 0], 1, 2)]));
    // New, then old again: not.
    assert!(!linearizable(&[
        write(0, 1, 0, Some(9)),
        read([1, 0, 0, 0], 1, 2),
        read([0, 0, 0, 0], 3, 4)
    ]));
    // A write in another slot that loses an earlier one: not.
    assert!(!linearizable(&[
        write(0, 1, 0, Some(1)),
        write(1, 2, 2, Some(3)),
        read([0, 2, 0, 0], 4, 5)
    ]));
    // An unanswered write may have happened, or not.
    assert!(linearizable(&[write(2, 7, 0, None), read([0, 0, 7, 0], 2, 3)]));
    assert!(linearizable(&[write(2, 7, 0, None), read([0, 0, 0, 0], 2, 3)]));
}
