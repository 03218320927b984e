//! The adaptive cache policy: entry and attribute timeouts per inode, short
//! by default and long for inodes the kernel keeps asking about, kept
//! coherent by notify-invalidate.
//!
//! The kernel answers LOOKUP and GETATTR from its own dentry and attribute
//! caches until the timeouts the server gave expire. A fixed short timeout
//! (1 s) bounds staleness for changes the kernel cannot see but makes a
//! repeated `stat` of a large tree a round trip per file per second. This
//! module gives long timeouts ([`AdaptiveConfig::long_ttl`]) to the inodes
//! that an [`UpcallSource`] (in xfused: the BPF counters of `xfuse-ebpf`)
//! shows getting repeated LOOKUP/GETATTR upcalls and no recent change, at
//! most [`AdaptiveConfig::long_inodes_max`] of them, and short timeouts to
//! everything else.
//!
//! Coherence contract: an inode that may hold a long timeout in the kernel
//! is in the long set until its timeout has surely expired. Every change to
//! it that the daemon makes or learns of demotes it and invalidates the
//! kernel's copy *before* the change is acknowledged:
//!
//! - changes that arrive as requests through the mount (SETATTR, WRITE,
//!   FALLOCATE, xattr changes, and the parents of UNLINK, RMDIR, RENAME, LINK
//!   and creations): [`AdaptiveFs`], the layer the dispatcher puts on the
//!   filesystem, calls [`AdaptiveTtl::changed_by_request`] once the
//!   filesystem has made the change, before the dispatcher replies. It
//!   sends `FUSE_NOTIFY_INVAL_INODE` for attributes only: from inside a handler, invalidating data or entries could wait
//!   for locks the kernel holds until that very reply (see [`Notifier`]).
//!   The names a request changes, the kernel updates itself (`d_move`,
//!   `d_delete`), and it drops the attributes of the inodes it knows a
//!   request touched (a rename's or unlink's victim, a link's target).
//! - changes the daemon makes or learns of outside the kernel's requests
//!   (through [`Changes`], or another client of a distributed filesystem):
//!   [`AdaptiveTtl::inode_changed`] and [`AdaptiveTtl::entry_changed`] send
//!   `FUSE_NOTIFY_INVAL_INODE` (attributes and data) and
//!   `FUSE_NOTIFY_INVAL_ENTRY`, whatever timeout the kernel holds.
//!
//! Hot directories also get their listings cached across opens
//! (`FOPEN_CACHE_DIR | FOPEN_KEEP_CACHE` on OPENDIR): the kernel resets that
//! cache itself when a request changes the directory, and the outside-change
//! invalidations above drop it.
//!
//! Decisions are made in [`AdaptiveTtl::refresh`] from cumulative upcall
//! counts and an explicit `now`, so they are unit-tested without BPF or
//! clocks; [`Refresher`] calls it periodically from a thread.

use std::collections::{HashMap, HashSet};
use std::ffi::CStr;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fuse_backend_rs::api::filesystem::{Context, FileSystem, SetattrValid};

use crate::notify::Notifier;
use crate::reply::DataReader;

mod fs;

pub use fs::AdaptiveFs;

/// Cumulative LOOKUP and GETATTR upcalls about one inode of one mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upcalls {
    /// The FUSE node id.
    pub nodeid: u64,
    /// LOOKUPs and GETATTRs counted since the source started (it may
    /// restart from zero for an inode it dropped).
    pub total: u64,
}

/// Where upcall counts come from: the BPF maps in xfused, a fake in tests.
pub trait UpcallSource: Send {
    /// Current cumulative counts of the inodes the source tracks.
    fn read(&mut self) -> io::Result<Vec<Upcalls>>;
}

/// Where invalidations go: the session's [`Notifier`], or a recorder in
/// tests.
pub trait Invalidator: Send + Sync + std::fmt::Debug {
    /// As [`Notifier::inval_inode`].
    fn inval_inode(&self, ino: u64, offset: i64, len: i64) -> io::Result<()>;
    /// As [`Notifier::inval_entry`].
    fn inval_entry(&self, parent: u64, name: &[u8]) -> io::Result<()>;
}

impl Invalidator for Notifier {
    fn inval_inode(&self, ino: u64, offset: i64, len: i64) -> io::Result<()> {
        Notifier::inval_inode(self, ino, offset, len)
    }
    fn inval_entry(&self, parent: u64, name: &[u8]) -> io::Result<()> {
        Notifier::inval_entry(self, parent, name)
    }
}

/// Tuning of the adaptive policy. Times are bounds, not promises: an inode
/// is reconsidered at the next [`AdaptiveTtl::refresh`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdaptiveConfig {
    /// Entry timeout of inodes not in the long set.
    pub short_entry_ttl: Duration,
    /// Attribute timeout of inodes not in the long set.
    pub short_attr_ttl: Duration,
    /// Entry and attribute timeout of inodes in the long set.
    pub long_ttl: Duration,
    /// Upcalls within [`hot_window`](Self::hot_window) that make an inode hot.
    pub hot_upcalls_min: u64,
    /// The window over which upcalls are summed.
    pub hot_window: Duration,
    /// An inode changed this recently is not promoted.
    pub quiet_after_change: Duration,
    /// Most inodes in the long set; beyond it, hotter candidates replace the
    /// coolest members (which are invalidated).
    pub long_inodes_max: usize,
    /// Most inodes whose counts are remembered between refreshes.
    pub tracked_inodes_max: usize,
}

impl Default for AdaptiveConfig {
    fn default() -> Self {
        AdaptiveConfig {
            short_entry_ttl: Duration::from_secs(1),
            short_attr_ttl: Duration::from_secs(1),
            long_ttl: Duration::from_secs(300),
            hot_upcalls_min: 2,
            hot_window: Duration::from_secs(30),
            quiet_after_change: Duration::from_secs(5),
            long_inodes_max: 32_768,
            tracked_inodes_max: 65_536,
        }
    }
}

/// What the policy remembers of one inode's upcalls.
#[derive(Debug, Clone, Copy)]
struct Tracked {
    last_total: u64,
    window_start: Instant,
    recent: u64,
    last_upcall: Instant,
}

/// A member of the long set.
#[derive(Debug, Clone, Copy)]
struct Long {
    /// Upcalls in the window that promoted it (eviction order).
    score: u64,
    /// Promotion, or the last upcall seen since: the kernel's long timeout
    /// ends at most `long_ttl` after the later of the two.
    since: Instant,
}

#[derive(Debug, Default)]
struct State {
    tracked: HashMap<u64, Tracked>,
    changed: HashMap<u64, Instant>,
}

/// Counters of what the policy did, for reports and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AdaptiveStats {
    /// Inodes in the long set now.
    pub long_inodes: usize,
    /// Promotions so far.
    pub promoted: u64,
    /// Demotions by a change.
    pub demoted_by_change: u64,
    /// Demotions because the kernel stopped asking, or a hotter inode
    /// needed the room.
    pub demoted_idle: u64,
    /// Invalidations sent to the kernel.
    pub invalidations: u64,
    /// Invalidations the kernel refused (other than "not cached").
    pub invalidation_errors: u64,
    /// LOOKUP and GETATTR upcalls the refreshes counted (the growth of the
    /// source's per-inode counts; an inode the policy stopped tracking
    /// counts from zero again when it returns).
    pub upcalls: u64,
}

/// Per-inode timeouts for one mount. Shared by the dispatcher's
/// [`AdaptiveFs`] layer (reads, on every reply carrying attributes), the
/// refresher and whoever reports
/// changes.
#[derive(Debug)]
pub struct AdaptiveTtl {
    config: AdaptiveConfig,
    long: RwLock<HashMap<u64, Long>>,
    state: Mutex<State>,
    notifier: OnceLock<Box<dyn Invalidator>>,
    invalidate: AtomicBool,
    promoted: AtomicU64,
    demoted_by_change: AtomicU64,
    demoted_idle: AtomicU64,
    invalidations: AtomicU64,
    invalidation_errors: AtomicU64,
    upcalls: AtomicU64,
}

impl AdaptiveTtl {
    /// A policy with nothing in the long set.
    pub fn new(config: AdaptiveConfig) -> AdaptiveTtl {
        AdaptiveTtl {
            config,
            long: RwLock::default(),
            state: Mutex::default(),
            notifier: OnceLock::new(),
            invalidate: AtomicBool::new(true),
            promoted: AtomicU64::new(0),
            demoted_by_change: AtomicU64::new(0),
            demoted_idle: AtomicU64::new(0),
            invalidations: AtomicU64::new(0),
            invalidation_errors: AtomicU64::new(0),
            upcalls: AtomicU64::new(0),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &AdaptiveConfig {
        &self.config
    }

    /// Where invalidations go; set once by the session. Until it is set, no
    /// inode is promoted (a long timeout that cannot be revoked is never
    /// given).
    pub fn set_notifier(&self, notifier: Notifier) {
        self.set_invalidator(Box::new(notifier));
    }

    /// Like [`set_notifier`](Self::set_notifier) for any [`Invalidator`].
    pub fn set_invalidator(&self, invalidator: Box<dyn Invalidator>) {
        let _ = self.notifier.set(invalidator);
    }

    /// Tests only: stop sending invalidations (changes still demote), to
    /// show that coherence tests fail without them. Never in production.
    #[doc(hidden)]
    pub fn set_invalidation_for_tests(&self, on: bool) {
        self.invalidate.store(on, Ordering::Relaxed);
    }

    /// (entry timeout, attribute timeout) for a reply about `ino`.
    pub fn ttl(&self, ino: u64) -> (Duration, Duration) {
        if self.is_long(ino) {
            (self.config.long_ttl, self.config.long_ttl)
        } else {
            (self.config.short_entry_ttl, self.config.short_attr_ttl)
        }
    }

    /// Timeouts for `ino` listed by READDIRPLUS of directory `dir`: an
    /// entry listed by a hot directory joins the long set (while there is
    /// room and it did not change recently), since listing it again is what
    /// the kernel would otherwise ask for, and such entries never show up as
    /// LOOKUP/GETATTR upcalls of their own. It joins with the lowest score,
    /// so it is the first to give way to an inode with upcalls.
    pub fn ttl_listed(&self, dir: u64, ino: u64) -> (Duration, Duration) {
        if ino == 0 || !self.is_long(dir) || self.is_long(ino) || self.notifier.get().is_none() {
            return self.ttl(ino);
        }
        if self
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .changed
            .contains_key(&ino)
        {
            return self.ttl(ino);
        }
        let mut long = self.long.write().unwrap_or_else(|e| e.into_inner());
        if long.len() >= self.config.long_inodes_max {
            drop(long);
            return self.ttl(ino);
        }
        long.insert(
            ino,
            Long {
                score: 0,
                since: Instant::now(),
            },
        );
        self.promoted.fetch_add(1, Ordering::Relaxed);
        (self.config.long_ttl, self.config.long_ttl)
    }

    /// Whether `ino` is in the long set.
    pub fn is_long(&self, ino: u64) -> bool {
        self.long
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&ino)
    }

    /// What the policy did so far.
    pub fn stats(&self) -> AdaptiveStats {
        AdaptiveStats {
            long_inodes: self.long.read().unwrap_or_else(|e| e.into_inner()).len(),
            promoted: self.promoted.load(Ordering::Relaxed),
            demoted_by_change: self.demoted_by_change.load(Ordering::Relaxed),
            demoted_idle: self.demoted_idle.load(Ordering::Relaxed),
            invalidations: self.invalidations.load(Ordering::Relaxed),
            invalidation_errors: self.invalidation_errors.load(Ordering::Relaxed),
            upcalls: self.upcalls.load(Ordering::Relaxed),
        }
    }

    /// Takes new cumulative counts and updates the long set: promotes hot
    /// inodes that did not change recently, demotes members the kernel
    /// stopped asking about, and makes room for hotter ones.
    pub fn refresh(&self, now: Instant, counts: &[Upcalls]) {
        let cfg = &self.config;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut active: HashSet<u64> = HashSet::new();
        let mut upcalls = 0u64;
        for u in counts {
            let t = state.tracked.entry(u.nodeid).or_insert(Tracked {
                last_total: 0,
                window_start: now,
                recent: 0,
                last_upcall: now,
            });
            // A source that dropped and re-created the inode starts again at 0.
            let delta = if u.total >= t.last_total {
                u.total - t.last_total
            } else {
                u.total
            };
            t.last_total = u.total;
            upcalls = upcalls.saturating_add(delta);
            if now.saturating_duration_since(t.window_start) > cfg.hot_window {
                t.window_start = now;
                t.recent = delta;
            } else {
                t.recent += delta;
            }
            if delta > 0 {
                t.last_upcall = now;
                active.insert(u.nodeid);
            }
        }
        self.upcalls.fetch_add(upcalls, Ordering::Relaxed);
        state
            .changed
            .retain(|_, at| now.saturating_duration_since(*at) < cfg.quiet_after_change);

        let mut evicted = Vec::new();
        {
            let mut long = self.long.write().unwrap_or_else(|e| e.into_inner());
            // Members the kernel asked about again got a long timeout again.
            for ino in &active {
                if let Some(l) = long.get_mut(ino) {
                    l.since = now;
                }
            }
            // Members not asked about for longer than their timeout: the
            // kernel has let them expire, nothing to invalidate.
            let before = long.len();
            long.retain(|_, l| now.saturating_duration_since(l.since) <= cfg.long_ttl);
            self.demoted_idle
                .fetch_add((before - long.len()) as u64, Ordering::Relaxed);

            if self.notifier.get().is_some() {
                let mut candidates: Vec<(u64, u64)> = state
                    .tracked
                    .iter()
                    .filter(|(ino, t)| {
                        t.recent >= cfg.hot_upcalls_min
                            && !long.contains_key(ino)
                            && !state.changed.contains_key(ino)
                    })
                    .map(|(ino, t)| (t.recent, *ino))
                    .collect();
                candidates.sort_unstable_by(|a, b| b.cmp(a));
                let mut coolest: Vec<(u64, u64)> = Vec::new();
                let mut coolest_next = 0;
                for (score, ino) in candidates {
                    if long.len() >= cfg.long_inodes_max {
                        if coolest.is_empty() {
                            coolest = long.iter().map(|(i, l)| (l.score, *i)).collect();
                            coolest.sort_unstable();
                        }
                        match coolest.get(coolest_next) {
                            Some(&(member_score, member)) if member_score < score => {
                                coolest_next += 1;
                                long.remove(&member);
                                evicted.push(member);
                            }
                            _ => break,
                        }
                    }
                    if cfg.long_inodes_max == 0 {
                        break;
                    }
                    long.insert(ino, Long { score, since: now });
                    self.promoted.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        self.demoted_idle
            .fetch_add(evicted.len() as u64, Ordering::Relaxed);

        // Forget what is not worth remembering, coolest first.
        if state.tracked.len() > cfg.tracked_inodes_max {
            let long = self.long.read().unwrap_or_else(|e| e.into_inner());
            let mut by_age: Vec<(Instant, u64)> = state
                .tracked
                .iter()
                .filter(|(ino, _)| !long.contains_key(ino))
                .map(|(ino, t)| (t.last_upcall, *ino))
                .collect();
            by_age.sort_unstable();
            let excess = state.tracked.len() - cfg.tracked_inodes_max;
            for (_, ino) in by_age.into_iter().take(excess) {
                state.tracked.remove(&ino);
            }
        }
        drop(state);
        // An evicted member may still hold a long timeout in the kernel.
        for ino in evicted {
            self.send_inval_inode(ino, -1);
        }
    }

    /// Marks `ino` changed: out of the long set, and not promoted again for
    /// [`AdaptiveConfig::quiet_after_change`]. Returns whether it was long.
    fn demote(&self, ino: u64, now: Instant) -> bool {
        // Most changes (every WRITE) are to inodes not in the long set: a
        // shared lock tells, and the exclusive one is taken only to remove.
        let was_long = self.is_long(ino)
            && self
                .long
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&ino)
                .is_some();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.changed.len() >= self.config.tracked_inodes_max {
            // Bounded: forget the oldest change marks first.
            let quiet = self.config.quiet_after_change;
            state
                .changed
                .retain(|_, at| now.saturating_duration_since(*at) < quiet);
        }
        if state.changed.len() < self.config.tracked_inodes_max {
            state.changed.insert(ino, now);
        }
        if was_long {
            self.demoted_by_change.fetch_add(1, Ordering::Relaxed);
        }
        was_long
    }

    /// A request through the mount changed `ino` (called by [`AdaptiveFs`]
    /// after the filesystem did it, before the dispatcher's reply). Invalidates the
    /// kernel's attributes if it may hold a long timeout for them; never
    /// data or entries (see the module docs for why).
    pub fn changed_by_request(&self, ino: u64) {
        if self.demote(ino, Instant::now()) {
            self.send_inval_inode(ino, -1);
        }
    }

    /// The daemon changed `ino` outside the kernel's requests, or learned
    /// that someone did: drops the kernel's attributes and cached data of it
    /// before returning. Do not call from a request handler.
    pub fn inode_changed(&self, ino: u64) {
        self.demote(ino, Instant::now());
        self.send_inval_inode(ino, 0);
    }

    /// The name `name` in directory `parent` changed (removed, renamed,
    /// replaced) outside the kernel's requests: drops the kernel's cached
    /// entry and the directory's attributes before returning. Do not call
    /// from a request handler.
    pub fn entry_changed(&self, parent: u64, name: &[u8]) {
        self.demote(parent, Instant::now());
        if !self.invalidate.load(Ordering::Relaxed) {
            return;
        }
        if let Some(n) = self.notifier.get() {
            self.invalidations.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = n.inval_entry(parent, name) {
                self.invalidation_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(parent, "invalidating a cached entry failed: {e}");
            }
        }
    }

    fn send_inval_inode(&self, ino: u64, offset: i64) {
        if !self.invalidate.load(Ordering::Relaxed) {
            return;
        }
        if let Some(n) = self.notifier.get() {
            self.invalidations.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = n.inval_inode(ino, offset, 0) {
                self.invalidation_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(ino, "invalidating cached attributes failed: {e}");
            }
        }
    }
}

/// A thread that feeds an [`UpcallSource`] into an [`AdaptiveTtl`] every
/// `interval`. Dropping it stops the thread.
#[derive(Debug)]
pub struct Refresher {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Refresher {
    /// Starts refreshing `ttl` from `source`. A source that fails is logged
    /// once and retried at the next interval.
    pub fn spawn(
        ttl: Arc<AdaptiveTtl>,
        mut source: Box<dyn UpcallSource>,
        interval: Duration,
    ) -> io::Result<Refresher> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("xfuse-ttl".into())
                .spawn(move || {
                    let mut failing = false;
                    while !stop.load(Ordering::Relaxed) {
                        match source.read() {
                            Ok(counts) => {
                                failing = false;
                                ttl.refresh(Instant::now(), &counts);
                            }
                            Err(e) if !failing => {
                                failing = true;
                                tracing::warn!("reading upcall counters failed (retrying): {e}");
                            }
                            Err(_) => {}
                        }
                        // Sleep in small steps so drop does not wait long.
                        let until = Instant::now() + interval;
                        while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                            std::thread::sleep(interval.min(Duration::from_millis(50)));
                        }
                    }
                })?
        };
        Ok(Refresher {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Refresher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Changes made by the daemon itself through a [`FileSystem`], outside the
/// kernel's requests (what a distributed filesystem does when it applies
/// another client's change): each method changes the filesystem, then
/// invalidates what the kernel may have cached about it, and only then
/// returns. Inodes are FUSE node ids; names are single path components.
#[derive(Debug)]
pub struct Changes<'a, F> {
    fs: &'a F,
    ttl: &'a AdaptiveTtl,
}

impl<'a, F: FileSystem> Changes<'a, F>
where
    F::Inode: From<u64> + Into<u64>,
    F::Handle: From<u64> + Into<u64>,
{
    /// Changes through `fs`, coherent with the kernel through `ttl`.
    pub fn new(fs: &'a F, ttl: &'a AdaptiveTtl) -> Self {
        Changes { fs, ttl }
    }

    /// Sets the attributes of `ino` named by `valid` (as SETATTR would).
    pub fn setattr(&self, ino: u64, attr: libc::stat64, valid: SetattrValid) -> io::Result<libc::stat64> {
        let (st, _) = self
            .fs
            .setattr(&Context::default(), ino.into(), attr, None, valid)?;
        self.ttl.inode_changed(ino);
        Ok(st)
    }

    /// Writes `data` at `offset` of the regular file `ino`.
    pub fn write(&self, ino: u64, offset: u64, data: &[u8]) -> io::Result<usize> {
        let ctx = Context::default();
        let size = u32::try_from(data.len()).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
        let (fh, _, _) = self.fs.open(&ctx, ino.into(), libc::O_WRONLY as u32, 0)?;
        let handle: u64 = fh
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))?
            .into();
        let mut copy = data.to_vec();
        let mut reader = DataReader::new(&mut copy);
        let written = self.fs.write(
            &ctx,
            ino.into(),
            handle.into(),
            &mut reader,
            size,
            offset,
            None,
            false,
            0,
            0,
        );
        let _ = self
            .fs
            .release(&ctx, ino.into(), 0, handle.into(), false, false, None);
        let written = written?;
        self.ttl.inode_changed(ino);
        Ok(written)
    }

    /// Renames `parent/name` to `newparent/newname` (replacing a file there).
    pub fn rename(&self, parent: u64, name: &CStr, newparent: u64, newname: &CStr) -> io::Result<()> {
        let moved = self.peek(parent, name);
        let victim = self.peek(newparent, newname);
        self.fs.rename(
            &Context::default(),
            parent.into(),
            name,
            newparent.into(),
            newname,
            0,
        )?;
        self.ttl.entry_changed(parent, name.to_bytes());
        self.ttl.entry_changed(newparent, newname.to_bytes());
        // ctime of the moved inode, nlink and ctime of a replaced one, and
        // both directories' times.
        for ino in [moved, victim].into_iter().flatten().chain([parent, newparent]) {
            self.ttl.inode_changed(ino);
        }
        Ok(())
    }

    /// Removes the name `parent/name` (its inode may live on under other
    /// names, with one link less).
    pub fn unlink(&self, parent: u64, name: &CStr) -> io::Result<()> {
        let gone = self.peek(parent, name);
        self.fs.unlink(&Context::default(), parent.into(), name)?;
        self.ttl.entry_changed(parent, name.to_bytes());
        for ino in gone.into_iter().chain([parent]) {
            self.ttl.inode_changed(ino);
        }
        Ok(())
    }

    /// The node id behind `parent/name`, without keeping a reference.
    fn peek(&self, parent: u64, name: &CStr) -> Option<u64> {
        let ctx = Context::default();
        let entry = self.fs.lookup(&ctx, parent.into(), name).ok()?;
        if entry.inode == 0 {
            return None;
        }
        self.fs.forget(&ctx, entry.inode.into(), 1);
        Some(entry.inode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A counter source whose counts the test sets.
    struct FakeSource(Arc<Mutex<Vec<Upcalls>>>);

    impl UpcallSource for FakeSource {
        fn read(&mut self) -> io::Result<Vec<Upcalls>> {
            Ok(self.0.lock().unwrap().clone())
        }
    }

    fn config() -> AdaptiveConfig {
        AdaptiveConfig {
            short_entry_ttl: Duration::from_secs(1),
            short_attr_ttl: Duration::from_millis(500),
            long_ttl: Duration::from_secs(60),
            hot_upcalls_min: 3,
            hot_window: Duration::from_secs(10),
            quiet_after_change: Duration::from_secs(5),
            long_inodes_max: 2,
            tracked_inodes_max: 100,
        }
    }

    /// Records the invalidations sent.
    #[derive(Debug, Default, Clone)]
    struct Recorder(Arc<Mutex<Vec<String>>>);

    impl Invalidator for Recorder {
        fn inval_inode(&self, ino: u64, offset: i64, _: i64) -> io::Result<()> {
            self.0.lock().unwrap().push(format!("inode {ino} {offset}"));
            Ok(())
        }
        fn inval_entry(&self, parent: u64, name: &[u8]) -> io::Result<()> {
            self.0
                .lock()
                .unwrap()
                .push(format!("entry {parent} {}", String::from_utf8_lossy(name)));
            Ok(())
        }
    }

    /// A policy able to promote (promotion needs a way to revoke).
    fn policy(cfg: AdaptiveConfig) -> AdaptiveTtl {
        policy_recorded(cfg).0
    }

    fn policy_recorded(cfg: AdaptiveConfig) -> (AdaptiveTtl, Recorder) {
        let ttl = AdaptiveTtl::new(cfg);
        let r = Recorder::default();
        ttl.set_invalidator(Box::new(r.clone()));
        (ttl, r)
    }

    fn u(nodeid: u64, total: u64) -> Upcalls {
        Upcalls { nodeid, total }
    }

    #[test]
    fn repeated_upcalls_promote_and_single_ones_do_not() {
        let p = policy(config());
        let t0 = Instant::now();
        p.refresh(t0, &[u(10, 1), u(11, 1)]);
        assert!(!p.is_long(10) && !p.is_long(11));
        assert_eq!(p.ttl(10), (Duration::from_secs(1), Duration::from_millis(500)));
        p.refresh(t0 + Duration::from_secs(1), &[u(10, 3), u(11, 2)]);
        assert!(p.is_long(10), "3 upcalls in the window");
        assert!(!p.is_long(11), "2 upcalls are below the threshold");
        assert_eq!(p.ttl(10), (Duration::from_secs(60), Duration::from_secs(60)));
        assert_eq!(p.stats().promoted, 1);
        assert_eq!(p.stats().upcalls, 5, "the growth of the counts: 1+1, then 2+1");
    }

    #[test]
    fn upcalls_spread_wider_than_the_window_are_not_hot() {
        let p = policy(config());
        let t0 = Instant::now();
        p.refresh(t0, &[u(10, 2)]);
        // The window (10 s) has passed: the count starts again.
        p.refresh(t0 + Duration::from_secs(11), &[u(10, 3)]);
        assert!(!p.is_long(10));
        p.refresh(t0 + Duration::from_secs(12), &[u(10, 5)]);
        assert!(p.is_long(10), "1 + 2 upcalls in the new window");
    }

    #[test]
    fn a_changed_inode_is_demoted_and_stays_short_while_quiet() {
        let (p, sent) = policy_recorded(config());
        let t0 = Instant::now();
        p.refresh(t0, &[u(10, 5)]);
        assert!(p.is_long(10));
        p.changed_by_request(11);
        assert!(
            sent.0.lock().unwrap().is_empty(),
            "a short inode needs no invalidation in a handler"
        );
        p.changed_by_request(10);
        assert!(!p.is_long(10));
        assert_eq!(
            *sent.0.lock().unwrap(),
            ["inode 10 -1"],
            "attributes only, from a handler"
        );
        assert_eq!(p.stats().demoted_by_change, 1);
        // Still hot, but changed less than 5 s ago.
        let now = Instant::now();
        p.refresh(now + Duration::from_secs(1), &[u(10, 10)]);
        assert!(!p.is_long(10), "promoted again within the quiet period");
        p.refresh(now + Duration::from_secs(6), &[u(10, 15)]);
        assert!(p.is_long(10), "hot and quiet again");
    }

    #[test]
    fn the_long_set_is_bounded_and_hotter_inodes_replace_cooler_ones() {
        let (p, sent) = policy_recorded(config());
        let t0 = Instant::now();
        p.refresh(t0, &[u(1, 3), u(2, 4), u(3, 5)]);
        let long: Vec<u64> = (1..=3).filter(|&i| p.is_long(i)).collect();
        assert_eq!(long, vec![2, 3], "the two hottest");
        p.refresh(
            t0 + Duration::from_secs(1),
            &[u(1, 3), u(2, 4), u(3, 5), u(4, 100)],
        );
        let long: Vec<u64> = (1..=4).filter(|&i| p.is_long(i)).collect();
        assert_eq!(long, vec![3, 4], "4 replaced the coolest member, 2");
        let s = p.stats();
        assert_eq!((s.long_inodes, s.demoted_idle), (2, 1));
        assert_eq!(
            *sent.0.lock().unwrap(),
            ["inode 2 -1"],
            "the evicted member was invalidated"
        );
        // Not hotter than any member: no change.
        p.refresh(t0 + Duration::from_secs(2), &[u(5, 4)]);
        assert!(!p.is_long(5));
    }

    #[test]
    fn members_the_kernel_stopped_asking_about_expire() {
        let p = policy(config());
        let t0 = Instant::now();
        p.refresh(t0, &[u(10, 5), u(11, 5)]);
        assert!(p.is_long(10) && p.is_long(11));
        // 11 is asked about again at 50 s (its long timeout was renewed).
        p.refresh(t0 + Duration::from_secs(50), &[u(10, 5), u(11, 6)]);
        p.refresh(t0 + Duration::from_secs(61), &[u(10, 5), u(11, 6)]);
        assert!(!p.is_long(10), "no upcall for longer than the long timeout");
        assert!(p.is_long(11));
    }

    #[test]
    fn nothing_is_promoted_without_a_way_to_invalidate() {
        let p = AdaptiveTtl::new(config());
        p.refresh(Instant::now(), &[u(10, 50)]);
        assert!(!p.is_long(10));
    }

    #[test]
    fn entries_listed_by_a_hot_directory_join_while_there_is_room() {
        let p = policy(config());
        let t0 = Instant::now();
        let short = (Duration::from_secs(1), Duration::from_millis(500));
        let long = (Duration::from_secs(60), Duration::from_secs(60));
        assert_eq!(p.ttl_listed(1, 20), short, "the directory is not hot");
        p.refresh(t0, &[u(1, 5)]);
        assert_eq!(p.ttl_listed(1, 20), long);
        assert!(p.is_long(20));
        assert_eq!(p.ttl_listed(1, 21), short, "the long set (2) is full");
        p.changed_by_request(20);
        p.changed_by_request(22);
        assert_eq!(p.ttl_listed(1, 22), short, "changed recently");
        // A listed member gives way to an inode with upcalls.
        p.refresh(t0 + Duration::from_secs(1), &[u(1, 5), u(20, 0), u(23, 4)]);
        assert!(p.is_long(23));
    }

    #[test]
    fn outside_changes_invalidate_whatever_the_timeout() {
        let (p, sent) = policy_recorded(config());
        p.inode_changed(20);
        p.entry_changed(1, b"name");
        assert_eq!(*sent.0.lock().unwrap(), ["inode 20 0", "entry 1 name"]);
        p.set_invalidation_for_tests(false);
        p.inode_changed(20);
        assert_eq!(sent.0.lock().unwrap().len(), 2);
    }

    #[test]
    fn a_source_restarting_from_zero_is_not_a_negative_delta() {
        let p = policy(config());
        let t0 = Instant::now();
        p.refresh(t0, &[u(10, 2)]);
        p.refresh(t0 + Duration::from_secs(1), &[u(10, 1)]);
        assert!(p.is_long(10), "2 + 1 upcalls");
    }

    #[test]
    fn tracking_is_bounded() {
        let mut cfg = config();
        cfg.tracked_inodes_max = 10;
        let p = policy(cfg);
        let counts: Vec<Upcalls> = (0..50).map(|i| u(i, 1)).collect();
        p.refresh(Instant::now(), &counts);
        assert!(p.state.lock().unwrap().tracked.len() <= 10);
    }

    #[test]
    fn the_refresher_feeds_the_policy() {
        let counts = Arc::new(Mutex::new(vec![u(7, 9)]));
        let p = Arc::new(policy(config()));
        let r = Refresher::spawn(
            p.clone(),
            Box::new(FakeSource(counts.clone())),
            Duration::from_millis(10),
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !p.is_long(7) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        drop(r);
        assert!(p.is_long(7));
    }
}
